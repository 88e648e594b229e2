"""Benchmark metrics as pure functions: correctness matrices in, floats and dicts out.

Shapes: ``correct`` is ``[P, n]`` — P problems, n samples per problem, entries 0/1 (bool, int,
float; numpy array, nested list or CPU/GPU torch tensor).

Units: ``pass_at_k`` (one problem) returns a probability in [0, 1]; every benchmark-level
metric (``avg_at_k``, ``mean_pass_at_k``, ``maj_at_k``, ``bootstrap_ci``, ``summarize``)
returns percent, as the paper's tables do, so accuracies and CI bounds can be compared as is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Bootstrap draws are processed in chunks of at most this many gathered entries (B * P * n).
_BOOT_CHUNK_ELEMS = 4_000_000


def as_correct_matrix(correct: Any) -> np.ndarray:
    """Convert ``correct`` to a float64 ``[P, n]`` array of 0/1, validating its shape."""
    if hasattr(correct, "detach"):  # torch tensor, without importing torch here
        correct = correct.detach().cpu().numpy()
    matrix = np.asarray(correct, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"correct must have shape [P, n] with P, n >= 1, got {matrix.shape}")
    if not np.isin(matrix, (0.0, 1.0)).all():
        raise ValueError("correct must hold only 0/1 (or bool) entries")
    return matrix


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al., 2021, Codex paper, Eq. 1).

    ``1 - C(n-c, k) / C(n, k)``, computed as the numerically stable product
    ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``.

    Args:
        n: samples drawn for the problem.
        c: correct samples among them.
        k: budget, ``1 <= k <= n``.

    Returns:
        The probability that at least one of k samples drawn without replacement is correct.
    """
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs n >= 1, 0 <= c <= n, 1 <= k <= n; got {n=}, {c=}, {k=}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(correct: Any, k: int) -> float:
    """pass@k in percent, averaged over problems of a ``[P, n]`` correctness matrix (k <= n)."""
    matrix = as_correct_matrix(correct)
    n = matrix.shape[1]
    counts = matrix.sum(axis=1).astype(int)
    return 100.0 * float(np.mean([pass_at_k(n, int(c), k) for c in counts]))


def avg_at_k(correct: Any) -> float:
    """avg@n in percent: pass@1 averaged over the n samples and P problems of ``correct``.

    This is the paper's headline metric (avg pass@1 over n samples at temperature 1).
    """
    return 100.0 * float(as_correct_matrix(correct).mean())


def maj_at_k(
    answers: Sequence[Sequence[str | None]],
    correct: Any,
    k: int | None = None,
) -> float:
    """maj@k in percent: share of problems whose majority-voted answer is correct.

    Votes go over the parsed answers of the first k samples (``None`` = nothing parsed, no
    vote); ties go to the answer seen first. The vote is correct when the samples giving that
    answer were graded correct. Answers are compared as strings, so equivalent forms
    (``1/2`` vs ``\\frac{1}{2}``) vote separately; pass canonical strings for a stricter vote.

    Args:
        answers: ``[P][n]`` parsed answer strings.
        correct: ``[P, n]`` correctness of the same samples.
        k: samples per problem to vote over; all n if ``None``.
    """
    matrix = as_correct_matrix(correct)
    if len(answers) != matrix.shape[0]:
        raise ValueError(f"answers has {len(answers)} problems, correct has {matrix.shape[0]}")
    k = matrix.shape[1] if k is None else k
    if not 1 <= k <= matrix.shape[1]:
        raise ValueError(f"maj_at_k needs 1 <= k <= n={matrix.shape[1]}, got {k=}")
    hits = 0
    for row_answers, row_correct in zip(answers, matrix, strict=True):
        votes = Counter(a for a in row_answers[:k] if a is not None)
        if not votes:
            continue
        winner = max(votes, key=votes.__getitem__)  # max keeps the first of equal counts
        hits += int(row_correct[list(row_answers).index(winner)] > 0)
    return 100.0 * hits / matrix.shape[0]


def bootstrap_ci(
    correct: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of avg@n, resampling problems and samples within problems.

    Each draw picks P problems with replacement, then n samples with replacement within each
    picked problem, and takes the mean; both sources of variance (which problems, which
    samples) enter the interval.

    Args:
        correct: ``[P, n]`` correctness matrix.
        n_boot: bootstrap draws.
        alpha: 1 - confidence level (0.05 -> 95 % CI).
        seed: seed of the numpy generator (the CI is deterministic given the seed).

    Returns:
        ``(lo, hi)`` in percent.
    """
    matrix = as_correct_matrix(correct)
    if n_boot < 1 or not 0.0 < alpha < 1.0:
        raise ValueError(
            f"bootstrap_ci needs n_boot >= 1 and 0 < alpha < 1; got {n_boot=}, {alpha=}"
        )
    rng = np.random.default_rng(seed)
    n_problems, n_samples = matrix.shape
    chunk = max(1, _BOOT_CHUNK_ELEMS // (n_problems * n_samples))
    stats = []
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        rows = rng.integers(0, n_problems, size=(size, n_problems, 1))
        cols = rng.integers(0, n_samples, size=(size, n_problems, n_samples))
        stats.append(matrix[rows, cols].mean(axis=(1, 2)))
    draws = np.concatenate(stats)
    lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return 100.0 * float(lo), 100.0 * float(hi)


def summarize_benchmark(
    correct: Any,
    ks: Sequence[int] = (),
    answers: Sequence[Sequence[str | None]] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Metrics of one benchmark, in percent: ``acc`` (avg@n), ``ci_lo``, ``ci_hi``,
    ``pass@k`` for each k <= n in ``ks``, ``maj@n`` when ``answers`` is given, plus the counts
    ``n_problems`` and ``n_samples``."""
    matrix = as_correct_matrix(correct)
    lo, hi = bootstrap_ci(matrix, n_boot=n_boot, alpha=alpha, seed=seed)
    n = matrix.shape[1]
    out = {"acc": avg_at_k(matrix), "ci_lo": lo, "ci_hi": hi}
    for k in sorted(set(ks)):
        if 1 <= k <= n:
            out[f"pass@{k}"] = mean_pass_at_k(matrix, k)
    if answers is not None:
        out[f"maj@{n}"] = maj_at_k(answers, matrix)
    out["n_problems"] = float(matrix.shape[0])
    out["n_samples"] = float(n)
    return out


def summarize(
    correct_by_benchmark: Mapping[str, Any],
    ks: Sequence[int] = (),
    answers_by_benchmark: Mapping[str, Sequence[Sequence[str | None]]] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-benchmark metrics and their macro average.

    Args:
        correct_by_benchmark: benchmark name -> ``[P, n]`` correctness (n may differ
            between benchmarks).
        ks: budgets for pass@k; a k larger than a benchmark's n is skipped there.
        answers_by_benchmark: optional name -> ``[P][n]`` parsed answers, for maj@n.
        n_boot, alpha, seed: bootstrap settings (see ``bootstrap_ci``).

    Returns:
        ``{"benchmarks": {name: summarize_benchmark(...)}, "avg": mean of the acc values}``,
        all in percent; the paper's 6-benchmark average when the six are passed.
    """
    if not correct_by_benchmark:
        raise ValueError("summarize needs at least one benchmark")
    answers_by_benchmark = answers_by_benchmark or {}
    per_benchmark = {
        name: summarize_benchmark(
            correct,
            ks=ks,
            answers=answers_by_benchmark.get(name),
            n_boot=n_boot,
            alpha=alpha,
            seed=seed,
        )
        for name, correct in correct_by_benchmark.items()
    }
    avg = float(np.mean([m["acc"] for m in per_benchmark.values()]))
    return {"benchmarks": per_benchmark, "avg": avg}


def flatten_summary(summary: Mapping[str, Any], prefix: str = "val") -> dict[str, float]:
    """Metric keys for loggers: ``<prefix>/<benchmark>/<metric>`` and ``<prefix>/avg``."""
    flat = {
        f"{prefix}/{name}/{key}": value
        for name, metrics in summary["benchmarks"].items()
        for key, value in metrics.items()
    }
    flat[f"{prefix}/avg"] = summary["avg"]
    return flat
