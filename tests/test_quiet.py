"""sfpo_lab.run.quiet: each filter drops exactly its notice, on its logger, and keeps the rest."""

from __future__ import annotations

import importlib.util
import inspect
import logging
import warnings
from pathlib import Path

import pytest

from sfpo_lab.run import quiet

WEIGHTS_ONLY = "`weights_only` was not set, defaulting to `False`."
TIP = (
    "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]"
    "(https://pypi.org/project/litlogger/) to enable LitLogger, which logs metrics and "
    "artifacts automatically to the Lightning Experiments platform."
)
WARMUP = "Chat template warmup failed"


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def capture():
    """Records reaching a handler on the given logger, with the filters installed."""
    added: list[tuple[logging.Logger, _Keep, int]] = []

    def attach(name: str) -> _Keep:
        logger = logging.getLogger(name)
        handler = _Keep()
        added.append((logger, handler, logger.level))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        return handler

    quiet.install()
    yield attach
    for logger, handler, level in added:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.parametrize(
    ("logger", "notice", "others"),
    [
        (
            "lightning.pytorch.trainer.connectors.checkpoint_connector",
            WEIGHTS_ONLY,
            ["Restoring states from the checkpoint path at /x/last.ckpt", "`weights_only` was"],
        ),
        (
            "lightning.pytorch.utilities.rank_zero",
            TIP,
            ["GPU available: False, used: False", "[summary] held-out accuracy 31.9%"],
        ),
        ("vllm.renderers.base", WARMUP, ["Chat template warmup failed: other", "Renderer ready"]),
        (
            "vllm.model_executor.model_loader.reload.layerwise",
            ("%s: Failed to load weights", "RotaryEmbedding"),  # as vLLM logs it
            [("%s: Failed to load weights", "ParallelLMHead"), "Reloading weights inplace..."],
        ),
    ],
)
def test_filter_drops_its_notice_and_keeps_the_others(capture, logger, notice, others):
    kept = capture(logger)
    log = logging.getLogger(logger)
    for msg in (notice, *others):
        log.warning(*msg) if isinstance(msg, tuple) else log.warning(msg)
    assert kept.messages == [m[0] % m[1:] if isinstance(m, tuple) else m for m in others]


def test_a_notice_on_another_logger_is_kept(capture):
    kept = capture("lightning.pytorch.core.module")
    logging.getLogger("lightning.pytorch.core.module").info(WEIGHTS_ONLY)
    assert kept.messages == [WEIGHTS_ONLY]


def test_install_twice_adds_one_filter_per_logger():
    quiet.install()
    quiet.install()
    for notice in quiet.NOTICES:
        filters = logging.getLogger(notice.logger).filters
        assert sum(isinstance(f, quiet.DropNotice) and f.notice is notice for f in filters) == 1


def test_filtered_texts_are_the_libraries_own():
    """The filters name today's texts: a library that rewords a notice fails here, not silently."""
    from lightning.pytorch.trainer.connectors import checkpoint_connector
    from lightning.pytorch.trainer.connectors.logger_connector import logger_connector

    assert WEIGHTS_ONLY in inspect.getsource(checkpoint_connector)
    assert '"💡 Tip: For seamless cloud logging and experiment tracking,"' in inspect.getsource(
        logger_connector
    )
    spec = importlib.util.find_spec("vllm")  # its source, without the 15 s import
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vllm is not installed")
    source = Path(spec.submodule_search_locations[0], "renderers", "base.py").read_text()
    assert "logger = init_logger(__name__)" in source
    assert f'logger.warning("{WARMUP}", exc_info=True)' in source
    layerwise = Path(spec.submodule_search_locations[0], "model_executor", "model_loader")
    source = (layerwise / "reload" / "layerwise.py").read_text()
    assert 'logger.warning("%s: Failed to load weights", layer.__class__.__name__)' in source


def test_leafspec_warning_is_dropped_and_other_warnings_are_kept():
    from lightning.pytorch.utilities._pytree import _tree_flatten

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _tree_flatten(1.0)  # Lightning builds a LeafSpec: the deprecation fires here
        assert [str(w.message)[:34] for w in caught] == ["`isinstance(treespec, LeafSpec)` i"]
        caught.clear()
        quiet.install()
        _tree_flatten(1.0)
        warnings.warn("a FutureWarning that matters", FutureWarning, stacklevel=1)
        assert [str(w.message) for w in caught] == ["a FutureWarning that matters"]
