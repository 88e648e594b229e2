"""A run directory owned by one live run: the lock, the config files, a finished run's record.

``RunDirLock`` is taken (rank 0) once the config is validated and before the run writes any
file: ``.sfpo_lab.lock`` holds ``pid host slurm_job_id``, created with ``O_EXCL``. A second
run into the same dir stops with an error naming the live one; a lock left by a crashed run
(its pid is dead, same host; or the same SLURM job, requeued onto another node after its node
failed — SLURM runs one instance of a job at a time; or its pid now belongs to a process that
started after the lock was written) is taken over with a warning; a refusal names the live
pid's command and how to remove a lock it does not own. A run that fails before it wrote
anything removes the run dir again if this launch created it (Hydra makes it before the task
runs). :func:`live_holder` tells other tools (``analysis/reproduce.py``) a dir is in use.

Hydra writes nothing in the run dir itself (``hydra.output_subdir: null``):
:func:`save_hydra_config` writes ``.hydra/{config,hydra,overrides}.yaml`` (what analysis
reads) once the run owns the dir, so a refused resume leaves the previous config in place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from sfpo_lab.config import ConfigError

LOCK_FILE = ".sfpo_lab.lock"
PROCESS_START = time.time()  # a run dir made after this (and still empty) is this launch's


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _process_start(pid: int) -> float | None:
    """When ``pid`` started (epoch seconds, to ~1 s: Linux /proc); None where unreadable."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        btime = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def _command(pid: int) -> str:
    """The command line of ``pid`` (shortened; empty where unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    cmd = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return cmd if len(cmd) <= 120 else cmd[:117] + "..."


def pid_reused(pid: int, lock: Path) -> bool:
    """Whether live ``pid`` started after ``lock`` was written: the run that wrote it is gone
    and its pid now belongs to another process (2 s of slack for /proc's 1-s boot time)."""
    start = _process_start(pid)
    try:
        return start is not None and start > lock.stat().st_mtime + 2.0
    except OSError:
        return False


def _slurm_job() -> str:
    """``SLURM_JOB_ID`` (kept across a requeue), or ``-`` outside SLURM."""
    return os.environ.get("SLURM_JOB_ID") or "-"


class RunDirLock:
    """The lock of ``out`` (see the module docstring); :meth:`release` is idempotent."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.path = self.out / LOCK_FILE
        self.held = False
        self.created = created_by_this_launch(self.out)

    def acquire(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        me = f"{os.getpid()} {socket.gethostname()} {_slurm_job()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_dead()
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(me + "\n")
            self.held = True
            return
        raise ConfigError(f"{self.out}: could not take the run-dir lock {self.path}")

    def _take_over_if_dead(self) -> None:
        pid, host = read_lock(self.path)
        if host != socket.gethostname():
            raise ConfigError(
                f"{self.out} is in use by a run on host {host} (pid {pid}, lock {self.path}); "
                "choose another hydra.run.dir, or delete the lock if that run is dead"
            )
        reused = pid > 0 and _pid_alive(pid) and pid_reused(pid, self.path)
        if pid > 0 and _pid_alive(pid) and not reused:
            cmd = _command(pid)
            raise ConfigError(
                f"{self.out} is in use by a live run (pid {pid} on {host}, lock {self.path}"
                f"{f': {cmd}' if cmd else ''}); wait for it to end or choose another "
                f"hydra.run.dir; if pid {pid} is not that run (a reused pid), delete {self.path}"
            )
        why = "its pid now belongs to a process started after the lock" if reused else "gone"
        warnings.warn(
            f"{self.out}: taking over the lock of a run that is {why} (pid {pid} on {host})",
            stacklevel=3,
        )
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def release(self, failed: bool = False) -> None:
        """Drop the lock; after a failure, remove the run dir if this launch made it and
        nothing else was written."""
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.held = False
        if failed and self.created:
            remove_if_empty(self.out)


def read_lock(path: Path) -> tuple[int, str]:
    """``(pid, host)`` of a lock file; pid -1 (a dead run on this host) for a lock that is
    half-written or belongs to this SLURM job's previous incarnation."""
    try:
        pid_s, host, *rest = path.read_text().split()
        pid, job = int(pid_s), (rest or ["-"])[0]
    except (OSError, ValueError):  # half-written by a run killed while taking it
        return -1, socket.gethostname()
    if job != "-" and job == _slurm_job():  # this SLURM job's previous incarnation
        return -1, socket.gethostname()
    return pid, host


def live_holder(out: str | Path) -> str | None:
    """Who holds the lock of ``out`` when that may be a live run (a live pid here, or any pid
    on another host, which cannot be checked from here): ``"pid N on HOST"``; None when the dir
    has no lock or its run is gone (for tools that must never touch a live run's dir)."""
    path = Path(out) / LOCK_FILE
    if not path.is_file():
        return None
    pid, host = read_lock(path)
    alive = pid > 0 and _pid_alive(pid) and not pid_reused(pid, path)
    if host == socket.gethostname() and not alive:
        return None
    return f"pid {pid} on {host}"


def created_by_this_launch(out: Path) -> bool:
    """``out`` does not exist yet, or is empty and was made after this process started
    (Hydra's ``mkdir`` before the task function)."""
    if not out.exists():
        return True
    try:
        return not any(out.iterdir()) and out.stat().st_mtime >= PROCESS_START - 1.0
    except OSError:
        return False


def remove_if_empty(out: Path) -> None:
    with contextlib.suppress(OSError):
        out.rmdir()  # only an empty dir: never anything a run wrote


def save_hydra_config(task_cfg: Any, out: str | Path) -> None:
    """``.hydra/config.yaml`` (the composed task config, unresolved, as Hydra writes it),
    ``hydra.yaml`` and ``overrides.yaml`` in ``out``, when running under Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if task_cfg is None or not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    d = Path(out) / ".hydra"
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "config.yaml": task_cfg,
        "hydra.yaml": OmegaConf.create({"hydra": hydra_cfg}),
        "overrides.yaml": hydra_cfg.overrides.task,
    }
    for name, node in files.items():
        tmp = d / f".{name}.tmp"
        tmp.write_text(OmegaConf.to_yaml(node))
        tmp.replace(d / name)


def finished_record(out: Path, iterations: int, ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The ``summary.json`` record of a run that is finished: its checkpoint reached
    ``iterations`` and holds the final validation, and the summary was written. None otherwise."""
    done = int(ckpt["sfpo_counters"]["iteration"])
    val = (ckpt.get("callbacks") or {}).get("ValidationCallback") or {}
    summary = out / "summary.json"
    if done < iterations or val.get("last_iteration") != done or not summary.is_file():
        return None
    try:
        record = json.loads(summary.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("summary", {}).get("iterations") == done else None


def summary_is_current(out: str | Path, iterations: int) -> bool:
    """Whether ``summary.json`` in ``out`` is the result of the run as configured now: it
    reports ``iterations`` and is not older than ``last.ckpt`` (a finished run saves its last
    checkpoint, then the summary; a run stopped later, or extended, saves a newer
    checkpoint). For the multirun launcher: a finished job that was run again exits 0
    without writing its summary (``ckpt_path=last``), and is complete."""
    out = Path(out)
    summary, last = out / "summary.json", out / "last.ckpt"
    try:
        record = json.loads(summary.read_text())
        if (record.get("summary") or {}).get("iterations") != iterations:
            return False
        return not last.exists() or summary.stat().st_mtime_ns >= last.stat().st_mtime_ns
    except (OSError, ValueError, AttributeError):
        return False


DISK_FAULTS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file larger than the file-size limit (ulimit -f) or the file system allows",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
}
# torch's zip writer turns a failed write into a RuntimeError; the OSError it hit (when it wrote
# to a Python file object) is the RuntimeError's __context__
TORCH_WRITE_FAILED = ("inline_container.cc", "PytorchStreamWriter failed", "file write failed")
PATH_NAMES = ("final", "path", "filepath", "tmp")  # locals that name the file being written


def disk_fault_line(err: BaseException, out: str | Path) -> str | None:
    """One line for a write that failed for space, a size limit or permissions
    (``DISK_FAULTS``; an ``OSError``, or torch's writer failing on one): the path, the fault,
    and what in the run dir is intact (checkpoints and the config are written to a temporary
    file and renamed, so the newest complete ``iter-N.ckpt`` / ``last.ckpt`` are whole).
    None for any other error."""
    out = Path(out)
    code = _fault_errno(err)
    if code is None and isinstance(err, RuntimeError) and _torch_write_failed(err):
        code = _diagnose(out)
    if code is None:
        return None
    path = getattr(err, "filename", None) or _path_in_traceback(err, out) or out
    return (
        f"Error: {DISK_FAULTS[code]} ({errno.errorcode[code]}) writing {path}; "
        f"{_intact(out)}; fix the disk (space, limit, permissions) and rerun with "
        "ckpt_path=last"
    )


def _fault_errno(err: BaseException | None) -> int | None:
    """The ``DISK_FAULTS`` errno of ``err`` or of an exception it was raised from."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FAULTS:
            return err.errno
        err = err.__cause__ or err.__context__
    return None


def _torch_write_failed(err: BaseException) -> bool:
    return any(s in str(err) for s in TORCH_WRITE_FAILED)


def _diagnose(out: Path) -> int | None:
    """Why a write into ``out`` failed when the writer kept no errno (torch writing to a
    path): a file-size limit, a read-only mount, no write permission, or under 64 MiB free."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        return errno.EFBIG
    try:
        st = os.statvfs(out)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if not os.access(out, os.W_OK):
        return errno.EACCES
    return errno.ENOSPC if st.f_bavail * st.f_frsize < 64 << 20 else None


def _path_in_traceback(err: BaseException, out: Path) -> Path | None:
    """The file the failed write was for: the innermost frame's ``final`` / ``path`` / ...
    local that lies in ``out`` (a failed ``write`` names no file)."""
    found, out = None, out.resolve()
    tb = err.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals
        for name in PATH_NAMES:
            value = local.get(name)
            if isinstance(value, str | os.PathLike) and Path(value).resolve().parent == out:
                found = Path(value)
                break
        tb = tb.tb_next
    return _destination(found) if found is not None else None


def _destination(path: Path) -> Path:
    """The file a temporary one stands for (``.iter-2.ckpt.tmp``, ``.iter-2.ckpt.123.part``
    -> ``iter-2.ckpt``); any other path as it is."""
    match = re.fullmatch(r"\.(.+?)(\.tmp|\.\d+\.part)", path.name)
    return path.with_name(match.group(1)) if match else path


def _intact(out: Path) -> str:
    """What in ``out`` a failed write left whole: the newest checkpoint, or the files."""
    ckpts = sorted(out.glob("iter-*.ckpt")) if out.is_dir() else []
    if ckpts:
        last = " (last.ckpt names it)" if (out / "last.ckpt").exists() else ""
        return f"intact: {ckpts[-1]}{last}, the newest complete checkpoint"
    try:
        names = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
    except OSError:
        names = []
    if not names:
        return f"nothing was written in {out}"
    return f"no checkpoint yet; intact: {', '.join(names[:6])} in {out}"
