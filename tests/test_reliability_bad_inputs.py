"""Every row of ``docs/bad_inputs.md`` (issue 9, item 5): the error it documents is the error
raised, it comes before any model is built, and no file that existed before is changed.

The table is the single source of the messages: each row's id is a test id here, the test
checks that the row's "error shown" text (``<dir>`` standing for the case's folder) is in the
raised error, and one test checks that the table and ``CASES`` list the same ids. Cases run
in this process through the same two calls as ``train.py`` (compose + validate, then
``runner.train``); ``test_the_cli_prints_one_line_and_leaves_no_run_dir`` checks one through
the real command line (one launch).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sfpo_lab.config import register_schema, to_run_config

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "bad_inputs.md"
register_schema()

# appended to every case, so a case that wrongly passed the checks would still end quickly
SMALL = [
    "logger=csv",
    "callbacks=none",
    "iterations=1",
    "data.batch_size=4",
    "rollout.n=2",
    "rollout.max_new_tokens=4",
    "rollout.reward_workers=0",
    "update.micro_batch_size=8",
    "val.every=0",
    "val.limit=2",
    "val.n=1",
    "checkpoint.every=1",
    "model.warmup.steps=5",
]


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda d: (d / name).write_text(text)


def _data(name: str) -> str:
    return f"data.kind=files data.train_files=[<dir>/{name}]"


def _truncated_ckpt(d: Path, prev: Path) -> None:
    blob = (prev / "last.ckpt").read_bytes()
    (d / "cut.ckpt").write_bytes(blob[: len(blob) // 2])  # a save killed half-way, by hand


GOOD = '{"problem": "1+1", "answer": "2"}\n'
# id -> (overrides, setup(dir, previous_run_dir)); "<dir>" / "<prev>" are substituted
CASES: dict[str, tuple[str, Callable[[Path, Path], None] | None]] = {
    "config-unknown-key": ("sfpo.foo=1", None),
    "config-wrong-type": ("sfpo.K=abc", None),
    "config-out-of-range": ("sfpo.alpha=1.5", None),
    "config-negative-K": ("sfpo.K=-1", None),
    "config-zero-samples": ("rollout.n=0", None),
    "config-bad-choice": ("optim.scheduler=exp", None),
    "config-unknown-group-option": ("model=gpt-17", None),
    "config-batch-not-divisible": ("update.micro_batch_size=3", None),
    "config-batch-vs-devices": ("trainer.devices=3", None),
    "config-zero-iterations": ("iterations=0", None),
    "config-zero-skip-limit": ("update.max_skipped_steps=0", None),
    "data-file-missing": (_data("nope.jsonl"), None),
    "data-empty-file": (_data("empty.jsonl"), lambda d, p: _write("empty.jsonl", "")(d)),
    "data-malformed-json-line-3": (
        _data("bad.jsonl"),
        lambda d, p: _write("bad.jsonl", GOOD * 2 + '{"problem": "2+2", "answer": 4\n')(d),
    ),
    "data-line-not-an-object": (
        _data("list.jsonl"),
        lambda d, p: _write("list.jsonl", "[1, 2]\n")(d),
    ),
    "data-missing-field": (
        _data("fields.jsonl"),
        lambda d, p: _write("fields.jsonl", '{"question": "1+1", "answer": "2"}\n')(d),
    ),
    "data-wrong-type": (
        _data("types.jsonl"),
        lambda d, p: _write("types.jsonl", '{"problem": 12, "answer": "2"}\n')(d),
    ),
    "data-unsupported-suffix": (_data("data.txt"), lambda d, p: _write("data.txt", GOOD)(d)),
    "model-dir-missing": ("model.name_or_path=./no/such/model", None),
    "tokenizer-missing": ("model.tokenizer=./no/such/tokenizer", None),
    "hub-model-not-cached-offline": ("model.name_or_path=nobody/no-such-model", None),
    "ckpt-missing": ("ckpt_path=<dir>/nope.ckpt", None),
    "ckpt-truncated": ("ckpt_path=<dir>/cut.ckpt", _truncated_ckpt),
    "ckpt-not-sfpo-lab": (
        "ckpt_path=<dir>/other.ckpt",
        lambda d, p: torch.save({"state_dict": {}}, d / "other.ckpt"),
    ),
    "ckpt-other-model-shape": (
        "ckpt_path=<prev>/last.ckpt paths.output_dir=<prev> model.tiny.hidden_size=64",
        None,
    ),
    "ckpt-other-seed": ("ckpt_path=<prev>/last.ckpt paths.output_dir=<prev> seed=1", None),
    "ckpt-other-alpha": (
        "ckpt_path=<prev>/last.ckpt paths.output_dir=<prev> sfpo.alpha=0.5",
        None,
    ),
    "run-dir-holds-checkpoints": ("paths.output_dir=<prev>", None),
    "output-dir-not-writable": ("paths.output_dir=/sys/sfpo_lab_run", None),
}


def table() -> dict[str, str]:
    """id -> documented error text, from the markdown table rows ``| `id` | ... | `error` |``."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if len(cells) >= 4 and re.fullmatch(r"`[A-Za-z0-9-]+`", cells[0]):
            rows[cells[0].strip("`")] = cells[3].strip("`").replace("\\|", "|")
    return rows


def overrides(case: str, d: Path, prev: Path) -> list[str]:
    text = CASES[case][0].replace("<dir>", str(d)).replace("<prev>", str(prev))
    out = [f"paths.output_dir={d / 'run'}", f"paths.cache_dir={d / 'cache'}", *SMALL]
    return out + text.split()


def snapshot(*dirs: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for d in dirs for p in sorted(d.rglob("*")) if p.is_file()}


def error_text(e: BaseException) -> str:
    parts: list[str] = []
    while e is not None:
        parts.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


@pytest.fixture(scope="module")
def prev(tmp_path_factory) -> Path:
    """A real run dir with checkpoints (one iteration), for the checkpoint and run-dir rows."""
    from sfpo_lab.run.runner import train

    d = tmp_path_factory.mktemp("prev")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                *SMALL,
                f"paths.output_dir={d}",
                f"paths.cache_dir={d.parent / 'prev_cache'}",
            ],
        )
    train(to_run_config(cfg), {})
    assert (d / "last.ckpt").is_file()
    return d


def test_the_table_and_the_tests_list_the_same_cases():
    assert len(CASES) >= 20
    assert list(table()) == list(CASES), "docs/bad_inputs.md rows != CASES (same ids, same order)"


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_fast_with_the_documented_error(case, tmp_path, prev, monkeypatch):
    from sfpo_lab.run.runner import train

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    setup = CASES[case][1]
    if setup is not None:
        setup(tmp_path, prev)
    before = snapshot(tmp_path, prev)
    GlobalHydra.instance().clear()
    with pytest.raises(Exception) as info:  # noqa: PT011 - the message is what is checked
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=overrides(case, tmp_path, prev))
        train(to_run_config(cfg), {})
    expected = table()[case].replace("<dir>", str(tmp_path)).replace("<prev>", str(prev))
    assert expected in error_text(info.value), error_text(info.value)
    assert snapshot(tmp_path, prev) == before, "a file written before was changed"
    assert not (tmp_path / "cache" / "toy_base").exists(), "the error came after the warm-up"


@pytest.mark.slow
def test_the_cli_prints_one_line_and_leaves_no_run_dir(tmp_path, prev):
    """One real launch (the rows above run in this process): a config error is one line on
    stderr, no traceback, exit code 1, and the run dir Hydra made for it is gone."""
    case = "ckpt-other-seed"  # passes the schema, refused by preflight (the latest check)
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    env.pop("HYDRA_FULL_ERROR", None)
    args = [f"hydra.run.dir={tmp_path / 'run'}", *overrides(case, tmp_path, prev)]
    before = snapshot(prev)
    cmd = [sys.executable, "-W", "ignore", "train.py", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    expected = table()[case].replace("<dir>", str(tmp_path)).replace("<prev>", str(prev))
    assert proc.stderr.strip().splitlines() == [f"Error: {expected}"], proc.stderr[-3000:]
    assert not (tmp_path / "run").exists(), "the run dir Hydra made for the refused run is left"
    assert snapshot(prev) == before


def test_cfg_job_resolve_gives_the_run_dir(tmp_path):
    """``train.py --cfg job --resolve`` composes and resolves like this, with no job run (so
    Hydra never sets runtime.output_dir): the output dir resolves to ``hydra.run.dir``."""
    from hydra.core.hydra_config import HydraConfig

    run = tmp_path / "run"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.run.dir={run}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    assert cfg.paths.output_dir == str(run)
    assert not run.exists()
