"""Evaluating a run's checkpoint means that run: settings come from the config the checkpoint
saved, a contradicting model / template is refused naming both values, and on a real toy run
the printed number equals the run's own validation in metrics.csv."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sfpo_lab.config import RunConfig
from sfpo_lab.eval.__main__ import CONFIG, EvalConfigError, resolve, results_table, run

REPO = Path(__file__).resolve().parents[2]


def _cfg(*overrides: str):
    """``conf/eval.yaml`` + overrides, as Hydra hands it to ``main`` (no ``hydra`` node)."""
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG), OmegaConf.from_dotlist(list(overrides)))
    del cfg["hydra"]
    return cfg


def _fake_ckpt(path: Path, run_cfg: RunConfig | None, iteration: int = 3) -> Path:
    """A checkpoint with what ``SFPOModule.on_save_checkpoint`` stores, and no weights."""
    ckpt = {"state_dict": {}, "sfpo_counters": {"iteration": iteration}}
    if run_cfg is not None:
        ckpt["sfpo_config"] = {"model": run_cfg.model.name, "run": asdict(run_cfg)}
    torch.save(ckpt, path)
    return path


@pytest.fixture
def toy_ckpt(tmp_path: Path) -> Path:
    run_cfg = RunConfig()
    run_cfg.data.toy.ops, run_cfg.data.toy.max_operand = "+-", 9
    run_cfg.val.n, run_cfg.val.top_p, run_cfg.val.limit = 8, 0.9, 12
    run_cfg.rollout.max_new_tokens, run_cfg.seed = 12, 7
    return _fake_ckpt(tmp_path / "best.ckpt", run_cfg)


def test_settings_come_from_the_run(toy_ckpt: Path):
    cfg, extra = resolve(_cfg(f"ckpt={toy_ckpt}"))
    got = {k: cfg[k] for k in ("model", "template", "chat", "n", "top_p", "limit", "seed")}
    assert got == {"model": "toy", "template": "toy", "chat": False, "n": 8, "top_p": 0.9,
                   "limit": 12, "seed": 7}  # fmt: skip
    assert (cfg.max_new_tokens, cfg.top_k, list(cfg.benchmarks)) == (12, 0, ["toy"])
    assert extra["iteration"] == 3 and extra["differs"] == {}
    assert extra["run"].data.toy.ops == "+-"  # the run's task, not RunConfig()'s "+"
    # consistent spellings of the same model are accepted
    assert resolve(_cfg(f"ckpt={toy_ckpt}", "model=toy", "template=toy"))[1]["differs"] == {}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=Qwen/Qwen2.5-Math-1.5B", "model='Qwen/Qwen2.5-Math-1.5B' contradicts the run of "
         "ckpt={ckpt!r}, which has model='toy' (model.name='tiny-qwen2')"),
        ("template=authors", "template='authors' contradicts the run of ckpt={ckpt!r}, which has "
         "template='toy'"),
        ("chat=true", "chat=True contradicts the run of ckpt={ckpt!r}, which has chat=False"),
        ("toy_warmup_steps=5", "toy_warmup_steps=5 contradicts the run of ckpt={ckpt!r}, which "
         "has toy_warmup_steps=300"),
    ],
)  # fmt: skip
def test_a_contradicting_setting_is_refused_naming_both_values(toy_ckpt, override, message):
    with pytest.raises(EvalConfigError) as info:
        resolve(_cfg(f"ckpt={toy_ckpt}", override))
    assert str(info.value).startswith(message.format(ckpt=str(toy_ckpt)))


def test_other_sampling_settings_are_used_and_reported(toy_ckpt: Path):
    cfg, extra = resolve(_cfg(f"ckpt={toy_ckpt}", "n=16", "top_p=0.9"))
    assert cfg.n == 16 and extra["differs"] == {"n": (16, 8)}  # top_p=0.9 is the run's
    summary = {"benchmarks": {"toy": {"acc": 50.0, "ci_lo": 40.0, "ci_hi": 60.0}}, "avg": 50.0}
    table = results_table(summary, {"toy": [None] * 12}, 16, extra).splitlines()
    assert table[0].split() == ["benchmark", "problems", "n", "acc", "%", "95%", "CI"]
    assert table[1].split() == ["toy", "12", "16", "50.00", "[40.00,", "60.00]"]
    assert table[-1] == "note: not the run's validation settings: n=16 (run: 8)"
    cfg, extra = resolve(_cfg(f"ckpt={toy_ckpt}", "limit=all"))  # every problem, not val.limit
    assert cfg.limit == "all" and extra["differs"] == {"limit": ("all", 12)}


def test_checkpoints_without_a_run_config_or_sharded_fail_clearly(tmp_path: Path):
    bare = _fake_ckpt(tmp_path / "bare.ckpt", None)
    with pytest.raises(EvalConfigError, match=r"holds no run config .* give model=<the dir"):
        resolve(_cfg(f"ckpt={bare}"))
    with pytest.raises(EvalConfigError, match=r"model=toy needs the run config"):
        resolve(_cfg(f"ckpt={bare}", "model=toy"))
    empty = tmp_path / "iter-000002.ckpt"  # a directory without meta.pt or shards
    empty.mkdir()
    with pytest.raises(EvalConfigError) as info:
        resolve(_cfg(f"ckpt={empty}"))
    assert str(info.value).startswith(f"ckpt={str(empty)!r}")
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(EvalConfigError, match=r"junk.ckpt': not a readable checkpoint"):
        resolve(_cfg(f"ckpt={tmp_path / 'junk.ckpt'}"))


TINY_RUN = [
    "iterations=2",
    "data.batch_size=4",
    "rollout.n=4",
    "rollout.max_new_tokens=12",  # room for "\boxed{-6}" + EOS: accuracy above 0
    "update.micro_batch_size=8",
    "val.every=1",
    "val.limit=12",
    "val.n=4",
    "checkpoint.every=1",
    "model.warmup.steps=60",  # a few correct answers, so the comparison is not 0 == 0
    "wandb.mode=disabled",
]


def _val_by_iteration(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as fh:
        return {int(r["step"]): float(r["val/toy/acc"]) for r in csv.DictReader(fh)
                if r.get("val/toy/acc")}  # fmt: skip


@pytest.mark.slow
def test_a_toy_runs_checkpoints_give_its_own_validation_numbers(tmp_path: Path, capsys):
    """Train 2 iterations (the real CLI), then evaluate ``best.ckpt`` and ``iter-000001.ckpt``
    with no setting but ``ckpt``: each equals metrics.csv's val/toy/acc at its iteration."""
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    env = dict(os.environ, SFPO_CACHE_DIR=str(cache), OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *TINY_RUN]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    val = _val_by_iteration(run_dir)
    assert sorted(val) == [0, 1, 2] and max(val.values()) > 0, val

    best_it = int(
        torch.load(run_dir / "best.ckpt", weights_only=False)["sfpo_counters"]["iteration"]
    )
    for name, it in (("best.ckpt", best_it), ("iter-000001.ckpt", 1)):
        out = tmp_path / f"eval-{name}"
        cfg = _cfg(f"ckpt={run_dir / name}", f"cache_dir={cache}", "reward_workers=1", f"out={out}")
        summary = run(cfg)
        assert summary["benchmarks"]["toy"]["acc"] == pytest.approx(val[it], abs=1e-9), name
        assert summary["run_validation"]["val/toy/acc"] == pytest.approx(val[it], abs=1e-9)
        assert summary["benchmarks"]["toy"]["n_problems"] == 12
    printed = capsys.readouterr().out
    assert "benchmark  problems     n   acc %  95% CI" in printed
    assert "run's val @ it 1" in printed
