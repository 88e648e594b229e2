"""Typed configuration of the algorithm: the SFPO update, the objective, the optimizer and the
update pass (``sfpo``, ``loss``, ``optim``, ``update``), and the error every config check raises.

Split from :mod:`sfpo_lab.config` (which re-exports everything here and holds the run, model,
data, rollout and trainer settings); the same rules: one default per setting, ranges checked
in ``__post_init__`` with messages that name the setting, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A setting has a value that is not allowed; the message names the setting."""


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"invalid config: {key}={value!r} (allowed: {allowed})")


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    _check(value in options, key, value, " | ".join(options))


@dataclass
class EntropyControlConfig:
    """Entropy trigger (Alg. 1): z-score of H_s over the last ``window`` iterations."""

    enabled: bool = True
    window: int = 30  # omega
    tau: float = 1.0  # z threshold
    mode: str = "upper"  # "upper": z >= tau (authors' code); "abs": |z| >= tau (paper)
    # where H_s comes from: "update" = token entropy of the iteration's last update pass (the
    # slow step's training forward, mean over micro-batches; authors' code), "rollout" = the
    # no-grad pass at theta0 over the rollout batch
    source: str = "update"

    def __post_init__(self) -> None:
        _check(self.window >= 2, "sfpo.entropy_control.window", self.window, "an integer >= 2")
        _choice("sfpo.entropy_control.source", self.source, ("update", "rollout"))
        _check(self.tau > 0, "sfpo.entropy_control.tau", self.tau, "a float > 0")
        _choice("sfpo.entropy_control.mode", self.mode, ("upper", "abs"))


@dataclass
class SFPOConfig:
    """Slow-fast update: K fast steps, reposition by alpha, one slow step. alpha=0 is GRPO."""

    K: int = 3
    alpha: float = 0.8
    slow_correction: bool = True
    entropy_control: EntropyControlConfig = field(default_factory=EntropyControlConfig)
    decay: str = "zero"  # what alpha does after the trigger: "zero" | "linear"
    decay_steps: int = 0  # iterations of the linear decay
    # inner-loop settings (docs/algorithm.md "Inner-loop settings"); defaults = the authors'
    # optimizer state after Stage I: keep (moments run on) | reset | restore_theta0
    optimizer_state_after_fast: str = "keep"
    # old log-probs of the slow step's ratio: theta0 (rollout-time) | recompute (at theta~)
    slow_old_logprobs: str = "theta0"
    # LR scheduler steps: per_batch (one per rollout batch) | per_step (one per optimizer step)
    lr_schedule: str = "per_batch"

    def __post_init__(self) -> None:
        _check(self.K >= 0, "sfpo.K", self.K, "an integer >= 0")
        _check(0.0 <= self.alpha <= 1.0, "sfpo.alpha", self.alpha, "a float in [0, 1]")
        _choice("sfpo.decay", self.decay, ("zero", "linear"))
        _choice(
            "sfpo.optimizer_state_after_fast",
            self.optimizer_state_after_fast,
            ("keep", "reset", "restore_theta0"),
        )
        _choice("sfpo.slow_old_logprobs", self.slow_old_logprobs, ("theta0", "recompute"))
        _choice("sfpo.lr_schedule", self.lr_schedule, ("per_batch", "per_step"))
        if self.decay == "linear":
            _check(self.decay_steps >= 1, "sfpo.decay_steps", self.decay_steps, ">= 1 with linear")

    def grpo_mu_conflicts(self) -> str:
        """The settings that contradict GRPO-mu (K + 1 plain passes per batch and nothing else:
        alpha 1, slow correction, K >= 1, no decay, optimizer state kept, slow ratio against
        theta0), as ``"sfpo.<key>=<value>, ..."``; empty when there are none."""
        ok = {
            "alpha": self.alpha == 1,
            "slow_correction": self.slow_correction,
            "K": self.K >= 1,
            "decay": self.decay == "zero",  # linear: alpha falls through (0, 1) = a reposition
            "optimizer_state_after_fast": self.optimizer_state_after_fast == "keep",
            "slow_old_logprobs": self.slow_old_logprobs == "theta0",
        }
        return ", ".join(f"sfpo.{k}={getattr(self, k)!r}" for k, good in ok.items() if not good)


@dataclass
class LossConfig:
    """GRPO objective (verl core_algos semantics)."""

    advantage: str = "grpo"  # registry name: grpo | drgrpo | grpo_batch_std
    # registry name; DAPO / Dr. GRPO are presets of the settings below (conf/loss/*.yaml)
    policy_loss: str = "grpo"
    clip_low: float = 0.2
    clip_high: float = 0.2
    clip_c: float | None = None  # dual-clip bound for negative advantages; null = off (authors)
    agg: str = "token-mean"
    entropy_coeff: float = 0.001
    kl_coef: float = 0.0  # > 0 loads a frozen reference model
    kl_kind: str = "low_var_kl"
    # constant divisor of agg=seq-mean-token-sum-norm (Dr. GRPO: the response-length cap);
    # null = the padded width of the micro-batch (verl's default, drifts with lengths)
    loss_scale_factor: float | None = None

    def __post_init__(self) -> None:
        _check(self.clip_low >= 0, "loss.clip_low", self.clip_low, ">= 0")
        _check(self.clip_high >= 0, "loss.clip_high", self.clip_high, ">= 0")
        _check(self.clip_c is None or self.clip_c > 1, "loss.clip_c", self.clip_c, "null or > 1")
        lsf = self.loss_scale_factor
        _check(lsf is None or lsf > 0, "loss.loss_scale_factor", lsf, "null or > 0")
        aggs = (
            "token-mean",
            "seq-mean-token-sum",
            "seq-mean-token-mean",
            "seq-mean-token-sum-norm",
        )
        _choice("loss.agg", self.agg, aggs)
        _check(self.kl_coef >= 0, "loss.kl_coef", self.kl_coef, ">= 0")
        from sfpo_lab.algos import ADVANTAGE_ESTIMATORS, KL_KINDS, POLICY_LOSSES

        _choice("loss.advantage", self.advantage, tuple(ADVANTAGE_ESTIMATORS))
        presets = " (DAPO / Dr. GRPO are presets: loss=dapo | loss=drgrpo)"
        _check(
            self.policy_loss in POLICY_LOSSES,
            "loss.policy_loss",
            self.policy_loss,
            " | ".join(POLICY_LOSSES) + (presets if self.policy_loss in ("dapo", "drgrpo") else ""),
        )
        # "<kind>+": the value of <kind> with k2's gradient (straight-through, verl's "+")
        _choice("loss.kl_kind", self.kl_kind, (*KL_KINDS, *(k + "+" for k in KL_KINDS)))

    def policy_loss_kwargs(self) -> dict[str, Any]:
        """Exactly the keyword arguments the trainer passes to the policy loss (besides the
        global denominators): the clip range, dual clip, aggregation, and the constant
        normaliser of ``seq-mean-token-sum-norm`` when one is set."""
        kw: dict[str, Any] = {
            "clip_low": self.clip_low,
            "clip_high": self.clip_high,
            "clip_c": self.clip_c,
            "agg": self.agg,
        }
        if self.loss_scale_factor is not None:
            kw["loss_scale_factor"] = self.loss_scale_factor
        return kw


@dataclass
class OptimConfig:
    """AdamW (the authors'); moments carry through all SFPO stages. The schedule counts
    rollout batches. ``name=sgd`` (plain SGD, ``betas``/``eps`` unused) makes an update linear
    in the gradient: equivalence tests compare runs through it (Adam's first steps amplify
    float noise in near-zero gradients)."""

    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    scheduler: str = "constant"  # constant | cosine | linear
    warmup_iterations: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    # the optimizer's kernels (same update up to rounding): auto = fused AdamW on a plain CPU
    # process, torch's default elsewhere (training/runtime.py::optimizer_flags) | for_loop |
    # foreach | fused
    impl: str = "auto"

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", self.lr, "> 0")
        _choice("optim.name", self.name, ("adamw", "sgd"))
        _choice("optim.scheduler", self.scheduler, ("constant", "cosine", "linear"))
        _choice("optim.impl", self.impl, ("auto", "for_loop", "foreach", "fused"))
        _check(
            self.warmup_iterations >= 0, "optim.warmup_iterations", self.warmup_iterations, ">= 0"
        )
        _check(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, ">= 0 (0 = off)")


@dataclass
class UpdateConfig:
    """One "fast step" = one full pass over the rollout batch in ``ppo_mini_batches`` optimizer
    steps, each accumulated over micro-batches of ``micro_batch_size`` sequences."""

    ppo_mini_batches: int = 1
    micro_batch_size: int = 16
    max_skipped_steps: int = 5  # consecutive non-finite steps before the run stops
    # micro-batches by token budget (verl use_dynamic_bsz / ppo_max_token_len_per_gpu): rows
    # grouped by length, at most this many tokens each (padded rows x longest row, or the sum
    # of row lengths with remove_padding); None = micro_batch_size rows per micro-batch.
    # Also used by the no-grad log-prob pass at theta0.
    max_tokens_per_micro_batch: int | None = None
    # pack each micro-batch's sequences into one row with per-sequence position ids (verl
    # use_remove_padding): varlen attention with flash_attention_2, a block-diagonal causal
    # mask with sdpa / eager
    remove_padding: bool = False
    # positions whose full-vocabulary float32 logits exist at one time (log-probs + entropy)
    logits_chunk_tokens: int = 256
    # project final hidden states x lm_head inside the chunked log-prob / entropy function
    # (no [tokens, V] logits at all; needs logits = hidden @ lm_head.weight.T, checked)
    fused_lm_head: bool = False
    # skip the separate no-grad old-log-prob pass where it is exact: the first update pass's
    # own forward at theta0 gives the old log-probs and H_s (one mini-batch, no dropout, no
    # engine log-probs, a pass that starts at theta0); refused automatically otherwise
    fuse_old_logprobs: bool = True

    def __post_init__(self) -> None:
        _check(self.ppo_mini_batches >= 1, "update.ppo_mini_batches", self.ppo_mini_batches, ">= 1")
        _check(self.micro_batch_size >= 1, "update.micro_batch_size", self.micro_batch_size, ">= 1")
        budget = self.max_tokens_per_micro_batch
        _check(
            budget is None or budget >= 1,
            "update.max_tokens_per_micro_batch",
            budget,
            "null or >= 1",
        )
        _check(
            self.logits_chunk_tokens >= 1,
            "update.logits_chunk_tokens",
            self.logits_chunk_tokens,
            ">= 1",
        )
        _check(
            self.max_skipped_steps >= 1, "update.max_skipped_steps", self.max_skipped_steps, ">= 1"
        )
