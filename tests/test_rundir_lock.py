"""The run-dir lock's take-over rules (sfpo_lab/rundir.py), on real lock files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from sfpo_lab.config import ConfigError
from sfpo_lab.rundir import LOCK_FILE, RunDirLock


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
