"""Metrics: exact values for the estimators, sanity of the bootstrap and the summary."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sfpo_lab.eval.metrics import (
    avg_at_k,
    bootstrap_ci,
    flatten_summary,
    maj_at_k,
    mean_pass_at_k,
    pass_at_k,
    summarize,
)


def test_pass_at_k_matches_closed_form():
    for n in range(1, 17):
        for c in range(n + 1):
            for k in range(1, n + 1):
                closed = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12), (n, c, k)


def test_pass_at_k_large_n_is_stable():
    closed = 1 - math.comb(900, 64) / math.comb(1000, 64)
    assert pass_at_k(1000, 100, 64) == pytest.approx(closed, rel=1e-9)
    assert pass_at_k(4, 1, 1) == 0.25


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, 2, 5), (4, 2, 0), (0, 0, 1)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_avg_at_k_hand_value_and_inputs():
    correct = [[1, 0, 1, 1], [0, 0, 0, 1]]
    assert avg_at_k(correct) == 50.0
    assert avg_at_k(np.array(correct, dtype=bool)) == 50.0
    assert avg_at_k(torch.tensor(correct)) == 50.0
    assert mean_pass_at_k(correct, 1) == 50.0
    # pass@2: 1 - C(1,2)/C(4,2) = 1 and 1 - C(3,2)/C(4,2) = 1/2
    assert mean_pass_at_k(correct, 2) == pytest.approx(75.0)
    with pytest.raises(ValueError, match=r"shape \[P, n\]"):
        avg_at_k([1, 0, 1])
    with pytest.raises(ValueError, match="0/1"):
        avg_at_k([[0.5]])


def test_maj_at_k_votes_over_parsed_answers():
    answers = [["2", "2", "3", None], ["5", "6", "6", "6"], [None] * 4, ["a", "b", "b", "b"]]
    correct = [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    # problem 0: "2" wins, correct; 1: "6" wins, wrong; 2: no vote; 3: "a"/"b" tie at k=2 -> "a"
    assert maj_at_k(answers, correct) == 25.0
    assert maj_at_k(answers, correct, k=2) == 75.0
    with pytest.raises(ValueError, match="k <= n"):
        maj_at_k(answers, correct, k=5)


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    rng = np.random.default_rng(1)
    correct = rng.random((60, 4)) < rng.random((60, 1))  # per-problem difficulty
    lo, hi = bootstrap_ci(correct)
    mean = avg_at_k(correct)
    assert lo < mean < hi
    assert 0 < hi - lo < 40
    assert bootstrap_ci(correct) == (lo, hi)
    lo90, hi90 = bootstrap_ci(correct, alpha=0.1)
    assert lo <= lo90 <= hi90 <= hi


def test_bootstrap_ci_degenerate_and_chunked():
    assert bootstrap_ci(np.ones((30, 4))) == (100.0, 100.0)
    assert bootstrap_ci(torch.zeros(30, 4)) == (0.0, 0.0)
    big = np.random.default_rng(0).random((5000, 8)) < 0.3  # several bootstrap chunks
    lo, hi = bootstrap_ci(big, n_boot=200)
    assert lo < avg_at_k(big) < hi


def test_summarize_per_benchmark_and_macro_average():
    correct = {"aime24": [[1, 0], [0, 0]], "math500": [[1, 1, 1, 0], [1, 0, 1, 1], [0, 0, 0, 0]]}
    answers = {"aime24": [["1", "2"], [None, "3"]]}
    summary = summarize(correct, ks=(1, 2, 4), answers_by_benchmark=answers, n_boot=100)
    aime, math500 = summary["benchmarks"]["aime24"], summary["benchmarks"]["math500"]
    assert aime["acc"] == 25.0 and math500["acc"] == 50.0
    assert summary["avg"] == 37.5
    assert aime["pass@1"] == aime["acc"] and "pass@4" not in aime
    assert math500["pass@4"] == pytest.approx(100 * 2 / 3)
    assert aime["maj@2"] == 50.0 and "maj@4" not in math500
    assert aime["ci_lo"] <= aime["acc"] <= aime["ci_hi"]
    assert (math500["n_problems"], math500["n_samples"]) == (3, 4)
    flat = flatten_summary(summary)
    assert flat["val/avg"] == 37.5 and flat["val/math500/ci_hi"] == math500["ci_hi"]
    with pytest.raises(ValueError, match="at least one"):
        summarize({})
