"""Kill-and-resume and preemption through the real CLI (issue 9 items 1, 2, 6; issue 16 item 0).

A 12-iteration run is killed with SIGKILL (its whole process group) at a point of each kind —
between two iterations, in the middle of an update (after the second optimizer step of an
iteration) and in the middle of a checkpoint save — then resumed with ``ckpt_path=last`` in the
same run dir. Every later iteration's batch (a hash of its problems, per rank), every metrics
row and every ``iter-N.ckpt`` (weights, optimizer state, counters) must equal an uninterrupted
run's: bitwise on one process, within 1e-6 on two (FSDP2, gloo). The resume points lie in the
first half of the run: a sampler that restarted at the resume point after as many batches as
the resumed run had done (the replay of issue 16) shows from ``2k + 1`` on. One run is also
preempted by a signal after its resume (it must save at the boundary and exit 0).
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from sfpo_lab.checkpointing import load_full_checkpoint

REPO = Path(__file__).resolve().parents[1]
ITERATIONS = 12
TINY = [
    f"iterations={ITERATIONS}",
    "data.batch_size=4",
    "rollout.n=4",
    "rollout.max_new_tokens=12",  # room for "\\boxed{..}": rewards and advantages are not all 0
    "rollout.prompts_per_generate=2",
    "rollout.reward_workers=0",  # grade inline: no pool start per launch (pool: tests/rewards)
    "update.micro_batch_size=8",
    "val.every=0",  # validation at the start and the end only
    "val.limit=4",
    "val.n=2",
    "checkpoint.every=1",
    f"checkpoint.keep_last={ITERATIONS}",  # every iter-N.ckpt is compared
    "model.warmup.steps=100",  # a base that answers some problems (built once, ~10 s)
    "wandb.mode=disabled",
]
TWO_PROC = ["trainer.strategy=fsdp", "trainer.devices=2"]
TIMING = ("perf/", "train/wall_clock_s", "sfpo/reposition_s")  # the only columns allowed to differ
PROBE = "tests.test_reliability_resume.ResumeProbe"


class ResumeProbe(L.Callback):
    """Test probe, added with ``+callbacks.probe``: appends ``start <iteration>`` at each launch
    and ``batch <iteration> <hash of its problems>`` before each iteration to
    ``batches.rank<r>.txt`` in ``dirpath``; ``kill=<point>:<k>`` SIGKILLs the process group
    (all ranks) at the start of iteration k+1 (``between``) or after iteration k+1's second
    optimizer step (``update``, the middle of its fast trajectory)."""

    def __init__(self, dirpath: str, kill: str | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.point, k = kill.split(":") if kill else (None, "-1")
        self.kill_at, self.steps = int(k) + 1, 0

    def _write(self, trainer: L.Trainer, line: str) -> None:
        with open(self.dirpath / f"batches.rank{trainer.global_rank}.txt", "a") as fh:
            fh.write(line + "\n")

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._write(trainer, f"start {pl_module.iteration}")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch, batch_idx) -> None:
        it = pl_module.iteration + 1
        digest = hashlib.sha256("\x1f".join(batch["problems"]).encode()).hexdigest()[:16]
        self._write(trainer, f"batch {it} {digest}")
        self.steps = 0
        if self.point == "between" and it == self.kill_at:
            self._kill()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer) -> None:
        self.steps += 1
        if self.point == "update" and pl_module.iteration + 1 == self.kill_at and self.steps == 2:
            self._kill()

    @staticmethod
    def _kill() -> None:
        os.killpg(os.getpgid(0), signal.SIGKILL)


def _env(cache: Path) -> dict[str, str]:
    return dict(os.environ, SFPO_CACHE_DIR=str(cache), OMP_NUM_THREADS="1", WANDB_MODE="disabled")


def launch(
    run_dir: Path, overrides: list[str], cache: Path, kill: str | None = None
) -> subprocess.Popen:
    """``train.py`` in its own session (so a 2-rank run is killed as one process group)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir.parent / f"{run_dir.name}.{time.monotonic_ns()}.log"
    probe = [f"+callbacks.probe._target_={PROBE}", f"+callbacks.probe.dirpath={run_dir}"]
    probe += [f"+callbacks.probe.kill={kill}"] if kill else []
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *TINY, *probe, *overrides]
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=_env(cache), stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    proc.log = log  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, expect: int = 0, timeout: float = 300) -> None:
    """Wait for ``proc``; its return code must be ``expect`` (the log tail is shown if not)."""
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert rc == expect, f"rc {rc} != {expect}:\n{proc.log.read_text()[-4000:]}"


def wait_until(proc: subprocess.Popen, condition, timeout: float = 240, poll: float = 0.002):
    """Poll ``condition()`` until true; fails if the process ends or time runs out first."""
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"train.py ended (rc {proc.returncode}) before the trigger")
        if time.monotonic() > end:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("trigger condition not reached in time")
        time.sleep(poll)


def logged_iterations(run_dir: Path) -> set[int]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return set()
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {int(float(r["train/iteration"])) for r in rows if r.get("train/iteration")}


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def load(path: Path) -> dict[str, Any]:
    return load_full_checkpoint(path)  # a file, or FSDP2's sharded directory (consolidated)


def ckpt_iteration(path: Path) -> int:
    return int(load(path)["sfpo_counters"]["iteration"])


def launches(run_dir: Path, rank: int = 0) -> list[tuple[int, list[tuple[int, str]]]]:
    """Per launch: (the iteration it started at, [(iteration, batch hash) it began])."""
    out: list[tuple[int, list[tuple[int, str]]]] = []
    for line in (run_dir / f"batches.rank{rank}.txt").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["start"]:
            out.append((int(parts[1]), []))
        elif parts[:1] == ["batch"] and len(parts) == 3:  # a line cut by the kill is skipped
            out[-1][1].append((int(parts[1]), parts[2]))
    return out


def assert_same_batches(ref: Path, got: Path, ranks: int) -> None:
    """Each launch of ``got`` trained the reference's batches from where it started, in order
    and once each; the last launch reached the end."""
    for rank in range(ranks):
        ((start, reference),) = launches(ref, rank)
        assert start == 0 and [it for it, _ in reference] == list(range(1, ITERATIONS + 1))
        want = dict(reference)
        runs = launches(got, rank)
        for start, batches in runs:
            assert [it for it, _ in batches] == list(range(start + 1, start + 1 + len(batches)))
            for it, digest in batches:
                assert digest == want[it], f"rank {rank}: iteration {it} trained another batch"
        assert runs[-1][1][-1][0] == ITERATIONS


def _tensors(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Policy weights and optimizer moments of a checkpoint, by name."""
    out = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("policy.")}
    for opt, state in enumerate(ckpt["optimizer_states"]):
        for pid, moments in state["state"].items():
            out |= {f"opt{opt}.{pid}.{m}": torch.as_tensor(v) for m, v in moments.items()}
    return out


def assert_same_checkpoint(a: Path, b: Path, atol: float) -> None:
    ca, cb = load(a), load(b)
    ta, tb = _tensors(ca), _tensors(cb)
    assert ta.keys() == tb.keys()
    for k in ta:
        if atol == 0:
            assert torch.equal(ta[k], tb[k]), (b.name, k)
        else:
            assert torch.allclose(ta[k], tb[k], rtol=0, atol=atol), (b.name, k)
    timing = ("wall_clock_s",)
    counters = [{k: v for k, v in c["sfpo_counters"].items() if k not in timing} for c in (ca, cb)]
    assert counters[0] == counters[1], b.name
    assert ca["RLDataModule"] == cb["RLDataModule"]
    if atol == 0:  # the entropy window holds floats
        assert ca["sfpo_engine"] == cb["sfpo_engine"], b.name


def assert_same_run(ref: Path, got: Path, atol: float, ranks: int = 1) -> None:
    """Batches, every metric row (timings aside) and every checkpoint (``best.ckpt`` too) equal:
    bitwise when ``atol`` is 0."""
    assert_same_batches(ref, got, ranks)
    names = sorted(p.name for p in ref.glob("iter-*.ckpt"))
    assert names == [f"iter-{i:06d}.ckpt" for i in range(1, ITERATIONS + 1)]
    assert sorted(p.name for p in got.glob("iter-*.ckpt")) == names
    for name in names:
        assert_same_checkpoint(ref / name, got / name, atol)
    assert os.path.samefile(got / "last.ckpt", got / names[-1])
    assert_same_checkpoint(ref / "best.ckpt", got / "best.ckpt", atol)
    best = [load(d / "best.ckpt")["callbacks"]["IterationCheckpoint"] for d in (ref, got)]
    assert best[0] == best[1]
    rows_ref, rows_got = metric_rows(ref), metric_rows(got)
    assert [r["step"] for r in rows_got] == [r["step"] for r in rows_ref]
    for a, b in zip(rows_ref, rows_got, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if atol == 0 or not a[key] or not b[key]:
                assert a[key] == b[key], (a["step"], key, a[key], b[key])
            else:
                x, y = float(a[key]), float(b[key])
                assert (math.isnan(x) and math.isnan(y)) or math.isclose(
                    x, y, rel_tol=atol, abs_tol=atol
                ), (a["step"], key, x, y)
    assert not list(got.glob(".*.tmp")), "temporaries of a killed save are cleaned up"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    # one toy base for the reliability modules of a session (built once, under a file lock)
    return tmp_path_factory.getbasetemp() / "reliability_toy_base"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> Callable[[str], Path]:
    """Uninterrupted runs, one per world size, made on first use and shared by the kill points."""
    made: dict[str, Path] = {}

    def get(world: str) -> Path:
        if world not in made:
            made[world] = tmp_path_factory.mktemp(f"reference_{world}") / "run"
            finish(launch(made[world], TWO_PROC if world == "fsdp" else [], cache))
        return made[world]

    return get


def kill_and_resume(
    run: Path, cache: Path, extra: list[str], point: str, k: int
) -> subprocess.Popen:
    """Start, SIGKILL the process group at ``point`` of iteration k+1 (or while iter-k.ckpt is
    saved), check the newest checkpoint is whole, and resume in the same dir."""
    if point == "save":
        proc = launch(run, extra, cache)
        saving = run / f".iter-{k:06d}.ckpt.tmp"
        wait_until(proc, lambda: saving.exists() or (run / f"iter-{k:06d}.ckpt").exists())
        os.killpg(proc.pid, signal.SIGKILL)
        expect_done = (k - 1, k)
    else:
        proc = launch(run, extra, cache, kill=f"{point}:{k}")
        expect_done = (k,)
    finish(proc, expect=-signal.SIGKILL)
    assert ckpt_iteration(run / "last.ckpt") in expect_done  # never corrupt: a whole iteration
    assert max(logged_iterations(run)) <= k + (point == "save")
    return launch(run, [*extra, "ckpt_path=last"], cache)


POINTS = [("between", 4), ("update", 3), ("save", 5)]


@pytest.mark.slow
@pytest.mark.parametrize(("point", "k"), [POINTS[0], POINTS[2]], ids=["between", "save"])
def test_kill_and_resume_single_process_is_bitwise(tmp_path, cache, reference, point, k):
    ref = reference("single")
    run = tmp_path / "run"
    finish(kill_and_resume(run, cache, [], point, k))
    assert_same_run(ref, run, atol=0.0)


@pytest.mark.slow
def test_kill_mid_update_resume_and_preempt_single_process_is_bitwise(tmp_path, cache, reference):
    """SIGKILL mid-update in iteration 4, resume from 3, SIGUSR1 to the resumed run (rank 0)
    once iteration 10 is logged (where a replay from the resume point would have begun): it
    saves at an iteration boundary and exits 0; the requeued run finishes the reference's run."""
    ref = reference("single")
    run = tmp_path / "run"
    proc = kill_and_resume(run, cache, [], *POINTS[1])
    wait_until(proc, lambda: 10 in logged_iterations(run))
    os.kill(proc.pid, signal.SIGUSR1)
    finish(proc, expect=0)  # a preempted run exits 0 (requeue-friendly)
    stopped = ckpt_iteration(run / "last.ckpt")
    assert 10 <= stopped < ITERATIONS and (run / f"iter-{stopped:06d}.ckpt").is_file()
    assert max(logged_iterations(run)) == stopped, "no iteration past the preemption checkpoint"
    finish(launch(run, ["ckpt_path=last"], cache))
    assert [start for start, _ in launches(run)] == [0, 3, stopped]
    assert_same_run(ref, run, atol=0.0)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(("point", "k"), POINTS, ids=[p for p, _ in POINTS])
def test_kill_and_resume_fsdp2_two_processes_within_1e6(tmp_path, cache, reference, point, k):
    ref = reference("fsdp")
    run = tmp_path / "run"
    finish(kill_and_resume(run, cache, TWO_PROC, point, k))
    assert_same_run(ref, run, atol=1e-6, ranks=2)


@pytest.mark.slow
def test_reference_best_ckpt_is_a_validated_model_with_its_own_score(reference):
    """val.every=0 validates the base (iteration 0) and the final model only: best.ckpt is one
    of those two, with its own score (never weights of iteration 1 credited with the base's)."""
    ref = reference("single")
    best = load(ref / "best.ckpt")
    state = best["callbacks"]["IterationCheckpoint"]
    with open(ref / "metrics.csv", newline="") as fh:
        scored = {int(r["step"]): float(r["val/avg"]) for r in csv.DictReader(fh) if r["val/avg"]}
    assert sorted(scored) == [0, ITERATIONS]
    winner = 0 if scored[0] >= scored[ITERATIONS] else ITERATIONS  # a tie keeps the earlier
    assert state == {"best": scored[winner], "best_iteration": winner}
    assert best["sfpo_counters"]["iteration"] == winner
    assert best["callbacks"]["ValidationCallback"]["history"][-1]["val/avg"] == scored[winner]
    if winner == ITERATIONS:
        assert_same_checkpoint(ref / f"iter-{ITERATIONS:06d}.ckpt", ref / "best.ckpt", atol=0)
