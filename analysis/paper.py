"""Published numbers of the SFPO paper (arXiv 2510.04072), copied from
``../shared/reference/paper_results.md``: avg pass@1 in percent, temperature 1.

Keys use our config names (``conf/model/*.yaml`` ``model.name``; benchmark names of
``sfpo_lab.eval.benchmarks``) so a run can be matched to its published row.
"""

from __future__ import annotations

TABLE1_BENCHMARKS = ["math500", "aime24", "aime25", "amc23", "minerva_math", "olympiadbench"]
TABLE2_BENCHMARKS = ["aime24", "aime25"]
BENCHMARK_TITLES = {
    "math500": "Math-500",
    "aime24": "AIME24",
    "aime25": "AIME25",
    "amc23": "AMC",
    "minerva_math": "Minerva",
    "olympiadbench": "Olympiad",
    "toy": "toy (held-out)",
    "avg": "Avg",
    "gain": "Δ Avg vs the run's own step 0",
}

# (model, method) -> six benchmarks in TABLE1_BENCHMARKS order, then the paper's Avg
TABLE1: dict[tuple[str, str], list[float]] = {
    ("qwen2.5-math-1.5b", "Base"): [55.55, 9.17, 5.83, 37.65, 17.74, 28.45, 25.73],
    ("qwen2.5-math-1.5b", "GRPO"): [77.15, 16.67, 11.67, 53.31, 31.89, 39.42, 38.35],
    ("qwen2.5-math-1.5b", "SFPO"): [78.35, 20.00, 15.00, 56.02, 32.07, 39.72, 40.19],
    ("qwen2.5-math-7b", "Base"): [71.65, 21.67, 9.17, 53.61, 27.02, 38.54, 36.94],
    ("qwen2.5-math-7b", "GRPO"): [82.50, 34.20, 20.83, 71.08, 36.76, 44.80, 48.36],
    ("qwen2.5-math-7b", "SFPO"): [82.30, 35.00, 20.83, 74.49, 36.94, 45.59, 49.19],
    ("ds-r1-distill-qwen-1.5b", "Base"): [73.80, 16.67, 20.00, 47.59, 28.86, 36.94, 37.27],
    ("ds-r1-distill-qwen-1.5b", "GRPO"): [84.65, 30.00, 23.33, 66.86, 31.71, 49.85, 47.73],
    ("ds-r1-distill-qwen-1.5b", "SFPO"): [86.10, 32.50, 30.83, 70.28, 32.81, 50.67, 50.53],
    ("ds-r1-distill-qwen-7b", "Base"): [83.60, 28.33, 25.00, 61.75, 41.73, 48.89, 48.21],
    ("ds-r1-distill-qwen-7b", "GRPO"): [91.70, 50.00, 35.83, 80.42, 43.65, 61.24, 60.47],
    ("ds-r1-distill-qwen-7b", "SFPO"): [92.60, 54.17, 37.50, 83.75, 44.49, 65.73, 63.04],
    ("qwen3-4b-base", "Base"): [45.25, 2.50, 0.83, 20.48, 15.99, 20.66, 17.62],
    ("qwen3-4b-base", "GRPO"): [83.35, 16.67, 17.50, 59.03, 38.78, 48.59, 43.99],
    ("qwen3-4b-base", "SFPO"): [84.30, 21.67, 20.83, 57.23, 40.81, 48.67, 45.59],
}

# (model, method) -> [AIME24, AIME25], Skywork-OR1 training set
TABLE2: dict[tuple[str, str], list[float]] = {
    ("ds-r1-distill-qwen-1.5b", "Base"): [20.40, 17.90],
    ("ds-r1-distill-qwen-1.5b", "GRPO"): [32.92, 25.83],
    ("ds-r1-distill-qwen-1.5b", "SFPO"): [34.17, 27.50],
    ("ds-r1-distill-qwen-7b", "Base"): [25.42, 22.92],
    ("ds-r1-distill-qwen-7b", "GRPO"): [42.50, 29.20],
    ("ds-r1-distill-qwen-7b", "SFPO"): [43.75, 30.00],
}

# model -> (rollouts GRPO/SFPO, wall-clock GRPO/SFPO) to reach GRPO's best accuracy
FIG4: dict[str, tuple[float, float]] = {
    "ds-r1-distill-qwen-1.5b": (3.21, 2.62),
    "qwen3-4b-base": (3.50, 2.65),
    "ds-r1-distill-qwen-7b": (4.93, 4.19),
}
