"""Fixed start-up of ``train.py`` (issue 25): wall time of a short CPU run minus its training
seconds, and of a finished sweep run again; with ``--profile``, where one run's seconds go.

    python benchmarks/startup.py                        # 3 x (iterations=3 run, finished sweep)
    python benchmarks/startup.py --tree /path/to/checkout --repeat 3 --out /tmp/startup
    python benchmarks/startup.py --profile              # one cProfile'd run: seconds per phase

Runs as the user does: W&B offline (the default), ``OMP_NUM_THREADS=1``, ``HF_HUB_OFFLINE=1``.
``fixed`` = wall - the run's own ``wall_clock_s`` (``summary.json``: the RL iterations); the
sweep is ``-m seed=0,1,2,3 iterations=1`` made once, then run again with ``ckpt_path=last``
(every job finished: nothing to do). Medians; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SWEEP = ["-m", "seed=0,1,2,3", "iterations=1"]
# (phase, (file name, function name)) as cProfile records them; cumulative seconds, so a phase
# includes the imports it triggers
PHASES = [
    ("import sfpo_lab.run.runner (Lightning, transformers, torch)", ("runner.py", "<module>")),
    ("preflight (checks, checkpoint)", ("preflight.py", "preflight")),
    ("data + tokenizer + toy base model", ("runner.py", "prepare_model")),
    ("Trainer + loggers built", ("runner.py", "build_trainer")),
    ("W&B run started (log_hyperparams)", ("wandb.py", "log_hyperparams")),
    ("validation at iteration 0", ("callback.py", "on_train_start")),
    ("RL iterations (training_step)", ("module.py", "training_step")),
    ("curves.png drawn (CurvesCallback)", ("curves.py", "draw")),
    ("reward pool start (workers + health check)", ("pool.py", "_ensure_pool")),
    ("W&B finish", ("wandb_run.py", "finish")),
]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    for key in ("WANDB_MODE", "SFPO_VERBOSE", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(key, None)
    return env


def _timed(cmd: list[str], tree: Path, log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(
            cmd, cwd=tree, env=_env(), stdout=fh, stderr=subprocess.STDOUT
        ).returncode
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {rc}); see {log}")
    return time.perf_counter() - start


def measure(tree: Path, out: Path, repeat: int) -> dict[str, list[float]]:
    py = [sys.executable, "train.py"]
    sweep_dir = out / "sweep"
    if not (sweep_dir / "multirun_summary.csv").exists():
        _timed([*py, *SWEEP, f"hydra.sweep.dir={sweep_dir}"], tree, out / "sweep_make.log")
    res: dict[str, list[float]] = {"run_wall": [], "run_rl": [], "run_fixed": [], "sweep": []}
    for i in range(repeat):
        run_dir = out / f"run{i}"
        wall = _timed([*py, "iterations=3", f"hydra.run.dir={run_dir}"], tree, out / f"run{i}.log")
        rl = json.loads((run_dir / "summary.json").read_text())["summary"]["wall_clock_s"]
        res["run_wall"].append(wall)
        res["run_rl"].append(rl)
        res["run_fixed"].append(wall - rl)
        again = [*py, *SWEEP, "ckpt_path=last", f"hydra.sweep.dir={sweep_dir}"]
        res["sweep"].append(_timed(again, tree, out / f"sweep{i}.log"))
        print(f"repeat {i}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in res.items()), flush=True)
    return res


def profile(tree: Path, out: Path) -> list[tuple[str, float]]:
    """One ``iterations=3`` run under cProfile: cumulative seconds of each phase's function."""
    import pstats

    prof = out / "startup.prof"
    cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "train.py", "iterations=3"]
    total = _timed([*cmd, f"hydra.run.dir={out / 'profiled'}"], tree, out / "profiled.log")
    stats = pstats.Stats(str(prof)).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    rows = [("whole process (wall, under cProfile)", total)]
    for label, key in PHASES:
        cum = sum(
            v[3] for (f, line, name), v in stats.items() if f"{f}:{line}({name})".endswith(key)
        )
        rows.append((label, cum))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--out", type=Path, default=Path("/tmp/sfpo_startup"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    if args.repeat < 1:
        raise SystemExit(f"--repeat must be >= 1, got {args.repeat}")
    args.out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    if args.profile:
        for label, sec in profile(args.tree, args.out):
            print(f"{sec:7.1f} s  {label}")
    else:
        res = measure(args.tree, args.out, args.repeat)
        print(f"medians of {args.repeat} (load average {load:.1f} -> {os.getloadavg()[0]:.1f}):")
        for key, values in res.items():
            print(
                f"  {key:10s} {statistics.median(values):6.1f} s  {[round(v, 1) for v in values]}"
            )


if __name__ == "__main__":
    main()
