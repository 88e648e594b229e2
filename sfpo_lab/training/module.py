"""The LightningModule: one RL iteration (one rollout batch s) per ``training_step``.

Manual optimization. Lightning's ``global_step`` counts optimizer steps (K+1 per batch for
SFPO, 1 for GRPO), so iteration counters, schedules and logging here count rollout batches.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from torch import Tensor

from sfpo_lab.algos import SFPO, EntropyTrigger
from sfpo_lab.config import RunConfig
from sfpo_lab.model.attention import configure_sdpa_backends
from sfpo_lab.model.build import build_causal_lm
from sfpo_lab.model.fsdp_init import empty_generation_copy, sharded_policy
from sfpo_lab.model.parallel import compute_dtype
from sfpo_lab.rollout.base import RolloutEngine, derive_seed, stop_token_ids
from sfpo_lab.rollout.hf import HFEngine
from sfpo_lab.rollout.sync import push_full_weights
from sfpo_lab.run.perf import StageMemory

# re-exported: tests and integrations import these from here
from sfpo_lab.training.iteration import (  # noqa: F401
    lr_factor,
    phase_metrics,
    scheduler_steps_per_batch,
    select_entropy,
    sfpo_iteration,
)
from sfpo_lab.training.reference import (
    base_identity,
    build_reference,
    check_same_base,
    drop_reference_keys,
)
from sfpo_lab.training.runtime import (
    nonfinite_params,
    optimizer_flags,
    peak_memory_gb,
    rng_state,
    set_rng_state,
)
from sfpo_lab.training.stages import ExperienceMaker, UpdatePass, recompute_old_logprobs

BAR_KEYS = ("train/reward", "train/acc", "sfpo/alpha")  # shown as reward / acc / alpha


class SFPOModule(L.LightningModule):
    """SFPO (Alg. 1) / GRPO fine-tuning of a causal LM.

    Args:
        run: the validated run config.
        model_path: local dir or hub id of the base policy.
        tokenizer: its tokenizer (prompts are rendered and encoded here).
    """

    def __init__(self, run: RunConfig, model_path: str, tokenizer: Any) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.run_cfg = run
        self.model_path = model_path
        self.tokenizer = tokenizer
        self.policy: torch.nn.Module | None = None
        self._frozen: dict[str, torch.nn.Module] = {}  # "ref": see ref_policy
        self._base: dict[str, str] | None = None  # base_identity(model_path), once
        self.engine: RolloutEngine | None = None  # HFEngine or VLLMEngine
        self.sfpo: SFPO | None = None
        self._pending: dict[str, Any] = {}
        # counters in rollout batches; saved in checkpoints (Fig. 4 needs rollouts + wall-clock)
        self.iteration = 0
        self.rollouts = 0
        self.wall_clock_s = 0.0
        self.skipped_steps = 0
        self.consecutive_skips = 0  # optimizer steps in a row skipped as non-finite
        self.restored_iterations = 0  # SFPO iterations rolled back to theta0
        self.consecutive_restores = 0
        self.last_val: dict[str, float] = {}
        self.bar_metrics: dict[str, float] = {}  # the progress bar's reward / acc / alpha
        self._engine_synced_at: int | None = None  # iteration whose weights the engine holds
        self._engine_sync_s = 0.0  # how long pushing those weights took

    # ------------------------------------------------------------------ setup
    @property
    def ref_policy(self) -> torch.nn.Module | None:
        """The frozen reference pi_ref (KL term), in the compute dtype. Not a child module:
        it is in no ``state_dict`` (checkpoints rebuild it from the base, issue 24 item 9), and
        Lightning neither moves it nor switches it to train mode."""
        return self._frozen.get("ref")

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        run = self.run_cfg
        # CUDA only: the SDPA kernels allowed (default: cuDNN attention off, pytorch#196678)
        configure_sdpa_backends(run.model.sdpa_backends, self.trainer.strategy.root_device)
        sharded = run.trainer.strategy == "fsdp"
        if sharded:  # built on meta, sharded, then filled: 1/world of the model per rank
            root = self.trainer.strategy.root_device
            self.policy = sharded_policy(run, self.model_path, self.device_mesh, root)
        else:
            self.policy = build_causal_lm(
                self.model_path,
                dtype=run.model.dtype,
                attn_implementation=run.model.attn_implementation,
            )
            if run.model.activation_checkpointing:
                self.policy.gradient_checkpointing_enable()
        self.policy.train()
        # every engine stops at the tokenizer's EOS and the generation config's (vLLM's default)
        self.stop_ids = stop_token_ids(self.policy, self.tokenizer)
        if run.loss.kl_coef > 0:
            self._frozen["ref"] = build_reference(run, self.policy, self.device_mesh)
        self.engine = self._build_engine(sharded)

    def _build_engine(self, sharded: bool) -> RolloutEngine:
        """Under FSDP2 the HF engine generates with a full copy refreshed once per iteration
        (never a per-token all-gather); otherwise with the policy itself. vLLM always holds its
        own copy, started from the same weights, refreshed the same way."""
        run, tok = self.run_cfg, self.tokenizer
        if run.rollout.engine == "vllm":
            engine = self._vllm_engine()
        elif not sharded:
            return HFEngine(self.policy, tok.pad_token_id, self.stop_ids)
        else:  # allocated from the config, no weights: it pulls the policy's before generating
            root = self.trainer.strategy.root_device
            copy = empty_generation_copy(
                self.policy.config, compute_dtype(run), root, run.model.attn_implementation
            )
            engine = HFEngine(copy, tok.pad_token_id, self.stop_ids, owns_model=True, device=root)
        # the engine pushes by itself whenever it holds no weights (vLLM level-2 sleep, the HF
        # copy before its first generation) or older ones than the current iteration's (all
        # ranks generate together: the gather inside is a collective every rank joins)
        if engine.owns_model:
            from sfpo_lab.rollout.sync import module_weights

            bucket = run.rollout.sync_bucket_mb * 2**20
            source = module_weights(self.policy, bucket, dtype=engine.dtype)
            engine.set_weight_source(source, version=lambda: self.iteration)
        return engine

    def _vllm_engine(self) -> Any:
        """One colocated vLLM engine per rank (``rollout.vllm``), on the policy's base weights."""
        from sfpo_lab.model.parallel import compute_dtype
        from sfpo_lab.rollout.vllm import VLLMEngine

        run, v, tok = self.run_cfg, self.run_cfg.rollout.vllm, self.tokenizer
        longest = max(run.rollout.max_new_tokens, run.val.max_new_tokens or 0)
        return VLLMEngine(
            self.model_path,
            tok.pad_token_id,
            self.stop_ids,
            max_model_len=v.max_model_len or run.data.max_prompt_len + longest,
            dtype=v.dtype or str(compute_dtype(run)).removeprefix("torch."),
            # one start seed per model replica: the ranks of a TP group must sample alike
            seed=derive_seed(run.seed, self.global_rank // v.tensor_parallel_size),
            device=self.trainer.strategy.root_device,
            tensor_parallel_size=v.tensor_parallel_size,
            gpu_memory_utilization=v.gpu_memory_utilization,
            enable_sleep_mode=v.enable_sleep_mode,
            sleep_level=v.sleep_level,
            cpu_kv_cache_gib=v.cpu_kv_cache_gib,
            enforce_eager=v.enforce_eager,
            world_size=self.trainer.world_size,
            rank=self.global_rank,
            local_rank=self.local_rank,
        )

    def configure_optimizers(self) -> Any:
        o = self.run_cfg.optim
        kw = {"lr": o.lr, "weight_decay": o.weight_decay, **self._optimizer_flags()}
        if o.name == "sgd":
            opt = torch.optim.SGD(self.policy.parameters(), **kw)
        else:
            opt = torch.optim.AdamW(self.policy.parameters(), betas=tuple(o.betas), eps=o.eps, **kw)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_factor)
        return [opt], [sched]

    def _optimizer_flags(self) -> dict[str, Any]:
        o, params = self.run_cfg.optim, list(self.policy.parameters())
        return optimizer_flags(o.impl, o.name, params, self.run_cfg.trainer.precision)

    def _lr_factor(self, step: int) -> float:
        run = self.run_cfg
        return lr_factor(step, run.optim, run.iterations, scheduler_steps_per_batch(run))

    def on_train_start(self) -> None:
        self.ensure_ready()

    def ensure_ready(self) -> None:
        """Build the SFPO engine and the stage helpers once the optimizer exists (idempotent;
        callbacks' ``on_train_start`` runs before the module's)."""
        if self.sfpo is not None:
            return
        run = self.run_cfg
        if self.ref_policy is not None and run.trainer.strategy != "fsdp":
            self.ref_policy.to(self.device)  # where Lightning put the policy
        ec = run.sfpo.entropy_control
        trigger = EntropyTrigger(ec.window, ec.tau, ec.mode) if ec.enabled else None
        opt = self.optimizers().optimizer
        for group in opt.param_groups:  # a restored optimizer state carries its run's flags
            group.update(self._optimizer_flags())
        s = run.sfpo
        self.sfpo = SFPO(
            opt,
            K=s.K,
            alpha=s.alpha,
            slow_correction=s.slow_correction,
            trigger=trigger,
            decay=s.decay,
            decay_steps=s.decay_steps,
            optimizer_state=s.optimizer_state_after_fast,  # applied in reposition()
        )
        if "sfpo" in self._pending:
            self.sfpo.load_state_dict(self._pending.pop("sfpo"))
        if "rng" in self._pending:
            set_rng_state(self._pending.pop("rng"))
        self.maker = ExperienceMaker(self)
        self.updater = UpdatePass(self)
        # perf/mem/<stage>: the trainer's memory, without a sleeping vLLM engine's pool
        self.stage_mem = StageMemory(
            self.device, engine_bytes=getattr(self.engine, "pool_bytes", None)
        )

    # ------------------------------------------------------------------ one RL iteration
    def training_step(self, batch: dict[str, list], batch_idx: int) -> None:
        t_start = time.perf_counter()
        self.stage_mem.clear()
        exp, metrics = self.maker(batch)  # rollouts, rewards, advantages, log-probs at theta0
        t_update = time.perf_counter()
        s = self.run_cfg.sfpo
        recompute = s.slow_old_logprobs == "recompute"
        fast, slow, engine, passes = sfpo_iteration(
            self.sfpo,
            lambda: self.updater(exp),
            (lambda: recompute_old_logprobs(self, exp)) if recompute else None,
            mem=self.stage_mem,
        )
        metrics.update(self._stage_metrics(fast, slow, engine))
        if "train/entropy" not in metrics:  # fused old log-probs: the first pass's, at theta0
            metrics["train/entropy"] = passes[0]["entropy_theta0"]
        metrics["perf/update_s"] = time.perf_counter() - t_update
        # entropy trigger: H_s of iteration s decides whether s + 1 still runs SFPO (Alg. 1)
        h_s = select_entropy(self.run_cfg.sfpo.entropy_control.source, metrics, passes)
        metrics["train/entropy_update"] = passes[-1].get("entropy") if passes else None
        metrics.update(self._sfpo_metrics(self.sfpo.observe_entropy(h_s)))
        if s.lr_schedule == "per_batch":  # per_step: UpdatePass stepped it after each update
            self.lr_schedulers().step()
        self._finish_iteration(metrics, t_start, len(exp))

    def _stage_metrics(self, fast: dict, slow: dict, engine: dict) -> dict[str, float]:
        passes = [m for m in (fast, slow) if m]
        out: dict[str, float] = {}
        for key in ("pg_loss", "pg_clipfrac", "pg_clipfrac_lower", "ppo_kl", "kl", "grad_norm"):
            vals = [p[key] for p in passes if key in p]
            if vals:
                out[f"train/{key}"] = sum(vals) / len(vals)
        skipped = int(sum(p.get("skipped_steps", 0) for p in passes))
        self.skipped_steps += skipped
        out["train/skipped_steps"] = float(self.skipped_steps)
        self._count_restore(bool(engine.get("restored_theta0", 0.0)))
        out["train/restored_iterations"] = float(self.restored_iterations)
        for key in ("fast_steps", "reposition_s", "snapshot_bytes", "restored_theta0"):
            if key in engine:
                out[f"sfpo/{key}"] = float(engine[key])
        out.update(phase_metrics(fast, slow, engine))
        return out

    def _count_restore(self, restored: bool) -> None:
        """Count iterations rolled back to theta0; stop after ``update.max_skipped_steps`` in
        a row (the optimizer state itself is then likely poisoned)."""
        self.restored_iterations += restored
        self.consecutive_restores = self.consecutive_restores + 1 if restored else 0
        limit = self.run_cfg.update.max_skipped_steps
        if self.consecutive_restores >= limit:
            raise RuntimeError(
                f"{limit} consecutive SFPO iterations left non-finite weights and were restored "
                f"to theta0 (update.max_skipped_steps={limit}); stopping at iteration "
                f"{self.iteration + 1}. Lower optim.lr or check the data; the last checkpoint "
                "holds finite weights"
            )

    def _sfpo_metrics(self, obs: dict[str, Any]) -> dict[str, float]:
        stop = obs.get("stop_step")
        return {
            "sfpo/alpha": float(obs["alpha_used"]),
            "sfpo/alpha_next": float(obs["alpha_next"]),
            "sfpo/z": float(obs["z"]),
            "sfpo/stop_step": float("nan") if stop is None else float(stop),
        }

    def _finish_iteration(self, metrics: dict[str, float], t_start: float, n_local: int) -> None:
        step_s = time.perf_counter() - t_start
        self.iteration += 1
        n_local_t = torch.tensor(n_local, device=self.device)  # NCCL reduces CUDA tensors only
        n_global = int(self.trainer.strategy.reduce(n_local_t, reduce_op="sum"))
        self.rollouts += n_global
        self.wall_clock_s += step_s
        metrics.update(
            {
                "perf/step_s": step_s,
                "perf/peak_mem_gb": peak_memory_gb(self.device),
                **self.stage_mem.metrics(),  # perf/mem/<stage> (GiB)
                "train/rollouts": float(self.rollouts),
                "train/wall_clock_s": self.wall_clock_s,
                "train/lr": self.optimizers().optimizer.param_groups[0]["lr"],
                "train/iteration": float(self.iteration),
            }
        )
        if "perf/tokens" in metrics:
            metrics["perf/tokens_per_s"] = metrics.pop("perf/tokens") / step_s
        self.log_iteration(metrics)
        if self.iteration >= self.run_cfg.iterations:
            self.trainer.should_stop = True
        # the progress bar reads these (run.progress); not ``self.log``: Lightning's result
        # collection costs ~5 ms a call on CPU, a few % of a toy iteration
        self.bar_metrics = {k.split("/")[-1]: metrics[k] for k in BAR_KEYS}

    def log_iteration(self, metrics: dict[str, float]) -> None:
        """Send metrics to every logger at x = rollout batches done (not optimizer steps)."""
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        for logger in self.loggers:
            logger.log_metrics(clean, step=self.iteration)

    # ------------------------------------------------------------------ weights for the engine
    def sync_engine(self) -> float:
        """Push theta to the generation engine if it holds its own copy, once per weight version.

        Returns the seconds the push of the current weights took, also when validation pushed
        them first (``perf/weight_sync_s``); 0 for an engine that generates with the policy.
        """
        engine = self.engine
        if engine is None or not engine.owns_model:
            return 0.0
        # theta only changes in training_step; a vLLM engine in level-2 sleep dropped its copy
        if self._engine_synced_at == self.iteration and not getattr(engine, "needs_weights", 0):
            return self._engine_sync_s
        self._engine_synced_at = self.iteration
        bucket = self.run_cfg.rollout.sync_bucket_mb * 2**20
        dtype = getattr(engine, "dtype", None)
        self._engine_sync_s = push_full_weights(self.policy, engine, bucket, dtype=dtype)
        return self._engine_sync_s

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._refuse_nonfinite_weights()
        checkpoint["sfpo_engine"] = self.sfpo.state_dict() if self.sfpo else None
        checkpoint["sfpo_counters"] = {
            "iteration": self.iteration,
            "rollouts": self.rollouts,
            "wall_clock_s": self.wall_clock_s,
            "skipped_steps": self.skipped_steps,
            "consecutive_skips": self.consecutive_skips,
            "restored_iterations": self.restored_iterations,
            "consecutive_restores": self.consecutive_restores,
        }
        checkpoint["sfpo_rng"] = rng_state()
        # the whole config that made this state, kept with the weights (the run dir's
        # .hydra/config.yaml is the run's first launch) and checked again on resume
        checkpoint["sfpo_config"] = {"model": self.run_cfg.model.name, "run": asdict(self.run_cfg)}
        # no reference weights (rebuilt from the base on resume): the base they come from
        checkpoint["sfpo_base"] = self.base_identity()

    def base_identity(self) -> dict[str, str]:
        """The base model's identity (path + content digest), computed once."""
        if self._base is None:
            self._base = base_identity(self.model_path)
        return self._base

    def _refuse_nonfinite_weights(self) -> None:
        """No checkpoint ever holds a NaN/inf weight: decided on all ranks together."""
        bad = nonfinite_params(self.policy)
        flag = torch.tensor(float(len(bad)), device=self.device)
        if float(self.trainer.strategy.reduce(flag, reduce_op="sum")) > 0:
            raise RuntimeError(
                f"refusing to save a checkpoint at iteration {self.iteration}: non-finite "
                f"weights in {bad[:3] or 'another rank'}{' ...' if len(bad) > 3 else ''}; "
                "the previous checkpoints are kept unchanged"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("sfpo_config", {}).get("model")
        if saved is not None and saved != self.run_cfg.model.name:
            raise ValueError(
                f"checkpoint was trained with model.name={saved!r}, "
                f"this run has model.name={self.run_cfg.model.name!r}"
            )
        check_same_base(checkpoint.get("sfpo_base"), self.base_identity())
        drop_reference_keys(checkpoint)  # a checkpoint from before issue 24 item 9
        for k, v in checkpoint.get("sfpo_counters", {}).items():
            setattr(self, k, v)
        if checkpoint.get("sfpo_engine") is not None:
            self._pending["sfpo"] = checkpoint["sfpo_engine"]
        if "sfpo_rng" in checkpoint:
            self._pending["rng"] = checkpoint["sfpo_rng"]

    def forward(self, input_ids: Tensor, **kwargs: Any) -> Any:
        return self.policy(input_ids=input_ids, **kwargs)
