"""A Hydra launcher that runs every multirun job as its own, correctly sized process group.

Hydra's basic launcher calls the task function in the sweeping process. With
``trainer.devices > 1`` Lightning then re-runs ``sys.argv`` once per extra rank, so each child
inherits ``-m`` and re-runs the whole sweep elsewhere; the second job hangs or crashes when
jobs differ in device count (Lightning PR #18175, Hydra #2070). This launcher never runs the
task in the sweeping process: for each job it starts a fresh single run of the same script
with the job's overrides and ``hydra.run.dir=<sweep dir>/<subdir>``,

* ``python train.py ...`` when the job uses one device (``trainer.devices == 1``), or
* ``python -m torch.distributed.run --standalone --nproc_per_node=N train.py ...`` when it
  uses N > 1 (DDP or FSDP2; ``LOCAL_RANK`` is set, so Lightning spawns nothing itself),

waits for it, and reads its return value from ``summary.json`` in the job's directory. Jobs
run one after another; each one can use a different number of devices. One job per node:
multi-node jobs go through the SLURM (submitit) launcher instead.

Preemption: SIGTERM / SIGUSR1 / SIGINT (Ctrl-C) reaching the sweep is passed on to the running
job's training processes (every rank; each checkpoints at the next iteration boundary and exits
0; a second Ctrl-C, passed on too, stops the job at once); the sweep then starts no further
job, reports no result for the stopped one, and exits 0. Jobs
run in their own session, so only this forwarding reaches them (a SLURM-style signal to every
process would also hit torchrun's agent, which does not survive it: use hydra/launcher=slurm
there). Running the same command again with ``ckpt_path=last`` and the same
``hydra.sweep.dir`` resumes every job from its ``last.ckpt``; a finished job is recognised by
the same checks its process would run, here (:func:`sfpo_lab.run.sweep_results.finished_job`), and
starts no process.
A job's process ends with the sweep: if the sweep is killed (``kill -9`` included), the job
gets SIGTERM (:func:`die_with_parent`) and checkpoints at its next iteration boundary.

Hydra only loads launchers from the ``hydra_plugins`` namespace, so the class Hydra sees is a
one-line subclass in ``hydra_plugins/sfpo_lab_launcher``; the logic lives here.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from sfpo_lab.run.rundir import summary_is_current
from sfpo_lab.run.sweep_results import (  # noqa: F401 (re-exported)
    MULTIRUN_SUMMARY_FILE,
    SUMMARY_FILE,
    finished_job,
    format_table,
    job_row,
    read_return_value,
    report_jobs,
    wrote_summary_since,
)

log = logging.getLogger(__name__)

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# hydra overrides that belong to the sweep, not to the single run a job becomes
_SWEEP_ONLY = ("hydra.sweep", "hydra.launcher", "hydra.sweeper", "hydra.mode", "hydra.run.dir")
_SWEEP_GROUPS = ("hydra/launcher", "hydra/sweeper")


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes a child get ``sig`` when its parent dies (a ``kill -9`` of
    a sweep or of ``analysis/reproduce.py`` included), so no training process is left running
    under init; SIGTERM: a training process then saves at its next iteration boundary and
    exits (preemption), a torchrun agent passes it to its ranks. None off Linux.

    Linux PR_SET_PDEATHSIG fires when the *thread* that started the child ends: call Popen
    from a thread that lives as long as the child (the main thread, or the worker that waits
    for it). It survives ``exec``; a parent gone before the child set it is caught by
    comparing the parent pid (the child then exits before ``exec``)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the child
    except (OSError, AttributeError):
        return None
    parent, signum = os.getpid(), int(sig)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(128 + signum)

    return preexec


class JobFailedError(RuntimeError):
    """A multirun job's process exited with a non-zero code."""


def job_processes(cfg: DictConfig) -> int:
    """Processes a job needs on one node: ``trainer.devices`` (1 when absent).

    Raises:
        ValueError: ``trainer.num_nodes > 1`` (one node per job here) or a non-integer
            ``trainer.devices``.
    """
    trainer = cfg.get("trainer") or {}
    nodes = trainer.get("num_nodes", 1)
    if nodes != 1:
        raise ValueError(
            f"trainer.num_nodes={nodes}: the torchrun launcher runs each job on this node only; "
            "use hydra/launcher=slurm for multi-node jobs"
        )
    devices = trainer.get("devices", 1)
    if not isinstance(devices, int) or devices < 1:
        raise ValueError(f"trainer.devices must be an integer >= 1, got {devices!r}")
    return devices


def hydra_passthrough(hydra_overrides: Sequence[str]) -> list[str]:
    """The sweep's own hydra overrides that still apply to each single run."""
    keep = []
    for item in hydra_overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key.startswith(_SWEEP_ONLY) or key.startswith(_SWEEP_GROUPS):
            continue
        keep.append(item)
    return keep


_CONFIG_FLAGS = ("--config-path", "-cp", "--config-dir", "-cd")


def config_flags(argv: Sequence[str]) -> list[str]:
    """The sweep's ``--config-path`` / ``--config-dir`` flags (as given), for every job."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        name = arg.split("=", 1)[0]
        if name in _CONFIG_FLAGS:
            out += [arg] if "=" in arg else [arg, *argv[i + 1 : i + 2]]
    return out


def job_command(
    script: str,
    overrides: Sequence[str],
    job_dir: Path,
    nproc: int,
    *,
    config_name: str | None = None,
    python: str | None = None,
) -> list[str]:
    """The command line of one job: a single run of ``script`` on ``nproc`` processes."""
    python = python or sys.executable
    launch = [python]
    if nproc > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    args = [script, *config_flags(sys.argv[1:])]
    if config_name:
        args += ["--config-name", config_name]
    return launch + args + [*overrides, f"hydra.run.dir={job_dir}"]


class TorchrunLauncherBase(Launcher):
    """Runs each job as a subprocess (torchrun when it needs several devices).

    Args:
        python: interpreter for the jobs (default: this one).
        env: extra environment variables for every job.
    """

    def __init__(self, python: str | None = None, env: dict[str, str] | None = None) -> None:
        self.python = python
        self.env = dict(env or {})
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.preempted: int | None = None  # the signal that stopped the sweep
        self._child: subprocess.Popen | None = None
        self._nproc, self._script = 1, ""
        # one row per job of this multirun: a sweeper that launches in batches (Optuna) calls
        # launch() once per batch, and multirun_summary.csv lists every batch's jobs
        self._table: list[dict[str, Any]] = []

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs, one process group each")
        returns: list[JobReturn] = []
        previous = {sig: signal.signal(sig, self._forward) for sig in PREEMPT_SIGNALS}
        try:
            for i, overrides in enumerate(job_overrides):
                if self.preempted is not None:
                    log.info(
                        f"{signal.Signals(self.preempted).name}: not starting the remaining "
                        f"{len(job_overrides) - i} job(s); run the same command with "
                        f"ckpt_path=last hydra.sweep.dir={self.config.hydra.sweep.dir} to go on"
                    )
                    break
                ret = self._run_one(list(overrides), initial_job_idx + i)
                if ret is not None:
                    returns.append(ret)
            if self._table:
                report_jobs(Path(str(self.config.hydra.sweep.dir)), self._table)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return returns

    def _forward(self, signum: int, frame: Any) -> None:
        """Preemption: pass the signal to the job's training processes, start no other job.

        Under torchrun the signal goes to the rank processes themselves, not to the agent
        (which dies of SIGUSR1 and SIGKILLs its workers 30 s after a SIGTERM)."""
        self.preempted = signum
        child = self._child
        if child is None or child.poll() is not None:
            return
        ranks = training_processes(child.pid, self._script) if self._nproc > 1 else []
        for pid in ranks or [child.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _run_one(self, overrides: list[str], idx: int) -> JobReturn | None:
        assert self.config is not None and self.hydra_context is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg):
            cfg.hydra.job.id = cfg.hydra.job.num = idx
        job_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        self._nproc, self._script = job_processes(cfg), sys.argv[0]
        hydra_args = hydra_passthrough(OmegaConf.to_container(cfg.hydra.overrides.hydra))
        cmd = job_command(
            self._script,
            hydra_args + overrides,
            job_dir,
            self._nproc,
            config_name=cfg.hydra.job.config_name,
            python=self.python,
        )
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}  [{self._nproc} process(es)]")
        start = time.time() - 1.0  # file systems with coarse mtimes: one second of slack
        if self.python is None and not self.env and finished_job(cfg, job_dir):
            log.info(f"#{idx} is finished (its checks ran in this process): no process started")
            rc = 0
        else:
            child = subprocess.Popen(
                cmd, env=self._env(), start_new_session=True, preexec_fn=die_with_parent()
            )  # its own session: signals reach it through _forward; it ends if the sweep is killed
            rc = self._wait(child)
        # a finished job run again (ckpt_path=last) exits 0 without rewriting its summary
        done = wrote_summary_since(job_dir, start) or summary_is_current(job_dir, cfg.iterations)
        status = "stopped" if self.preempted is not None or rc == 0 else f"failed (exit {rc})"
        if rc == 0 and self.preempted is None:
            status = "completed" if done else "stopped"
        self._table.append(
            job_row(idx, filter_overrides(overrides), job_dir, status, time.time() - start - 1.0)
        )
        if self.preempted is not None:
            log.info(f"#{idx} stopped by {signal.Signals(self.preempted).name} (exit code {rc})")
            return None  # neither a result nor a failure: the sweep is resumed later
        if rc == 0 and not done:
            # a job stopped by a signal sent to it alone checkpoints and exits 0 without a
            # result: not completed, resumed with the sweep (ckpt_path=last)
            log.info(f"#{idx} exited 0 without writing {SUMMARY_FILE}: stopped, not completed")
            return None
        ret = JobReturn(
            overrides=overrides,
            cfg=cfg,
            hydra_cfg=cfg,
            working_dir=str(job_dir),
            task_name=cfg.hydra.job.name,
        )
        if rc == 0:
            ret.status, ret.return_value = JobStatus.COMPLETED, read_return_value(job_dir)
        else:
            ret.status = JobStatus.FAILED
            ret.return_value = JobFailedError(
                f"multirun job #{idx} ({' '.join(overrides)}) exited with code {rc}; "
                f"its log and outputs are in {job_dir}"
            )
        return ret

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)  # never inherit a process group
        return env

    def _wait(self, child: subprocess.Popen) -> int:
        """Wait for a job started in its own session (so a terminal's Ctrl-C or a signal to
        the sweep's process group reaches it only through :meth:`_forward`)."""
        self._child = child
        try:
            if self.preempted is not None:  # arrived while the job was being started
                self._forward(self.preempted, None)
            return child.wait()  # a Ctrl-C is forwarded by _forward, not a KeyboardInterrupt
        finally:
            self._child = None


def training_processes(agent_pid: int, script: str) -> list[int]:
    """The processes running ``script`` that ``agent_pid`` (torchrun) started (Linux /proc;
    empty where /proc is unavailable)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == agent_pid and script in (stat.parent / "cmdline").read_text():
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found
