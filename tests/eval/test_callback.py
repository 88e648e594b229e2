"""Validation during training: one generate call for all benchmarks, samples that depend on
(seed, iteration, benchmark, problem, sample) only — not on the batch size or the number of
ranks — and the logged metrics (acc, CI, reward_mean, grade_timeouts, averages)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sfpo_lab.data.records import Problem
from sfpo_lab.eval.callback import (
    BenchmarkResult,
    ValidationCallback,
    evaluate_benchmarks,
    validation_metrics,
    validation_seed,
)
from sfpo_lab.model.build import build_causal_lm, tiny_qwen2_config
from sfpo_lab.rewards.pool import MathVerifier
from sfpo_lab.rollout import HFEngine, SamplingParams
from tests.dist_utils import free_port

PAD, EOS = 0, 1
PARAMS = SamplingParams(n=4, max_new_tokens=6)
NAMES = ["math500", "aime24", "aime25", "amc23", "minerva", "olympiad"]


def make_engine() -> HFEngine:
    config = tiny_qwen2_config(
        32, hidden_size=64, num_layers=2, intermediate_size=128, initializer_range=0.2
    )
    torch.manual_seed(0)
    return HFEngine(build_causal_lm(config).eval(), PAD, EOS)


def benchmarks() -> dict[str, list[Problem]]:
    return {
        name: [
            Problem(id=f"{name}-{i}", problem=f"{name} {i}", answer=str((b + i) % 10))
            for i in range(5)
        ]
        for b, name in enumerate(NAMES)
    }


def encode(texts: list[str]) -> list[list[int]]:
    return [[2 + ord(c) % 30 for c in t] for t in texts]


class Digits:
    """Decodes the tiny model's ids to digits (the synthetic vocabulary of these tests)."""

    def decode(self, ids: list[int]) -> str:
        return "".join(str(i % 10) for i in ids)


class Grader:
    """Grades the last digit of each sample as its boxed answer with the real verifier (so
    about 1 in 10 is correct) and records every graded text."""

    def __init__(self) -> None:
        self.verifier = MathVerifier(num_workers=0)
        self.seen: list[str] = []

    def __call__(self, texts: list[str], golds: list[str]):
        self.seen += texts
        return self.verifier.grade_many([f"\\boxed{{{t[-1:] or 'x'}}}" for t in texts], golds)


def evaluate(world: int = 1, rank: int = 0, engine: HFEngine | None = None, grader=None):
    return evaluate_benchmarks(
        engine or make_engine(),
        encode,
        Digits(),
        grader or Grader(),
        benchmarks(),
        PARAMS,
        seed=validation_seed(3, 2),
        world=world,
        rank=rank,
    )


def test_one_call_and_results_independent_of_the_number_of_ranks() -> None:
    engine = make_engine()
    calls = []
    generate = engine.generate
    engine.generate = lambda *a, **k: (calls.append(len(a[0])), generate(*a, **k))[1]
    single = evaluate(engine=engine)
    assert calls == [30]  # all prompts of all six benchmarks in one call
    flags = torch.cat([r.correct for r in single.values()])
    assert 0 < flags.sum() < flags.numel()  # some right, some wrong: the check can fail
    for world in (2, 3, 40):  # 40 > 30 problems: idle ranks still generate once
        parts = [evaluate(world, rank, engine) for rank in range(world)]
        for name in NAMES:  # summing the ranks' results = the all-reduce
            assert torch.equal(sum(p[name].correct for p in parts), single[name].correct)
            assert torch.equal(sum(p[name].reward for p in parts), single[name].reward)
    # authors' scheme: every sample here is boxed, so reward = 1 if correct else 0.1
    for r in single.values():
        assert torch.equal(r.reward, torch.where(r.correct.bool(), 1.0, 0.1))
        assert r.grade_timeouts == 0.0


def _stand_in_module(engine: HFEngine, grader: Grader, batch_size: int) -> SimpleNamespace:
    """The module attributes the callback reads (the real module needs a full trainer)."""
    run = SimpleNamespace(
        seed=3,
        data=SimpleNamespace(batch_size=batch_size),
        rollout=SimpleNamespace(reward_scheme="authors"),
    )
    logged = []
    return SimpleNamespace(
        run_cfg=run,
        iteration=2,
        rollouts=0,
        wall_clock_s=0.0,
        device=torch.device("cpu"),
        engine=engine,
        tokenizer=Digits(),
        maker=SimpleNamespace(encode=encode, verifier=SimpleNamespace(grade_many=grader)),
        ensure_ready=lambda: None,
        sync_engine=lambda: 0.0,
        log_iteration=logged.append,
        logged=logged,
    )


def test_callback_flags_do_not_depend_on_the_batch_size() -> None:
    trainer = SimpleNamespace(
        world_size=1, global_rank=0, strategy=SimpleNamespace(reduce=lambda t, reduce_op: t)
    )
    out = {}
    for batch_size in (16, 4):
        grader = Grader()
        module = _stand_in_module(make_engine(), grader, batch_size)
        metrics = ValidationCallback(benchmarks(), every=1, params=PARAMS).run(trainer, module)
        out[batch_size] = (metrics, grader.seen)
        assert module.logged == [metrics]
    assert out[16] == out[4]
    metrics = out[16][0]
    reference = validation_metrics(evaluate(), ci_seed=3)
    assert {k: v for k, v in metrics.items() if k.startswith("val/")} == reference
    for name in NAMES:
        for key in ("acc", "ci_lo", "ci_hi", "reward_mean", "grade_timeouts"):
            assert f"val/{name}/{key}" in metrics


def test_metrics_by_hand() -> None:
    results = {
        "a": BenchmarkResult(
            correct=torch.tensor([[1.0, 0.0], [1.0, 1.0]]),
            reward=torch.tensor([[1.0, 0.1], [1.0, 1.0]]),
            grade_timeouts=1.0,
        ),
        "b": BenchmarkResult(
            correct=torch.tensor([[0.0, 0.0]]),
            reward=torch.tensor([[0.0, 0.1]]),
            grade_timeouts=0.0,
        ),
    }
    m = validation_metrics(results, ci_seed=0)
    assert m["val/a/acc"] == 75.0 and m["val/b/acc"] == 0.0
    assert m["val/a/reward_mean"] == pytest.approx(0.775) and m[
        "val/b/reward_mean"
    ] == pytest.approx(0.05)
    assert (m["val/a/grade_timeouts"], m["val/b/grade_timeouts"]) == (1.0, 0.0)
    assert m["val/avg"] == 37.5
    assert m["val/avg_reward"] == pytest.approx(0.4125)
    assert m["val/b/ci_lo"] == m["val/b/ci_hi"] == 0.0


def test_seed_depends_on_seed_and_iteration() -> None:
    assert validation_seed(3, 2) == validation_seed(3, 2)
    assert len({validation_seed(3, 2), validation_seed(3, 3), validation_seed(4, 2)}) == 3


# ---------------------------------------------------------------- a real 2-process world
def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    grader = Grader()

    def reduce(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t)
        return t

    results = evaluate_benchmarks(
        make_engine(), encode, Digits(), grader, benchmarks(), PARAMS,
        seed=validation_seed(3, 2), world=2, rank=rank, reduce=reduce,
    )  # fmt: skip
    torch.save({"results": results, "seen": grader.seen}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_validate_the_same_samples_as_one(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    grader = Grader()
    single = evaluate(grader=grader)
    for r in ranks:  # every rank holds the gathered results
        for name in NAMES:
            assert torch.equal(r["results"][name].correct, single[name].correct)
            assert torch.equal(r["results"][name].reward, single[name].reward)
    assert sorted(ranks[0]["seen"] + ranks[1]["seen"]) == sorted(grader.seen)
