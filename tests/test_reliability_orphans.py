"""Children die with their parent (issue 30, item 2).

A ``kill -9`` of ``analysis/reproduce.py`` or of a ``train.py -m`` sweep left its training
process running under init; a rerun of reproduce.py then called that live run's dir "stale"
and moved it aside. Here the real runner and the real sweep are started as subprocesses and
killed with SIGKILL once their training process has trained an iteration: the training process
gets SIGTERM (PR_SET_PDEATHSIG), saves at its next iteration boundary and is gone within
seconds. A dir whose lock is held by a live process is neither moved nor started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sfpo_lab.run.rundir import LOCK_FILE
from tests.test_reliability_resume import logged_iterations

REPO = Path(__file__).resolve().parents[1]
LONG = [  # far more iterations than the test waits for: only a signal ends it in time
    "iterations=500",
    "data.batch_size=4",
    "rollout.n=2",
    "rollout.max_new_tokens=6",
    "rollout.reward_workers=0",
    "update.micro_batch_size=8",
    "val.every=0",
    "val.limit=2",
    "val.n=1",
    "model.warmup.steps=5",
]
GONE_WITHIN_S = 20.0  # one tiny iteration and a save, on a loaded 2-core machine


def _env(tmp: Path) -> dict[str, str]:
    return dict(
        os.environ,
        SFPO_CACHE_DIR=str(tmp / "cache"),
        OMP_NUM_THREADS="1",
        WANDB_MODE="disabled",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO),
    )


def gone(pid: int) -> bool:
    """No such process, or a zombie (ended; its new parent has not reaped it yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the parent ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() < end, f"no {what} within {timeout} s"
        time.sleep(0.2)


def trained(run_dir: Path) -> bool:
    """Whether ``metrics.csv`` has a training row (a row being written reads as none)."""
    try:
        return max(logged_iterations(run_dir), default=0) >= 1
    except (ValueError, OSError):
        return False


def lock_pid(run_dir: Path) -> int | None:
    try:
        return int((run_dir / LOCK_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def kill_parent_and_time_child(parent: subprocess.Popen, child: int) -> float:
    """SIGKILL ``parent``; seconds until ``child`` is gone (the child is SIGKILLed after
    ``GONE_WITHIN_S`` + 60 s so a failing test leaves no process behind)."""
    parent.kill()
    parent.wait()
    t0 = time.monotonic()
    while not gone(child) and time.monotonic() - t0 < GONE_WITHIN_S + 60:
        time.sleep(0.1)
    took = time.monotonic() - t0
    if not gone(child):
        os.kill(child, signal.SIGKILL)
    return took


def test_die_with_parent_ends_a_child_started_from_a_worker_thread(tmp_path):
    """The mechanism alone: a parent that started ``sleep`` from a thread (as reproduce.py's
    pool does) is SIGKILLed; the sleep gets SIGTERM at once."""
    script = textwrap.dedent(
        """
        import subprocess, threading
        from sfpo_lab.run.launcher import die_with_parent

        def start():
            child = subprocess.Popen(["sleep", "120"], preexec_fn=die_with_parent(),
                                     start_new_session=True)
            print(child.pid, flush=True)
            child.wait()

        worker = threading.Thread(target=start)
        worker.start()
        worker.join()
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=_env(tmp_path)
    )
    line = parent.stdout.readline()
    assert line.strip().isdigit(), f"no child started (rc {parent.wait()})"
    assert kill_parent_and_time_child(parent, int(line)) < 5.0


def test_reproduce_never_moves_or_starts_a_dir_held_by_a_live_run(tmp_path, capsys):
    """A run dir without a checkpoint is "stale" only when no live process holds its lock:
    held (here by this test's own pid), it is left where it is and nothing is started."""
    from analysis.reproduce import Run, launch

    run_dir = tmp_path / "paper_main" / "sfpo_s0"
    run_dir.mkdir(parents=True)
    (run_dir / LOCK_FILE).write_text(f"{os.getpid()} {socket.gethostname()} -\n")
    (run_dir / "metrics.csv").write_text("iteration\n")
    run, rc, secs = launch(Run("paper_main/sfpo_s0", ()), tmp_path, "/bin/false", {})
    assert rc == -3 and secs == 0.0
    assert (run_dir / "metrics.csv").is_file()
    assert not list(tmp_path.glob("paper_main/*.interrupted-*"))
    assert not (tmp_path / "paper_main" / "sfpo_s0.log").exists(), "a process was started"
    out = capsys.readouterr().out
    assert f"in use by a live run (pid {os.getpid()} on {socket.gethostname()})" in out


@pytest.mark.slow
def test_reproduce_killed_with_9_takes_its_training_process_with_it(tmp_path):
    """analysis/reproduce.py's ``launch`` (the function its pool runs, in a worker thread)
    in a subprocess; SIGKILL it once its training process has trained an iteration."""
    root = tmp_path / "repro"
    driver = textwrap.dedent(
        f"""
        import sys
        from concurrent.futures import ThreadPoolExecutor
        from pathlib import Path
        from analysis.reproduce import Run, launch

        run = Run("run", tuple({LONG!r}))
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(launch, run, Path({str(root)!r}), sys.executable, {{}}).result()
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", driver], cwd=REPO, env=_env(tmp_path))
    run_dir = root / "run"
    wait_for(lambda: trained(run_dir), "a trained iteration", parent)
    child = lock_pid(run_dir)
    assert child is not None and not gone(child)
    took = kill_parent_and_time_child(parent, child)
    log = (root / "run.log").read_text()
    assert took < GONE_WITHIN_S, f"training process {child} outlived its runner:\n{log[-2000:]}"
    assert "[preemption] SIGTERM: saved" in log and (run_dir / "last.ckpt").exists()


@pytest.mark.slow
def test_sweep_killed_with_9_takes_its_job_with_it(tmp_path):
    """``train.py -m seed=0,1`` (the torchrun launcher, one process per job); SIGKILL the
    sweep once job #0 has trained an iteration: job #0's process ends, job #1 never starts."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", *LONG, "seed=0,1", "checkpoint.every=1000"]
    cmd += ["logger=csv", f"hydra.sweep.dir={sweep}"]
    log = (tmp_path / "sweep.log").open("w")
    parent = subprocess.Popen(cmd, cwd=REPO, env=_env(tmp_path), stdout=log, stderr=log)
    job = sweep / "0"
    wait_for(lambda: trained(job), "a trained iteration", parent)
    child = lock_pid(job)
    assert child is not None and not gone(child)
    took = kill_parent_and_time_child(parent, child)
    assert took < GONE_WITHIN_S, f"job process {child} outlived its sweep"
    assert (job / "last.ckpt").exists() and not (sweep / "1").exists()
