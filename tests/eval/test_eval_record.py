"""An evaluation is its own record (issue 25, items 1, 2, 4): ``model=toy`` is the default
training run's task and base; a held-out file is read whole unless ``limit=`` is given, and the
settings taken from the run are printed as such; ``out=`` a training run's dir is refused before
the model loads; ``summary.json`` says what was evaluated."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from sfpo_lab.config import RunConfig, register_schema, to_run_config
from sfpo_lab.eval.__main__ import (
    CONFIG,
    EvalConfigError,
    _toy_run,
    load_problem_sets,
    resolve,
    results_table,
    run,
)
from sfpo_lab.eval.record import check_out, evaluated
from sfpo_lab.model.warmup import base_key, toy_task

REPO = Path(__file__).resolve().parents[2]


def _cfg(*overrides: str):
    """``conf/eval.yaml`` + overrides, as Hydra hands it to ``main`` (no ``hydra`` node)."""
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG), OmegaConf.from_dotlist(list(overrides)))
    del cfg["hydra"]
    return cfg


@pytest.fixture
def toy_ckpt(tmp_path: Path) -> Path:
    """A toy run's checkpoint (no weights) whose validation used 12 problems."""
    run_cfg = RunConfig()
    run_cfg.val.n, run_cfg.val.limit = 8, 12
    ckpt = {"state_dict": {}, "sfpo_counters": {"iteration": 3},
            "sfpo_config": {"model": run_cfg.model.name, "run": asdict(run_cfg)}}  # fmt: skip
    torch.save(ckpt, tmp_path / "best.ckpt")
    return tmp_path / "best.ckpt"


@pytest.fixture
def held(tmp_path: Path) -> Path:
    rows = [{"q": f"What is {i} + 1?", "a": str(i + 1)} for i in range(20)]
    (path := tmp_path / "held.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _train_default() -> RunConfig:
    """What ``python train.py`` composes (independently of sfpo_lab.eval.toy)."""
    register_schema()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/x"])
    GlobalHydra.instance().clear()
    return to_run_config(cfg)


def test_model_toy_without_a_run_is_the_default_training_runs_task_and_base(tmp_path: Path):
    """Item 1: not RunConfig()'s a+b with operands 0-29 and 300 warm-up steps."""
    train = _train_default()
    cfg, extra = resolve(_cfg("model=toy", "benchmarks=[toy]", f"cache_dir={tmp_path}"))
    toy = load_problem_sets(cfg, extra["run"])["toy"]
    assert toy == toy_task(train).heldout(None) and len(toy) == 36
    base = _toy_run(cfg)
    assert (base.data.toy, base.model.warmup) == (train.data.toy, train.model.warmup)
    assert base_key(base) == base_key(train)
    assert _toy_run(_cfg("model=toy", "toy_warmup_steps=7")).model.warmup.steps == 7


def test_a_held_out_file_is_read_whole_and_the_runs_settings_are_named(toy_ckpt, held):
    """Item 2: the run's val.limit (12) is its benchmarks'; the file's 20 rows are all scored."""
    fields = (f"file={held}", "problem_field=q", "answer_field=a")
    cfg, extra = resolve(_cfg(f"ckpt={toy_ckpt}", *fields))
    sets = load_problem_sets(cfg, extra["run"], extra["file_limit"])
    assert list(sets) == ["held"] and len(sets["held"]) == 20
    assert extra["from_run"]["limit"] == 12 and extra["from_run"]["n"] == 8
    summary = {"benchmarks": {"held": {"acc": 50.0, "ci_lo": 40.0, "ci_hi": 60.0}}, "avg": 50.0}
    note = results_table(summary, sets, 8, extra | {"file": "held"}).splitlines()[-1]
    assert note.startswith("note: from the run's validation (not set here): ")
    assert "limit=12" in note and "n=8" in note and "held: all 20 rows" in note
    cfg, extra = resolve(_cfg(f"ckpt={toy_ckpt}", *fields, "limit=5"))  # given: it cuts
    assert len(load_problem_sets(cfg, extra["run"], extra["file_limit"])["held"]) == 5
    assert "limit" not in extra["from_run"]


def _training_run(path: Path) -> Path:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text("task_name: train\nseed: 0\n")
    (path / "metrics.csv").write_text("step,val/avg\n0,1.0\n")
    (path / "summary.json").write_text('{"return_value": 1.0}\n')
    return path


def test_out_a_training_run_dir_is_refused_before_the_model(tmp_path: Path, toy_ckpt: Path):
    """Item 4: the run's summary.json (the launcher's 'finished' mark) is never replaced."""
    run_dir = _training_run(tmp_path / "run")
    with pytest.raises(EvalConfigError) as info:
        run(_cfg(f"ckpt={toy_ckpt}", f"out={run_dir}", "model=toy"))
    msg = str(info.value)
    assert msg.startswith(f"out={str(run_dir)!r} is a training run's directory (it holds ")
    assert "metrics.csv" in msg and f"out={str(run_dir / 'eval')!r}" in msg
    assert (run_dir / "summary.json").read_text() == '{"return_value": 1.0}\n'
    check_out(run_dir / "eval")  # a directory of its own: fine
    eval_dir = tmp_path / "ev"
    (eval_dir / ".hydra").mkdir(parents=True)  # the eval's own Hydra dir
    (eval_dir / ".hydra" / "config.yaml").write_text("task_name: eval\n")
    check_out(eval_dir)


def test_the_summary_says_what_was_evaluated(toy_ckpt: Path):
    cfg, extra = resolve(_cfg(f"ckpt={toy_ckpt}", "n=2"))
    ev = evaluated(cfg, extra, {"toy": 12}, "/cache/toy_base/x")
    assert ev["kind"] == "sfpo_lab.eval" and ev["ckpt"] == str(toy_ckpt.resolve())
    assert (ev["iteration"], ev["benchmarks"], ev["limit"], ev["n"]) == (3, {"toy": 12}, 12, 2)
    assert ev["sampling"]["top_p"] == RunConfig().val.top_p
    assert ev["parser"]["answer_parsing"] == RunConfig().rollout.answer_parsing
    assert "n" not in ev["from_run"] and ev["from_run"]["limit"] == 12
