"""The CPU reproduction behind ``paper_figures/``: every run, then every table and figure.

    python analysis/reproduce.py                      # runs into outputs/repro, then figures
    python analysis/reproduce.py --dry-run            # the plan and what is already done
    python analysis/reproduce.py --jobs 2 --root /scratch/repro --only paper_main
    python analysis/reproduce.py --plan confirm       # the registered confirmation (make confirm)
    python analysis/reproduce.py --plan confirm --root /tmp/c --set iterations=2 --only confirm/A

One command, resumable: a run whose ``summary.json`` is current is skipped; an interrupted run
(Ctrl-C / SIGTERM reach the training processes, which save ``last.ckpt`` and exit) resumes
from its last checkpoint (``ckpt_path=last``); a run dir left without a checkpoint (killed
hard before its first save) is moved aside to ``<dir>.interrupted-<n>``, never deleted, and
the run starts again; a dir whose lock is held by a live process is neither moved nor
started. Each training process ends with this runner (killed with -9 too: it gets SIGTERM,
saves at its next iteration boundary and exits). Each run is its own process with one thread
(``OMP_NUM_THREADS=1``), ``--jobs`` at a time. Finished runs drop their weights (``*.ckpt``); config + metrics stay.
When every run has finished, the compact run data are collected into
``paper_figures/repro_runs`` and ``analysis/make_figures.py`` draws every output from them.

The plan (``conf/experiment/repro/*``: one toy task and one shared base for every run, see
docs/reproduction.md): the headline comparison GRPO / GRPO-mu / SFPO with 10 paired seeds,
then K x alpha, slow correction, entropy control, alpha decay (3 seeds each), and memory.

``--plan confirm``: the pre-registered confirmation (analysis/confirm_plan.yaml: its arms,
seeds and budget; docs/confirm_plan.md) into ``outputs/confirm``, the same runner; when every
run has finished, the runs are collected into ``paper_figures/confirm_runs`` and
``analysis/confirm.py`` writes the registered statistics from them. ``--set KEY=VALUE`` adds
an override to every run (a smoke test at tiny size; such runs are not the plan's).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from sfpo_lab.run.launcher import die_with_parent  # noqa: E402
from sfpo_lab.run.rundir import live_holder, summary_is_current  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COLLECTED = REPO / "paper_figures" / "repro_runs"  # config + metrics of every run, committed
CONFIRM_PLAN = REPO / "analysis" / "confirm_plan.yaml"
CONFIRM_COLLECTED = REPO / "paper_figures" / "confirm_runs"
HEADLINE_SEEDS = range(10)
ABLATION_SEEDS = range(3)
COMMON = ("wandb.mode=disabled", "checkpoint.every=10", "checkpoint.save_best=false")


@dataclass(frozen=True)
class Run:
    name: str  # run dir relative to the root, e.g. "paper_main/sfpo_s3"
    overrides: tuple[str, ...]


def plan() -> list[Run]:
    """Every run of the reproduction, most informative first (a cut-short reproduction still
    has whole seeds of the headline comparison; the costly K = 7 cells come last)."""
    exp = "experiment=repro/"
    runs = [
        Run(f"paper_main/{algo}_s{s}", (f"{exp}paper_main", f"algorithm={algo}", f"seed={s}"))
        for s in HEADLINE_SEEDS
        for algo in ("grpo", "sfpo", "grpo_mu")
    ]
    # name -> overrides; the grid points equal to a headline run (SFPO K=3, alpha=0.8, slow
    # on, EC on, decay zero; GRPO-mu = K=3, alpha=1) are taken from the headline runs
    ablations = {
        "slow_correction/no_slow": (f"{exp}slow_correction", "sfpo.slow_correction=false"),
        "entropy_control/ec_off": (f"{exp}entropy_control", "sfpo.entropy_control.enabled=false"),
        "alpha_decay/linear": (f"{exp}alpha_decay", "sfpo.decay=linear"),
        "k_alpha/K3_a0.3": (f"{exp}ablation_k_alpha", "sfpo.K=3", "sfpo.alpha=0.3"),
        "memory_profile/grpo": (f"{exp}memory_profile", "algorithm=grpo"),
        "memory_profile/sfpo": (f"{exp}memory_profile", "algorithm=sfpo"),
        "k_alpha/K7_a0.3": (f"{exp}ablation_k_alpha", "sfpo.K=7", "sfpo.alpha=0.3"),
        "k_alpha/K7_a0.8": (f"{exp}ablation_k_alpha", "sfpo.K=7", "sfpo.alpha=0.8"),
        "k_alpha/K7_a1.0": (f"{exp}ablation_k_alpha", "sfpo.K=7", "sfpo.alpha=1.0"),
    }
    runs += [Run(f"{n}_s{s}", (*o, f"seed={s}")) for n, o in ablations.items() for s in ABLATION_SEEDS]  # fmt: skip
    return runs


def confirm_plan(path: Path = CONFIRM_PLAN) -> list[Run]:
    """The registered confirmation: every arm of the plan file for each seed, seed by seed (a
    cut-short confirmation has whole paired seeds)."""
    reg = yaml.safe_load(path.read_text())
    return [
        Run(f"confirm/{arm}_s{s}", (*spec["overrides"], f"seed={s}"))
        for s in reg["seeds"]
        for arm, spec in reg["arms"].items()
    ]


PLANS = {"reproduce": plan, "confirm": confirm_plan}
# a run's cost beyond its update steps at 50 batches: process start (~15 s) + 11 validations on
# 500 x 4 (~2.5 s each): the committed GRPO runs took 1.7-2.0 min of process wall for 48 s of
# steps and 21 validations (docs/reproduction.md, "Cost")
CONFIRM_OVERHEAD_S = 45.0


def estimate(runs: list[Run], jobs: int, overhead_s: float = CONFIRM_OVERHEAD_S) -> str:
    """Process- and wall-minutes of a 50-batch plan from the committed runs' per-batch cost
    (median ``perf/step_s`` of GRPO batches and of batches with alpha > 0, which all of the
    confirmation's SFPO / GRPO-mu batches are): an estimate, as noisy as those runs' machine."""
    import pandas as pd

    steps = {"grpo": [], "sfpo": []}
    for f in sorted((COLLECTED / "repro" / "paper_main").glob("*/metrics.csv")):
        m = pd.read_csv(f).dropna(subset=["perf/step_s"])
        steps["sfpo"] += m.loc[m["sfpo/alpha"] > 0, "perf/step_s"].tolist()
        steps["grpo"] += m.loc[m["sfpo/alpha"] == 0, "perf/step_s"].tolist()
    per = {k: float(pd.Series(v).median()) for k, v in steps.items()}
    secs = [50 * per["grpo" if "algorithm=grpo" in r.overrides else "sfpo"] + overhead_s for r in runs]  # fmt: skip
    wall = sum(secs) / jobs / 0.97  # the reproduction kept 2 jobs busy 97 % of its wall time
    return (f"{len(runs)} runs: {sum(secs) / 60:.0f} process-min, ~{wall / 60:.0f} min wall at {jobs} jobs "
            f"(per batch {per['grpo']:.2f} s GRPO, {per['sfpo']:.2f} s alpha > 0, + {overhead_s:.0f} s a run)")  # fmt: skip


def state(run_dir: Path) -> str:
    """``done`` | ``resume`` (has last.ckpt) | ``stale`` (dir without a checkpoint) | ``new``."""
    cfg = run_dir / ".hydra" / "config.yaml"
    if cfg.is_file():
        iterations = int(yaml.safe_load(cfg.read_text())["iterations"])
        if (run_dir / "summary.json").is_file() and summary_is_current(run_dir, iterations):
            return "done"
    if (run_dir / "last.ckpt").exists():
        return "resume"
    return "stale" if run_dir.exists() else "new"


def move_aside(run_dir: Path) -> Path:
    n = 1
    while (dest := run_dir.with_name(f"{run_dir.name}.interrupted-{n}")).exists():
        n += 1
    run_dir.rename(dest)
    return dest


def drop_weights(run_dir: Path) -> None:
    for ckpt in sorted(run_dir.glob("*.ckpt")):
        if ckpt.is_dir() and not ckpt.is_symlink():
            shutil.rmtree(ckpt)
        else:
            ckpt.unlink()


def launch(
    run: Run, root: Path, python: str, live: dict, extra: tuple[str, ...] = ()
) -> tuple[Run, int, float]:
    """Run one training process to the end; ``(run, exit code, seconds)``; exit code -1: not
    finished (stopped by a signal, or it exited without a current summary)."""
    stopping = live.get("stopping")
    run_dir = root / run.name
    what = state(run_dir)
    if what == "done":
        return run, 0, 0.0
    if stopping:
        return run, -2, 0.0  # not started
    holder = live_holder(run_dir)
    if holder is not None:  # e.g. the run of a killed reproduce.py, still saving: never moved
        print(f"[reproduce] {run.name}: in use by a live run ({holder}); not started, not moved")
        return run, -3, 0.0
    if what == "stale":
        print(f"[reproduce] {run.name}: no checkpoint in the dir; moved to {move_aside(run_dir)}")
    resume = ("ckpt_path=last",) if what == "resume" else ()
    cmd = [python, "train.py", *run.overrides, *COMMON, *extra, *resume, f"hydra.run.dir={run_dir}"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    log = root / f"{run.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(
        f"[reproduce] {time.strftime('%H:%M:%S')} start {run.name}{' (resume)' if resume else ''}"
    )
    with open(log, "a") as fh:
        # its own session: a Ctrl-C reaches only this runner, which forwards it; started
        # from this worker thread, which waits for it: the process ends if the runner is killed
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent(),
        )  # fmt: skip
        live[run.name] = proc
        if live.get("stopping"):  # the signal came between the check above and the start
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait()
        live.pop(run.name, None)
    secs = time.perf_counter() - t0
    if rc == 0 and state(run_dir) == "done":
        drop_weights(run_dir)
    elif rc == 0:
        rc = -1
    end = "done" if rc == 0 else "stopped" if rc == -1 else f"FAILED rc={rc}"
    print(f"[reproduce] {time.strftime('%H:%M:%S')} {end} {run.name} ({secs:.0f} s; log {log})")
    return run, rc, secs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--plan", choices=sorted(PLANS), default="reproduce", help="reproduce (default) | confirm")  # fmt: skip
    p.add_argument("--root", type=Path, help="run dirs (default outputs/repro, outputs/confirm)")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE override for every run (smoke tests)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each (default 2)")  # fmt: skip
    p.add_argument("--only", action="append", help="run-name prefix(es) to run (e.g. paper_main)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and each run's state")
    p.add_argument("--estimate", action="store_true", help="print the confirm plan's cost estimate")
    p.add_argument("--no-figures", action="store_true", help="stop after the runs")
    args = p.parse_args(argv)
    confirm = args.plan == "confirm"
    collected = CONFIRM_COLLECTED if confirm else COLLECTED
    root = (args.root or REPO / "outputs" / ("confirm" if confirm else "repro")).resolve()
    if root == collected or collected in root.parents or root in collected.parents:
        p.error(f"--root {root}: overlaps {collected}, the collected copy rebuilt at the end")
    runs = [r for r in PLANS[args.plan]() if not args.only or any(r.name.startswith(o) for o in args.only)]  # fmt: skip
    if args.estimate:
        print(estimate(runs, args.jobs))
        return 0
    if args.dry_run:
        for r in runs:
            print(f"{state(root / r.name):7s} {r.name}: {' '.join(r.overrides)}")
        return 0
    live: dict = {}

    def stop(signum: int, _frame: object) -> None:
        """No new runs; the running ones get the signal (a Ctrl-C as SIGINT, anything else
        as SIGTERM), save ``last.ckpt`` and exit; a second Ctrl-C stops them at once."""
        again = signum == signal.SIGINT and live.get("stopping")
        live["stopping"] = True
        for proc in [v for k, v in list(live.items()) if k != "stopping"]:
            proc.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)
        what = "stop at once (nothing saved)" if again else "save and stop; rerun to resume"
        print(f"[reproduce] {signal.Signals(signum).name}: running jobs {what}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        extra = tuple(args.set)
        results = list(pool.map(lambda r: launch(r, root, sys.executable, live, extra), runs))
    wall = time.perf_counter() - t0
    ran = [x for x in results if x[2] > 0]
    before = sum(1 for _, rc, secs in results if rc == 0 and secs == 0)
    failed = [r.name for r, rc, _ in results if rc != 0]
    print(f"[reproduce] {len(ran)} runs in {wall / 60:.1f} min wall ({sum(x[2] for x in ran) / 60:.1f} run-min, {args.jobs} jobs); {before} were already done")  # fmt: skip
    if failed:
        print(f"[reproduce] {len(failed)} not finished (first: {failed[0]}) — rerun the same command to resume")  # fmt: skip
        return 1
    if args.no_figures or args.only or args.set:
        return 0
    from analysis import make_figures

    if confirm:  # the registered statistics, from the collected copy (as CI regenerates them)
        from analysis import confirm as registered

        shutil.rmtree(collected, ignore_errors=True)
        make_figures.collect([root], collected)
        rc = registered.main([])  # its default runs (the collected copy): as CI reads them
        return rc or make_figures.main(["--only", "summary"])  # summary.json's confirm block

    shutil.rmtree(COLLECTED, ignore_errors=True)  # a derived copy: rebuilt whole from the runs
    return make_figures.main(["--runs", str(root), "--collect", str(COLLECTED)])


if __name__ == "__main__":
    sys.exit(main())
