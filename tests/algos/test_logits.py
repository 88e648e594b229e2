"""Entropy and log-probs from logits: hand values, chunking, and no full-size temporaries."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sfpo_lab.algos import entropy_from_logits, entropy_loss, logprobs_from_logits

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
