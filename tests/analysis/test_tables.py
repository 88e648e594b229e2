"""Tables pool seeds of one configuration per method, never several variants."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.runs import MissingRuns
from analysis.tables import one_variant


def test_several_sfpo_variants_are_refused_not_pooled():
    runs = pd.DataFrame({"label": ["SFPO(K=3, α=0.8)", "SFPO(K=7, α=0.3)"]})
    with pytest.raises(MissingRuns, match="several variants"):
        one_variant(runs, "paper_main", "tiny-qwen2")
    one_variant(runs.iloc[:1], "paper_main", "tiny-qwen2")  # one variant: fine


def test_a_diverged_seed_is_not_dropped_silently():
    import math

    from analysis.stats import curve_ci

    rows = pd.DataFrame(
        {"label": ["GRPO"] * 3, "step": [5] * 3, "metric": ["val/avg"] * 3,
         "value": [10.0, 20.0, math.nan]}
    )  # fmt: skip
    with pytest.warns(UserWarning, match="1 of 3 seeds are NaN/inf"):
        out = curve_ci(rows)
    assert out["n"].tolist() == [2] and out["mean"].tolist() == [15.0]
