"""Token-budget micro-batches and remove-padding: hand-checked plans, trimming and packing,
and the forward through them equal to the padded forward (values and gradients)."""

from __future__ import annotations

import pytest
import torch

from sfpo_lab.algos.logits import logprobs_and_entropy
from sfpo_lab.model.build import build_causal_lm, tiny_qwen2_config
from sfpo_lab.training.experience import Experience, micro_logprobs, response_logprobs
from sfpo_lab.training.packing import micro_batches, pack, plan, trim, unpack

VOCAB = 37


def make_experience(prompt_lens, resp_lens, p=5, r=6, seed=0) -> Experience:
    """Left-padded prompts, right-padded responses (pad id 0), positions as generation
    numbers them (cumsum(attention_mask) - 1)."""
    g = torch.Generator().manual_seed(seed)
    n = len(prompt_lens)
    ids = torch.randint(1, VOCAB, (n, p + r), generator=g)
    attn = torch.zeros(n, p + r, dtype=torch.long)
    resp = torch.zeros(n, r, dtype=torch.long)
    for i, (lp, lr) in enumerate(zip(prompt_lens, resp_lens, strict=True)):
        attn[i, p - lp : p + lr] = 1
        resp[i, :lr] = 1
    ids = ids * attn  # padding is token 0
    return Experience(
        input_ids=ids,
        attention_mask=attn,
        position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
        response_mask=resp,
        advantages=torch.randn(n, generator=g),
        old_logprobs=-torch.rand(n, r, generator=g),
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = tiny_qwen2_config(VOCAB, hidden_size=32, num_layers=2, intermediate_size=64)
    return build_causal_lm(cfg).eval()


def test_plan_fixed_rows_keeps_source_order():
    assert plan([3, 9, 4, 1, 2], None, 2, False) == [[0, 1], [2, 3], [4]]


def test_plan_token_budget_padded_and_packed_by_hand():
    lengths = [3, 9, 4, 1, 2]  # longest first: rows 1 (9), 2 (4), 0 (3), 4 (2), 3 (1)
    # padded cost = rows x longest: [9] alone; then 4,3,2 -> 3 x 4 = 12; + 1 -> 16 > 12
    assert plan(lengths, 12, 99, remove_padding=False) == [[1], [2, 0, 4], [3]]
    # packed cost = sum: 9 + ... > 12 after 3 (9+3=12), then 4 ... 4+2+1 = 7
    assert plan(lengths, 12, 99, remove_padding=True) == [[1], [2, 0, 4, 3]]


def test_plan_padded_cost_is_longest_prompt_plus_longest_response():
    # rows (prompt, response): (1, 8), (6, 2), (2, 3): sorted 9, 8, 5
    lengths, prompts = [9, 8, 5], [1, 6, 2]
    # rows 0 + 1 trim to width 6 + 8 = 14: 2 x 14 = 28 > 20, although 2 x 9 = 18 would fit
    assert plan(lengths, 20, 99, False, prompts) == [[0], [1, 2]]  # 2 x (6 + 3) = 18
    assert plan(lengths, 20, 99, False) == [[0, 1], [2]]  # no prompts: 2 x 9 = 18


def test_plan_refuses_a_budget_below_the_longest_row():
    with pytest.raises(ValueError, match="max_tokens_per_micro_batch=8.*9 tokens"):
        plan([3, 9], 8, 16, True)


def test_trim_drops_columns_that_are_padding_everywhere():
    exp = make_experience([2, 3], [1, 4])  # P = 5, R = 6
    t = trim(exp)
    assert t.input_ids.shape == (2, 3 + 4) and t.response_len == 4
    torch.testing.assert_close(t.input_ids, exp.input_ids[:, 2:9])
    torch.testing.assert_close(t.old_logprobs, exp.old_logprobs[:, :4])


def test_pack_and_unpack_by_hand():
    exp = trim(make_experience([2, 1], [2, 1], p=2, r=2))
    # row 0: prompt a b | response c d ; row 1: prompt e | response f (then pad)
    ids = exp.input_ids
    pk = pack(exp)
    assert pk.input_ids.tolist() == [[*ids[0].tolist(), ids[1, 1].item(), ids[1, 2].item()]]
    assert pk.position_ids.tolist() == [[0, 1, 2, 3, 0, 1]]
    assert pk.logit_index.tolist() == [1, 2, 4]  # b -> c, c -> d, e -> f
    assert pk.labels.tolist() == [ids[0, 2].item(), ids[0, 3].item(), ids[1, 2].item()]
    back = unpack(torch.tensor([1.0, 2.0, 3.0]), pk, (2, 2))
    assert back.tolist() == [[1.0, 2.0], [3.0, 0.0]]


def test_pack_refuses_positions_that_do_not_restart_at_zero():
    exp = make_experience([2, 2], [2, 2])
    bad = Experience(**{**exp.__dict__, "position_ids": exp.position_ids + 1})
    with pytest.raises(ValueError, match="remove_padding"):
        pack(bad)


def test_ranks_are_padded_to_the_same_count_with_empty_micro_batches():
    exp = make_experience([2, 3, 1], [1, 4, 2])
    mbs = micro_batches(exp, micro_batch_size=2, reduce_max=lambda n: n + 2)
    assert [len(mb.index) for mb in mbs] == [2, 1, 0, 0]
    assert all(int(mb.exp.response_mask.sum()) == 0 for mb in mbs[2:])


def dense_reference(model, exp):
    """The padded forward with full fp32 logits (the pre-packing code path)."""
    r = exp.response_len
    out = model(
        input_ids=exp.input_ids,
        attention_mask=exp.attention_mask,
        position_ids=exp.position_ids,
        logits_to_keep=r + 1,
    )
    z = torch.log_softmax(out.logits[:, :-1].float(), -1)
    lp = z.gather(-1, exp.input_ids[:, -r:, None]).squeeze(-1)
    return lp, -(z.exp() * z).sum(-1)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize(
    "budget,packed", [(None, False), (None, True), (14, False), (14, True), (11, True)]
)
def test_micro_batched_forward_equals_padded_values_and_gradients(model, budget, packed, fused):
    exp = make_experience([2, 5, 1, 3], [6, 1, 3, 2])
    mask = exp.response_mask.float()
    w = torch.randn(exp.response_mask.shape, generator=torch.Generator().manual_seed(3))
    lp_ref, h_ref = dense_reference(model, exp)
    model.zero_grad()
    ((lp_ref * w + h_ref) * mask).sum().backward()
    g_ref = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    got_lp, got_h = torch.zeros_like(lp_ref), torch.zeros_like(h_ref)
    mbs = micro_batches(exp, micro_batch_size=3, max_tokens=budget, remove_padding=packed)
    assert len(mbs) > 1
    for mb in mbs:
        tokens = pack(mb.exp).input_ids.numel() if packed else mb.exp.input_ids.numel()
        assert budget is None or tokens <= budget  # the budget holds for what is processed
        lp, h = micro_logprobs(model, mb, chunk_tokens=4, fused=fused)
        r, m = lp.shape[1], mb.exp.response_mask.float()
        ((lp * w[mb.index, :r] + h) * m).sum().backward()
        got_lp[mb.index, :r], got_h[mb.index, :r] = lp.detach(), h.detach()
    torch.testing.assert_close(got_lp * mask, lp_ref.detach() * mask, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_h * mask, h_ref.detach() * mask, rtol=0, atol=1e-5)
    for p, g in zip(model.parameters(), g_ref, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=1e-5)


def test_no_grad_logprob_pass_matches_across_micro_batchings(model):
    exp = make_experience([2, 5, 1, 3], [6, 1, 3, 2])
    mask = exp.response_mask.bool()
    lp_ref, h_ref = dense_reference(model, exp)
    for kw in ({}, {"max_tokens": 12}, {"max_tokens": 12, "remove_padding": True}):
        lp, h = response_logprobs(model, exp, 1.0, 2, with_entropy=True, **kw)
        torch.testing.assert_close(lp[mask], lp_ref[mask].detach(), rtol=0, atol=1e-5)
        torch.testing.assert_close(h[mask], h_ref[mask].detach(), rtol=0, atol=1e-5)


def test_packed_logits_never_upcast_beyond_a_chunk(model):
    # the chunked function is what micro_logprobs feeds: same values on the packed logits
    exp = make_experience([2, 3], [3, 2])
    pk = pack(trim(exp))
    logits = model(input_ids=pk.input_ids, position_ids=pk.position_ids).logits[0]
    z = torch.log_softmax(logits[pk.logit_index], -1)
    lp, h = logprobs_and_entropy(logits[pk.logit_index], pk.labels, chunk_tokens=2)
    torch.testing.assert_close(lp, z.gather(-1, pk.labels[:, None]).squeeze(-1))
    torch.testing.assert_close(h, -(z.exp() * z).sum(-1))


def test_fused_refuses_a_head_that_is_not_a_plain_projection(model):
    import copy

    biased = copy.deepcopy(model)
    biased.lm_head.bias = torch.nn.Parameter(torch.zeros(VOCAB))
    mb = micro_batches(make_experience([2], [2]), micro_batch_size=1)[0]
    with pytest.raises(ValueError, match="fused_lm_head"):
        micro_logprobs(biased, mb, fused=True)


@pytest.mark.parametrize(
    "kw,key",
    [
        ({"max_tokens_per_micro_batch": 0}, "update.max_tokens_per_micro_batch"),
        ({"logits_chunk_tokens": 0}, "update.logits_chunk_tokens"),
    ],
)
def test_update_config_names_the_bad_setting(kw, key):
    from sfpo_lab.config import ConfigError, UpdateConfig

    with pytest.raises(ConfigError, match=key):
        UpdateConfig(**kw)
