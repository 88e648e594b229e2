"""What ``train.py`` does after composing the config: checks, build, fit, summary.

Everything that can be checked without loading a model (data files, model names, output
dirs, checkpoint paths) is checked in :func:`preflight`, before anything heavy starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from sfpo_lab.checkpointing import IterationCheckpoint
from sfpo_lab.checkpointing.safety import trusted
from sfpo_lab.config import ConfigError, RunConfig
from sfpo_lab.data.datamodule import RLDataModule
from sfpo_lab.data.prompts import (
    check_val_prompts,
    filter_long_prompts,
)
from sfpo_lab.data.records import Problem
from sfpo_lab.data.sources import load_problems
from sfpo_lab.eval.callback import ValidationCallback
from sfpo_lab.model.parallel import build_strategy, lightning_precision
from sfpo_lab.rollout.base import SamplingParams
from sfpo_lab.run import quiet
from sfpo_lab.run.loggers import build_loggers
from sfpo_lab.run.preemption import EarlySignals, FinalValidation, PreemptionCallback
from sfpo_lab.run.preflight import (  # noqa: F401 (re-exported)
    RESUME_MAY_CHANGE,
    _is_toy_model,
    check_context,
    check_resumable,
    preflight,
)
from sfpo_lab.run.rundir import RunDirLock, save_hydra_config
from sfpo_lab.training.module import SFPOModule


def prepare_model(run: RunConfig) -> tuple[str, Any]:
    """(model path, tokenizer): the cached toy base, or the configured hub/local model."""
    from transformers import AutoTokenizer

    if run.model.gguf is not None:
        from sfpo_lab.model.build import materialize_gguf

        path = str(materialize_gguf(run.model.gguf, Path(run.paths.cache_dir) / "models"))
    elif run.model.name_or_path is None:
        from sfpo_lab.model.warmup import toy_base_model

        path = str(toy_base_model(run, log=rank_zero_info))
    else:  # a hub id becomes its local snapshot (streamed FSDP2 load, base identity, vLLM)
        from sfpo_lab.model.build import local_snapshot

        path = local_snapshot(run.model.name_or_path)
    tok = AutoTokenizer.from_pretrained(run.model.tokenizer or path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if run.model.chat_template and not getattr(tok, "chat_template", None):
        raise ConfigError(
            f"invalid config: model.chat_template=true, but the tokenizer of "
            f"{run.model.tokenizer or path!r} defines no chat template; use "
            "model.chat_template=false or a tokenizer with one (model.tokenizer)"
        )
    if run.model.gguf is not None:
        check_context(run, path)
    return path, tok


def train_problems(run: RunConfig) -> list[Problem]:
    if run.data.kind == "toy":
        from sfpo_lab.model.warmup import toy_task

        return toy_task(run).train()
    d = run.data
    out: list[Problem] = []
    for f in d.train_files:
        out += load_problems(
            f,
            problem_field=d.problem_field,
            answer_field=d.answer_field,
            answer_extraction=d.answer_extraction,
        )
    return out


def val_sets(run: RunConfig) -> dict[str, list[Problem]]:
    v = run.val
    sets: dict[str, list[Problem]] = {}
    for name in v.benchmarks:
        if name == "toy":
            from sfpo_lab.model.warmup import toy_task

            sets[name] = toy_task(run).heldout(limit=v.limit)
        else:
            from sfpo_lab.eval.benchmarks import load_benchmark

            sets[name] = load_benchmark(name, data_dir=v.data_dir, limit=v.limit)
    return sets


def build_trainer(run: RunConfig, callbacks: list[L.Callback]) -> L.Trainer:
    loggers = build_loggers(run.logger, run.paths.output_dir)  # a resumed run: its W&B id
    extra = [instantiate(c) for c in run.callbacks.values() if c]
    t = run.trainer
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(run),
        precision=lightning_precision(run),  # model.dtype = master weights (parallel.py)
        # Stopping counts rollout batches (the module sets should_stop at `iterations`), not
        # Lightning epochs or optimizer steps, so a resumed or extended run continues
        max_epochs=-1,
        logger=loggers or False,
        callbacks=extra + callbacks,
        use_distributed_sampler=False,  # the datamodule slices each global batch per rank
        enable_checkpointing=False,  # IterationCheckpoint counts rollout batches
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_model_summary=False,  # a module table at every start: noise in the first hour
        log_every_n_steps=1,
        default_root_dir=run.paths.output_dir,
    )


def train(
    run: RunConfig,
    hparams: dict[str, Any],
    callbacks: Sequence[L.Callback] = (),
    task_cfg: Any = None,
    finish: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Build everything from a validated config, fit, and return a summary.

    ``callbacks`` are added after the built-in ones (validation, checkpoint, preemption).
    ``task_cfg`` (the composed Hydra config) is saved to ``.hydra/`` once the run owns its dir;
    ``finish(summary)`` runs while it still owns it (``train.py`` writes ``summary.json``).
    A SIGTERM / SIGUSR1 / SIGINT ends the run with ``SystemExit(0)``: during training after a
    checkpoint, before it with no checkpoint (a second SIGINT: ``SystemExit(130)`` at once; see
    :mod:`sfpo_lab.run.preemption`).
    """
    quiet.install()  # known-harmless library notices, filtered at their loggers
    requeued = run.ckpt_path == "last"
    resume = check_resume_checkpoint(run)  # corrupt or unsafe: one line, nothing read unsafely
    with trusted(resume if run.trust_checkpoint else None):  # preflight reads it too
        preflight(run)  # writes nothing: a refused run leaves the run dir as it was
        return _train_in_run_dir(run, hparams, callbacks, task_cfg, finish, requeued)


def _train_in_run_dir(
    run: RunConfig,
    hparams: dict[str, Any],
    callbacks: Sequence[L.Callback],
    task_cfg: Any,
    finish: Callable[[dict[str, Any]], None] | None,
    requeued: bool,
) -> dict[str, Any]:
    """Own the run dir (its lock) while building, fitting and finishing."""
    lock = RunDirLock(run.paths.output_dir)
    try:
        with EarlySignals() as early:
            if rank_zero_only.rank == 0:
                lock.acquire()
            summary = _build_and_fit(run, hparams, callbacks, task_cfg, requeued, early)
            if finish is not None:
                finish(summary)
            return summary
    finally:
        lock.release()


def check_resume_checkpoint(run: RunConfig) -> str | None:
    """The checkpoint a resume reads (``ckpt_path``; ``last``: the run dir's ``last.ckpt`` if
    any), refused before anything else reads it when its digest does not match or reading it
    would run code (``trust_checkpoint=true`` lifts the second check only).

    Raises:
        ConfigError: one line naming the checkpoint, why, and what to do.
    """
    from sfpo_lab.checkpointing import check_checkpoint, is_checkpoint
    from sfpo_lab.checkpointing.safety import CheckpointRefused

    path = run.ckpt_path
    if path == "last":
        last = Path(run.paths.output_dir) / "last.ckpt"
        path = str(last) if last.exists() else None
    if path is None or not is_checkpoint(path):
        return path  # nothing to resume from, or preflight names the missing file
    try:
        check_checkpoint(path, trust=run.trust_checkpoint)
    except CheckpointRefused as e:
        raise ConfigError(str(e)) from None
    except Exception as e:  # truncated / not a torch file: several exception types
        raise ConfigError(
            f"ckpt_path={path!r}: not a readable checkpoint ({type(e).__name__})"
        ) from None
    return path


def check_resume_base(run: RunConfig, model_path: str) -> None:
    """A resume on another base model than the checkpoint's is refused in one line, before any
    weights load (the KL reference is rebuilt from the base; the module checks again on load).

    Raises:
        ConfigError: naming both bases.
    """
    from sfpo_lab.checkpointing import checkpoint_meta, is_checkpoint
    from sfpo_lab.training.reference import base_identity, check_same_base

    path = run.ckpt_path
    if path == "last":
        path = str(Path(run.paths.output_dir) / "last.ckpt")
    if path is None or not Path(path).exists() or not is_checkpoint(path):
        return
    try:
        saved = checkpoint_meta(path, trust=run.trust_checkpoint).get("sfpo_base")
        check_same_base(saved, base_identity(model_path))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _build_and_fit(
    run: RunConfig,
    hparams: dict[str, Any],
    callbacks: Sequence[L.Callback],
    task_cfg: Any,
    requeued: bool,
    early: EarlySignals,
) -> dict[str, Any]:
    L.seed_everything(run.seed, workers=True, verbose=False)
    # data before the model: a bad file fails in seconds, not after a model load or warm-up
    try:
        problems = train_problems(run)
        benchmarks = val_sets(run)
    except ConfigError:
        raise
    except (ValueError, OSError) as e:  # the loaders name the file, row and field
        raise ConfigError(str(e)) from e
    early.check("data loaded")
    model_path, tokenizer = prepare_model(run)  # the tokenizer; weights load in the module
    check_resume_base(run, model_path)  # another base: refused before any weights load
    problems, n_dropped = filter_long_prompts(run, problems, tokenizer, log=rank_zero_info)
    check_val_prompts(run, benchmarks, tokenizer)
    early.check("model prepared")
    if rank_zero_only.rank == 0:
        save_hydra_config(task_cfg, run.paths.output_dir)
    datamodule = RLDataModule(
        problems, batch_size=run.data.batch_size, iterations=run.iterations, seed=run.seed
    )
    v = run.val
    val_cb = ValidationCallback(
        benchmarks,
        every=v.every,
        params=SamplingParams(
            n=v.n,
            max_new_tokens=v.max_new_tokens or run.rollout.max_new_tokens,
            temperature=v.temperature,
            top_p=v.top_p,
        ),
    )
    ckpt_cb = IterationCheckpoint(
        run.paths.output_dir,
        run.checkpoint.every,
        run.checkpoint.keep_last,
        run.checkpoint.save_best,
    )
    module = SFPOModule(run, model_path, tokenizer)
    # order matters at each iteration end: validate, checkpoint, then honour a preemption
    builtin = [val_cb, ckpt_cb, FinalValidation(ckpt_cb, run.iterations)]
    trainer = build_trainer(run, [*builtin, PreemptionCallback(ckpt_cb, early=early), *callbacks])
    early.check("trainer built")
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
    if run.ckpt_path is not None:
        _truncate_logs_after(trainer, _checkpoint_iteration(run.ckpt_path, run.trust_checkpoint))
    elif requeued:  # killed before its first checkpoint: its rows are about to be redone
        _truncate_logs_after(trainer, -1)
    # checkpoints hold plain data only (docs/security.md); trust_checkpoint=true unpickles fully
    weights_only = not run.trust_checkpoint
    trainer.fit(module, datamodule=datamodule, ckpt_path=run.ckpt_path, weights_only=weights_only)
    return {**summarize(module, val_cb), "prompts_filtered": n_dropped}


def _checkpoint_iteration(ckpt_path: str, trust: bool = False) -> int:
    from sfpo_lab.checkpointing import checkpoint_meta

    meta = checkpoint_meta(ckpt_path, trust=trust)  # a file or a sharded directory
    return int(meta["sfpo_counters"]["iteration"])  # an sfpo_lab checkpoint (preflight)


def _truncate_logs_after(trainer: L.Trainer, iteration: int) -> None:
    """On resume, drop CSV rows past the checkpoint's iteration (they are about to be redone)."""
    if rank_zero_only.rank != 0:  # set from the launcher's env before fit; rank 0 owns the file
        return
    for logger in trainer.loggers:
        writer = getattr(logger, "experiment", None)
        if hasattr(writer, "truncate_after"):
            writer.truncate_after(iteration)


def summarize(module: SFPOModule, val_cb: ValidationCallback) -> dict[str, Any]:
    hist = val_cb.history
    first, last = (hist[0], hist[-1]) if hist else ({}, {})
    stop = module.sfpo.stop_step if module.sfpo is not None else None
    summary = {
        "iterations": module.iteration,
        "rollouts": module.rollouts,
        "wall_clock_s": round(module.wall_clock_s, 1),
        "val_avg_first": first.get("val/avg"),
        "val_avg_last": last.get("val/avg"),
        "stop_step": stop,
        # optimizer steps skipped as non-finite and SFPO iterations rolled back to theta0: a run
        # with either is marked (console, summary.json, analysis tables)
        "skipped_steps": module.skipped_steps,
        "restored_iterations": module.restored_iterations,
    }
    if module.run_cfg.sfpo.alpha == 0:  # GRPO: no trigger to speak of
        trigger = "none (GRPO)"
    else:
        # the trigger step (docs/algorithm.md): the 1-based iteration whose entropy fired
        trigger = (
            f"stop_step {stop} (alpha 0 from iteration {stop + 1})"
            if stop is not None
            else "not triggered"
        )
    if hist:
        rank_zero_info(
            f"\n[summary] held-out accuracy (temperature {val_cb.params.temperature}, "
            f"n={val_cb.params.n}): base {first['val/avg']:.1f}% at iteration "
            f"{int(first['iteration'])} -> {last['val/avg']:.1f}% at iteration "
            f"{int(last['iteration'])} ({last['val/avg'] - first['val/avg']:+.1f} points); "
            f"entropy trigger: {trigger}; "
            f"{module.rollouts} rollouts in {module.wall_clock_s:.0f}s of training"
        )
    if module.skipped_steps or module.restored_iterations:
        rank_zero_info(
            f"[summary] NOT A CLEAN RUN: {module.skipped_steps} optimizer step(s) skipped as "
            f"non-finite, {module.restored_iterations} SFPO iteration(s) rolled back to theta0 "
            "(train/skipped_steps, train/restored_iterations in metrics.csv)"
        )
    out = Path(module.run_cfg.paths.output_dir)
    curves = out / "curves.png"
    rank_zero_info(
        f"[summary] run dir: {out}" + (f" (curves: {curves})" if curves.exists() else "")
    )
    return summary
