"""Run discovery: Hydra dirs and W&B runs -> the same tidy shape."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from synthetic_runs import ITERS, write_run

from analysis.runs import COLUMNS, discover, load_run, method_label, wandb_run_frame


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((3, 0.0, True, True, "zero"), ("GRPO", "GRPO")),
        ((7, 0.0, False, False, "linear"), ("GRPO", "GRPO")),
        ((3, 0.8, True, True, "zero"), ("SFPO", "SFPO(K=3, α=0.8)")),
        (
            (7, 0.3, False, False, "linear"),
            ("SFPO", "SFPO(K=7, α=0.3, no slow, no EC)"),  # decay unused without trigger
        ),
        (
            (3, 0.8, True, True, "linear", 0.5, 4),
            ("SFPO", "SFPO(K=3, α=0.8, τ=0.5, linear decay over 4)"),
        ),
        # alpha = 1 with slow correction: K + 1 passes, no reposition = the GRPO-μ control
        ((3, 1.0, True, True, "zero"), ("GRPO-μ", "GRPO-μ(K=3)")),
        ((7, 1.0, True, False, "linear"), ("GRPO-μ", "GRPO-μ(K=7, no EC)")),
        (
            (3, 1.0, True, True, "linear", 0.5, 4),
            ("SFPO", "SFPO(K=3, α=1, τ=0.5, linear decay over 4)"),
        ),  # fmt: skip  (the decay repositions: not the GRPO-μ control)
        # alpha = 1 without slow correction: K plain passes, still labelled SFPO
        ((3, 1.0, False, True, "zero"), ("SFPO", "SFPO(K=3, α=1, no slow)")),
    ],
)
def test_method_label(args: tuple, expected: tuple[str, str]) -> None:
    assert method_label(*args) == expected


def test_load_run_reads_config_and_metrics_never_an_eval(tmp_path: Path) -> None:
    run = write_run(tmp_path / "r", "paper_main", seed=1, alpha=0.8, K=7, gain=2.0)
    (run / "eval").mkdir()  # a standalone evaluation under the run: not a training number
    recs = [{"id": 0, "correct": [1, 0, 1, 1]}, {"id": 1, "correct": [0, 0, 0, 1]}]
    (run / "eval" / "math500.records.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    (run / "eval" / "summary.json").write_text(
        json.dumps({"benchmarks": {"math500": {"acc": 61.0}}})
    )
    df = load_run(run)
    assert list(df.columns) == COLUMNS
    one = df.iloc[0]
    assert (one["experiment"], one["method"], one["K"], one["alpha"], one["seed"]) == (
        "paper_main",
        "SFPO",
        7,
        0.8,
        1,
    )
    val = df[df["metric"] == "val/avg"].set_index("step")["value"]
    assert val.to_dict() == {0: 21.0, 5: 31.0, 10: 41.0}
    # a val row and a train row at step 5 both carry train/rollouts: one value kept
    assert len(df[(df["metric"] == "train/rollouts") & (df["step"] == 5)]) == 1
    assert not df["metric"].str.startswith("eval/").any()


def test_discover_walks_multirun_dirs(runs_root: Path) -> None:
    df = discover([runs_root])
    assert df["run_id"].nunique() == 20
    assert set(df["experiment"]) == {"paper_main", "ablation_k_alpha", "slow_correction", "entropy_control", "alpha_decay", "memory_profile"}  # fmt: skip
    assert discover([runs_root / "nothing"]).empty


def test_wandb_conversion_matches_the_hydra_shape(tmp_path: Path) -> None:
    # what wandb.Api() gives: config values wrapped as {"value": ...} and, under an agent,
    # flat dotted keys beside the nested ones (the dotted ones are the sweep's overrides)
    config = {
        "_wandb": {"value": {"cli_version": "0.31.0"}},
        "seed": {"value": 2},
        "iterations": {"value": 20},
        "sfpo": {
            "value": {
                "K": 3,
                "alpha": 0.8,
                "slow_correction": True,
                "entropy_control": {"enabled": True},
                "decay": "zero",
            }
        },  # fmt: skip
        "sfpo.K": {"value": 7},
        "model": {"value": {"name": "tiny-qwen2"}},
        "data": {"value": {"kind": "toy"}},
        "extras": {"value": {"experiment": "ablation_k_alpha", "scale": "toy"}},
    }
    history = [
        {"_step": 0, "trainer/global_step": 0, "val/avg": 25.0, "train/rollouts": 0.0},
        {"_step": 1, "trainer/global_step": 1, "train/acc": 0.3, "train/rollouts": 128.0},
        {"_step": 2, "step": 5, "val/avg": 30.0, "train/rollouts": 640.0},
    ]
    df = wandb_run_frame("wandb/abc", config, history)
    assert list(df.columns) == COLUMNS
    assert set(df["label"]) == {"SFPO(K=7, α=0.8)"} and set(df["seed"]) == {2}
    assert df[df["metric"] == "val/avg"].set_index("step")["value"].to_dict() == {0: 25.0, 5: 30.0}
    assert wandb_run_frame("wandb/empty", config, []).empty


def test_incomplete_runs_are_named(tmp_path: Path) -> None:
    from analysis.runs import incomplete_runs

    done = load_run(write_run(tmp_path / "done", "paper_main", seed=0), run_id="done")
    cut = load_run(write_run(tmp_path / "cut", "paper_main", seed=1), run_id="cut")
    cut = cut[cut["step"] <= ITERS - 3]  # as if killed three iterations early
    assert incomplete_runs(pd.concat([done, cut])) == ["cut"]


def test_a_run_on_data_files_loads_without_its_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 10: data=dapo_math interpolates ``${paths.data_dir}``, and ``paths`` holds
    ``${hydra:...}``: the config loads, is labelled dapo_math, and its identity does not depend
    on where this machine keeps the data."""
    settings = {
        "data.kind": "files",
        "data.train_files": ["${paths.data_dir}/train/dapo_math_train.parquet"],
        "data.benchmarks_dir": "${paths.data_dir}/benchmarks",
        "paths.root_dir": "${oc.env:PROJECT_ROOT,.}",
        "paths.data_dir": "${oc.env:SFPO_DATA_DIR,${paths.root_dir}/../shared/data}",
    }
    run = write_run(tmp_path / "r", "paper_main", seed=0, settings=settings)
    monkeypatch.setenv("SFPO_DATA_DIR", "/data/here")
    here = load_run(run)
    monkeypatch.setenv("SFPO_DATA_DIR", "/data/elsewhere")
    elsewhere = load_run(run)
    assert set(here["data"]) == {"dapo_math"}
    assert set(here["identity"]) == set(elsewhere["identity"])
    config = json.loads(here["config"].iloc[0])
    assert config["data.train_files"] == ["<paths.data_dir>/train/dapo_math_train.parquet"]


def test_two_lrs_that_read_alike_are_refused_not_pooled(tmp_path: Path) -> None:
    """lr labels keep 3 significant digits: 1e-4 and 1.004e-4 would both read ``lr=1e-4`` and
    be pooled as one curve (identity's pooling check skips optim.lr when labels name it)."""
    from analysis.identity import MixedRuns

    for name, lr in (("a", 1e-4), ("b", 1.004e-4), ("c", 3e-4)):
        write_run(tmp_path / name, "exp", seed=0, settings={"optim.lr": lr})
    with pytest.raises(
        MixedRuns, match=r"optim.lr=0.0001 and optim.lr=0.0001004 both read lr=1e-4"
    ):
        discover([tmp_path])
    (tmp_path / "b" / "metrics.csv").unlink()  # 1e-4 and 3e-4: named apart
    assert set(discover([tmp_path])["label"]) == {
        "SFPO(K=3, α=0.8, lr=1e-4)",
        "SFPO(K=3, α=0.8, lr=3e-4)",
    }
