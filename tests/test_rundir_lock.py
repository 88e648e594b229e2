"""The run-dir lock's take-over rules (sfpo_lab/run/rundir.py), on real lock files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from sfpo_lab.config import ConfigError
from sfpo_lab.run.rundir import LOCK_FILE, RunDirLock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_run_keeps_its_dir(tmp_path):
    (tmp_path / LOCK_FILE).write_text(f"{os.getpid()} {socket.gethostname()} -\n")
    with pytest.raises(ConfigError, match="in use by a live run"):
        RunDirLock(tmp_path).acquire()


def test_a_dead_run_on_this_host_is_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_text(f"{_dead_pid()} {socket.gethostname()}\n")  # old format
    lock = RunDirLock(tmp_path)
    with pytest.warns(UserWarning, match="taking over"):
        lock.acquire()
    assert (tmp_path / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_another_hosts_lock_is_refused_unless_it_is_this_slurm_job(tmp_path, monkeypatch):
    (tmp_path / LOCK_FILE).write_text("4242 some-other-node 777\n")
    monkeypatch.setenv("SLURM_JOB_ID", "778")
    with pytest.raises(ConfigError, match="on host some-other-node"):
        RunDirLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "777")  # the same job, requeued onto another node
    lock = RunDirLock(tmp_path)
    with pytest.warns(UserWarning, match="taking over"):
        lock.acquire()
    assert (tmp_path / LOCK_FILE).read_text().split()[1:] == [socket.gethostname(), "777"]
    lock.release()


def test_a_reused_pid_is_taken_over_and_a_live_one_gets_a_hint(tmp_path):
    """Issue 30, item 6: a lock whose pid is alive but started after the lock was written
    (the run died, its pid went to another process) was refused as live, with no hint. It is
    now taken over with a warning saying so; a refusal names the live pid's command and how
    to remove the lock if that pid is not the run."""
    lock_file = tmp_path / LOCK_FILE
    lock_file.write_text(f"{os.getpid()} {socket.gethostname()} -\n")
    with pytest.raises(ConfigError) as info:
        RunDirLock(tmp_path).acquire()
    msg = str(info.value)
    assert f"pid {os.getpid()} on {socket.gethostname()}, lock {lock_file}: " in msg
    assert f"if pid {os.getpid()} is not that run (a reused pid), delete {lock_file}" in msg

    other = subprocess.Popen(["sleep", "30"])  # started after the lock below was written
    try:
        lock_file.write_text(f"{other.pid} {socket.gethostname()} -\n")
        old = lock_file.stat().st_mtime - 3600
        os.utime(lock_file, (old, old))  # the lock is an hour older than that process
        lock = RunDirLock(tmp_path)
        with pytest.warns(UserWarning, match="its pid now belongs to a process started after"):
            lock.acquire()
        assert lock_file.read_text().split()[0] == str(os.getpid())
        lock.release()
    finally:
        other.kill()
        other.wait()
