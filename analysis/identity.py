"""Run identity: which settings make two runs the same experiment, and refusing to pool others.

A run's *effective config* is its resolved config, flattened to dotted leaves, with

- the keys that cannot change what is trained or measured removed: ``seed`` (kept beside the
  identity, as the replica index), ``task_name``, ``ckpt_path``, ``paths``, ``logger``,
  ``callbacks``, ``wandb``, ``checkpoint`` (when and where weights are saved), ``extras`` (the
  experiment's name: the same config run by two experiments is one experiment), ``hydra``,
  the device layout ``trainer.{accelerator,devices,num_nodes,strategy}`` (the data-parallel
  split is tested equivalent, tests/test_train_e2e.py), ``rollout.reward_workers`` (parallelism
  of the grader) and ``model.sfpo_alpha`` (only a default for ``sfpo.alpha``, which is kept);
- ``data.toy.split`` when it is ``text``: the default, which configs older than the key ran
  with (a run with ``split=terms`` is another experiment);
- the settings that the method does not read removed: with ``algorithm=grpo`` / ``sfpo.alpha=0``
  the engine does one plain update, so of ``sfpo`` only ``alpha = 0`` stays (K, slow
  correction, trigger, decay are unused); with the entropy trigger off, its window/tau/mode/
  source and what alpha does after it (``decay``, ``decay_steps``) are unused; with
  ``decay=zero``, ``decay_steps`` is unused. ``algorithm`` is implied by alpha and set from it.

``val.every`` stays: it sets the steps at which accuracy is measured, and Fig. 4's cost to reach
a target is read at those steps. Every other leaf (data, model, warm-up, rollout, loss, optim,
update, validation sampling, precision) is part of the identity.

The identity is a short hash of the effective config. Runs with the same identity and seed are
replicas (counted once); runs that share a label must share an identity, and runs compared in
one panel or table must agree on everything their labels do not name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

IGNORED_TOP = ("seed", "task_name", "ckpt_path", "paths", "logger", "callbacks", "wandb",
               "checkpoint", "extras", "hydra")  # fmt: skip
# kernels and resources, not the method: the same run up to float rounding (the speed-only
# settings a resume may change, added after runs were committed: absent from their configs)
IGNORED_LEAVES = ("trainer.accelerator", "trainer.devices", "trainer.num_nodes",
                  "trainer.strategy", "rollout.reward_workers", "model.sfpo_alpha",
                  "optim.impl", "update.fuse_old_logprobs")  # fmt: skip
# the settings a label names (analysis.runs.method_label): they may differ between the curves
LABEL_KEYS = ("algorithm", "sfpo.K", "sfpo.alpha", "sfpo.slow_correction",
              "sfpo.entropy_control.enabled", "sfpo.entropy_control.tau", "sfpo.decay",
              "sfpo.decay_steps")  # fmt: skip
_EC = "sfpo.entropy_control."


class MixedRuns(ValueError):
    """Runs with different settings were asked to be pooled or compared as equals."""


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out |= _flat(v, f"{prefix}{k}.")
        return out
    return {prefix[:-1]: _norm(node)}


def _norm(v: Any) -> Any:
    """Canonical leaf value: integral floats as ints (``1.0`` == ``1``), tuples as lists."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, list | tuple):
        return [_norm(x) for x in v]
    return v


def effective_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Resolved run config (nested) -> the flat ``{dotted key: value}`` that identifies it."""
    flat = _flat({k: v for k, v in cfg.items() if k not in IGNORED_TOP})
    for key in IGNORED_LEAVES:
        flat.pop(key, None)
    if flat.get("data.toy.split") == "text":  # the default, absent from older runs' configs
        flat.pop("data.toy.split")
    alpha = float(flat.get("sfpo.alpha", 0.8))
    if alpha == 0 or flat.get("algorithm") == "grpo":
        flat = {k: v for k, v in flat.items() if not k.startswith("sfpo.")} | {"sfpo.alpha": 0}
    else:
        if not flat.get(_EC + "enabled", True):
            flat = {k: v for k, v in flat.items() if not k.startswith(_EC)}
            flat = {k: v for k, v in flat.items() if k not in ("sfpo.decay", "sfpo.decay_steps")}
            flat[_EC + "enabled"] = False
        if flat.get("sfpo.decay", "zero") == "zero":
            flat.pop("sfpo.decay_steps", None)
    flat["algorithm"] = "grpo" if flat["sfpo.alpha"] == 0 else "sfpo"
    return dict(sorted(flat.items()))


def config_json(eff: Mapping[str, Any]) -> str:
    return json.dumps(dict(eff), sort_keys=True, default=str)


def identity(eff: Mapping[str, Any]) -> str:
    """12-hex-digit hash of an effective config."""
    return hashlib.sha256(config_json(eff).encode()).hexdigest()[:12]


def differing(configs: Mapping[str, Mapping[str, Any]], skip: Iterable[str] = ()) -> dict:
    """``{key: {run: value}}`` for the leaves on which the runs disagree (a missing leaf is
    ``<absent>``); keys in ``skip`` are ignored."""
    skip = set(skip)
    keys = sorted({k for c in configs.values() for k in c} - skip)
    out = {}
    for k in keys:
        vals = {run: c.get(k, "<absent>") for run, c in configs.items()}
        if len({json.dumps(v, default=str) for v in vals.values()}) > 1:
            out[k] = vals
    return out


def _describe(diff: Mapping[str, Mapping[str, Any]], limit: int = 6) -> str:
    parts = []
    for k, vals in list(diff.items())[:limit]:
        by_value: dict[str, list[str]] = {}
        for run, v in vals.items():
            shown = "absent" if v == "<absent>" else json.dumps(v, default=str)
            by_value.setdefault(shown, []).append(run)
        parts.append(k + " = " + " vs ".join(f"{v} ({', '.join(rs[:3])}{', …' if len(rs) > 3 else ''})" for v, rs in by_value.items()))  # fmt: skip
    more = f"; and {len(diff) - limit} more" if len(diff) > limit else ""
    return "; ".join(parts) + more


def _configs(runs: pd.DataFrame) -> dict[str, dict[str, Any]]:
    one = runs.drop_duplicates("run_id")
    return {r: json.loads(c) for r, c in zip(one["run_id"], one["config"], strict=True)}


def dedupe(runs: pd.DataFrame) -> pd.DataFrame:
    """One run per (identity, seed): exact replicas (the same effective config and seed, e.g.
    GRPO under K=3 and K=7, or a run also stored as a W&B copy) count once. The kept run is the
    first by ``run_id``, so the choice does not depend on the order runs were found in."""
    first = runs.drop_duplicates("run_id").sort_values("run_id")
    keep = first.drop_duplicates(["identity", "seed"])["run_id"]
    return runs[runs["run_id"].isin(set(keep))]


def check_pooling(runs: pd.DataFrame, what: str, by: str = "label", within: str = "model") -> None:
    """Raise :class:`MixedRuns` unless (1) every ``by`` group (a curve, a table row) holds one
    identity, and (2) per ``within`` group (a panel, a table), runs agree on every leaf their
    labels do not name (a leaf of ``sfpo`` only among the runs that read it)."""
    if runs.empty:
        return
    for key, g in runs.groupby(by, sort=True):
        if g["identity"].nunique() > 1:
            diff = differing(_configs(g))
            raise MixedRuns(
                f"{what}: runs labelled {key!r} have different settings and would be pooled: "
                f"{_describe(diff)}. Pass runs of one configuration (--runs of one sweep)."
            )
    for key, g in runs.groupby(within, sort=True):
        configs = _configs(g)
        # labels name the lr when the runs read together use more than one (runs.name_lr)
        lr_named = g["label"].str.contains("lr=", regex=False).all()
        diff = differing(configs, skip=LABEL_KEYS + (("optim.lr",) if lr_named else ()))
        diff = {
            k: v
            for k, v in diff.items()
            if not k.startswith("sfpo.") or len({json.dumps(x) for x in v.values() if x != "<absent>"}) > 1
        }  # fmt: skip
        if diff:
            raise MixedRuns(
                f"{what} ({within}={key}): the runs compared differ in settings their labels do "
                f"not name: {_describe(diff)}. Compare runs that differ only in the method."
            )
