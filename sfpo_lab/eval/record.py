"""An evaluation is its own record: what it evaluated, where it may be written, and which of its
settings came from the checkpoint's run.

``summary.json`` of ``python -m sfpo_lab.eval`` carries an ``evaluated`` block (the checkpoint,
its iteration, the benchmarks with their problem counts, limit, n, sampling, parser, and which
settings were taken from the run), so the analysis shows it as an evaluation labelled with its
settings and never in the place of the training run's own validation. ``out=`` must not be a
training run's directory: the eval's ``summary.json`` would replace the run's, after which the
launcher and ``analysis/reproduce.py`` no longer see the run as finished.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

KIND = "sfpo_lab.eval"
"""``evaluated.kind``: how the analysis tells an evaluation's ``summary.json`` from a run's."""

# files a training run (or a multirun) writes into its directory
_RUN_FILES = (
    "metrics.csv",
    "hparams.yaml",
    "wandb_id.txt",
    "multirun.yaml",
    "multirun_summary.csv",
)
SAMPLING = ("temperature", "top_p", "top_k", "max_new_tokens", "seed")


def run_files(out: Path) -> list[str]:
    """The training-run files in ``out`` that an evaluation written there would sit among (its
    ``summary.json`` would replace the run's): empty when ``out`` is not a run's directory."""
    found = [name for name in _RUN_FILES if (out / name).is_file()]
    found += sorted(p.name for p in out.glob("*.ckpt"))
    hydra_cfg = out / ".hydra" / "config.yaml"
    if hydra_cfg.is_file() and OmegaConf.load(hydra_cfg).get("task_name") != "eval":
        found.append(".hydra/config.yaml")
    return found


def check_out(out: str | Path) -> None:
    """Refuse an ``out=`` that is a training run's directory (one line, naming what is there)."""
    path = Path(out).expanduser()
    found = run_files(path) if path.is_dir() else []
    if found:
        raise ValueError(
            f"out={str(out)!r} is a training run's directory (it holds {', '.join(found[:3])}): "
            f"the evaluation's summary.json would replace the run's; give a directory of its "
            f"own, e.g. out={str(Path(out) / 'eval')!r}"
        )


def taken_from_run(before: Mapping[str, Any], after: DictConfig, keys: Iterable[str]) -> dict:
    """``{key: value}`` of the settings unset in ``before`` that the run filled in ``after``."""
    out = {}
    for key in keys:
        if before.get(key) is None and after[key] is not None:
            value = after[key]
            out[key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return out


def evaluated(
    cfg: DictConfig, extra: Mapping[str, Any], problems: Mapping[str, int], source: str
) -> dict[str, Any]:
    """The ``evaluated`` block of ``summary.json``: what this evaluation measured, so that it
    reads as itself wherever it is found."""
    ckpt = None if cfg.ckpt is None else str(Path(str(cfg.ckpt)).expanduser().resolve())
    return {
        "kind": KIND,
        "ckpt": ckpt,
        "model": source,
        "iteration": int(extra.get("iteration", 0)) if ckpt else None,
        "benchmarks": dict(problems),
        "limit": cfg.limit if cfg.limit is None or str(cfg.limit) == "all" else int(cfg.limit),
        "file_limit": extra.get("file_limit"),
        "n": int(cfg.n),
        "sampling": {k: cfg[k] for k in SAMPLING},
        "parser": {
            "answer_parsing": str(cfg.answer_parsing),
            "answer_extraction": cfg.answer_extraction,
        },  # fmt: skip
        "template": str(cfg.template),
        "chat": bool(cfg.chat),
        "from_run": dict(extra.get("from_run") or {}),
    }


def from_run_note(from_run: Mapping[str, Any], file_name: str | None, file_rows: int | None) -> str:
    """The printed line naming the settings the run supplied (and that a held-out file is read
    whole when ``limit=`` was not given)."""
    if not from_run:
        return ""
    shown = ", ".join(f"{k}={v!r}" for k, v in from_run.items())
    line = f"from the run's validation (not set here): {shown}"
    if file_name is not None and "limit" in from_run:
        line += f"; {file_name}: all {file_rows} rows (the run's limit is its benchmarks'; give limit= to cut the file)"  # fmt: skip
    return line
