"""The pieces :mod:`benchmarks.gpu_paper_shape` drives: the paper's lengths, a random-weight
Qwen2 on disk, a :class:`~sfpo_lab.config.RunConfig` built without Hydra, and
:class:`ProbeModule`, the kit's own :class:`~sfpo_lab.training.module.SFPOModule` whose
``training_step`` runs the stages of one iteration on forced-length responses and records
what each stage computed (dtypes, seconds, memory, update statistics, gradients).

Everything here goes through the kit's public code: ``configure_model`` (policy, reference
model, FSDP2 sharding, generation copy, attention setting), the rollout engine, the no-grad
log-prob pass and :class:`~sfpo_lab.training.stages.UpdatePass` under a real Lightning ``Trainer``
(its precision plugin: autocast, the 16-mixed gradient scaler).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sfpo_lab.algos import get_advantage_estimator
from sfpo_lab.config import (
    CheckpointConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RolloutConfig,
    RunConfig,
    TrainerConfig,
    UpdateConfig,
    ValConfig,
)
from sfpo_lab.model.build import build_causal_lm, tiny_qwen2_config
from sfpo_lab.rollout.base import SamplingParams, build_rollout_batch, left_pad
from sfpo_lab.training.experience import Experience, response_logprobs
from sfpo_lab.training.module import SFPOModule

PAD = 0  # pad id; prompts and forced responses never use it


@dataclass(frozen=True)
class Shape:
    """Model size and lengths of one run.

    Attributes:
        hidden, layers, heads, kv_heads, intermediate, vocab: the Qwen2 architecture.
        prompt_lengths: one per prompt, mixed, left padded to the longest.
        n: samples per prompt (rows = prompts x n).
        response_len: forced response tokens per row in the log-prob and update passes.
        rollout_tokens: new tokens of the real HF generation (EOS unreachable: every row runs
            to this length).
        max_tokens: token budget per micro-batch (``update.max_tokens_per_micro_batch``).
        chunk_tokens: positions per chunk of the fused head (``update.logits_chunk_tokens``).
    """

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    prompt_lengths: tuple[int, ...]
    n: int
    response_len: int
    rollout_tokens: int
    max_tokens: int
    chunk_tokens: int = 256

    @property
    def eos(self) -> int:
        """An id the model cannot emit (outside the vocabulary): responses run to the cap."""
        return self.vocab


# Qwen2.5-0.5B's architecture; prompts up to verl's 1,536 tokens, responses at the paper's
# 2,560-token cap, micro-batches of the paper configs' 16,384-token budget
PAPER = Shape(896, 24, 14, 2, 4864, 151_936, (1536, 1024, 512, 160), 2, 2560, 512, 16_384)
SMOKE = Shape(64, 2, 4, 2, 128, 512, (24, 16, 9, 5), 2, 16, 6, 96, 32)


@dataclass
class TokenIds:
    """The two ids ``SFPOModule`` reads from a tokenizer (no text is encoded here)."""

    pad_token_id: int
    eos_token_id: int


def save_random_model(shape: Shape, out: Path, device: str) -> int:
    """A random-init fp32 Qwen2 of ``shape`` saved under ``out``; returns its parameter count."""
    cfg = tiny_qwen2_config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        num_layers=shape.layers,
        num_heads=shape.heads,
        num_kv_heads=shape.kv_heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=max(shape.prompt_lengths) + shape.response_len,
        pad_token_id=PAD,
        bos_token_id=None,
        eos_token_id=None,
    )
    with torch.device(device):
        model = build_causal_lm(cfg, dtype="float32")
    count = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    return count


def run_config(
    shape: Shape, model_path: str, *, accelerator: str, strategy: str, precision: str, attn: str
) -> RunConfig:
    """The run as the kit would build it from YAML: fp32 master weights, the fused head with
    KL on, token-budget micro-batches, the paper's gradient clip. Settings that the kit may
    not have yet (``model.attn_implementation``) are set only where they exist."""
    model = ModelConfig(
        name="paper-shape-random", name_or_path=model_path, dtype="float32", tiny=None, warmup=None
    )
    if hasattr(model, "attn_implementation"):
        model.attn_implementation = attn
    rows = len(shape.prompt_lengths) * shape.n
    return RunConfig(
        iterations=1,
        model=model,
        data=DataConfig(
            batch_size=len(shape.prompt_lengths), max_prompt_len=max(shape.prompt_lengths)
        ),
        rollout=RolloutConfig(n=shape.n, max_new_tokens=shape.rollout_tokens),
        update=UpdateConfig(
            micro_batch_size=rows,
            max_tokens_per_micro_batch=shape.max_tokens,
            fused_lm_head=True,
            logits_chunk_tokens=shape.chunk_tokens,
        ),
        loss=LossConfig(kl_coef=0.001),
        optim=OptimConfig(lr=1e-6, grad_clip=1.0),
        trainer=TrainerConfig(
            accelerator=accelerator, devices=1, strategy=strategy, precision=precision
        ),
        val=ValConfig(every=0),
        checkpoint=CheckpointConfig(every=0, save_best=False),
    )


def random_prompts(shape: Shape, seed: int = 0) -> list[list[int]]:
    """Token ids of mixed lengths (never PAD or EOS)."""
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randint(1, shape.vocab, (n,), generator=gen).tolist() for n in shape.prompt_lengths
    ]


def left_padded_prompts(shape: Shape, device: torch.device) -> tuple[Tensor, Tensor]:
    """``[N, P]`` prompt ids and mask, left padded and repeated ``n`` times (prompt-major),
    as the engine lays them out (for sections that skip the rollout)."""
    ids, mask = left_pad(random_prompts(shape), PAD, device)
    return ids.repeat_interleave(shape.n, 0), mask.repeat_interleave(shape.n, 0)


def forced_experience(
    prompt_ids: Tensor, prompt_mask: Tensor, shape: Shape, device: torch.device, seed: int = 1
) -> Experience:
    """Left-padded prompts followed by ``shape.response_len`` random response tokens per row
    (no EOS: every row is at the cap), with GRPO advantages of fixed rewards."""
    gen = torch.Generator().manual_seed(seed)
    rows = prompt_ids.shape[0]
    response = torch.randint(1, shape.vocab, (rows, shape.response_len), generator=gen)
    batch = build_rollout_batch(
        prompt_ids.cpu(),
        prompt_mask.cpu(),
        response,
        eos_token_ids=[shape.eos],
        pad_token_id=PAD,
        n=shape.n,
    )
    rewards = torch.tensor([float(i % 2) for i in range(rows)])  # both outcomes in each group
    advantages, _ = get_advantage_estimator("grpo")(rewards, group_size=shape.n)
    exp = Experience(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        response_mask=batch.response_mask,
        advantages=advantages,
    )
    return exp.to(device)


def _local(t: Tensor) -> Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def flat_grads(model: nn.Module) -> Tensor | None:
    """Every gradient (full tensors, FSDP2 shards gathered) as one fp32 vector on the host."""
    parts = [
        (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().float()
        for p in model.parameters()
        if p.grad is not None
    ]
    return torch.cat([g.flatten().cpu() for g in parts]) if parts else None


class DtypeProbe:
    """Records the output dtype of a decoder layer's MLP projection under the current label
    (the dtype the model computes in: autocast, FSDP2 policy or the parameters' own)."""

    def __init__(self) -> None:
        self.label = "other"
        self.seen: dict[str, set[str]] = {}

    def watch(self, model: nn.Module) -> None:
        layer = model.get_decoder().layers[0].mlp.down_proj

        def hook(module: nn.Module, args: Any, out: Tensor) -> None:
            self.seen.setdefault(self.label, set()).add(str(out.dtype).removeprefix("torch."))

        layer.register_forward_hook(hook)

    def summary(self) -> dict[str, list[str]]:
        return {k: sorted(v) for k, v in self.seen.items()}


@dataclass
class Plan:
    """What one ``training_step`` of :class:`ProbeModule` runs."""

    shape: Shape
    rollout: bool = True
    update_modes: tuple[str, ...] = ("padded", "packed")
    record: dict[str, Any] = field(default_factory=dict)
    grads: dict[str, Tensor | None] = field(default_factory=dict)


def all_finite(t: Tensor | None, mask: Tensor | None = None) -> bool:
    if t is None:
        return False
    return bool(torch.isfinite(t if mask is None else t[mask.bool()]).all())


class ProbeModule(SFPOModule):
    """``SFPOModule`` with a ``training_step`` that runs and records one probe iteration."""

    def __init__(self, run: RunConfig, model_path: str, plan: Plan) -> None:
        shape = plan.shape
        super().__init__(run, model_path, TokenIds(PAD, shape.eos))
        self.plan = plan
        self.dtypes = DtypeProbe()
        self._capture: str | None = None

    def on_train_start(self) -> None:
        super().on_train_start()
        rec = self.plan.record
        rec["attn_implementation"] = getattr(self.policy.config, "_attn_implementation", None)
        rec["master_dtype"] = str(next(self.policy.parameters()).dtype)
        rec["reference_dtype"] = (
            None if self.ref_policy is None else str(next(self.ref_policy.parameters()).dtype)
        )
        rec["engine_owns_copy"] = bool(self.engine.owns_model)
        self.dtypes.watch(self.policy)
        if self.engine.model is not self.policy:
            self.dtypes.watch(self.engine.model)
        if self.plan.rollout:  # where ValidationCallback generates: outside training_step,
            # under the kit's rule for it (sfpo_lab.eval.callback.compute_context)
            from sfpo_lab.eval.callback import compute_context

            params = SamplingParams(n=1, max_new_tokens=2)
            with self._labelled("validation"), compute_context(self.trainer):
                self.engine.generate(random_prompts(self.plan.shape)[:2], params, seed=0)

    @contextlib.contextmanager
    def _labelled(self, name: str) -> Iterator[None]:
        self.dtypes.label = name
        try:
            yield
        finally:
            self.dtypes.label = "other"

    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        """Seconds, memory (the kit's ``StageMemory``) and compute dtype of one stage."""
        start = time.perf_counter()
        with self._labelled(name), self.stage_mem.stage(name):
            yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.plan.record.setdefault("stage_s", {})[name] = time.perf_counter() - start

    def training_step(self, batch: Any, batch_idx: int) -> None:
        plan, rec = self.plan, self.plan.record
        self.stage_mem.clear()
        if plan.rollout:
            prompt_ids, prompt_mask = self._rollout_stage()
        else:
            prompt_ids, prompt_mask = left_padded_prompts(plan.shape, self.device)
        exp = forced_experience(prompt_ids, prompt_mask, plan.shape, self.device)
        self._logprob_stage(exp)
        theta0 = [_local(p).detach().clone() for p in self.policy.parameters()]
        for mode in plan.update_modes:
            self.run_cfg.update.remove_padding = mode == "packed"
            self._capture = mode
            with self._stage(f"update_{mode}"):
                stats = self.updater(exp)
            self._capture = None
            rec.setdefault("update", {})[mode] = stats
            with torch.no_grad():  # every pass starts from theta0
                torch._foreach_copy_([_local(p) for p in self.policy.parameters()], theta0)
        rec["memory_gib"] = {k.split("/")[-1]: v for k, v in self.stage_mem.metrics().items()}
        rec["dtypes"] = self.dtypes.summary()
        plugin = self.trainer.precision_plugin
        scaler = getattr(plugin, "scaler", None)
        rec["lightning_precision"] = {
            "plugin": type(plugin).__name__,
            "precision": getattr(plugin, "precision", None),
            "grad_scale": None if scaler is None else float(scaler.get_scale()),
        }

    def _rollout_stage(self) -> tuple[Tensor, Tensor]:
        """HF generation of left-padded prompts, every row to ``rollout_tokens`` new tokens."""
        shape = self.plan.shape
        params = SamplingParams(
            n=shape.n, max_new_tokens=shape.rollout_tokens, return_logprobs=True
        )
        with self._stage("rollout"):
            ro = self.engine.generate(random_prompts(shape), params, seed=0)
        self.plan.record["rollout"] = {
            "rows": int(ro.input_ids.shape[0]),
            "prompt_width": int(ro.prompt_ids.shape[1]),
            "left_pad_rows": int((ro.prompt_mask[:, 0] == 0).sum()),
            "response_tokens": int(ro.response_mask.sum()),
            "new_tokens_per_row": int(ro.response_mask.shape[1]),
            "logprobs_finite": all_finite(ro.logprobs, ro.response_mask),
        }
        return ro.prompt_ids, ro.prompt_mask

    def _logprob_stage(self, exp: Experience) -> None:
        """Old (policy) and reference log-probs at theta0, padded rows, the fused head."""
        u, rec = self.run_cfg.update, self.plan.record
        kw = {
            "micro_batch_size": u.micro_batch_size,
            "max_tokens": u.max_tokens_per_micro_batch,
            "remove_padding": False,
            "chunk_tokens": u.logits_chunk_tokens,
            "fused": u.fused_lm_head,
        }
        with self._stage("logprobs"):
            exp.old_logprobs, entropy = self._no_grad_logprobs(self.policy, exp, kw, True)
            exp.ref_logprobs, _ = self._no_grad_logprobs(self.ref_policy, exp, kw, False)
        mask = exp.response_mask
        rec["logprobs"] = {
            "old_finite": all_finite(exp.old_logprobs, mask),
            "entropy_finite": all_finite(entropy, mask),
            "ref_finite": all_finite(exp.ref_logprobs, mask),
            "old_mean": float(exp.old_logprobs[mask.bool()].mean()),
            "response_tokens": int(mask.sum()),
        }

    def _no_grad_logprobs(
        self, model: nn.Module, exp: Experience, kw: dict, entropy: bool
    ) -> tuple[Tensor, Tensor | None]:
        out = response_logprobs(model, exp, 1.0, with_entropy=entropy, **kw)
        if hasattr(model, "reshard"):
            model.reshard()  # FSDP2 leaves the root unsharded after a no-grad forward
        return out

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """The gradients the optimizer is about to apply (unscaled under 16-mixed: Lightning's
        scaler unscales before this hook), kept per update mode."""
        if self._capture is None:
            return
        grads = flat_grads(self.policy)
        self.plan.grads[self._capture] = grads
        norm = math.nan if grads is None else float(grads.norm())
        self.plan.record.setdefault("applied_grad_norm", {})[self._capture] = norm
