"""What ``model=toy`` means to ``python -m sfpo_lab.eval``: the toy task and warmed-up base of a
run — the checkpoint's run, else the one ``python train.py`` (no arguments) trains.

Without a checkpoint the training config is composed from ``conf/`` exactly as ``train.py``
composes it, so the held-out problems and the cached base are the default run's (its task, its
warm-up steps), not those of the dataclass defaults in :class:`sfpo_lab.config.RunConfig`.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

CONF = Path(__file__).resolve().parents[2] / "conf"


def default_run(overrides: tuple[str, ...] = ()) -> Any:
    """The ``RunConfig`` that ``python train.py <overrides>`` runs (composed from ``conf/``;
    Hydra's global state, e.g. the eval app's own, is restored afterwards). A fresh copy per
    call; the composition itself is done once per process."""
    return copy.deepcopy(_composed(tuple(overrides)))


@cache
def _composed(overrides: tuple[str, ...]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    from sfpo_lab.config import register_schema, to_run_config

    register_schema()
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            # output_dir is ${hydra:runtime.output_dir}: nothing is written, any value will do
            cfg = compose("train", overrides=["paths.output_dir=.", *overrides])
    finally:
        restore_gh_from_backup(backup)
    return to_run_config(cfg)


def toy_run(cache_dir: str, warmup_steps: int | None = None, run: Any | None = None) -> Any:
    """The ``RunConfig`` whose toy base and held-out split ``model=toy`` means: the run's own
    (its base where the run cached it, else under ``cache_dir``), or without a run the default
    training run's, with ``warmup_steps`` (``toy_warmup_steps=``) when given."""
    if run is not None:
        from sfpo_lab.model.warmup import base_key

        run = copy.deepcopy(run)
        if (Path(run.paths.cache_dir) / "toy_base" / base_key(run) / "config.json").exists():
            return run  # the base the run trained from, where it was cached
        run.paths.cache_dir = str(cache_dir)
        return run
    run = default_run()
    run.paths.cache_dir = str(cache_dir)
    if warmup_steps is not None:
        run.model.warmup.steps = int(warmup_steps)
    return run
