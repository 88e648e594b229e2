"""optim.impl: which torch.optim kernels run the update (training/runtime.py::optimizer_flags).

``auto`` picks AdamW's fused kernel only in a plain CPU process without a loss scaler and
leaves torch's default everywhere else (CUDA, FSDP2 DTensors, 16-mixed, SGD); the kernels give
the same update up to float rounding."""

from __future__ import annotations

import pytest
import torch

from sfpo_lab.training.runtime import optimizer_flags

PLAIN = {"foreach": None, "fused": None}  # torch's own default


def _params() -> list[torch.Tensor]:
    return [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]


@pytest.mark.parametrize(
    ("name", "precision", "want"),
    [
        ("adamw", "32-true", {"foreach": None, "fused": True}),
        ("adamw", "bf16-mixed", {"foreach": None, "fused": True}),
        ("adamw", "16-mixed", PLAIN),  # a GradScaler in play: torch's default path
        ("sgd", "32-true", PLAIN),
    ],
)
def test_auto_fuses_adamw_only_in_a_plain_cpu_process(name, precision, want):
    assert optimizer_flags("auto", name, _params(), precision) == want


def test_auto_leaves_dtensor_parameters_to_torch():
    """FSDP2 parameters (real DTensors, on a one-rank gloo group here) keep torch's default."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    mine = not dist.is_initialized()  # another test of this worker may have left one up
    if mine:
        dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        params = [torch.nn.Parameter(distribute_tensor(torch.randn(4), mesh, [Replicate()]))]
        assert optimizer_flags("auto", "adamw", params, "32-true") == PLAIN
    finally:
        if mine:
            dist.destroy_process_group()


@pytest.mark.parametrize(
    ("impl", "want"),
    [
        ("for_loop", {"foreach": False, "fused": False}),
        ("foreach", {"foreach": True, "fused": False}),
        ("fused", {"foreach": False, "fused": True}),
    ],
)
def test_explicit_kernels_are_passed_through(impl, want):
    assert optimizer_flags(impl, "adamw", _params(), "16-mixed") == want


def test_fused_and_for_loop_adamw_take_the_same_steps():
    """What auto changes on CPU is rounding only: 20 AdamW steps agree to float precision."""
    torch.manual_seed(0)
    a, b = _params(), None
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opts = [
        torch.optim.AdamW(
            ps, lr=1e-2, weight_decay=0.01, **optimizer_flags(impl, "adamw", ps, "32-true")
        )  # fmt: skip
        for impl, ps in (("auto", a), ("for_loop", b))
    ]
    assert opts[0].param_groups[0]["fused"] and not opts[1].param_groups[0]["fused"]
    for _ in range(20):
        grads = [torch.randn_like(p) for p in a]
        for opt, ps in zip(opts, (a, b), strict=True):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
