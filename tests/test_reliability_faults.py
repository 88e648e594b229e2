"""Disk faults during a run are one line (issue 30, item 6): the fault, the path, what is intact.

A full disk, a file-size limit and a read-only run dir printed 40-80-line tracebacks (torch's
zip writer turns the failed write into ``RuntimeError: [enforce fail at inline_container.cc]
unexpected pos``, the OSError it hit only its ``__context__``). Through the real CLI: a real
file-size limit (RLIMIT_FSIZE, set by a probe at iteration 2) and a real full disk (a 14 MB
tmpfs, only where this test may mount one) fail the iteration-2 checkpoint; a run dir gone
read-only at iteration 2 (``open`` / ``os.open`` patched to raise EROFS) fails its next write.
Each prints one line on stderr, exits 1, and leaves iteration 1's checkpoint whole.
"""

from __future__ import annotations

import builtins
import errno
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest

from sfpo_lab.run.rundir import disk_fault_line
from tests.test_reliability_requeue import SMALL
from tests.test_reliability_resume import _env

REPO = Path(__file__).resolve().parents[1]
RUN = [*SMALL, "checkpoint.save_best=false", "logger=csv"]


class FileSizeLimit(L.Callback):
    """Sets a real file-size limit (``ulimit -f``) of ``limit`` bytes at the start of iteration
    ``at``: the next checkpoint (9.7 MB for the toy model) fails to write with EFBIG."""

    def __init__(self, at: int, limit: int) -> None:
        self.at, self.limit = int(at), int(limit)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if pl_module.iteration + 1 == self.at:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, resource.RLIM_INFINITY))


class ReadOnlyFrom(L.Callback):
    """From the start of iteration ``at``, opening a file in ``run_dir`` for writing raises
    EROFS (``open`` and ``os.open``), as after a read-only remount."""

    def __init__(self, at: int, run_dir: str) -> None:
        self.at, self.run_dir = int(at), os.path.abspath(run_dir)

    def _in_run_dir(self, path: Any) -> bool:
        return isinstance(path, str | os.PathLike) and os.path.abspath(path).startswith(
            self.run_dir + os.sep
        )

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if pl_module.iteration + 1 != self.at:
            return
        real_open, real_os_open = builtins.open, os.open

        def refuse(path: Any) -> None:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

        def ro_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any):
            if self._in_run_dir(path) and any(c in mode for c in "wax+"):
                refuse(path)
            return real_open(path, mode, *args, **kwargs)

        def ro_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if self._in_run_dir(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                refuse(path)
            return real_os_open(path, flags, *args, **kwargs)

        builtins.open, os.open = ro_open, ro_os_open


def _train(run: Path, cache: Path, *extra: str):
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run}", *RUN, *extra]
    env = {**_env(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-4000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1, proc.stderr[-4000:]
    return errors[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "reliability_toy_base"  # shared with the others


def _ckpts(out: Path) -> None:
    out.mkdir()
    (out / "iter-000001.ckpt").write_bytes(b"1")
    os.link(out / "iter-000001.ckpt", out / "last.ckpt")


def test_each_fault_is_one_line_naming_the_path_and_what_is_intact(tmp_path):
    """ENOSPC / EFBIG / EROFS as an OSError naming its file, as a failed ``write`` (no file:
    the path comes from the writer's frame), and as torch's RuntimeError raised over it."""
    out = tmp_path / "run"
    _ckpts(out)
    intact = f"intact: {out / 'iter-000001.ckpt'} (last.ckpt names it), the newest complete "
    tail = "checkpoint; fix the disk (space, limit, permissions) and rerun with ckpt_path=last"
    err = OSError(errno.EROFS, os.strerror(errno.EROFS), str(out / ".sfpo_lab.lock"))
    assert disk_fault_line(err, out) == (
        f"Error: read-only file system (EROFS) writing {out / '.sfpo_lab.lock'}; {intact}{tail}"
    )

    def write(final: Path) -> None:  # a writer whose write() fails, as torch's zip writer's
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos"
            ) from None

    with pytest.raises(RuntimeError) as info:
        write(out / "iter-000002.ckpt")
    assert info.value.__context__ is not None  # `from None` hides it from the trace only
    assert disk_fault_line(info.value, out) == (
        f"Error: no space left on the device (ENOSPC) writing {out / 'iter-000002.ckpt'}; "
        f"{intact}{tail}"
    )
    big = OSError(errno.EFBIG, os.strerror(errno.EFBIG))
    assert disk_fault_line(big, tmp_path / "new").startswith(
        f"Error: file larger than the file-size limit (ulimit -f) or the file system allows "
        f"(EFBIG) writing {tmp_path / 'new'}; nothing was written in {tmp_path / 'new'};"
    )
    assert disk_fault_line(OSError(errno.ENOENT, "gone"), out) is None
    assert disk_fault_line(RuntimeError("CUDA out of memory"), out) is None


@pytest.mark.slow
def test_a_file_size_limit_during_a_run_is_one_line(tmp_path, cache):
    """A real EFBIG: ``ulimit -f`` 4 MB from iteration 2 on; its checkpoint cannot be
    written. One line names it; iteration 1's checkpoint (and last.ckpt) stay whole."""
    run = tmp_path / "run"
    probe = ["+callbacks.fsize._target_=tests.test_reliability_faults.FileSizeLimit"]
    probe += ["+callbacks.fsize.at=2", "+callbacks.fsize.limit=4000000"]
    line = _one_line(_train(run, cache, *probe))
    assert line == (
        "Error: file larger than the file-size limit (ulimit -f) or the file system allows "
        f"(EFBIG) writing {run / 'iter-000002.ckpt'}; intact: {run / 'iter-000001.ckpt'} "
        "(last.ckpt names it), the newest complete checkpoint; fix the disk (space, limit, "
        "permissions) and rerun with ckpt_path=last"
    )
    assert (run / "last.ckpt").samefile(run / "iter-000001.ckpt")
    assert not list(run.glob(".*.part")) and not list(run.glob(".*.tmp"))


@pytest.mark.slow
def test_a_full_disk_during_a_run_is_one_line(tmp_path, cache):
    """A real ENOSPC: the run dir on a 14 MB tmpfs (one 9.7 MB checkpoint fits, a second
    does not). Needs the right to mount (root); skipped elsewhere."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=14m", "tmpfs", str(mnt)],
                           capture_output=True, text=True)  # fmt: skip
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        run = mnt / "run"
        line = _one_line(_train(run, cache))
        assert line.startswith(
            f"Error: no space left on the device (ENOSPC) writing {run / 'iter-000002.ckpt'}; "
            f"intact: {run / 'iter-000001.ckpt'} (last.ckpt names it)"
        ), line
        assert (run / "last.ckpt").samefile(run / "iter-000001.ckpt")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.slow
def test_a_run_dir_gone_read_only_during_a_run_is_one_line(tmp_path, cache):
    """From iteration 2 on, every write into the run dir fails with EROFS (``open`` and
    ``os.open`` patched in the process, as a file system remounted read-only after an error
    behaves; at start-up preflight's write probe already refuses a read-only dir in one
    line): one line, exit 1, iteration 1's checkpoint whole."""
    run = tmp_path / "run"
    probe = [
        "+callbacks.ro._target_=tests.test_reliability_faults.ReadOnlyFrom",
        "+callbacks.ro.at=2",
    ]
    line = _one_line(_train(run, cache, *probe, f"+callbacks.ro.run_dir={run}"))
    assert line.startswith(f"Error: read-only file system (EROFS) writing {run}/"), line
    assert line.endswith(
        f"; intact: {run / 'iter-000001.ckpt'} (last.ckpt names it), the newest complete "
        "checkpoint; fix the disk (space, limit, permissions) and rerun with ckpt_path=last"
    ), line
    assert (run / "last.ckpt").samefile(run / "iter-000001.ckpt")
