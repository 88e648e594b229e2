"""Rollouts with Hugging Face ``generate``: batched, left-padded, KV-cached, EOS-stopped.

Decoding is HF's own; this module only fixes its settings and reads back a
:class:`~sfpo_lab.rollout.base.RolloutBatch`. Two ways to use it:

* single device: ``HFEngine(policy, ...)`` generates with the trainer's module itself
  (``owns_model=False``); ``sync_weights`` is then a no-op.
* FSDP2 (or any case where the trainer's module is not a plain full model): the engine owns
  an unsharded inference copy (``HFEngine.from_config(...)``), and
  :func:`~sfpo_lab.rollout.sync.push_full_weights` refreshes it once per iteration, so generation
  never all-gathers per token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn
from transformers import GenerationConfig, PretrainedConfig
from transformers.generation.logits_process import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from sfpo_lab.rollout.base import RolloutBatch, SamplingParams, build_rollout_batch, left_pad
from sfpo_lab.rollout.sync import load_named_tensors_


class _ChosenLogprobs(LogitsProcessor):
    """Records log-probs of the chosen tokens under the final (processed) distribution.

    Runs last in the processor list, so it sees exactly the scores ``generate`` samples from.
    The token chosen at step t is only known at step t + 1 (it is then ``input_ids[:, -1]``),
    so one step's ``[N, V]`` log-softmax is kept; ``output_scores`` would instead keep every
    step's ``[N, V]`` scores (``R * N * V * 4`` bytes: 80 GB at 64 x 2048 x 152k).
    """

    def __init__(self) -> None:
        self._previous: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        self._take(input_ids[:, -1])
        self._previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _take(self, chosen: torch.Tensor) -> None:
        if self._previous is not None:
            self.steps.append(self._previous.gather(-1, chosen[:, None]).squeeze(-1))
            self._previous = None

    def finish(self, response_ids: torch.Tensor) -> torch.Tensor:
        """``[N, R]`` log-probs of ``response_ids`` (the sequences ``generate`` returned)."""
        self._take(response_ids[:, -1])
        return torch.stack(self.steps[: response_ids.shape[1]], dim=1)


@contextlib.contextmanager
def _rng_scope(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the sampler for this call only; the caller's global RNG is restored afterwards."""
    if seed is None:
        yield
        return
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _inference_mode_of(model: nn.Module) -> Iterator[None]:
    """Eval mode, no autograd and a neutral ``generation_config`` for the call, then restore.

    ``generate`` fills every unset option from ``model.generation_config``, which for hub
    checkpoints may carry ``repetition_penalty``, ``top_k=20``, ``min_p``, ... Swapping in a
    default config makes the sampling distribution exactly what :class:`SamplingParams` says.
    """
    was_training, saved_config = model.training, model.generation_config
    model.eval()
    model.generation_config = GenerationConfig()
    try:
        with torch.no_grad():
            yield
    finally:
        model.generation_config = saved_config
        model.train(was_training)


class HFEngine:
    """A :class:`~sfpo_lab.rollout.base.RolloutEngine` on ``model.generate``.

    Args:
        model: a HF causal LM (``GenerationMixin``).
        pad_token_id: id used for left padding of prompts and right padding of responses.
        eos_token_id: id or ids that end a response (e.g. Qwen chat: ``<|im_end|>`` and
            ``<|endoftext|>``).
        owns_model: True when ``model`` is the engine's own inference copy: ``sync_weights``
            then loads weights into it and ``close`` drops it. False (default) when it is the
            trainer's module, which is always current: ``sync_weights`` is a no-op.
    """

    def __init__(
        self,
        model: nn.Module,
        pad_token_id: int,
        eos_token_id: int | Sequence[int],
        *,
        owns_model: bool = False,
    ) -> None:
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        if not eos:
            raise ValueError("HFEngine: eos_token_id must name at least one token id")
        self._model: nn.Module | None = model
        self.pad_token_id = int(pad_token_id)
        self.eos_token_ids = [int(e) for e in eos]
        self.owns_model = owns_model

    @classmethod
    def from_config(
        cls,
        config: PretrainedConfig,
        pad_token_id: int,
        eos_token_id: int | Sequence[int],
        *,
        device: torch.device | str = "cpu",
        dtype: str | torch.dtype = "float32",
    ) -> HFEngine:
        """An engine owning a fresh (randomly initialised) copy; fill it with ``push_full_weights``."""
        from sfpo_lab.models import build_causal_lm

        with torch.device(device):
            model = build_causal_lm(config, dtype=dtype)
        return cls(model, pad_token_id, eos_token_id, owns_model=True)

    @property
    def model(self) -> nn.Module:
        """The module generation runs with."""
        if self._model is None:
            raise RuntimeError("HFEngine is closed")
        return self._model

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seed: int | None = None
    ) -> RolloutBatch:
        """Sample ``params.n`` completions per prompt; see :class:`RolloutEngine`.

        Returns:
            A prompt-major batch of N = ``len(prompts) * params.n`` rows, ``input_ids [N, P+R]``
            with R the longest response actually generated (<= ``max_new_tokens``).
        """
        model = self.model
        device = next(model.parameters()).device
        prompt_ids, prompt_mask = left_pad(prompts, self.pad_token_id, device)
        prompt_ids = prompt_ids.repeat_interleave(params.n, dim=0)  # [N, P], prompt-major
        prompt_mask = prompt_mask.repeat_interleave(params.n, dim=0)
        recorder = _ChosenLogprobs() if params.return_logprobs else None
        with _inference_mode_of(model), _rng_scope(seed, device):
            sequences = model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                generation_config=self._generation_config(params),
                logits_processor=self._processors(params, recorder),
            )
        response_ids = sequences[:, prompt_ids.shape[1] :]  # [N, R]
        return build_rollout_batch(
            prompt_ids,
            prompt_mask,
            response_ids,
            eos_token_ids=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            n=params.n,
            logprobs=None if recorder is None else recorder.finish(response_ids),
        )

    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        """Sampling vs argmax, lengths and stop ids; the distribution comes from the processors."""
        return GenerationConfig(
            do_sample=not params.greedy,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            use_cache=True,
            num_beams=1,
            num_return_sequences=1,
            temperature=1.0,  # applied by our own processors, in a fixed order
            top_p=1.0,
            top_k=0 if not params.greedy else None,
        )

    @staticmethod
    def _processors(
        params: SamplingParams, recorder: _ChosenLogprobs | None
    ) -> LogitsProcessorList:
        """HF's own warpers (temperature -> top-k -> top-p, HF's order), then the recorder.

        They are passed explicitly (not through the config) so the recorder runs after them:
        ``generate`` appends config-made warpers *after* user processors. Greedy argmax is
        unchanged by them but the recorded log-probs are those of the same distribution.
        """
        processors = LogitsProcessorList()
        if params.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k_enabled is not None:
            processors.append(TopKLogitsWarper(top_k=params.top_k_enabled))
        if params.top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=params.top_p))
        if recorder is not None:
            processors.append(recorder)
        return processors

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load full weights into the owned copy; a no-op (nothing consumed) otherwise."""
        if self.owns_model:
            load_named_tensors_(self.model, named_tensors, strict=True)

    def close(self) -> None:
        """Drop the owned copy (a borrowed trainer module is only un-referenced)."""
        self._model = None
