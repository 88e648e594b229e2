"""benchmarks.step_ratio (issue 14, 6d) and the fixed-length rollouts of vllm_rollouts (6e).

(No ``__init__.py`` here: a ``tests/benchmarks`` package would shadow the real ``benchmarks``.)
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.step_ratio import (  # noqa: E402
    PAPER_FIG4,
    Costs,
    Setting,
    response_mean,
    run,
    step_model,
)

COSTS = Costs(
    gen_per_token=1e-3,
    logprob_per_token=1e-4,
    fwd_bwd_per_token=3e-4,
    opt_step=0.5,
    bookkeeping=0.2,
    push=0.1,
)


def test_step_model_by_hand():
    s = Setting(prompts=2, n=2, K=3, mini=2, prompt_mean=10, response_mean=20)
    p = step_model(COSTS, s)
    # 4 rows: gen 1e-3 x 4 x 20; logprob 1e-4 x 4 x 30; one pass 3e-4 x 4 x 30 + 2 x 0.5
    assert p["gen"] == pytest.approx(0.08)
    assert p["logprob"] == pytest.approx(0.012)
    assert p["update"] == pytest.approx(1.036)
    assert p["grpo"] == pytest.approx(0.08 + 0.012 + 1.036 + 0.1)  # 1.228
    assert p["sfpo"] == pytest.approx(0.08 + 0.012 + 4 * 1.036 + 0.2 + 0.1)  # 4.536
    assert p["ratio"] == pytest.approx(4.536 / 1.228)
    assert p["update_share"] == pytest.approx(1.036 / 1.228)
    # K = 0 is GRPO plus SFPO's bookkeeping only
    p0 = step_model(COSTS, Setting(prompts=2, n=2, K=0, mini=2, prompt_mean=10, response_mean=20))
    assert p0["sfpo"] - p0["grpo"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="step_model: bad setting"):
        step_model(COSTS, Setting(mini=0))


def test_response_mean_is_the_clipped_lognormal_mean():
    mu, s, cap = math.log(600.0), 0.75, 2560.0

    def phi(x: float) -> float:
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))

    z = (math.log(cap) - mu) / s
    exact = math.exp(mu + s * s / 2) * phi(z - s) + cap * (1 - phi(z))  # E[min(X, cap)]
    assert response_mean() == pytest.approx(exact, rel=2e-3)


def test_smoke_section_rows_follow_the_model_and_quote_the_paper():
    rows = run("smoke", torch.device("cpu"))
    by = {r.metric: r for r in rows}
    pred = by["predicted SFPO / GRPO step time (paper setting)"]
    costs = Costs(**pred.details["costs"])
    assert all(v > 0 for v in pred.details["costs"].values())
    again = step_model(costs, Setting())
    assert pred.measured == pytest.approx(again["ratio"], rel=1e-12)
    assert pred.measured > 1.0  # K extra passes cost something
    share = by["predicted update-pass share of a GRPO step"].measured
    assert share == pytest.approx(again["update"] / again["grpo"], rel=1e-12)
    # the paper's Fig. 4 quotients, exactly
    for model, (rollouts, wall) in PAPER_FIG4.items():
        assert by[f"paper: SFPO / GRPO time per iteration ({model})"].measured == rollouts / wall
    assert by["paper: SFPO / GRPO time per iteration (ds-r1-distill-qwen-1.5b)"].measured == (
        pytest.approx(1.2252, abs=1e-4)
    )
    assert pred.details["measured"]["generated_tokens"] == 2 * 2 * 8


def test_an_unreachable_stop_id_makes_the_hf_engine_run_to_the_cap():
    from benchmarks.rollouts import build_model, make_prompts
    from sfpo_lab.rollout.base import SamplingParams
    from sfpo_lab.rollout.hf import HFEngine

    model = build_model("toy", torch.device("cpu"))
    vocab = model.config.vocab_size
    prompts = make_prompts(3, vocab)
    params = SamplingParams(n=2, max_new_tokens=12)
    free = HFEngine(model, 0, 1).generate(prompts, params, seed=3)
    fixed = HFEngine(model, 0, vocab).generate(prompts, params, seed=3)
    assert int(fixed.response_mask.sum()) == 3 * 2 * 12
    assert int(free.response_mask.sum()) < 3 * 2 * 12  # the toy model does emit EOS = 1 here


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_fixed_length_rows_on_the_toy_model():
    pytest.importorskip("vllm")
    from benchmarks.rollouts import Shape
    from benchmarks.vllm_rollouts import _compare

    shape = Shape("toy", "toy", 2, 2, 24, 1)
    tput, sync = _compare(shape, torch.device("cpu"))
    details = tput.details
    assert details["tokens"] == {"vllm": 2 * 2 * 24, "hf": 2 * 2 * 24}  # both ran to the cap
    tps = details["tokens_per_s"]
    assert tput.measured == pytest.approx(tps["vllm"] / tps["hf"], rel=1e-12)
    assert tput.passed is None  # toy: informational
    assert sync.measured == pytest.approx(
        details["seconds"]["sync"]["min"] / details["seconds"]["vllm"]["min"], rel=1e-12
    )
