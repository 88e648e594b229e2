"""The per-row seeded sampler: counter-based uniforms and exact inverse-CDF draws."""

from __future__ import annotations

import torch

from sfpo_lab.rollout.seeded import SeededSampler, inverse_cdf_sample, row_seeds_for, row_uniforms


def test_uniforms_are_a_pure_function_of_row_seed_and_step() -> None:
    seeds = row_seeds_for(7, range(1000), 2)
    u = row_uniforms(seeds, 3)
    assert torch.equal(u[500:], row_uniforms(seeds[500:], 3))  # no dependence on other rows
    assert torch.equal(u, row_uniforms(seeds.flip(0), 3).flip(0))
    assert not torch.equal(u, row_uniforms(seeds, 4))
    assert ((u >= 0) & (u < 1)).all()
    # pinned values: the streams must not change between versions (reproducible runs)
    pinned = row_uniforms(torch.tensor([0, 1, 2**62]), 0).tolist()
    assert pinned == [0.8973526358604431, 0.5323646068572998, 0.9657657742500305]
    assert row_uniforms(torch.tensor([12345]), 7).tolist() == [0.7367565035820007]


def test_uniforms_are_uniform_and_steps_uncorrelated() -> None:
    seeds = row_seeds_for(0, range(100_000), 1)
    u0, u1 = row_uniforms(seeds, 0), row_uniforms(seeds, 1)
    counts = torch.histc(u0, bins=10, min=0, max=1)
    chi2 = float(((counts - 1e4) ** 2 / 1e4).sum())
    assert chi2 < 27.9  # chi-square, 9 dof, p = 0.001
    assert abs(float(torch.corrcoef(torch.stack([u0, u1]))[0, 1])) < 0.015


def test_inverse_cdf_draws_the_processed_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.0, 0.15, 0.05])
    scores = probs.log().expand(200_000, 5).clone()  # -inf for the excluded token
    tokens = inverse_cdf_sample(scores, row_uniforms(row_seeds_for(1, range(200_000), 1), 0))
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    assert freq[2] == 0  # an excluded token is never drawn
    torch.testing.assert_close(freq, probs, atol=0.004, rtol=0)  # ~4 standard errors


def test_edges_never_pick_an_excluded_token() -> None:
    scores = torch.tensor([[0.0, float("-inf"), 1.0, float("-inf")]] * 3)
    tokens = inverse_cdf_sample(scores, torch.tensor([0.0, 0.5, 1 - 2**-24]))
    assert tokens.tolist() == [0, 2, 2]


def test_sampler_returns_a_one_hot_choice_at_the_response_position() -> None:
    seeds = row_seeds_for(3, [0, 1], 1)
    scores = torch.randn(2, 7)
    out = SeededSampler(seeds, prompt_width=4)(torch.zeros(2, 6, dtype=torch.long), scores)
    expected = inverse_cdf_sample(scores, row_uniforms(seeds, 2))
    assert out.argmax(-1).tolist() == expected.tolist()
    assert (out.isinf().sum(-1) == 6).all()
