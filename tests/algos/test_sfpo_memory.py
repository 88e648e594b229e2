"""The engine holds exactly one extra copy of the parameters, and allocates nothing else."""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from sfpo_lab.algos import SFPO, EntropyTrigger


class EngineAllocations(TorchDispatchMode):
    """Sums the bytes of new storages created by ops run *outside* user code (the closure
    and optimizer.step), i.e. by the engine itself."""

    def __init__(self):
        super().__init__()
        self.bytes = 0
        self.in_user_code = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.in_user_code:
            return out
        flat_in = [a for a in args if isinstance(a, torch.Tensor)]
        flat_in += [
            t for a in args if isinstance(a, list | tuple) for t in a if isinstance(t, torch.Tensor)
        ]
        seen = {t.untyped_storage().data_ptr() for t in flat_in}
        outs = out if isinstance(out, list | tuple) else [out]
        for t in outs:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                self.bytes += t.untyped_storage().nbytes()
        return out

    def user(self, fn):
        def wrapped(*args, **kwargs):
            self.in_user_code = True
            try:
                return fn(*args, **kwargs)
            finally:
                self.in_user_code = False

        return wrapped


def make_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 8))
    model[2].to(torch.bfloat16)  # mixed dtypes: bytes, not elements, must match
    return model


def param_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters())


def make_closure(model, opt):
    x = torch.randn(16, 32)

    def closure():
        opt.zero_grad()
        loss = model[2](model[1](model[0](x)).bfloat16()).float().square().mean()
        loss.backward()
        return loss

    return closure


def tensors_held(engine):
    found = []
    for value in vars(engine).values():
        items = value if isinstance(value, list) else [value]
        found += [t for t in items if isinstance(t, torch.Tensor)]
    return found


@pytest.mark.parametrize("K", [1, 3])
def test_engine_bytes_equal_one_copy_of_params(K):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sfpo = SFPO(opt, K=K, alpha=0.8)
    probe = EngineAllocations()
    opt.step = probe.user(opt.step)
    closure = probe.user(make_closure(model, opt))
    with probe:
        first = sfpo.step(closure)
    one_copy = param_bytes(model)
    assert sfpo.snapshot_bytes == one_copy == first["snapshot_bytes"]
    assert sum(t.numel() * t.element_size() for t in tensors_held(sfpo)) == one_copy
    # the only param-sized allocation is theta0; the rest is a few scalars (finite check)
    assert one_copy <= probe.bytes < one_copy + 256
    probe.bytes = 0
    with probe:
        sfpo.step(closure)  # later iterations reuse the buffers
    assert probe.bytes < 256


def test_snapshot_is_freed_once_alpha_is_zero():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    sfpo = SFPO(opt, K=2, alpha=0.5, trigger=EntropyTrigger(window=2, tau=0.5))
    closure = make_closure(model, opt)
    sfpo.step(closure)
    assert sfpo.snapshot_bytes == param_bytes(model)
    sfpo.observe_entropy(1.0)
    sfpo.step(closure)
    sfpo.observe_entropy(2.0)  # fires: stop_step = 2
    stats = sfpo.step(closure)
    assert stats["alpha"] == 0.0 and stats["snapshot_bytes"] == 0.0
    assert sfpo.snapshot_bytes == 0 and tensors_held(sfpo) == []
