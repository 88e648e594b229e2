"""Validation during training: held-out accuracy at iteration 0, every ``val.every`` rollout
batches and at the end, logged as ``val/<benchmark>/acc``, CI bounds and ``val/avg``."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from sfpo_lab.data.records import Problem
from sfpo_lab.eval.metrics import avg_at_k, bootstrap_ci
from sfpo_lab.rollout.base import SamplingParams, derive_seed


class ValidationCallback(L.Callback):
    """Evaluates the policy with its rollout engine on named problem sets.

    Args:
        benchmarks: name -> problems (already limited to ``val.limit``).
        every: rollout batches between evaluations (0 = start and end only).
        params: sampling settings (n samples per problem, temperature, top_p, max tokens).
    """

    def __init__(self, benchmarks: dict[str, list[Problem]], every: int, params: SamplingParams):
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
        metrics: dict[str, float] = {}
        pl_module.ensure_ready()
        pl_module.sync_engine()
        for b, (name, problems) in enumerate(self.benchmarks.items()):
            correct = self._evaluate(trainer, pl_module, problems, salt=1000 + b)
            acc = avg_at_k(correct)
            lo, hi = bootstrap_ci(correct, seed=pl_module.run_cfg.seed)
            metrics[f"val/{name}/acc"] = acc
            metrics[f"val/{name}/ci_lo"] = lo
            metrics[f"val/{name}/ci_hi"] = hi
        accs = [v for k, v in metrics.items() if k.endswith("/acc")]
        metrics["val/avg"] = sum(accs) / len(accs)
        metrics["train/rollouts"] = float(pl_module.rollouts)
        metrics["train/wall_clock_s"] = pl_module.wall_clock_s
        pl_module.log_iteration(metrics)
        pl_module.last_val = metrics
        self._last_iteration = pl_module.iteration
        self.history.append({"iteration": float(pl_module.iteration), **metrics})
        return metrics

    def _evaluate(
        self, trainer: L.Trainer, pl_module: Any, problems: list[Problem], salt: int
    ) -> torch.Tensor:
        """``[P, n]`` correctness of n samples per problem (all ranks, gathered)."""
        world, rank = trainer.world_size, trainer.global_rank
        n = self.params.n
        flags = torch.zeros(len(problems), n, device=pl_module.device)
        mine = list(range(rank, len(problems), world))
        maker = pl_module.maker
        chunk = max(1, pl_module.run_cfg.data.batch_size // world)
        for c, start in enumerate(range(0, len(mine), chunk)):
            idx = mine[start : start + chunk]
            prompt_ids = maker.encode([problems[i].problem for i in idx])
            seed = derive_seed(pl_module.run_cfg.seed, pl_module.iteration, rank, c, salt)
            ro = pl_module.engine.generate(prompt_ids, self.params, seed=seed)
            texts = ro.decode_responses(pl_module.tokenizer)
            golds = [problems[i].answer for i in idx for _ in range(n)]
            grades = maker.verifier.grade_many(texts, golds)
            ok = torch.tensor([g.correct for g in grades], dtype=torch.float32).view(len(idx), n)
            flags[idx] = ok.to(flags.device)
        flags = trainer.strategy.reduce(flags, reduce_op="sum")
        return flags.cpu()
