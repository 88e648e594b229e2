"""Synthetic Hydra run dirs with the layout training writes (``.hydra/config.yaml`` with
Hydra-only interpolations, Lightning's wide ``metrics.csv`` with separate train and val rows)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import yaml

ITERS = 10
VAL_EVERY = 5
ROLLOUTS_PER_STEP = 128

CONFIG = """seed: {seed}
iterations: {iters}
sfpo:
  K: {K}
  alpha: {alpha}
  slow_correction: {slow}
  entropy_control:
    enabled: {ec}
    window: 5
  decay: {decay}
  decay_steps: 3
model:
  name: {model}
data:
  kind: toy
extras:
  experiment: {experiment}
  scale: toy
paths:
  output_dir: ${{hydra:runtime.output_dir}}
"""


def write_run(
    run_dir: Path,
    experiment: str,
    seed: int,
    alpha: float = 0.8,
    K: int = 3,
    slow: bool = True,
    ec: bool = True,
    decay: str = "zero",
    model: str = "tiny-qwen2",
    gain: float = 1.0,
    stop: int | None = 6,
    offset: float = 0.0,
    settings: dict[str, object] | None = None,
) -> Path:
    """One run: val/avg = 20 + seed + offset + gain * step, train/acc = 0.2 + 0.01 * gain * step
    + 0.001 * seed; the other train metrics vary smoothly with step only; sfpo/alpha is alpha
    until the trigger (step ``stop``, when EC is on), then 0, and sfpo/fast_steps is K while
    sfpo/alpha > 0, as the engine logs them. ``settings``: dotted config keys to add or change
    (``{"data.batch_size": 8}``)."""
    (run_dir / ".hydra").mkdir(parents=True)
    text = CONFIG.format(seed=seed, iters=ITERS, K=K, alpha=alpha, slow=str(slow).lower(),
                         ec=str(ec).lower(), decay=decay, model=model, experiment=experiment)  # fmt: skip
    if settings:
        tree = yaml.safe_load(text)
        for key, value in settings.items():
            *parents, leaf = key.split(".")
            node = tree
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        text = yaml.safe_dump(tree)
    (run_dir / ".hydra" / "config.yaml").write_text(text)
    fields = ["step", "train/acc", "train/entropy", "train/reward", "train/response_length/mean",
              "train/rollouts", "train/wall_clock_s", "sfpo/alpha", "sfpo/fast_steps", "sfpo/stop_step",
              "sfpo/snapshot_bytes", "perf/peak_mem_gb", "val/toy/acc", "val/avg"]  # fmt: skip
    sec = 1.0 if alpha == 0 else 1.0 + K / 3
    rows = []
    for step in range(ITERS + 1):
        cost = {"train/rollouts": step * ROLLOUTS_PER_STEP, "train/wall_clock_s": step * sec}
        if step % VAL_EVERY == 0 or step == ITERS:  # the validation callback's row
            acc = 20.0 + seed + offset + gain * step
            rows.append({"step": step, "val/toy/acc": acc, "val/avg": acc, **cost})
        if step == 0:
            continue
        stopped = stop is not None and ec and alpha > 0 and step >= stop
        used = 0.0 if stopped or alpha == 0 else alpha  # the engine: K fast passes iff used > 0
        rows.append({
            "step": step, "train/acc": 0.2 + 0.01 * gain * step + 0.001 * seed,
            "train/entropy": 0.5 - 0.01 * step, "train/reward": 0.3 + 0.01 * step,
            "train/response_length/mean": 10 + 0.1 * step, **cost,
            "sfpo/alpha": used, "sfpo/fast_steps": float(K if used > 0 else 0),
            "sfpo/stop_step": stop if stopped else math.nan,
            "sfpo/snapshot_bytes": 0.0 if alpha == 0 else 3.2e6,
            "perf/peak_mem_gb": 0.70 + (0.01 if alpha > 0 else 0.0) + 0.001 * seed,
        })  # fmt: skip
    with open(run_dir / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return run_dir


def write_all(root: Path, seeds: tuple[int, ...] = (0, 1)) -> Path:
    """Every experiment the outputs need, as multirun dirs ``root/<experiment>/<job>``."""
    jobs: list[tuple[str, dict]] = []
    for s in seeds:
        jobs += [
            ("paper_main", {"alpha": 0.0, "gain": 1.0, "seed": s}),
            ("paper_main", {"alpha": 0.8, "gain": 2.0, "seed": s}),
            # GRPO-μ: alpha = 1 with slow correction (K + 1 passes per batch, no reposition)
            ("paper_main", {"alpha": 1.0, "gain": 1.5, "seed": s}),
            ("ablation_k_alpha", {"alpha": 0.3, "K": 3, "gain": 1.5, "seed": s}),
            ("ablation_k_alpha", {"alpha": 0.6, "K": 7, "gain": 1.2, "seed": s}),
            ("slow_correction", {"alpha": 0.8, "slow": False, "gain": 1.1, "seed": s}),
            ("entropy_control", {"alpha": 0.8, "ec": False, "gain": 1.8, "seed": s}),
            ("alpha_decay", {"alpha": 0.8, "decay": "linear", "gain": 1.9, "seed": s}),
            # no validation, as conf/experiment/memory_profile.yaml: not a replica of paper_main
            ("memory_profile", {"alpha": 0.0, "seed": s, "settings": {"val.every": 0}}),
            ("memory_profile", {"alpha": 0.8, "seed": s, "settings": {"val.every": 0}}),
        ]
    counters: dict[str, int] = {}
    for experiment, kw in jobs:
        n = counters[experiment] = counters.get(experiment, -1) + 1
        write_run(root / experiment / str(n), experiment, **kw)
    return root
