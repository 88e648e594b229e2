"""Hand-computed values and micro-batch invariance for the GRPO objective (losses.py)."""

import math

import pytest
import torch

from sfpo_lab.algos import (
    AGG_MODES,
    agg_loss,
    kl_loss,
    kl_penalty,
    masked_mean,
    policy_loss,
)

NAN = float("nan")


def test_masked_mean_ignores_padding_and_nan():
    values = torch.tensor([[1.0, 2.0, NAN], [NAN, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert masked_mean(values, mask).item() == pytest.approx(1.5)
    rows = masked_mean(values, mask, dim=-1)
    assert rows.tolist() == pytest.approx([1.5, 0.0])


# rows: sums 10 and 11 over 4 and 2 tokens; the third row is fully masked (and NaN)
LOSS_MAT = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, NAN, 0.0], [NAN, 9.0, 9.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", 21 / 6),
        ("token-sum", 21.0),
        ("seq-mean-token-sum", (10 + 11) / 2),
        ("seq-mean-token-mean", (10 / 4 + 11 / 2) / 2),
        ("seq-mean-token-sum-norm", (10 + 11) / 2 / 4),
    ],
)
def test_agg_loss_hand_values(mode, expected):
    assert agg_loss(LOSS_MAT, MASK, mode).item() == pytest.approx(expected)
    assert agg_loss(LOSS_MAT, MASK.bool(), mode).item() == pytest.approx(expected)


def test_agg_loss_norm_uses_loss_scale_factor():
    out = agg_loss(LOSS_MAT, MASK, "seq-mean-token-sum-norm", loss_scale_factor=7)
    assert out.item() == pytest.approx(10.5 / 7)


def test_agg_loss_global_denominators():
    kw = {"batch_num_tokens": 12, "global_batch_size": 5, "dp_size": 2}
    assert agg_loss(LOSS_MAT, MASK, "token-mean", **kw).item() == pytest.approx(21 / 12 * 2)
    assert agg_loss(LOSS_MAT, MASK, "seq-mean-token-sum", **kw).item() == pytest.approx(21 / 5 * 2)
    assert agg_loss(LOSS_MAT, MASK, "token-sum", **kw).item() == pytest.approx(42.0)


def test_agg_loss_errors():
    with pytest.raises(ValueError, match="token-mean"):
        agg_loss(LOSS_MAT, MASK, "sum")
    with pytest.raises(ValueError, match="batch_num_tokens"):
        agg_loss(LOSS_MAT, MASK, "token-mean", dp_size=2)
    with pytest.raises(ValueError, match="global_batch_size"):
        agg_loss(LOSS_MAT, MASK, "seq-mean-token-mean", dp_size=2)


def _random_batch(B=12, T=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[3] = 0  # an empty row
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    logprobs = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logprobs + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    return logprobs, old, adv, mask


def _global_kwargs(mask, dp_size=1):
    return {
        "dp_size": dp_size,
        "batch_num_tokens": mask.sum(),
        "global_batch_size": (mask.sum(-1) > 0).sum(),
        "loss_scale_factor": 64,
    }


@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batches_with_global_denominator_sum_to_full_batch(mode):
    logprobs, old, adv, mask = _random_batch()
    mat = logprobs * adv[:, None]
    kw = _global_kwargs(mask)
    full = agg_loss(mat, mask, mode, **kw)
    parts = [
        agg_loss(mat[s], mask[s], mode, **kw) for s in (slice(0, 5), slice(5, 9), slice(9, 12))
    ]
    torch.testing.assert_close(sum(parts), full, rtol=1e-12, atol=1e-12)
    # and the plain (no global info) full-batch value is the same number
    plain = agg_loss(mat, mask, mode, loss_scale_factor=64)
    torch.testing.assert_close(full, plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_ranks_times_micro_batches_reproduce_full_batch_gradient(mode):
    """2 ranks x 2 micro-batches, grads accumulated per rank then averaged (what DDP/FSDP
    do) equal the full-batch gradient of the full-batch loss."""
    logprobs, old, adv, mask = _random_batch(B=16, T=7, seed=1)
    full_lp = logprobs.clone().requires_grad_()
    full, _ = policy_loss(full_lp, old, adv, mask, agg=mode, loss_scale_factor=64)
    full.backward()
    kw = _global_kwargs(mask, dp_size=2)
    lp = logprobs.clone().requires_grad_()
    total = 0.0
    for rank_rows in (range(0, 8), range(8, 16)):
        rows = list(rank_rows)
        for micro in (rows[:3], rows[3:]):
            loss, _ = policy_loss(lp[micro], old[micro], adv[micro], mask[micro], agg=mode, **kw)
            (loss / 2).backward()  # / 2: the all-reduce mean over dp_size ranks
            total += loss.item() / 2
    assert total == pytest.approx(full.item(), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(lp.grad, full_lp.grad, rtol=1e-12, atol=1e-12)


# Six tokens; the last is padding with -inf log-probs (its loss is NaN and must not leak).
RATIOS = [1.5, 0.5, 1.5, 5.0, 0.5]
ADV = torch.tensor([[1.0, 1.0, -1.0, -1.0, -1.0, 1.0]])
PG_MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])


def _pg_inputs():
    old = torch.tensor([[-1.0, -1.0, -1.0, -1.0, -1.0, -math.inf]], dtype=torch.float64)
    logp = old.clone()
    logp[0, :5] += torch.tensor(RATIOS, dtype=torch.float64).log()
    return logp.requires_grad_(), old


def test_policy_loss_hand_values_and_gradient():
    logp, old = _pg_inputs()
    loss, m = policy_loss(logp, old, ADV.double(), PG_MASK, clip_c=3.0)
    # per token: clipped -1.2 | unclipped -0.5 | 1.5 | dual-clipped 3.0 | clipped 0.8
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 3.0 + 0.8) / 5)
    assert m["pg_clipfrac"] == pytest.approx(2 / 5)
    assert m["pg_clipfrac_lower"] == pytest.approx(1 / 5)
    assert m["ppo_kl"] == pytest.approx(-sum(math.log(r) for r in RATIOS) / 5)
    loss.backward()
    # d/dlogp (-A r) / 5 on the unclipped tokens only
    expected = torch.tensor([[0.0, -0.5 / 5, 1.5 / 5, 0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected)


def test_policy_loss_clip_higher_and_no_dual_clip():
    logp, old = _pg_inputs()
    loss, _ = policy_loss(logp, old, ADV.double(), PG_MASK, clip_high=0.28, clip_c=3.0)
    assert loss.item() == pytest.approx((-1.28 - 0.5 + 1.5 + 3.0 + 0.8) / 5)
    loss, m = policy_loss(logp, old, ADV.double(), PG_MASK, clip_c=None)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 5.0 + 0.8) / 5)
    assert m["pg_clipfrac_lower"] == 0.0
    # the default is the authors' plain clipped ratio: no dual clip
    default, _ = policy_loss(logp, old, ADV.double(), PG_MASK)
    assert default.item() == loss.item()


def test_constant_length_normaliser():
    """Dr. GRPO's aggregation: per-response sums over responses, / loss_scale_factor."""
    logp, old = _pg_inputs()
    kw = {"agg": "seq-mean-token-sum-norm", "loss_scale_factor": 10, "clip_c": 3.0}
    loss, _ = policy_loss(logp, old, ADV.double(), PG_MASK, **kw)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 3.0 + 0.8) / 10)


def test_policy_loss_log_ratio_clamped_to_20():
    logp = torch.tensor([[30.0]])
    _, m = policy_loss(logp, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1))
    assert m["ppo_kl"] == pytest.approx(-20.0)
    loss, _ = policy_loss(logp, torch.zeros(1, 1), -torch.ones(1, 1), torch.ones(1, 1), clip_c=None)
    assert loss.item() == pytest.approx(math.exp(20), rel=1e-6)


def test_policy_loss_rejects_bad_clip_c():
    logp, old = _pg_inputs()
    with pytest.raises(ValueError, match="clip_c"):
        policy_loss(logp, old, ADV.double(), PG_MASK, clip_c=1.0)


LN2 = math.log(2.0)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("k1", -LN2),
        ("kl", -LN2),
        ("abs", LN2),
        ("k2", 0.5 * LN2**2),
        ("mse", 0.5 * LN2**2),
        ("k3", 2 - LN2 - 1),
        ("low_var_kl", 2 - LN2 - 1),
    ],
)
def test_kl_penalty_hand_values(kind, expected):
    logp, ref = torch.tensor([0.0]), torch.tensor([LN2])
    assert kl_penalty(logp, ref, kind).item() == pytest.approx(expected)
    assert kl_penalty(logp, ref, kind + "+").item() == pytest.approx(expected)


def test_kl_k3_clamps():
    logp, ref = torch.tensor([0.0, 30.0]), torch.tensor([30.0, 0.0])
    # log-ratio clamped to +-20, then the estimate clamped to 10
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx([10.0, 10.0])
    small = kl_penalty(torch.tensor([25.0]), torch.tensor([0.0]), "k3")  # ratio e^-20
    assert small.item() == pytest.approx(10.0)
    mid = kl_penalty(torch.tensor([2.0]), torch.tensor([0.0]), "k3")
    assert mid.item() == pytest.approx(math.exp(-2) + 2 - 1)


@pytest.mark.parametrize("kind", ["k1+", "abs+", "k3+", "low_var_kl+"])
def test_kl_straight_through_has_k2_gradient(kind):
    logp = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    ref = torch.tensor([0.0, 0.5, 1.0])
    value = kl_penalty(logp, ref, kind)
    torch.testing.assert_close(value.detach(), kl_penalty(logp, ref, kind[:-1]).detach())
    value.sum().backward()
    torch.testing.assert_close(logp.grad, (logp - ref).detach())  # d/dx 0.5 (x - ref)^2


def test_kl_penalty_unknown_kind():
    with pytest.raises(ValueError, match="low_var_kl"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "full")


def test_kl_loss_is_aggregated_penalty():
    logp, ref = torch.tensor([[0.0, 0.0]]), torch.tensor([[LN2, 5.0]])
    out = kl_loss(logp, ref, torch.tensor([[1.0, 0.0]]), kind="k1")
    assert out.item() == pytest.approx(-LN2)
