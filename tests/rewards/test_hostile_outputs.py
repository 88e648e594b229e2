"""Hostile completions (issue 9 item 4): each returns "wrong" within the timeout, and the pool
still grades correctly afterwards."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from sfpo_lab.rewards.pool import MathVerifier

TIMEOUT_S = 2.0
SLACK_S = 2.0  # worker replacement and scheduling on a busy 2-core machine

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
}
GOLD = "8"


@pytest.fixture(scope="module")
def verifier() -> Iterator[MathVerifier]:
    with MathVerifier(num_workers=2, timeout_s=TIMEOUT_S) as pool:
        pool.grade_many([r"\boxed{1}"], ["1"])  # start the workers outside the timings
        yield pool


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_completion_is_wrong_within_the_timeout(name: str, verifier: MathVerifier):
    start = time.perf_counter()
    (grade,) = verifier.grade_many([HOSTILE[name]], [GOLD])
    elapsed = time.perf_counter() - start
    assert not grade.correct
    assert elapsed < TIMEOUT_S + SLACK_S, f"{name} took {elapsed:.1f}s"
    after = verifier.grade_many([r"\boxed{8}", r"\boxed{9}"], [GOLD, GOLD])
    assert [g.correct for g in after] == [True, False]


def test_a_whole_hostile_batch_is_bounded(verifier: MathVerifier):
    """All cases at once (two of each): bounded by the slow ones / workers, never hangs."""
    completions = [c for c in HOSTILE.values() for _ in range(2)] + [r"\boxed{8}"]
    start = time.perf_counter()
    grades = verifier.grade_many(completions, [GOLD] * len(completions))
    assert time.perf_counter() - start < 4 * TIMEOUT_S + SLACK_S
    assert [g.correct for g in grades] == [False] * (len(completions) - 1) + [True]
