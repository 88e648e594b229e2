"""sfpo_lab entry point: compose (Hydra) -> validate -> build -> fit -> return the tracked metric.

python train.py                                  # CPU default: SFPO on the toy task
python train.py -m sfpo.K=3,7 sfpo.alpha=0.3,0.6,1.0
python train.py experiment=paper_main model=qwen2.5-math-1.5b algorithm=sfpo   # 8 GPUs, vLLM
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from sfpo_lab.config import ConfigError, register_schema, to_run_config
from sfpo_lab.run.project import setup_root
from sfpo_lab.run.rundir import created_by_this_launch, disk_fault_line, remove_if_empty


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        run = to_run_config(cfg)  # typed + validated before any model, data or process exists
        from sfpo_lab.run.runner import train  # heavy imports only after the config is known good

        hparams = OmegaConf.to_container(cfg, resolve=True)
        out = run.paths.output_dir  # written while the run still holds its run-dir lock
        summary = train(run, hparams, task_cfg=cfg, finish=lambda s: write_summary(out, s))
    except ConfigError as err:
        config_error(err)
    except (OSError, RuntimeError) as err:  # a full disk, a size limit, a read-only dir
        disk_error(err, cfg)  # one line, not 80; any other error propagates
        raise
    finally:
        # a live W&B run would otherwise be reused by the next multirun job (only a logger
        # that was configured imports wandb: logger=csv runs never need the package)
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish()
    return summary.get("val_avg_last")


def config_error(err: ConfigError) -> None:
    """A config error: one line on stderr, exit code 1, no run dir left by this launch (Hydra
    made it before the task ran); the whole traceback with ``HYDRA_FULL_ERROR=1``."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        out = Path(HydraConfig.get().runtime.output_dir)
        if created_by_this_launch(out):
            remove_if_empty(out)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    print(f"Error: {err}", file=sys.stderr, flush=True)
    sys.exit(1)


def disk_error(err: BaseException, cfg: DictConfig) -> None:
    """A write that failed for space, a size limit or permissions (``rundir.DISK_FAULTS``,
    torch's writer failing on one included): one line on stderr naming the path and what is
    intact, exit code 1; any other error is left to propagate (and every one shows its whole
    traceback with ``HYDRA_FULL_ERROR=1``)."""
    line = disk_fault_line(err, _output_dir(cfg))
    if line is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    print(line, file=sys.stderr, flush=True)
    sys.exit(1)


def _output_dir(cfg: DictConfig) -> str:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return HydraConfig.get().runtime.output_dir
    return str(cfg.paths.output_dir)


def write_summary(output_dir: str, summary: dict) -> None:
    """``summary.json`` in the run dir (rank 0): the multirun launcher's return value."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:
        return
    path = Path(output_dir) / "summary.json"
    record = {"return_value": summary.get("val_avg_last"), "summary": summary}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(path)


if __name__ == "__main__":
    # Here, not at import: the reward pool's forkserver workers re-run this file's top level
    # (as __mp_main__, Python 3.11), and storing the schema builds RunConfig's defaults, whose
    # checks import torch (~3 s of CPU per worker, while the trainer waits for them)
    register_schema()
    setup_root()  # PROJECT_ROOT: paths.cache_dir is the project's .cache from any working dir
    main()
