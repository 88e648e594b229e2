"""Entropy and log-probs from logits: hand values, chunking, and no full-size temporaries."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sfpo_lab.algos import entropy_from_logits, entropy_loss, logprobs_from_logits
from sfpo_lab.algos.logits import fused_logprobs_and_entropy, logprobs_and_entropy

P = [0.25, 0.75]
H = -sum(p * math.log(p) for p in P)


class LargestTemporary(TorchDispatchMode):
    """Records the largest newly allocated tensor any op produces (in elements; views of
    an input do not count)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [
            a for a in list(args) + list((kwargs or {}).values()) if isinstance(a, torch.Tensor)
        ]
        seen = {a.untyped_storage().data_ptr() for a in inputs}
        for t in out if isinstance(out, tuple | list) else [out]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                self.largest = max(self.largest, t.numel())
        return out


def test_entropy_hand_values():
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 5.0]]])  # p = (1/4, 3/4); uniform
    expected = [[H, math.log(2.0)]]
    assert entropy_from_logits(logits).tolist() == [pytest.approx(expected[0])]
    assert entropy_from_logits(logits, chunk_size=1).tolist() == [pytest.approx(expected[0])]


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])
def test_chunked_entropy_equals_plain_values_and_gradients(chunk_size):
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 7, 11)).requires_grad_()
    plain = entropy_from_logits(logits)
    (g_plain,) = torch.autograd.grad(plain.sum(), logits)
    chunked = entropy_from_logits(logits, chunk_size=chunk_size)
    (g_chunked,) = torch.autograd.grad(chunked.sum(), logits)
    assert chunked.shape == (3, 7) and chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, plain)
    torch.testing.assert_close(g_chunked, g_plain)


def test_chunked_entropy_never_allocates_a_full_softmax():
    logits = torch.randn(4, 16, 512)
    with LargestTemporary() as probe:
        entropy_from_logits(logits)
    assert probe.largest == logits.numel()  # the plain path does materialise one
    with LargestTemporary() as probe:
        entropy_from_logits(logits, chunk_size=8)
    assert probe.largest <= 8 * 512


def test_entropy_rejects_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        entropy_from_logits(torch.zeros(2, 3), chunk_size=0)


def test_logprobs_hand_values():
    logits = torch.tensor([[[0.0, math.log(3.0)], [1.0, 1.0]]])
    labels = torch.tensor([[1, 0]])
    out = logprobs_from_logits(logits, labels)
    assert out.tolist() == [pytest.approx([math.log(0.75), math.log(0.5)])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_logprobs_match_log_softmax_and_gradient(dtype):
    torch.manual_seed(1)
    logits = (4 * torch.randn(3, 5, 17)).to(dtype).requires_grad_()
    labels = torch.randint(0, 17, (3, 5))
    ours = logprobs_from_logits(logits, labels)
    ref = torch.log_softmax(logits.double(), -1).gather(-1, labels[..., None]).squeeze(-1)
    assert ours.dtype == dtype and ours.shape == (3, 5)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(ours.double(), ref, rtol=tol, atol=tol)
    (g,) = torch.autograd.grad(ours.double().sum(), logits)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g.double(), g_ref.double(), rtol=tol, atol=tol)


def test_logprobs_do_not_allocate_a_full_log_softmax():
    logits, labels = torch.randn(4, 16, 512), torch.randint(0, 512, (4, 16))
    with LargestTemporary() as probe:
        logprobs_from_logits(logits, labels)
    assert probe.largest <= 16 * 512  # one row at a time


def test_entropy_loss_token_mean_is_masked_mean_entropy():
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 5.0]], [[1.0, 1.0], [0.0, 9.0]]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = entropy_loss(logits, mask)
    assert out.item() == pytest.approx((H + 2 * math.log(2.0)) / 3)
    assert entropy_loss(logits, mask, chunk_size=1).item() == pytest.approx(out.item())


def _dense(logits, labels, t):
    z = torch.log_softmax(logits.float() / t, dim=-1)
    return z.gather(-1, labels[..., None]).squeeze(-1), -(z.exp() * z).sum(-1)


@pytest.mark.parametrize("chunk", [1, 4, 7, 1000])
@pytest.mark.parametrize("t", [1.0, 0.7])
def test_chunked_logprobs_and_entropy_equal_dense_values_and_gradients(chunk, t):
    torch.manual_seed(2)
    logits = (3 * torch.randn(3, 7, 50)).requires_grad_()
    labels = torch.randint(0, 50, (3, 7))
    w_lp, w_h = torch.randn(3, 7), torch.randn(3, 7)  # arbitrary upstream gradients
    lp, h = logprobs_and_entropy(logits, labels, t, chunk)
    (g,) = torch.autograd.grad((lp * w_lp + h * w_h).sum(), logits)
    lp_ref, h_ref = _dense(logits, labels, t)
    (g_ref,) = torch.autograd.grad((lp_ref * w_lp + h_ref * w_h).sum(), logits)
    assert lp.dtype == h.dtype == torch.float32 and lp.shape == h.shape == (3, 7)
    torch.testing.assert_close(lp, lp_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h, h_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-6)


def test_chunked_hand_values_and_one_sided_gradients():
    logits = torch.tensor([[0.0, math.log(3.0)], [5.0, 5.0]], requires_grad=True)
    lp, h = logprobs_and_entropy(logits, torch.tensor([1, 0]), chunk_tokens=1)
    assert lp.tolist() == pytest.approx([math.log(0.75), math.log(0.5)])
    assert h.tolist() == pytest.approx([H, math.log(2.0)])
    (g,) = torch.autograd.grad(lp.sum(), logits)  # entropy unused: its grad is None
    assert g.tolist() == [pytest.approx([-0.25, 0.25]), pytest.approx([0.5, -0.5])]
    lp, h = logprobs_and_entropy(logits, torch.tensor([1, 0]), chunk_tokens=1)
    (g,) = torch.autograd.grad(h[1], logits)  # uniform row: entropy is at its maximum
    assert g[1].tolist() == pytest.approx([0.0, 0.0], abs=1e-7)


def test_chunked_bf16_logits_upcast_per_chunk_and_grad_in_bf16():
    torch.manual_seed(3)
    logits = (2 * torch.randn(4, 33)).bfloat16().requires_grad_()
    labels = torch.randint(0, 33, (4,))
    lp, h = logprobs_and_entropy(logits, labels, chunk_tokens=3)
    lp_ref, h_ref = _dense(logits.detach(), labels, 1.0)  # dense fp32 over the same bf16 values
    torch.testing.assert_close(lp, lp_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-6)
    (g,) = torch.autograd.grad((lp + h).sum(), logits)
    assert g.dtype == torch.bfloat16


def test_chunked_holds_no_fp32_vocab_tensor_beyond_a_chunk():
    logits = torch.randn(64, 512).requires_grad_()
    labels = torch.randint(0, 512, (64,))
    with LargestTemporary() as probe:
        lp, h = logprobs_and_entropy(logits, labels, chunk_tokens=8)
        torch.autograd.grad((lp + h).sum(), logits)
    # the [64, 512] gradient of the logits is the only full-size tensor; every other one
    # is at most one chunk (8 x 512)
    assert probe.largest == 64 * 512
    with LargestTemporary() as probe:
        lp, h = logprobs_and_entropy(logits, labels, chunk_tokens=8)
    assert probe.largest <= 8 * 512


def test_chunked_rejects_bad_settings():
    with pytest.raises(ValueError, match="logits_chunk_tokens"):
        logprobs_and_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), chunk_tokens=0)
    with pytest.raises(ValueError, match="labels"):
        logprobs_and_entropy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("chunk", [1, 5, 1000])
@pytest.mark.parametrize("t", [1.0, 0.6])
def test_fused_equals_dense_projection_values_and_gradients(chunk, t):
    torch.manual_seed(4)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9))
    w_lp, w_h = torch.randn(2, 9), torch.randn(2, 9)
    lp, h = fused_logprobs_and_entropy(hidden, weight, labels, t, chunk)
    grads = torch.autograd.grad((lp * w_lp + h * w_h).sum(), (hidden, weight))
    # the chunked projection rounds differently from one dense matmul (sums of H products),
    # so fused is held to float64: within 1e-6 of each quantity's largest magnitude
    h64, w64 = hidden.double(), weight.double()
    z64 = torch.log_softmax(h64 @ w64.t() / t, -1)
    lp64, ent64 = z64.gather(-1, labels[..., None]).squeeze(-1), -(z64.exp() * z64).sum(-1)
    exact = torch.autograd.grad((lp64 * w_lp + ent64 * w_h).sum(), (h64, w64))
    for ours, want in zip((lp, h, *grads), (lp64, ent64, *exact), strict=True):
        err = float((ours.detach().double() - want.detach()).abs().max())
        assert err <= 1e-6 * max(1.0, float(want.detach().abs().max())), err


def test_fused_never_holds_a_full_vocabulary_tensor():
    hidden = torch.randn(64, 8, requires_grad=True)
    weight = torch.randn(512, 8, requires_grad=True)
    labels = torch.randint(0, 512, (64,))
    with LargestTemporary() as probe:
        lp, h = fused_logprobs_and_entropy(hidden, weight, labels, chunk_tokens=16)
        torch.autograd.grad((lp + h).sum(), (hidden, weight))
    assert probe.largest == 16 * 512  # one chunk; the [512, 8] weight gradient is smaller


def test_fused_rejects_a_weight_of_the_wrong_shape():
    with pytest.raises(ValueError, match="weight"):
        fused_logprobs_and_entropy(torch.zeros(2, 4), torch.zeros(5, 3), torch.zeros(2).long())
