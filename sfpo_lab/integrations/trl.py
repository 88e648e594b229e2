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
TRL's, step for step. The LR scheduler steps only in TRL's pass, once per optimizer step of
it: ``steps_per_generation / gradient_accumulation_steps`` times per rollout batch (once, the
authors' ``per_batch``, when the two are equal); the fast passes run at the LR the batch
starts with. Supported versions and refused settings: :mod:`.trl_checks`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import torch
import transformers
import trl
from transformers import Trainer, TrainerCallback
from trl import GRPOTrainer

from sfpo_lab.algos import SFPO, EntropyTrigger
from sfpo_lab.config.algo import EntropyControlConfig, SFPOConfig
from sfpo_lab.integrations.trl_checks import (
    check_args,
    check_versions,
    refuse_multimodal_batch,
    refuse_sharded_engines,
    refuse_vision,
)

check_versions(
    trl.__version__, transformers.__version__, {"GRPOTrainer": GRPOTrainer, "Trainer": Trainer}
)
log = logging.getLogger(__name__)

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


class SFPOGRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` with SFPO; ``sfpo`` (an :class:`SFPOConfig` or a dict of its
    keys, default the authors' K=3, alpha=0.8, trigger on) is the SFPO argument;
    ``log_kl_theta0=True`` adds a no-grad pass over the batch after each reposition to log
    ``sfpo/kl_theta0`` (it runs anyway with ``sfpo.slow_old_logprobs=recompute``)."""

    def __init__(
        self,
        *args: Any,
        sfpo: SFPOConfig | dict[str, Any] | None = None,
        log_kl_theta0: bool = False,
        **kw: Any,
    ):
        cfg = sfpo_config(sfpo)
        given = kw.get("args", args[2] if len(args) > 2 else None)
        if given is not None:
            check_args(given, cfg)  # before the model is loaded
        refuse_vision(kw.get("processing_class"), kw.get("train_dataset"))
        super().__init__(*args, **kw)
        check_args(self.args, cfg)
        refuse_vision(self.processing_class, self.train_dataset)
        # what the accelerator really uses (the args, or an `accelerate launch` config)
        refuse_sharded_engines(
            deepspeed=bool(getattr(self, "is_deepspeed_enabled", False)),
            fsdp=bool(getattr(self, "is_fsdp_enabled", False)),
        )
        self.sfpo_cfg, self.log_kl_theta0 = cfg, log_kl_theta0
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
        for inputs in self._buffered_inputs:
            refuse_multimodal_batch(inputs)
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
            if self.log_kl_theta0 or c.slow_old_logprobs == "recompute":
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
        ``store``); returns the token-mean entropy over the generation batch of all ranks
        (so every rank feeds the trigger the same H_s)."""
        ent_sum = n_tok = 0.0
        for inputs in self._buffered_inputs:
            logps, ent = self._logps(inputs)
            if store and inputs.get(key) is None:
                inputs[key] = logps
            m = inputs["completion_mask"].float()
            ent_sum, n_tok = ent_sum + float((ent * m).sum()), n_tok + float(m.sum())
        return self._global_ratio(ent_sum, n_tok)

    def _global_ratio(self, num: float, den: float) -> float:
        """sum(num) / sum(den) over the processes (NaN if no token)."""
        both = torch.tensor([num, den], dtype=torch.float64, device=self.accelerator.device)
        num, den = self.accelerator.reduce(both, reduction="sum").tolist()
        return num / den if den else math.nan

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
        return self._global_ratio(num, den)

    def _fast_pass(self) -> dict[str, float]:
        """One fast step: a pass over the generation batch exactly as TRL's inner loop runs
        it (accumulate ``gradient_accumulation_steps`` slices, clip, step, zero), with the
        optimizer-step callbacks. It runs inside TRL's first micro-step, which transformers
        wraps in ``no_sync`` when ``gradient_accumulation_steps > 1``: the all-reduce is set
        here per slice (:func:`_grad_sync`), whatever that outer window says."""
        model, ga = self.model_wrapped, self.args.gradient_accumulation_steps
        state, cb = self.accelerator.gradient_state, self.callback_handler
        was_sync, norms = state.sync_gradients, []
        try:
            for j, inputs in enumerate(self._buffered_inputs):
                sync = (j + 1) % ga == 0
                state._set_sync_gradients(sync)
                with _grad_sync(model, sync):
                    with self.compute_loss_context_manager():
                        loss = self.compute_loss(model, inputs)
                    self.accelerator.backward(loss)
                if sync:
                    if self.args.max_grad_norm > 0:
                        norms.append(float(self._clip_grad_norm(model)))
                    self.control = cb.on_pre_optimizer_step(self.args, self.state, self.control)
                    self.optimizer.step()
                    self.control = cb.on_optimizer_step(self.args, self.state, self.control)
                    model.zero_grad()
        finally:
            state._set_sync_gradients(was_sync)
        return {"grad_norm": sum(norms) / len(norms)} if norms else {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        ec = self.sfpo_cfg.entropy_control
        if self._in_iteration and self.model.training and ec.enabled and ec.source == "update":
            self._slow_entropy.append(self._trl_entropy())
        return loss

    def _trl_entropy(self) -> float:
        """TRL's ``entropy`` metric of the micro-step just run (H_s of ``source=update``);
        raises if TRL stopped logging it there (the trigger would never fire)."""
        values = self._metrics["train"].get("entropy")
        value = values[-1] if values else None
        if value is None:
            raise RuntimeError(
                f"SFPOGRPOTrainer: TRL {trl.__version__} logged no per-step "
                "_metrics['train']['entropy'] in compute_loss, which "
                "sfpo.entropy_control.source=update reads; use source=rollout or disable it"
            )
        return float(value)

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
            # the first SFPO iteration (0-based) and trainer step (global_step, 1-based) with
            # alpha dropped; NaN until the trigger fires
            "stop_step": obs["stop_step"],  # the trigger step (docs/algorithm.md)
            "stop_trainer_step": self._stop_trainer_step(engine),
            "restored_theta0": end["restored_theta0"],
            "fast_steps": end["fast_steps"],
            **fast,
        }
        if "kl_theta0" in self._sfpo_stats:
            logged["kl_theta0"] = self._sfpo_stats["kl_theta0"]
        for k, v in logged.items():
            self._metrics["train"][f"sfpo/{k}"].append(float(v))

    def _stop_trainer_step(self, engine: SFPO) -> float:
        """Iteration ``engine.s - 1`` just ended at ``global_step``; iteration ``stop_step``
        starts ``stop_step - engine.s`` iterations of ``spg / ga`` optimizer steps later."""
        if engine.stop_step is None:
            return math.nan
        per = self.args.steps_per_generation // self.args.gradient_accumulation_steps
        return float(self.state.global_step + (engine.stop_step - engine.s) * per + 1)

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
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.exists(path):
            log.warning(
                "SFPOGRPOTrainer: %s has no %s (a plain GRPOTrainer checkpoint?): SFPO starts "
                "at iteration 0 with an empty entropy-trigger window",
                checkpoint,
                STATE_FILE,
            )
            return
        with open(path) as f:
            saved = json.load(f)
        if saved["config"] != json.loads(json.dumps(asdict(self.sfpo_cfg))):
            raise ValueError(
                f"SFPOGRPOTrainer: checkpoint {checkpoint} was trained with sfpo="
                f"{saved['config']}, this run has sfpo={asdict(self.sfpo_cfg)}"
            )
        self.sfpo, self._sfpo_pending = None, saved["engine"]


@contextlib.contextmanager
def _grad_sync(model: torch.nn.Module, sync: bool) -> Iterator[None]:
    """DDP all-reduces a backward iff ``require_backward_grad_sync`` (what ``no_sync`` clears)
    is set at its forward: set it to ``sync`` for one micro-step, then restore it."""
    if not hasattr(model, "require_backward_grad_sync"):  # one process: nothing to reduce
        yield
        return
    old, model.require_backward_grad_sync = model.require_backward_grad_sync, sync
    try:
        yield
    finally:
        model.require_backward_grad_sync = old


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
