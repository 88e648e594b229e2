"""Validation during training: held-out accuracy at iteration 0, every ``val.every`` rollout
batches and at the end.

Logged per benchmark: ``val/<b>/acc`` (avg@n, percent), ``val/<b>/ci_lo`` / ``ci_hi``,
``val/<b>/reward_mean`` (the rollout reward scheme's mean: the authors' training-time
validation number with scheme ``authors``, 1 / 0.1 / 0) and ``val/<b>/grade_timeouts``; then
``val/avg`` (mean acc) and ``val/avg_reward`` (mean reward_mean).

Each rank sends its share of all prompts of all benchmarks in ONE ``generate`` call. A sample's
randomness depends on (run seed, iteration, benchmark, problem, sample) only — never on the
batch size, the chunking or the number of ranks — with an engine that honours ``keys`` (HF);
vLLM takes one seed per call (see :mod:`sfpo_lab.rollout.vllm`).

Validation generates under the same precision context as the rollouts: Lightning runs
``training_step`` (and so every rollout) inside its precision plugin's ``train_step_context``
(``bf16-mixed`` / ``16-mixed``: autocast to the compute dtype), while callback hooks run outside
it; :func:`compute_context` gives validation that context too.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from sfpo_lab.data.records import Problem
from sfpo_lab.eval.metrics import avg_at_k, bootstrap_ci
from sfpo_lab.rewards.reward import compute_rewards
from sfpo_lab.rewards.verify import Grade
from sfpo_lab.rollout.base import RolloutEngine, SamplingParams, derive_seed

VAL_SALT = 1000  # keeps validation streams apart from training ones


def problem_key(benchmark: str, index: int) -> int:
    """The random-stream key of problem ``index`` of ``benchmark`` (stable across processes)."""
    name = int.from_bytes(hashlib.blake2b(benchmark.encode(), digest_size=8).digest(), "little")
    return derive_seed(name >> 1, index)


def validation_seed(run_seed: int, iteration: int) -> int:
    """The ``generate`` seed of the validation at ``iteration``."""
    return derive_seed(run_seed, iteration, VAL_SALT)


def compute_context(trainer: Any) -> contextlib.AbstractContextManager:
    """The precision context Lightning wraps ``training_step`` in (its precision plugin's
    ``train_step_context``: autocast to the compute dtype under ``*-mixed``, nothing under
    ``*-true`` or the FSDP2 policy), so that validation computes as the rollouts do."""
    plugin = getattr(trainer, "precision_plugin", None)
    return plugin.train_step_context() if plugin is not None else contextlib.nullcontext()


@dataclass
class BenchmarkResult:
    """One benchmark's outcome, gathered over all ranks.

    Attributes:
        correct: ``[P, n]`` float 0/1 per sample.
        reward: ``[P, n]`` reward per sample (the rollout reward scheme).
        grade_timeouts: grading timeouts counted over the benchmark's samples.
    """

    correct: torch.Tensor
    reward: torch.Tensor
    grade_timeouts: float


def evaluate_benchmarks(
    engine: RolloutEngine,
    encode: Callable[[list[str]], list[list[int]]],
    decode: Any,
    grade: Callable[[list[str], list[str]], Sequence[Grade]],
    benchmarks: dict[str, list[Problem]],
    params: SamplingParams,
    *,
    seed: int,
    world: int = 1,
    rank: int = 0,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    reward_scheme: str = "authors",
    device: torch.device | str = "cpu",
) -> dict[str, BenchmarkResult]:
    """Generate and grade this rank's share of every benchmark in one call, then sum over ranks.

    Problems are dealt round-robin over ranks across all benchmarks; row (benchmark b, problem
    i, sample j) is keyed by ``problem_key(b, i)``. ``reduce`` sums a tensor over ranks
    (identity on one process); ``decode`` has a tokenizer's ``decode``.
    """
    names = list(benchmarks)
    n = params.n
    items = [(b, i) for b, name in enumerate(names) for i in range(len(benchmarks[name]))]
    offsets = [0]
    for name in names:
        offsets.append(offsets[-1] + len(benchmarks[name]))
    mine = items[rank::world]
    correct = torch.zeros(len(items), n)
    reward = torch.zeros(len(items), n)
    timeouts = torch.zeros(len(names))
    # a rank without problems still generates (one throw-away prompt): an engine may gather
    # weights from all ranks inside generate, so every rank must call it
    todo = mine or items[:1]
    problems = [benchmarks[names[b]][i] for b, i in todo]
    batch = engine.generate(
        encode([p.problem for p in problems]),
        params,
        seed=seed,
        keys=[problem_key(names[b], i) for b, i in todo],
    )
    if mine:
        texts = batch.decode_responses(decode)
        grades = list(grade(texts, [p.answer for p in problems for _ in range(n)]))
        for b in sorted({b for b, _ in mine}):
            rows = [r for r, (bb, _) in enumerate(mine) if bb == b]
            bgrades = [grades[r * n + j] for r in rows for j in range(n)]
            rewards, metrics = compute_rewards(bgrades, reward_scheme)
            index = [offsets[b] + mine[r][1] for r in rows]
            correct[index] = torch.tensor([g.correct for g in bgrades]).float().view(-1, n)
            reward[index] = rewards.view(-1, n)
            timeouts[b] = float(metrics.get("grade_timeouts", 0.0))
    flat = torch.cat([correct.flatten(), reward.flatten(), timeouts]).to(device)
    flat = reduce(flat).cpu()
    k = len(items) * n
    correct, reward, timeouts = flat[:k].view(-1, n), flat[k : 2 * k].view(-1, n), flat[2 * k :]
    return {
        name: BenchmarkResult(
            correct[offsets[b] : offsets[b + 1]],
            reward[offsets[b] : offsets[b + 1]],
            float(timeouts[b]),
        )
        for b, name in enumerate(names)
    }


def validation_metrics(results: dict[str, BenchmarkResult], ci_seed: int) -> dict[str, float]:
    """``val/<b>/{acc,ci_lo,ci_hi,reward_mean,grade_timeouts}``, ``val/avg``, ``val/avg_reward``."""
    metrics: dict[str, float] = {}
    for name, r in results.items():
        lo, hi = bootstrap_ci(r.correct, seed=ci_seed)
        metrics[f"val/{name}/acc"] = avg_at_k(r.correct)
        metrics[f"val/{name}/ci_lo"] = lo
        metrics[f"val/{name}/ci_hi"] = hi
        metrics[f"val/{name}/reward_mean"] = float(r.reward.mean())
        metrics[f"val/{name}/grade_timeouts"] = r.grade_timeouts
    accs = [metrics[f"val/{name}/acc"] for name in results]
    rewards = [metrics[f"val/{name}/reward_mean"] for name in results]
    metrics["val/avg"] = sum(accs) / len(accs)
    metrics["val/avg_reward"] = sum(rewards) / len(rewards)
    return metrics


class ValidationCallback(L.Callback):
    """Evaluates the policy with its rollout engine on named problem sets.

    Args:
        benchmarks: name -> problems (already limited to ``val.limit``).
        every: rollout batches between evaluations (0 = start and end only).
        params: sampling settings (n samples per problem, temperature, top_p, max tokens).
    """

    def __init__(self, benchmarks: dict[str, list[Problem]], every: int, params: SamplingParams):
        empty = [name for name, problems in benchmarks.items() if not problems]
        if not benchmarks or empty:
            raise ValueError(f"validation needs problems in every benchmark; empty: {empty}")
        self.benchmarks = benchmarks
        self.every = every
        self.params = params
        self.history: list[dict[str, float]] = []
        self._last_iteration: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "last_iteration": self._last_iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))
        self._last_iteration = state.get("last_iteration")

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if pl_module.iteration == 0 and self._last_iteration is None:
            self.run(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if self.every and pl_module.iteration % self.every == 0:
            self.run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self._last_iteration != pl_module.iteration:
            self.run(trainer, pl_module)

    def run(self, trainer: L.Trainer, pl_module: Any) -> dict[str, float]:
        """Evaluate every benchmark now; log and return the metrics."""
        pl_module.ensure_ready()
        # weight push and generation in the rollouts' context (a callback hook runs outside it)
        with compute_context(trainer):
            pl_module.sync_engine()  # a no-op for engines that pull from their weight source
            results = self._evaluate(trainer, pl_module)
        metrics = validation_metrics(results, ci_seed=pl_module.run_cfg.seed)
        metrics["train/rollouts"] = float(pl_module.rollouts)
        metrics["train/wall_clock_s"] = pl_module.wall_clock_s
        pl_module.log_iteration(metrics)
        pl_module.last_val = metrics
        self._last_iteration = pl_module.iteration
        self.history.append({"iteration": float(pl_module.iteration), **metrics})
        return metrics

    def _evaluate(self, trainer: L.Trainer, pl_module: Any) -> dict[str, BenchmarkResult]:
        """Generate and grade every benchmark with the module's engine, over all ranks."""
        run = pl_module.run_cfg
        return evaluate_benchmarks(
            pl_module.engine,
            pl_module.maker.encode,
            pl_module.tokenizer,
            pl_module.maker.verifier.grade_many,
            self.benchmarks,
            self.params,
            seed=validation_seed(run.seed, pl_module.iteration),
            world=trainer.world_size,
            rank=trainer.global_rank,
            reduce=lambda t: trainer.strategy.reduce(t, reduce_op="sum"),
            reward_scheme=run.rollout.reward_scheme,
            device=pl_module.device,
        )
