"""Fig. 8 from per-stage memory (``perf/mem/<stage>``, issue 14 item 7): bar heights equal the
metrics.csv values of a small synthetic run set; runs without them keep the older figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from synthetic_runs import write_run

from analysis import bar_figures
from analysis.runs import discover

SFPO_STAGES = ["rollout", "logprobs", "fast_1", "fast_2", "fast_3", "reposition", "slow"]
GRPO_STAGES = ["rollout", "logprobs", "update"]


def _value(method: str, stage: str, seed: int, step: int) -> float:
    base = {"rollout": 1.0, "logprobs": 1.5, "update": 2.0, "reposition": 2.25, "slow": 2.5}
    v = base.get(stage, 2.0 + 0.125 * int(stage[-1]) if stage.startswith("fast_") else 0.0)
    return v + (0.5 if method == "SFPO" else 0.0) + 0.25 * seed + 0.0625 * (step % 3)


def _runs(root: Path, with_stages: bool) -> Path:
    for n, (alpha, seed) in enumerate([(0.0, 0), (0.0, 1), (0.8, 0), (0.8, 1)]):
        run = write_run(root / "memory_profile" / str(n), "memory_profile", seed, alpha=alpha)
        if not with_stages:
            continue
        csv = run / "metrics.csv"
        m = pd.read_csv(csv)
        method = "GRPO" if alpha == 0 else "SFPO"
        train = m["train/acc"].notna()  # the training rows (validation rows have none)
        for stage in GRPO_STAGES if method == "GRPO" else SFPO_STAGES:
            m[f"perf/mem/{stage}"] = [
                _value(method, stage, seed, int(s)) if t else float("nan")
                for s, t in zip(m["step"], train, strict=True)
            ]
        m.to_csv(csv, index=False)
    return root


def _bars(fig: plt.Figure) -> dict[str, float]:
    return {p.get_gid(): p.get_height() for p in fig.axes[0].patches if p.get_gid()}


def test_bars_are_the_per_run_max_over_iterations_averaged_over_seeds(tmp_path: Path) -> None:
    df = discover([_runs(tmp_path / "runs", with_stages=True)])
    assert bar_figures.stage_names(df) == [*SFPO_STAGES[:5], "reposition", "slow", "update"]
    fig = bar_figures.fig8(df)
    bars = _bars(fig)
    expected = {}
    sfpo = "SFPO(K=3, α=0.8)"  # the run label
    for method, stages in (("GRPO", GRPO_STAGES), ("SFPO", SFPO_STAGES)):
        for stage in stages:
            # per run: max over steps 1..10 (step % 3 == 2 adds 0.125); mean of seeds 0 and 1
            per_seed = [_value(method, stage, s, 2) for s in (0, 1)]
            expected[f"{sfpo if method == 'SFPO' else method}|{stage}"] = sum(per_seed) / 2
    assert bars.keys() == expected.keys()
    for key, height in bars.items():
        assert height == pytest.approx(expected[key], abs=1e-12), key
    # fast_3: 2 + 3 x 0.125, +0.5 (SFPO), +0.125 (mean of seeds 0, 0.25), +0.125 (step % 3 = 2)
    assert bars[f"{sfpo}|fast_3"] == pytest.approx(3.125)
    # the metrics.csv values themselves: SFPO seed 1, fast_2, step 5 (5 % 3 = 2) is the max
    csv = pd.read_csv(tmp_path / "runs" / "memory_profile" / "3" / "metrics.csv")
    assert csv["perf/mem/fast_2"].max() == _value("SFPO", "fast_2", 1, 5) == 3.125
    title = fig._suptitle.get_text()
    assert "per stage" in title and "CPU: resident set size" in title and "CUDA" not in title
    plt.close(fig)
    # the note follows trainer.accelerator, not the experiment's scale label (a CPU run labelled
    # scale=cpu_repro once got the CUDA note)
    fig = bar_figures.fig8(df.assign(scale="cpu_repro"))
    assert "CPU: resident set size" in fig._suptitle.get_text()
    plt.close(fig)
    fig = bar_figures.fig8(df.assign(accelerator="gpu"))
    assert "CUDA: peak allocated memory" in fig._suptitle.get_text()


def test_runs_without_stage_memory_fall_back_to_the_process_peak(tmp_path: Path) -> None:
    df = discover([_runs(tmp_path / "runs", with_stages=False)])
    assert bar_figures.stage_names(df) == []
    fig = bar_figures.fig8(df)
    assert not _bars(fig)
    heights = sorted(p.get_height() for p in fig.axes[0].patches)
    # perf/peak_mem_gb = 0.70 (+0.01 SFPO) + 0.001 x seed: mean over seeds 0, 1
    assert heights == pytest.approx([0.7005, 0.7105], abs=1e-9)
    assert "NOT a per-stage" in fig._suptitle.get_text()
    plt.close(fig)
