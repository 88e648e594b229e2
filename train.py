"""sfpo_lab entry point: compose (Hydra) -> validate -> build -> fit -> return the tracked metric.

python train.py                                  # CPU default: SFPO on the toy task
python train.py -m sfpo.K=3,7 sfpo.alpha=0.3,0.6,1.0
python train.py model=qwen2.5-math-1.5b data=dapo_math trainer=fsdp
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from sfpo_lab.config import register_schema, to_run_config

register_schema()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    run = to_run_config(cfg)  # typed + validated before any model, data or process exists
    from sfpo_lab.runner import train  # heavy imports only after the config is known good

    try:
        summary = train(run, OmegaConf.to_container(cfg, resolve=True))
        write_summary(run.paths.output_dir, summary)
    finally:
        # a live W&B run would otherwise be reused by the next multirun job (only a logger
        # that was configured imports wandb: logger=csv runs never need the package)
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish()
    return summary.get("val_avg_last")


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
    main()
