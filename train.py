"""sfpo_lab entry point: compose (Hydra) -> validate -> build -> fit -> return the tracked metric.

python train.py                                  # CPU default: SFPO on the toy task
python train.py -m sfpo.K=3,7 sfpo.alpha=0.3,0.6,1.0
python train.py model=qwen2.5-math-1.5b data=dapo_math trainer=fsdp
"""

from __future__ import annotations

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
    finally:
        import wandb

        wandb.finish()  # a live run would otherwise be reused by the next multirun job
    return summary.get("val_avg_last")


if __name__ == "__main__":
    main()
