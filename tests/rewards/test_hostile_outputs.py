"""Hostile completions (issue 9 item 4): each returns "wrong" within the timeout, and the pool
still grades correctly afterwards; the training reward and the evaluation records/summary built
from them stay bounded too. The whole file runs in well under 60 s (see the README)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfpo_lab.eval.evaluate import summarize_records, write_outputs
from sfpo_lab.rewards.pool import MathVerifier
from sfpo_lab.rewards.reward import compute_rewards

TIMEOUT_S = 2.0

HOSTILE: dict[str, str] = {
    "1MB-no-box": "a" * 1_000_000,
    "1MB-inside-box": "\\boxed{" + "9" * 1_000_000 + "}",
    "1MB-then-wrong-box": "x" * 1_000_000 + "\\boxed{6}",
    "10k-nested-braces": "\\boxed{" + "{" * 10_000 + "7" + "}" * 10_000 + "}",
    "450-nested-braces": "\\boxed{" + "{" * 450 + "7" + "}" * 450 + "}",
    "200-nested-fracs": "\\boxed{" + "\\frac{1}{" * 200 + "1" + "}" * 200 + "}",
    "unterminated-box": "The answer is \\boxed{7",
    "unterminated-after-box": "\\boxed{7} no wait \\boxed{",
    "many-open-boxes": "\\boxed{" * 100_000,
    "unicode-digits": "\\boxed{७}",
    "fullwidth": "\\boxed{７}",
    "emoji": "\\boxed{😀🔥}",
    "control-chars": "\\boxed{\x00\x1b[31m\u202e7}",
    "tower": "\\boxed{10^{10^{10}}}",
    "tower-minus-tower": "\\boxed{10^{10^{10}}-10^{10^{10}}+7}",
    "factorial": "\\boxed{(10^{10})!}",
    "division-by-zero": "\\boxed{1/0}",
    "latex-garbage": "\\boxed{\\left(\\right.\\begin{matrix}\\end{pmatrix}}",
    "huge-integer": "\\boxed{" + "9" * 4000 + "}",
    "huge-exponent": "\\boxed{2^{2^{2^{2^{2^{2}}}}}}",
    "surrogates-and-rtl": "\\boxed{\\ud800\u202e\u2067" + "\u0301" * 1000 + "7}",
    "nested-boxes": "\\boxed{\\boxed{\\boxed{" * 1000 + "7" + "}}}" * 1000,
}
GOLD = "8"


@pytest.fixture(scope="module")
def verifier() -> Iterator[MathVerifier]:
    with MathVerifier(num_workers=2, timeout_s=TIMEOUT_S) as pool:
        pool.grade_many([r"\boxed{1}"], ["1"])  # start the workers outside the timings
        yield pool


# Bounds are hang guards (pytest-timeout), not timings: a lone hostile answer costs at most one
# per-answer timeout, a batch at most two rounds (first try + one retry of shared answers).


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_completion_is_wrong_within_the_timeout(name: str, verifier: MathVerifier):
    (grade,) = verifier.grade_many([HOSTILE[name]], [GOLD])
    assert not grade.correct
    after = verifier.grade_many([r"\boxed{8}", r"\boxed{9}"], [GOLD, GOLD])
    assert [g.correct for g in after] == [True, False]


@pytest.mark.timeout(120)
def test_a_whole_hostile_batch_is_bounded(verifier: MathVerifier):
    """All cases at once (two of each): bounded by the slow ones / workers, never hangs; the
    two copies of an answer get the same grade (a retry does not split them)."""
    completions = [c for c in HOSTILE.values() for _ in range(2)] + [r"\boxed{8}"]
    grades = verifier.grade_many(completions, [GOLD] * len(completions))
    assert [g.correct for g in grades] == [False] * (len(completions) - 1) + [True]
    assert all(grades[i] == grades[i + 1] for i in range(0, len(completions) - 1, 2))


@pytest.mark.timeout(120)
def test_training_reward_and_evaluation_summary_of_hostile_samples_are_bounded(
    verifier: MathVerifier, tmp_path: Path
):
    """What the trainer computes after grading (rewards under both schemes) and what
    ``sfpo_lab.eval`` does (records, avg@n / pass@k / maj@n over the parsed answers, bootstrap
    CI, files): bounded, and no hostile sample is right or earns the full reward."""
    n = 4
    samples = list(HOSTILE.values())
    padded = -len(samples) % n
    samples += [r"\boxed{8}"] * padded  # the only right answers
    grades = verifier.grade_many(samples, [GOLD] * len(samples))
    hostile = grades[: len(HOSTILE)]
    for scheme in ("authors", "binary"):
        rewards, metrics = compute_rewards(hostile, scheme)
        assert float(rewards.max()) < 1.0 and metrics["acc"] == 0.0
        assert all(math.isfinite(float(r)) for r in rewards)
    records = [
        {
            "id": str(i),
            "benchmark": "hostile",
            "problem": "p",
            "gold": GOLD,
            "samples": samples[i * n : (i + 1) * n],
            "preds": [g.pred for g in grades[i * n : (i + 1) * n]],
            "correct": [bool(g.correct) for g in grades[i * n : (i + 1) * n]],
        }
        for i in range(len(samples) // n)
    ]
    summary = summarize_records(records, n, n_boot=200)
    out = write_outputs(tmp_path, summary, records, {"n": n})
    acc = summary["benchmarks"]["hostile"]["acc"]
    assert acc == pytest.approx(100 * padded / len(samples))
    lines = (out / "hostile.records.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["samples"] for x in lines] == [r["samples"] for r in records]
