"""Run the real trainer (``SFPOModule`` under Lightning) in this process and collect its metrics.

The config is composed from ``conf/`` exactly as ``train.py`` does (Hydra compose API, the
typed schema, validation); the run is built from the same library pieces as
``sfpo_lab.run.runner.train`` but without validation and checkpoint callbacks (they are not part
of an iteration) and with an in-memory logger, so the per-iteration ``perf/`` split the
module logs can be read back directly.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers.logger import Logger

REPO = Path(__file__).resolve().parents[1]
STAGES = ("rollout", "reward", "logprob", "update", "weight_sync")


class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call: one dict per rollout batch (plus its step)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append({**metrics, "step": float(step if step is not None else -1)})


def compose(overrides: list[str], output_dir: str) -> Any:
    """A validated ``RunConfig`` from ``conf/train.yaml`` plus ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from sfpo_lab.config import register_schema, to_run_config

    register_schema()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose(
            "train",
            overrides=[
                *overrides,
                f"paths.output_dir={output_dir}",
                "logger=csv",
                "callbacks.progress=null",
                "wandb.mode=disabled",
            ],
        )
    return to_run_config(cfg)


class CpuClock(L.Callback):
    """This process's CPU seconds of each ``training_step`` (``time.process_time``): unlike
    wall-clock, not stretched by other jobs on a loaded machine (the grading workers are other
    processes, for TRL as for us)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self.t0 = time.process_time()

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.seconds.append(time.process_time() - self.t0)


def fit(overrides: list[str], module_cls: type | None = None) -> list[dict[str, float]]:
    """Train with ``overrides`` and return the per-iteration metrics (``train/iteration`` set).

    ``module_cls``: an ``SFPOModule`` subclass to train instead (benchmarks.paired's)."""
    from sfpo_lab.data.datamodule import RLDataModule
    from sfpo_lab.run import runner
    from sfpo_lab.training.module import SFPOModule

    with tempfile.TemporaryDirectory(prefix="bench_run_") as out:
        run = compose(overrides, out)
        runner.preflight(run)
        L.seed_everything(run.seed, workers=True, verbose=False)
        model_path, tokenizer = runner.prepare_model(run)
        data = RLDataModule(
            runner.train_problems(run),
            batch_size=run.data.batch_size,
            iterations=run.iterations,
            seed=run.seed,
        )
        module = (module_cls or SFPOModule)(run, model_path, tokenizer)
        clock = CpuClock()
        trainer = runner.build_trainer(run, [clock])
        logger = MemoryLogger()
        trainer.loggers = [logger]
        try:
            trainer.fit(module, datamodule=data)
        finally:
            maker = getattr(module, "maker", None)
            if maker is not None:
                maker.verifier.close()  # its grading process pool
            del module, trainer, data
            release_memory()  # a 0.5B run holds ~10 GB: give it back before the next run
    rows = [r for r in logger.rows if "perf/step_s" in r]
    for r, cpu in zip(rows, clock.seconds, strict=False):
        r["perf/cpu_step_s"] = cpu
    return rows


def fit_fresh(overrides: list[str]) -> list[dict[str, float]]:
    """:func:`fit` in a fresh Python process: a run that follows another in the same process
    pays for the first one's heap (a 0.5B GRPO run measured second ran its update passes at
    7.7 s against 5.4 s first, with twice the kernel time per page fault), so runs that are
    compared each start clean, as a user's run does."""
    return run_fresh("benchmarks.ours", "dump_fit", overrides)


def run_fresh(module: str, function: str, args: list[str]) -> Any:
    """``module.function(path, *args)`` in a fresh Python process; it writes JSON to ``path``,
    returned here."""
    import json
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="bench_fit_") as tmp:
        out = Path(tmp) / "rows.json"
        # -c, not -m: the grading workers re-run the main script's top level (see
        # benchmarks/run.py), which must not import torch and Lightning into each of them
        code = f"import sys; from {module} import {function}; {function}(*sys.argv[1:])"
        cmd = [sys.executable, "-c", code, str(out), *args]
        subprocess.run(cmd, cwd=REPO, check=True)
        return json.loads(out.read_text())


def dump_fit(path: str, *overrides: str) -> None:
    """:func:`fit` written to ``path`` as JSON (the child of :func:`fit_fresh`)."""
    import json

    Path(path).write_text(json.dumps(fit(list(overrides))))


def release_memory() -> None:
    """Collect reference cycles and return freed heap pages to the OS (glibc)."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def split(rows: list[dict[str, float]], skip_first: int = 1) -> dict[str, float]:
    """Mean seconds per iteration of each stage and of the whole step, the first iteration
    (one-off warm-ups) left out. Means, not medians, so that the stages add up to the step."""
    kept = rows[skip_first:] or rows
    out = {"iterations": float(len(kept))}
    for key in (*STAGES, "step", "cpu_step"):
        vals = [r[f"perf/{key}_s"] for r in kept if f"perf/{key}_s" in r]
        out[key] = sum(vals) / len(vals) if vals else float("nan")
    fused = [r["perf/fused_old_logprobs"] for r in kept if "perf/fused_old_logprobs" in r]
    out["fused_old_logprobs"] = sum(fused) / len(fused) if fused else 0.0
    lengths = [r["train/response_length/mean"] for r in kept if "train/response_length/mean" in r]
    out["response_length"] = sum(lengths) / len(lengths) if lengths else float("nan")
    # perf/rollout_s is timed around the weight push and the generation: report them apart
    if out["weight_sync"] == out["weight_sync"]:
        out["rollout"] -= out["weight_sync"]
    return out
