"""Rollouts with Hugging Face ``generate``: batched, left-padded, KV-cached, EOS-stopped.

Decoding is HF's own; this module only fixes its settings and reads back a
:class:`~sfpo_lab.rollout.base.RolloutBatch`. Two ways to use it:

* single device: ``HFEngine(policy, ...)`` generates with the trainer's module itself
  (``owns_model=False``); ``sync_weights`` is then a no-op.
* FSDP2 (or any case where the trainer's module is not a plain full model): the engine owns
  an unsharded inference copy (``HFEngine.from_config(...)``), and
  :func:`~sfpo_lab.rollout.sync.push_full_weights` refreshes it once per iteration, so generation
  never all-gathers per token. Give the engine the training device (``device=``): the copy is
  moved there, and ``generate`` refuses to run on the host while the trainer is on an
  accelerator. With ``set_weight_source`` the engine pulls the trainer's weights itself
  whenever their version changed, so no caller has to remember to push.

Sampling is per row (:mod:`sfpo_lab.rollout.seeded`): ``generate(..., seed, keys=[...])`` gives
prompt key ``k``, sample ``j`` the same tokens whatever else is in the batch (batch size,
chunking, number of ranks). Greedy decoding is plain argmax.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence

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
from sfpo_lab.rollout.seeded import SeededSampler, row_seeds_for
from sfpo_lab.rollout.sync import TensorSource, WeightSource, load_named_tensors_


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
        device: the trainer's root device. An owned copy is moved there; ``generate`` raises
            when the model's parameters are on another device type (e.g. a CPU copy beside a
            CUDA trainer). None: wherever the model is.
    """

    def __init__(
        self,
        model: nn.Module,
        pad_token_id: int,
        eos_token_id: int | Sequence[int],
        *,
        owns_model: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        if not eos:
            raise ValueError("HFEngine: eos_token_id must name at least one token id")
        self._device = None if device is None else torch.device(device)
        if owns_model and self._device is not None:
            model = model.to(self._device)
        self._model: nn.Module | None = model
        self.pad_token_id = int(pad_token_id)
        self.eos_token_ids = [int(e) for e in eos]
        self.owns_model = owns_model
        self._source: WeightSource | None = None
        self._held_valid = False  # an owned copy holds pushed weights (not its start weights)
        self._held_tag: Hashable = None
        self.last_sync_s = 0.0  # seconds the latest push took (perf/weight_sync_s)

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
        from sfpo_lab.model.build import build_causal_lm

        with torch.device(device):
            model = build_causal_lm(config, dtype=dtype)
        return cls(model, pad_token_id, eos_token_id, owns_model=True, device=device)

    @property
    def model(self) -> nn.Module:
        """The module generation runs with."""
        if self._model is None:
            raise RuntimeError("HFEngine is closed")
        return self._model

    @property
    def device(self) -> torch.device:
        """Where generation runs: the given device, else the model's."""
        return self._device or next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The generation model's parameter dtype (a weight push casts to it)."""
        return next(self.model.parameters()).dtype

    def _check_device(self) -> torch.device:
        """The model's device; raises when it is not of the engine's device type."""
        actual = next(self.model.parameters()).device
        if self._device is not None and actual.type != self._device.type:
            raise RuntimeError(
                f"HFEngine: the generation model is on {actual} but the training device is "
                f"{self._device}; refusing to generate on the host. Build the engine with "
                "owns_model=True and device=<root device> (the copy is moved there), or move "
                "the trainer's module first"
            )
        return actual

    def set_weight_source(
        self, tensors: TensorSource, version: Callable[[], Hashable] | None = None
    ) -> None:
        """Let ``generate`` pull the trainer's weights itself (owned copy only): a push happens
        before a generation when none happened yet or ``version()`` changed since the last."""
        self._source = WeightSource(tensors, version)

    @contextlib.contextmanager
    def keep_awake(self, replace_weights: bool = False) -> Iterator[None]:
        """For symmetry with :class:`~sfpo_lab.rollout.vllm.VLLMEngine` (HF never sleeps)."""
        yield

    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        seed: int | None = None,
        keys: Sequence[int] | None = None,
    ) -> RolloutBatch:
        """Sample ``params.n`` completions per prompt; see :class:`RolloutEngine`.

        Args:
            keys: one integer per prompt (default: its position in ``prompts``). Row (key k,
                sample j) is drawn from its own stream seeded by ``derive_seed(seed, k, j)``,
                so it does not depend on the other prompts of the call.

        Returns:
            A prompt-major batch of N = ``len(prompts) * params.n`` rows, ``input_ids [N, P+R]``
            with R the longest response actually generated (<= ``max_new_tokens``).
        """
        keys = self._keys(prompts, keys)
        model = self.model
        device = self._check_device()
        self._pull_weights()
        prompt_ids, prompt_mask = left_pad(prompts, self.pad_token_id, device)
        prompt_ids = prompt_ids.repeat_interleave(params.n, dim=0)  # [N, P], prompt-major
        prompt_mask = prompt_mask.repeat_interleave(params.n, dim=0)
        recorder = _ChosenLogprobs() if params.return_logprobs else None
        sampler = None
        if not params.greedy:
            if seed is None:  # unseeded: draw one from the global RNG
                seed = int(torch.randint(0, 2**62, ()).item())
            seeds = row_seeds_for(seed, keys, params.n, device)
            sampler = SeededSampler(seeds, prompt_ids.shape[1])
        with _inference_mode_of(model):
            sequences = model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                generation_config=self._generation_config(params),
                logits_processor=self._processors(params, recorder, sampler),
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

    @staticmethod
    def _keys(prompts: list[list[int]], keys: Sequence[int] | None) -> list[int]:
        if keys is None:
            return list(range(len(prompts)))
        if len(keys) != len(prompts):
            raise ValueError(
                f"HFEngine.generate: keys has {len(keys)} entries for {len(prompts)} prompts "
                "(one key per prompt)"
            )
        return [int(k) for k in keys]

    def _pull_weights(self) -> None:
        """Push from the weight source when it says the owned copy is behind."""
        source = self._source
        if self.owns_model and source is not None and source.due(self._held_valid, self._held_tag):
            self.sync_weights(source.tensors())

    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        """Argmax over the processed scores: the seeded sampler (last processor) has already
        reduced them to the drawn token when sampling; lengths and stop ids."""
        return GenerationConfig(
            do_sample=False,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            use_cache=True,
            num_beams=1,
            num_return_sequences=1,
            temperature=1.0,  # applied by our own processors, in a fixed order
            top_p=1.0,
            top_k=None,
        )

    @staticmethod
    def _processors(
        params: SamplingParams,
        recorder: _ChosenLogprobs | None,
        sampler: SeededSampler | None,
    ) -> LogitsProcessorList:
        """HF's own warpers (temperature -> top-k -> top-p, HF's order), the recorder, then the
        per-row sampler.

        They are passed explicitly (not through the config) so the order is fixed: the recorder
        sees exactly the distribution the sampler draws from. Greedy argmax is unchanged by the
        warpers but the recorded log-probs are those of the same distribution.
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
        if sampler is not None:
            processors.append(sampler)
        return processors

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load full weights into the owned copy; a no-op (nothing consumed) otherwise."""
        if self.owns_model:
            start = time.perf_counter()
            load_named_tensors_(self.model, named_tensors, strict=True)
            self._held_valid = True
            self._held_tag = None if self._source is None else self._source.tag()
            self.last_sync_s = time.perf_counter() - start

    def close(self) -> None:
        """Drop the owned copy (a borrowed trainer module is only un-referenced)."""
        self._model = None
