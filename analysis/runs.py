"""Run discovery: Hydra run/multirun dirs or a W&B project -> one tidy (long) DataFrame.

One row per (run, step, metric)::

    run_id  source  experiment  scale  model  data  method  label  K  alpha  slow_correction
    ec  decay  seed  iterations  step  metric  value

``method`` is GRPO, GRPO-μ or SFPO (:func:`method_label`); ``lr`` is ``optim.lr``, named in
every label when the runs read together use more than one (:func:`name_lr`). ``step`` is the rollout-batch
iteration (0 = before any update). Metrics are the keys the training logs to ``metrics.csv``
(``train/``, ``val/``, ``sfpo/``, ``perf/``): a training result is the run's own validation. A
standalone evaluation (``python -m sfpo_lab.eval``) written under a run dir is not read here,
whatever it evaluated: :mod:`analysis.evals` lists evaluations as such, with their settings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from analysis.identity import MixedRuns, config_json, effective_config, identity

RUN_COLUMNS = [
    "run_id",
    "source",
    "experiment",
    "scale",
    "accelerator",
    "model",
    "data",
    "method",
    "label",
    "K",
    "alpha",
    "slow_correction",
    "ec",
    "decay",
    "lr",
    "seed",
    "iterations",
    "identity",
    "config",
]
COLUMNS = [*RUN_COLUMNS, "step", "metric", "value"]


class MissingRuns(LookupError):
    """A table/figure has no runs to draw from (the message names what is missing)."""


# config nodes that hold Hydra-only interpolations (${hydra:...}); not needed for labels
_UNRESOLVABLE = ("logger", "callbacks", "hydra")


def method_label(
    K: int, alpha: float, slow: bool, ec: bool, decay: str, tau: float = 1.0, decay_steps: int = 0
) -> tuple[str, str]:
    """``(method, label)``: ``GRPO`` when alpha = 0 (the engine then does one plain update);
    ``GRPO-μ`` when alpha = 1 with slow correction on (K + 1 update passes per batch and no
    reposition: the equal-compute control); else ``SFPO``. The label names K (and alpha for
    SFPO) and every setting that differs from the authors' (slow correction on, entropy
    control on with tau = 1, decay ``zero``); what the trigger governs is not named when the
    trigger is off, since nothing reads it then. alpha = 1 without slow correction stays
    ``SFPO(..., no slow)`` (K plain passes), and with a linear decay after the trigger
    ``SFPO(..., α=1, linear decay ...)`` (alpha then falls through (0, 1): a reposition)."""
    if alpha == 0:
        return "GRPO", "GRPO"
    # a linear decay after the trigger repositions (alpha in (0, 1)): not the control any more
    mu = alpha == 1 and slow and (not ec or decay == "zero")
    parts = [f"K={K}"] if mu else [f"K={K}", f"α={alpha:g}"]
    if not slow:
        parts.append("no slow")
    if not ec:
        parts.append("no EC")
    elif tau != 1.0:
        parts.append(f"τ={tau:g}")
    if ec and decay != "zero":
        parts.append(f"{decay} decay" + (f" over {decay_steps}" if decay == "linear" else ""))
    method = "GRPO-μ" if mu else "SFPO"
    return method, f"{method}({', '.join(parts)})"


def _data_name(data: Mapping[str, Any]) -> str:
    if data.get("kind") == "toy":
        return "toy"
    files = " ".join(str(f) for f in data.get("train_files") or []).lower()
    for key, name in (("dapo_math", "dapo_math"), ("skywork", "skywork")):
        if key in files:
            return name
    return "files"


def run_attributes(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Run-level columns from a resolved run config (nested dicts, as in ``config.yaml``);
    ``identity``/``config``: see :mod:`analysis.identity`."""
    sfpo = cfg.get("sfpo", {})
    extras = cfg.get("extras") or {}
    K, alpha = int(sfpo.get("K", 3)), float(sfpo.get("alpha", 0.8))
    slow = bool(sfpo.get("slow_correction", True))
    ec = bool((sfpo.get("entropy_control") or {}).get("enabled", True))
    decay = str(sfpo.get("decay", "zero"))
    tau = float((sfpo.get("entropy_control") or {}).get("tau", 1.0))
    method, label = method_label(K, alpha, slow, ec, decay, tau, int(sfpo.get("decay_steps", 0)))
    return {
        "experiment": str(extras.get("experiment", "adhoc")),
        "scale": str(extras.get("scale", "paper")),
        # what the memory metrics mean (CPU RSS or CUDA peak) follows the device, not the label
        "accelerator": str((cfg.get("trainer") or {}).get("accelerator", "cpu")),
        "model": str((cfg.get("model") or {}).get("name", "unknown")),
        "data": _data_name(cfg.get("data") or {}),
        "method": method,
        "label": label,
        "K": K,
        "alpha": alpha,
        "slow_correction": slow,
        "ec": ec,
        "decay": decay,
        "lr": float((cfg.get("optim") or {}).get("lr", 1e-6)),
        "seed": int(cfg.get("seed", 0)),
        "iterations": int(cfg.get("iterations", 0)),
        "identity": identity(eff := effective_config(cfg)),
        "config": config_json(eff),
    }


def load_config(run_dir: Path) -> dict[str, Any]:
    """The run's config, resolved: ``.hydra/config.yaml`` (Hydra-only nodes dropped first,
    each ``paths.<key>`` replaced by the placeholder ``<paths.<key>>``), else Lightning's
    ``hparams.yaml`` (already resolved).

    ``paths`` holds ``${hydra:...}`` and environment lookups (``SFPO_DATA_DIR``) that cannot be
    resolved, or would resolve to this machine's values, when the run is analysed; the settings
    that point into it (``data.train_files: ${paths.data_dir}/train/...``) keep the file names
    the labels and identity read, machine-independently."""
    path = run_dir / ".hydra" / "config.yaml"
    if path.is_file():
        cfg = OmegaConf.load(path)
        for key in _UNRESOLVABLE:
            cfg.pop(key, None)
        paths = cfg.get("paths")
        if paths is not None:
            cfg.paths = {str(k): f"<paths.{k}>" for k in paths}
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return OmegaConf.to_container(OmegaConf.load(run_dir / "hparams.yaml"), resolve=False)  # type: ignore[return-value]


def _long(frame: pd.DataFrame) -> pd.DataFrame:
    """Wide ``step x metric`` rows (NaN = not logged) -> long, one value per (step, metric)."""
    metrics = [c for c in frame.columns if c != "step" and "/" in c]
    out = frame.melt(id_vars="step", value_vars=metrics, var_name="metric", value_name="value")
    out = out.dropna(subset=["value", "step"])
    out["step"] = out["step"].astype(int)
    # a val row and a train row at the same iteration both carry train/rollouts: keep one
    return out.drop_duplicates(subset=["step", "metric"], keep="last")


def load_run(run_dir: Path, run_id: str | None = None) -> pd.DataFrame:
    """One Hydra run dir (``metrics.csv`` + config) -> tidy rows."""
    run_dir = Path(run_dir)
    attrs = run_attributes(load_config(run_dir))
    long = _long(pd.read_csv(run_dir / "metrics.csv"))
    attrs |= {"run_id": run_id or run_dir.name, "source": str(run_dir)}
    return long.assign(**attrs)[COLUMNS]


def find_run_dirs(root: Path) -> list[Path]:
    """Every dir under ``root`` (itself included) holding ``metrics.csv`` and a config."""
    root = Path(root)
    dirs = {
        p.parent
        for p in root.rglob("metrics.csv")
        if (p.parent / ".hydra" / "config.yaml").is_file() or (p.parent / "hparams.yaml").is_file()
    }
    return sorted(dirs)


def discover(roots: Iterable[Path]) -> pd.DataFrame:
    """All runs under the given roots, one tidy DataFrame (empty, with columns, if none)."""
    frames = []
    for root in roots:
        root = Path(root)
        for d in find_run_dirs(root):
            rel = d.relative_to(root).as_posix()
            frames.append(load_run(d, run_id=f"{root.name}/{rel}" if rel != "." else root.name))
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return name_lr(pd.concat(frames, ignore_index=True))


def lr_text(lr: float) -> str:
    """``3e-4`` -> ``"3e-4"``, ``8.8e-5`` -> ``"8.8e-5"`` (at most 3 significant digits)."""
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def name_lr(df: pd.DataFrame) -> pd.DataFrame:
    """Runs read together with more than one ``optim.lr``: every label names its lr
    (``GRPO(lr=3e-4)``, ``SFPO(K=3, α=0.8, lr=8.8e-5)``), so two arms that differ only in the
    learning rate are two curves, neither pooled nor refused as mixed settings. With one lr
    the labels stay as they are (the committed outputs do not change). Two lrs that
    :func:`lr_text` renders alike (``1e-4``, ``1.004e-4``) are :class:`MixedRuns`."""
    if df.empty or df["lr"].nunique() <= 1:
        return df
    shown: dict[str, float] = {}
    for lr in sorted(map(float, df["lr"].unique())):
        if (other := shown.setdefault(lr_text(lr), lr)) != lr:
            raise MixedRuns(
                f"optim.lr={other!r} and optim.lr={lr!r} both read lr={lr_text(lr)}: runs of two "
                "learning rates would share a label and be pooled (pass runs of one of them)"
            )
    named = [
        label
        if "lr=" in label  # already named (frames read together twice)
        else f"{label[:-1]}, lr={lr_text(lr)})"
        if label.endswith(")")
        else f"{label}(lr={lr_text(lr)})"
        for label, lr in zip(df["label"], df["lr"], strict=True)
    ]
    return df.assign(label=named)


def incomplete_runs(df: pd.DataFrame) -> list[str]:
    """Runs whose last logged step is below their configured ``iterations`` (still running,
    killed, or failed): averaging them with finished runs would bend the curves' tails."""
    last = df.groupby("run_id").agg(step=("step", "max"), iterations=("iterations", "first"))
    return sorted(last.index[last["step"] < last["iterations"]])


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """W&B config -> nested dict: unwrap ``{"value": v}`` and fold dotted keys (``sfpo.K``),
    which a W&B agent's runs hold beside the nested ones (dotted keys win: they are the
    sweep's overrides)."""
    out: dict[str, Any] = {}
    dotted = []
    for key, val in flat.items():
        if isinstance(val, Mapping) and "value" in val and set(val) <= {"value", "desc"}:
            val = val["value"]
        if key.startswith("_"):
            continue
        if "." in key:
            dotted.append((key, val))
        else:
            out[key] = val
    for key, val in dotted:
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[leaf] = val
    return out


def wandb_run_frame(
    run_id: str, config: Mapping[str, Any], history: Iterable[Mapping[str, Any]]
) -> pd.DataFrame:
    """Pure conversion of one W&B run (config + history rows) into the tidy shape.

    ``history`` rows are dicts with ``step`` (or ``trainer/global_step``/``_step``) and metric
    keys, as ``run.scan_history()`` yields them.
    """
    rows = []
    for h in history:
        step = h.get("step", h.get("trainer/global_step", h.get("_step")))
        if step is None or (isinstance(step, float) and math.isnan(step)):
            continue
        rows.append({"step": step, **{k: v for k, v in h.items() if "/" in k}})
    attrs = run_attributes(_nest(config)) | {"run_id": run_id, "source": f"wandb:{run_id}"}
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    wide = pd.DataFrame(rows).drop(columns=["trainer/global_step"], errors="ignore")
    wide = wide.apply(pd.to_numeric, errors="coerce")
    return _long(wide).assign(**attrs)[COLUMNS]


def discover_wandb(
    project: str, group: str | None = None, tags: list[str] | None = None
) -> pd.DataFrame:
    """Runs of a W&B project (``entity/project``), filtered by group and/or any of ``tags``.
    Needs a reachable W&B server (not available on the CPU machine this was written on)."""
    import wandb

    filters: dict[str, Any] = {}
    if group:
        filters["group"] = group
    if tags:
        filters["tags"] = {"$in": list(tags)}
    api = wandb.Api()
    frames = [
        wandb_run_frame(f"wandb/{r.id}", dict(r.config), r.scan_history())
        for r in api.runs(project, filters=filters or None)
    ]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
