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
