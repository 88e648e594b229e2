"""GRPO-μ next to GRPO and SFPO: Table 1's paired rows and summary.json, by hand.

Runs (``synthetic_runs.write_run``: val/avg = 20 + seed + gain * step, steps 0, 5, 10):
GRPO gain 1 (seeds 0, 1, 2), SFPO gains 2.0 / 1.4 / 1.7 (seeds 0, 1, 2), GRPO-μ gains
1.5 / 1.5 (seeds 0, 1 only). Final Avg at step 10:

    seed   GRPO   SFPO   GRPO-μ   SFPO − GRPO   SFPO − GRPO-μ
    0      30     40     35       10            5
    1      31     35     36       4             -1
    2      32     39     –        7             –
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats
from synthetic_runs import write_run

from analysis import summary, tables
from analysis.runs import MissingRuns, discover

T2, T1 = stats.t.ppf(0.975, 2), stats.t.ppf(0.975, 1)
HALF_SG = T2 * 3.0 / math.sqrt(3)  # diffs 10, 4, 7: mean 7, sd 3
HALF_SM = T1 * math.sqrt(18) / math.sqrt(2)  # diffs 5, -1: mean 2, sd sqrt(18)


def _write(root: Path, mu: bool = True, model: str = "tiny-qwen2") -> Path:
    arms = [("g", 0.0, (1.0, 1.0, 1.0)), ("s", 0.8, (2.0, 1.4, 1.7))]
    arms += [("mu", 1.0, (1.5, 1.5))] if mu else []
    for name, alpha, gains in arms:
        for seed, gain in enumerate(gains):
            write_run(root / model / f"{name}{seed}", "paper_main", seed, alpha=alpha, gain=gain, model=model)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def df(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return discover([_write(tmp_path_factory.mktemp("paired") / "runs")])


def test_table1_rows_and_paired_differences(df: pd.DataFrame) -> None:
    md = tables.table1(df, "md")
    assert "| tiny-qwen2 | GRPO-μ | 2 | 35.5 ± 6.4 | 35.5 ± 6.4 | 15.0 ± 0.0 |" in md
    rows = [r for r in md.splitlines() if r.startswith("| tiny-qwen2")]
    assert [r.split(" | ")[1] for r in rows] == ["Base", "GRPO", "GRPO-μ", "SFPO", "SFPO − GRPO", "SFPO − GRPO-μ"]  # fmt: skip
    assert rows[-2] == f"| tiny-qwen2 | SFPO − GRPO | 3 | +7.0 ± {HALF_SG:.1f} | +7.0 ± {HALF_SG:.1f} | +7.0 ± {HALF_SG:.1f} |"  # fmt: skip
    assert rows[-1] == f"| tiny-qwen2 | SFPO − GRPO-μ | 2 | +2.0 ± {HALF_SM:.1f} | +2.0 ± {HALF_SM:.1f} | +2.0 ± {HALF_SM:.1f} |"  # fmt: skip
    assert "+7.0 ± 7.5" in rows[-2] and "+2.0 ± 38.1" in rows[-1]  # the same numbers, by eye
    assert "GRPO-μ: SFPO with α = 1 and slow correction on" in md
    csv = pd.read_csv(pd.io.common.StringIO(tables.table1(df, "csv")))
    avg = csv[(csv["bench"] == "avg") & csv["method"].str.contains("−")].set_index("method")
    assert avg.loc["SFPO − GRPO", ["seeds", "mean", "lo", "hi"]].tolist() == pytest.approx([3, 7.0, round(7 - HALF_SG, 4), round(7 + HALF_SG, 4)])  # fmt: skip
    assert avg.loc["SFPO − GRPO-μ", "seeds"] == 2
    tex = tables.table1(df, "tex")
    assert r"SFPO $-$ GRPO-$\mu$ & 2 &" in tex


def test_summary_json_keys_and_values(df: pd.DataFrame) -> None:
    text = summary.summary_json(df)
    assert text.endswith("}\n") and text == summary.summary_json(df)  # byte-identical reruns
    got = json.loads(text)
    ratio_keys = {p + k for p in ("", "grpo_mu_") for k in ("rollout_ratio", "update_pass_ratio", "wall_clock_ratio")}  # fmt: skip
    assert set(got) == {"sfpo_minus_grpo", "sfpo_minus_grpo_mu", "target_acc", "model", "labels",
                        "grpo_mu_target_acc",
                        "n_boot", "ci_method", "per_seed"} | ratio_keys  # fmt: skip
    assert got["sfpo_minus_grpo"] == {"mean": 7.0, "ci_lo": round(7 - HALF_SG, 4), "ci_hi": round(7 + HALF_SG, 4), "n_seeds": 3}  # fmt: skip
    assert got["sfpo_minus_grpo_mu"] == {"mean": 2.0, "ci_lo": round(2 - HALF_SM, 4), "ci_hi": round(2 + HALF_SM, 4), "n_seeds": 2}  # fmt: skip
    # target: GRPO's seed mean 21 + step peaks at 31 (step 10). SFPO's seed mean (gain 1.7)
    # reaches it at step 10 too: 1280 / 1280 rollouts. Only the resample (0, 0, 0) (prob 1/27
    # > 2.5 %) has mean gain 2 and gets there at step 5: the upper bound is 1280 / 640.
    assert got["target_acc"] == 31.0
    assert got["grpo_mu_target_acc"] == 30.5  # GRPO's best over seeds 0, 1 (the pair's seeds)
    assert got["rollout_ratio"] == {"ratio": 1.0, "ci_lo": 1.0, "ci_hi": 2.0, "n_seeds": 3, "not_reached": 0.0}  # fmt: skip
    # passes: GRPO 10 at step 10; SFPO 4 per batch until the trigger (step 6), then 1: 25
    # (20 at step 5); wall-clock 1 s vs 2 s per step
    assert got["update_pass_ratio"] == {"ratio": 0.4, "ci_lo": 0.4, "ci_hi": 0.5, "n_seeds": 3, "not_reached": 0.0}  # fmt: skip
    assert got["wall_clock_ratio"] == {"ratio": 0.5, "ci_lo": 0.5, "ci_hi": 1.0, "n_seeds": 3, "not_reached": 0.0}  # fmt: skip
    # GRPO-μ (seeds 0, 1): target 30.5; its mean 20.5 + 1.5 * step is 28 at step 5, 35.5 at 10
    assert got["grpo_mu_rollout_ratio"] == {"ratio": 1.0, "ci_lo": 1.0, "ci_hi": 1.0, "n_seeds": 2, "not_reached": 0.0}  # fmt: skip
    assert got["labels"] == {"grpo": "GRPO", "grpo_mu": "GRPO-μ(K=3)", "sfpo": "SFPO(K=3, α=0.8)"}
    assert got["per_seed"] == [
        {"seed": 0, "grpo": 30.0, "sfpo": 40.0, "grpo_mu": 35.0},
        {"seed": 1, "grpo": 31.0, "sfpo": 35.0, "grpo_mu": 36.0},
        {"seed": 2, "grpo": 32.0, "sfpo": 39.0},
    ]


def test_summary_without_grpo_mu_omits_its_keys(tmp_path: Path) -> None:
    got = summary.summary(discover([_write(tmp_path / "runs", mu=False)]), n_boot=50)
    assert not [k for k in got if "grpo_mu" in k] and "grpo_mu" not in got["labels"]
    assert got["sfpo_minus_grpo"]["n_seeds"] == 3 and got["rollout_ratio"]["ratio"] == 1.0


def test_summary_refuses_several_models(tmp_path: Path) -> None:
    root = _write(tmp_path / "runs", mu=False)
    _write(root, mu=False, model="other-model")
    with pytest.raises(MissingRuns, match=r"runs of 2 models \(other-model, tiny-qwen2\)"):
        summary.summary(discover([root]))


def test_algorithm_grpo_mu_is_the_alpha_1_slow_correction_run(tmp_path: Path) -> None:
    """``algorithm=grpo_mu`` (conf/algorithm/grpo_mu.yaml) and ``algorithm=sfpo`` with alpha = 1
    and slow correction run the same updates: one label, one identity (replicas)."""
    a = write_run(tmp_path / "a", "paper_main", 0, alpha=1.0, settings={"algorithm": "grpo_mu"})
    b = write_run(tmp_path / "b", "ablation_k_alpha", 0, alpha=1.0, settings={"algorithm": "sfpo"})
    c = write_run(tmp_path / "c", "ablation_k_alpha", 0, alpha=1.0, slow=False)
    one = discover([a, b, c]).drop_duplicates("run_id").set_index("run_id")
    assert one["method"].to_dict() == {"a": "GRPO-μ", "b": "GRPO-μ", "c": "SFPO"}
    assert one["label"].to_dict() == {"a": "GRPO-μ(K=3)", "b": "GRPO-μ(K=3)", "c": "SFPO(K=3, α=1, no slow)"}  # fmt: skip
    assert one.loc["a", "identity"] == one.loc["b", "identity"] != one.loc["c", "identity"]
