"""SFPO (paper Alg. 1) and its entropy trigger on TRL's ``GRPOTrainer``, by one changed line::

    from sfpo_lab.integrations.trl import SFPOGRPOTrainer as GRPOTrainer

Everything else (data, generation, rewards, loss, logging, checkpoints) stays TRL's own.

Mapping (TRL >= 1.16). A TRL *generation batch* is ``per_device_train_batch_size x
steps_per_generation`` completions, generated once and split into ``steps_per_generation``
slices; one pass over it (``steps_per_generation`` micro-steps, one optimizer step every
``gradient_accumulation_steps``) is exactly one of TRL's ``num_iterations`` (mu) passes and
exactly one SFPO *fast step* (Eq. 4; ``ppo_mini_batches = steps_per_generation /
gradient_accumulation_steps`` optimizer steps). SFPO replaces mu: TRL keeps
``num_iterations=1`` and its single pass is Stage III (the slow step, or the plain GRPO step
when alpha = 0); right after TRL generates, this class snapshots theta0, computes the old
log-probs at theta0 once, runs the K fast passes with TRL's own ``compute_loss``, gradient
clipping and optimizer, and repositions (Eq. 7). After TRL's pass the iteration ends and
the trigger sees H_s (``on_step_end``). With alpha = 0 nothing of this runs: the trainer is
TRL's, step for step. The LR scheduler steps only in TRL's pass (one step per rollout batch,
the authors' ``per_batch``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import asdict
from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from sfpo_lab.algos import SFPO, EntropyTrigger
from sfpo_lab.config_algo import EntropyControlConfig, SFPOConfig

__all__ = ["SFPOGRPOTrainer", "sfpo_config"]

STATE_FILE = "sfpo_state.json"


def sfpo_config(sfpo: SFPOConfig | dict[str, Any] | None) -> SFPOConfig:
    """An :class:`SFPOConfig` from a config, a plain dict (``sfpo.*`` keys) or ``None``
    (the authors' defaults); values are checked by the config itself (``ConfigError``)."""
    if sfpo is None:
        return SFPOConfig()
    if isinstance(sfpo, SFPOConfig):
        return sfpo
    kw = dict(sfpo)
    ec = kw.pop("entropy_control", None)
    if isinstance(ec, dict):
        ec = EntropyControlConfig(**ec)
    return SFPOConfig(**kw, **({} if ec is None else {"entropy_control": ec}))


def _check_args(args: Any, cfg: SFPOConfig) -> None:
    """Refuse TRL settings under which the SFPO mapping would be silently wrong."""
    if args.num_iterations != 1:
        raise ValueError(
            f"SFPOGRPOTrainer: num_iterations={args.num_iterations}; SFPO's K (sfpo.K) replaces "
            "TRL's mu: set num_iterations=1 (the slow / plain GRPO pass)"
        )
    if args.steps_per_generation % args.gradient_accumulation_steps:
        raise ValueError(
            f"SFPOGRPOTrainer: steps_per_generation={args.steps_per_generation} must be a "
            f"multiple of gradient_accumulation_steps={args.gradient_accumulation_steps} (a fast "
            "step is a whole number of optimizer steps)"
        )
    if cfg.alpha > 0 and not cfg.slow_correction:
        raise ValueError(
            "SFPOGRPOTrainer: sfpo.slow_correction=False is not supported (TRL's own pass is "
            "the slow step); allowed: True"
        )
    if cfg.lr_schedule != "per_batch":
        raise ValueError(
            f"SFPOGRPOTrainer: sfpo.lr_schedule={cfg.lr_schedule!r} is not supported; allowed: "
            "per_batch (TRL steps its scheduler once per optimizer step of its own pass)"
        )
    if args.use_vllm:
        raise ValueError(
            "SFPOGRPOTrainer: use_vllm=True is not supported yet (its importance-sampling "
            "correction is tied to TRL's old log-probs); allowed: False"
        )
    _refuse_sharded_engines(
        deepspeed=bool(getattr(args, "deepspeed", None)) or _env_flag("ACCELERATE_USE_DEEPSPEED"),
        fsdp=bool(getattr(args, "fsdp", None) or getattr(args, "fsdp_plugin_args", None))
        or _env_flag("ACCELERATE_USE_FSDP"),
    )


def _env_flag(name: str) -> bool:
    """An ``accelerate launch`` setting passed to the process (``ACCELERATE_USE_*=true``)."""
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def _refuse_sharded_engines(deepspeed: bool, fsdp: bool) -> None:
    """SFPO's reposition (Eq. 7) writes the parameters in place: under DeepSpeed the optimizer's
    fp32 master copy overwrites it at the next step, and ZeRO-3 / FSDP parameters are empty
    outside a gather, so it would be lost without an error. Refused until supported."""
    if deepspeed or fsdp:
        engine = "DeepSpeed" if deepspeed else "accelerate FSDP"
        raise ValueError(
            f"SFPOGRPOTrainer: {engine} is not supported yet (SFPO's reposition writes the "
            "parameters in place, which the sharded/master-weight copies would silently undo); "
            "train on one device or with DDP (no deepspeed=/fsdp= in the args or accelerate config)"
        )


class SFPOGRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` with SFPO; ``sfpo`` (an :class:`SFPOConfig` or a dict of its
    keys, default the authors' K=3, alpha=0.8, trigger on) is the only new argument."""

    def __init__(self, *args: Any, sfpo: SFPOConfig | dict[str, Any] | None = None, **kw: Any):
        cfg = sfpo_config(sfpo)
        given = kw.get("args", args[2] if len(args) > 2 else None)
        if given is not None:
            _check_args(given, cfg)  # before the model is loaded
        super().__init__(*args, **kw)
        _check_args(self.args, cfg)
        # what the accelerator really uses (the args, or an `accelerate launch` config)
        _refuse_sharded_engines(
            deepspeed=bool(getattr(self, "is_deepspeed_enabled", False)),
            fsdp=bool(getattr(self, "is_fsdp_enabled", False)),
        )
        self.sfpo_cfg = cfg
        self.sfpo: SFPO | None = None
        self._sfpo_pending: dict[str, Any] | None = None
        self._sfpo_stats: dict[str, float] = {}
        self._slow_entropy: list[float] = []
        self._in_iteration = False
        self.add_callback(_EndIteration(self))

    # ------------------------------------------------------------------ engine
    def _engine(self) -> SFPO:
        if self.sfpo is None:
            c, ec = self.sfpo_cfg, self.sfpo_cfg.entropy_control
            trigger = EntropyTrigger(ec.window, ec.tau, ec.mode) if ec.enabled else None
            opt = getattr(self.optimizer, "optimizer", self.optimizer)  # under accelerate
            self.sfpo = SFPO(
                opt,
                K=c.K,
                alpha=c.alpha,
                trigger=trigger,
                decay=c.decay,
                decay_steps=c.decay_steps,
                params=[p for p in self.model.parameters() if p.requires_grad],
                optimizer_state=c.optimizer_state_after_fast,
            )
            if self._sfpo_pending is not None:
                self.sfpo.load_state_dict(self._sfpo_pending)
                self._sfpo_pending = None
        return self.sfpo

    def _prepare_inputs(self, generation_batch: dict[str, Any]) -> dict[str, Any]:
        spg = self.args.steps_per_generation
        fresh = self.model.training and (self._step % spg == 0 or self._buffered_inputs is None)
        inputs = super()._prepare_inputs(generation_batch)
        if not fresh:
            return inputs
        if self._step % spg:
            raise RuntimeError(
                f"SFPOGRPOTrainer: regenerating in the middle of a generation batch (step "
                f"{self._step}); resume only from checkpoints saved at iteration boundaries"
            )
        self._start_iteration()
        return self._buffered_inputs[0]

    def _start_iteration(self) -> None:
        """begin -> old log-probs at theta0 -> K fast passes -> reposition (Stages I, II)."""
        engine, c = self._engine(), self.sfpo_cfg
        snap = engine.begin()
        self._in_iteration, self._slow_entropy = True, []
        stats: dict[str, float] = {}
        if c.entropy_control.source == "rollout" or snap:
            stats["rollout_entropy"] = self._old_logprobs(store=snap, key="old_per_token_logps")
        if snap:
            before = {k: len(v) for k, v in self._metrics["train"].items()}
            fast = engine.fast(update=self._fast_pass)
            stats.update({f"fast_{k}": v for k, v in fast.items() if k != "updates"})
            stats.update(_phase_metrics(self._metrics["train"], before, "fast_"))
            engine.reposition()
            stats["kl_theta0"] = self._reposition_kl(c.slow_old_logprobs == "recompute")
        self._sfpo_stats = stats

    @torch.no_grad()
    def _logps(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        width = inputs["completion_ids"].size(1)
        logps, ent, _ = self._get_per_token_logps_and_entropies(
            self.model, ids, mask, width, compute_entropy=True
        )
        return logps, ent

    def _old_logprobs(self, store: bool, key: str) -> float:
        """Log-probs of every slice at the current weights (stored under ``key`` if
        ``store``); returns the token-mean entropy over the generation batch."""
        ent_sum = n_tok = 0.0
        for inputs in self._buffered_inputs:
            logps, ent = self._logps(inputs)
            if store and inputs.get(key) is None:
                inputs[key] = logps
            m = inputs["completion_mask"].float()
            ent_sum, n_tok = ent_sum + float((ent * m).sum()), n_tok + float(m.sum())
        return ent_sum / n_tok if n_tok else math.nan

    def _reposition_kl(self, recompute: bool) -> float:
        """k1 KL(pi_theta0 || pi_theta~) over the batch; with ``recompute`` the slow step's
        old log-probs become those at theta~ (``sfpo.slow_old_logprobs=recompute``)."""
        num = den = 0.0
        for inputs in self._buffered_inputs:
            new, _ = self._logps(inputs)
            m = inputs["completion_mask"].float()
            num += float(((inputs["old_per_token_logps"] - new) * m).sum())
            den += float(m.sum())
            if recompute:
                inputs["old_per_token_logps"] = new
        return num / den if den else math.nan

    def _fast_pass(self) -> dict[str, float]:
        """One fast step: a pass over the generation batch exactly as TRL's inner loop runs
        it (accumulate ``gradient_accumulation_steps`` slices, clip, step, zero)."""
        model, ga = self.model_wrapped, self.args.gradient_accumulation_steps
        state = self.accelerator.gradient_state
        was_sync, norms = state.sync_gradients, []
        try:
            for j, inputs in enumerate(self._buffered_inputs):
                sync = (j + 1) % ga == 0
                state._set_sync_gradients(sync)
                ctx = contextlib.nullcontext() if sync else self.accelerator.no_sync(model)
                with ctx:
                    with self.compute_loss_context_manager():
                        loss = self.compute_loss(model, inputs)
                    self.accelerator.backward(loss)
                if sync:
                    if self.args.max_grad_norm > 0:
                        norms.append(float(self._clip_grad_norm(model)))
                    self.optimizer.step()
                    model.zero_grad()
        finally:
            state._set_sync_gradients(was_sync)
        return {"grad_norm": sum(norms) / len(norms)} if norms else {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self._in_iteration and self.model.training and self._metrics["train"]["entropy"]:
            self._slow_entropy.append(self._metrics["train"]["entropy"][-1])
        return loss

    def end_iteration(self) -> None:
        """Stage III is done (TRL's pass): end the iteration, feed H_s to the trigger."""
        engine, c = self._engine(), self.sfpo_cfg
        fast = {k: v for k, v in self._sfpo_stats.items() if k.startswith("fast_")}
        end = engine.end()
        self._in_iteration = False
        if c.entropy_control.source == "rollout":
            h_s = self._sfpo_stats.get("rollout_entropy", math.nan)
        else:  # authors: the last pass (the slow / GRPO pass), mean over its micro-batches
            ent = self._slow_entropy[-self.args.steps_per_generation :]
            h_s = sum(ent) / len(ent) if ent else math.nan
        obs = engine.observe_entropy(h_s)
        logged = {
            "alpha": obs["alpha_used"],
            "alpha_next": obs["alpha_next"],
            "z": obs["z"],
            "stop_step": obs["stop_step"],
            "restored_theta0": end["restored_theta0"],
            "fast_steps": end["fast_steps"],
            **fast,
        }
        if "kl_theta0" in self._sfpo_stats:
            logged["kl_theta0"] = self._sfpo_stats["kl_theta0"]
        for k, v in logged.items():
            self._metrics["train"][f"sfpo/{k}"].append(float(v))

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        if self._in_iteration:
            raise RuntimeError(
                "SFPOGRPOTrainer: a checkpoint in the middle of an SFPO iteration cannot be "
                "resumed; make save_steps a multiple of steps_per_generation / "
                "gradient_accumulation_steps"
            )
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = f"checkpoint-{self.state.global_step}"
            path = os.path.join(self._get_output_dir(trial=trial), folder, STATE_FILE)
            state = None if self.sfpo is None else self.sfpo.state_dict()
            with open(path, "w") as f:
                json.dump({"engine": state, "config": asdict(self.sfpo_cfg)}, f)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        path = None if checkpoint is None else os.path.join(checkpoint, STATE_FILE)
        if path is None or not os.path.exists(path):
            return
        with open(path) as f:
            saved = json.load(f)
        if saved["config"] != json.loads(json.dumps(asdict(self.sfpo_cfg))):
            raise ValueError(
                f"SFPOGRPOTrainer: checkpoint {checkpoint} was trained with sfpo="
                f"{saved['config']}, this run has sfpo={asdict(self.sfpo_cfg)}"
            )
        self.sfpo, self._sfpo_pending = None, saved["engine"]


class _EndIteration(TrainerCallback):
    """Ends the SFPO iteration after the last optimizer step of TRL's pass."""

    def __init__(self, trainer: SFPOGRPOTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        t = self.trainer
        if t._in_iteration and t._step % args.steps_per_generation == 0:
            t.end_iteration()


def _phase_metrics(metrics: dict[str, list], before: dict[str, int], prefix: str) -> dict:
    """Move what TRL's ``compute_loss`` logged since ``before`` out of its lists (so its own
    keys keep the slow pass only) into means under ``prefix``."""
    out = {}
    for key, values in metrics.items():
        new = values[before.get(key, 0) :]
        if new:
            out[prefix + key] = sum(new) / len(new)
            del values[before.get(key, 0) :]
    return out
