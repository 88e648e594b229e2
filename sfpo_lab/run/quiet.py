"""Known-harmless, repeated library notices, each dropped at its source (one logger + one message,
or one warning's exact text); everything else those loggers say still reaches the user.

* Lightning ``checkpoint_connector``: "`weights_only` was not set, defaulting to `False`."
  (logged at every checkpoint save; passing ``weights_only=False`` to ``trainer.save_checkpoint``
  avoids it too),
* Lightning ``rank_zero``: the "💡 Tip: ..." advertisements for litlogger / litmodels,
* vLLM ``renderers.base``: "Chat template warmup failed" with a full traceback, when the engine
  runs with ``skip_tokenizer_init=True`` (the tokenizer lives in the trainer; nothing to warm up),
* vLLM ``reload.layerwise``: "RotaryEmbedding: Failed to load weights" at every weight push (a
  computed cache, not a weight; the same message for any other layer still shows),
* torch ``_pytree``: the ``LeafSpec`` deprecation ``FutureWarning`` raised from Lightning.

Also quiet by default, shown with ``SFPO_VERBOSE=1`` (:func:`verbose`): transformers' own
progress bars ("Loading weights", "Loading checkpoint shards": :func:`install`; hub downloads
keep theirs) and W&B's run header and 40-line footer (``settings.quiet``:
:func:`sfpo_lab.run.loggers.build_loggers`; the offline run's location line stays).

:func:`install` is idempotent; call it once per process before the trainer is built.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Notice:
    """One notice to drop: the logger that emits it and a test on its formatted message."""

    logger: str
    matches: Callable[[str], bool]
    why: str


NOTICES = (
    Notice(
        "lightning.pytorch.trainer.connectors.checkpoint_connector",
        lambda msg: msg == "`weights_only` was not set, defaulting to `False`.",
        "once per checkpoint save; our checkpoints are trusted (RNG states, counters)",
    ),
    Notice(
        "lightning.pytorch.utilities.rank_zero",
        lambda msg: msg.startswith("💡 Tip: For seamless cloud"),
        "advertisement for litlogger / litmodels",
    ),
    Notice(
        "vllm.renderers.base",
        lambda msg: msg == "Chat template warmup failed",
        "skip_tokenizer_init=True: vLLM has no tokenizer to warm up (prompts arrive as ids)",
    ),
    Notice(
        "vllm.model_executor.model_loader.reload.layerwise",
        lambda msg: msg == "RotaryEmbedding: Failed to load weights",
        "at every weight push: the rotary cos/sin cache is computed from the config, not pushed "
        "(other layers' load failures, e.g. ParallelLMHead, still show)",
    ),
)

LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class DropNotice(logging.Filter):
    """Drops records whose message satisfies ``notice.matches`` (on the logger it is added to)."""

    def __init__(self, notice: Notice) -> None:
        super().__init__()
        self.notice = notice

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except (TypeError, ValueError):  # a malformed record is someone else's problem: keep it
            return True
        return not self.notice.matches(msg)


VERBOSE_ENV = "SFPO_VERBOSE"


def verbose() -> bool:
    """Whether the user asked for every library's bars and banners: ``SFPO_VERBOSE`` set to
    anything but ``""``, ``0`` or ``false`` (an environment variable, so a sweep's jobs and
    torchrun's ranks inherit it)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false")


def _no_bar(factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """transformers' tqdm hook: every bar it makes (weight loading) is created disabled."""
    return factory(*args, **{**kwargs, "disable": True})


def install() -> None:
    """Add each notice's filter to its logger (once), ignore the ``LeafSpec`` warning and,
    unless :func:`verbose`, hide transformers' weight-loading bars."""
    for notice in NOTICES:
        logger = logging.getLogger(notice.logger)
        if not any(isinstance(f, DropNotice) and f.notice is notice for f in logger.filters):
            logger.addFilter(DropNotice(notice))
    warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING, category=FutureWarning)
    from transformers.utils import logging as hf_logging  # already loaded with Lightning

    hf_logging.set_tqdm_hook(None if verbose() else _no_bar)
