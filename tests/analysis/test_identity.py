"""Run identity on synthetic mixed sets of run dirs: replicas count once, different settings
are never pooled under one label, base and final scores come from the same run."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from synthetic_runs import write_run

from analysis import bar_figures, figures, make_figures, tables
from analysis.identity import MixedRuns, check_pooling, differing, effective_config
from analysis.runs import discover


def _lines(ax: plt.Axes) -> dict[str, list[float]]:
    return {ln.get_label(): list(ln.get_ydata()) for ln in ax.lines if not ln.get_label().startswith("_")}  # fmt: skip


def test_effective_config_drops_what_the_method_does_not_read() -> None:
    base = {"seed": 1, "algorithm": "sfpo", "wandb": {"group": "g"}, "checkpoint": {"every": 5},
            "sfpo": {"K": 3, "alpha": 0.8, "slow_correction": True, "decay": "zero",
                     "decay_steps": 7, "entropy_control": {"enabled": True, "tau": 1.0}},
            "model": {"name": "m", "sfpo_alpha": 0.8}, "trainer": {"devices": 8, "precision": "bf16"},
            "val": {"every": 5}}  # fmt: skip
    eff = effective_config(base)
    assert "sfpo.decay_steps" not in eff and "seed" not in eff and "model.sfpo_alpha" not in eff
    assert eff["trainer.precision"] == "bf16" and "trainer.devices" not in eff
    assert eff["val.every"] == 5 and eff["sfpo.entropy_control.tau"] == 1
    grpo = effective_config(base | {"algorithm": "grpo", "sfpo": {"alpha": 0.0, "K": 7}})
    assert {k: v for k, v in grpo.items() if k.startswith("sfpo.")} == {"sfpo.alpha": 0}
    off = effective_config(base | {"sfpo": base["sfpo"] | {"decay": "linear", "entropy_control": {"enabled": False, "tau": 0.5}}})  # fmt: skip
    assert off["sfpo.entropy_control.enabled"] is False
    assert not {"sfpo.entropy_control.tau", "sfpo.decay", "sfpo.decay_steps"} & set(off)
    diff = differing({"a": eff, "b": eff | {"data.batch_size": 8}})
    assert diff == {"data.batch_size": {"a": "<absent>", "b": 8}}
    # kernels only (rounding): a run made before these settings existed is the same run
    newer = base | {"optim": {"impl": "auto"}, "update": {"fuse_old_logprobs": True}}
    assert effective_config(newer) == eff


def test_grpo_replicas_count_once(tmp_path: Path) -> None:
    """GRPO at alpha = 0 under K=3 and K=7, slow on and off: one run per seed."""
    root = tmp_path / "runs"
    for s in (0, 1):
        for i, (K, slow) in enumerate([(3, True), (7, True), (3, False)]):
            write_run(root / "paper_main" / f"g{s}{i}", "paper_main", seed=s, alpha=0.0, K=K, slow=slow)  # fmt: skip
        write_run(root / "paper_main" / f"s{s}", "paper_main", seed=s, alpha=0.8, gain=2.0)
    df = discover([root])
    assert df["run_id"].nunique() == 8
    fig = figures.fig2(df)
    assert set(_lines(fig.axes[0])) == {"GRPO (n=2)", "SFPO(K=3, α=0.8) (n=2)"}
    plt.close(fig)
    assert "| tiny-qwen2 | GRPO | 2 | 30.5 ± 6.4 |" in tables.table1(df, "md")


def _mixed(tmp_path: Path, key: str, value: object) -> Path:
    root = tmp_path / "runs"
    for s in (0, 1):
        write_run(root / "paper_main" / f"g{s}", "paper_main", seed=s, alpha=0.0)
        extra = {key: value} if s == 1 else {}
        write_run(root / "paper_main" / f"s{s}", "paper_main", seed=s, gain=2.0, settings=extra)
    return root


@pytest.mark.parametrize(
    ("key", "value"),
    [("sfpo.entropy_control.window", 30), ("data.batch_size", 8), ("iterations", 2)],
)
def test_one_label_with_two_settings_is_refused_naming_them(tmp_path: Path, key, value) -> None:  # noqa: ANN001
    df = discover([_mixed(tmp_path, key, value)])
    pattern = rf"'SFPO\(K=3, α=0.8\)' have different settings.*{key} = "
    for make in (figures.fig2, bar_figures.fig4, lambda d: tables.table1(d, "md")):
        with pytest.raises(MixedRuns, match=pattern):
            make(df)


def test_methods_compared_must_agree_on_what_labels_do_not_name(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for s in (0, 1):
        write_run(root / "paper_main" / f"g{s}", "paper_main", seed=s, alpha=0.0, settings={"data.batch_size": 8})  # fmt: skip
        write_run(root / "paper_main" / f"s{s}", "paper_main", seed=s, gain=2.0)
    df = discover([root])
    with pytest.raises(
        MixedRuns,
        match=r"model=tiny-qwen2.*data\.batch_size = 8 \(runs/paper_main/g0, runs/paper_main/g1\) vs absent",
    ):
        tables.table1(df, "md")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = make_figures.main(["--runs", str(root), "--out", str(tmp_path / "o"), "--only", "table1,fig2,fig1"])  # fmt: skip
    assert rc == 2
    log = out.getvalue()
    assert "table1: REFUSED — paper_main table (model=tiny-qwen2)" in log and "fig2: REFUSED" in log
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["fig1.pdf", "fig1.png"]


def test_base_and_final_come_from_the_same_run(tmp_path: Path) -> None:
    """SFPO's runs start 5 points above GRPO's (another base): the gain is each run's own."""
    root = tmp_path / "runs"
    for s in (0, 1):
        write_run(root / "paper_main" / f"g{s}", "paper_main", seed=s, alpha=0.0)
        write_run(root / "paper_main" / f"s{s}", "paper_main", seed=s, gain=2.0, offset=5.0)
    md = tables.table1(discover([root]), "md")
    assert "| tiny-qwen2 | Base | 2 | 20.5 ± 6.4 | 20.5 ± 6.4 | – |" in md  # GRPO's step 0
    assert "| tiny-qwen2 | GRPO | 2 | 30.5 ± 6.4 | 30.5 ± 6.4 | 10.0 ± 0.0 |" in md
    # SFPO: final 45/46, own start 25/26 -> +20 (vs GRPO's base it would read +25)
    assert "| tiny-qwen2 | SFPO | 2 | 45.5 ± 6.4 | 45.5 ± 6.4 | 20.0 ± 0.0 |" in md


def test_identity_and_config_columns(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", "paper_main", seed=0)
    b = write_run(tmp_path / "b", "slow_correction", seed=3, settings={"wandb.group": "x"})
    c = write_run(tmp_path / "c", "paper_main", seed=0, settings={"val.every": 1})
    df = discover([a, b, c]).drop_duplicates("run_id").set_index("run_id")
    assert df.loc["a", "identity"] == df.loc["b", "identity"] != df.loc["c", "identity"]
    assert json.loads(df.loc["c", "config"])["val.every"] == 1


def test_arms_that_differ_only_in_the_lr_get_labels_naming_it(tmp_path: Path) -> None:
    """The confirmation's arms A/B/C: GRPO and SFPO at lr 3e-4, SFPO at 8.8e-5: three curves,
    neither pooled into one SFPO label nor refused as mixed settings."""
    root = tmp_path / "runs"
    for s in (0, 1):
        lr = {"optim.lr": 3e-4}
        write_run(root / "c" / f"a{s}", "paper_main", seed=s, alpha=0.0, settings=lr)
        write_run(root / "c" / f"b{s}", "paper_main", seed=s, gain=2.0, settings=lr)
        write_run(
            root / "c" / f"c{s}", "paper_main", seed=s, gain=1.5, settings={"optim.lr": 8.8e-5}
        )
    df = discover([root])
    assert set(df["label"]) == {
        "GRPO(lr=3e-4)", "SFPO(K=3, α=0.8, lr=3e-4)", "SFPO(K=3, α=0.8, lr=8.8e-5)"
    }  # fmt: skip
    check_pooling(df, "confirm")  # one curve per arm, compared in one panel: not refused
    assert len(figures.fig2(df).axes[0].get_lines()) >= 3
    one_lr = discover([root / "c" / "a0", root / "c" / "b0"])  # one lr: labels unchanged
    assert set(one_lr["label"]) == {"GRPO", "SFPO(K=3, α=0.8)"}


def test_the_default_toy_split_is_the_committed_runs_identity() -> None:
    old = {"data": {"kind": "toy", "toy": {"num_operands": 3}}, "sfpo": {"alpha": 0.0}}
    text = {"data": {"kind": "toy", "toy": {"num_operands": 3, "split": "text"}}, "sfpo": {"alpha": 0.0}}  # fmt: skip
    terms = {"data": {"kind": "toy", "toy": {"num_operands": 3, "split": "terms"}}, "sfpo": {"alpha": 0.0}}  # fmt: skip
    assert effective_config(old) == effective_config(text) != effective_config(terms)
