"""SFPO on FSDP2-sharded parameters (DTensor local shards), 2 CPU ranks over gloo."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sfpo_lab.algos import SFPO
from tests.dist_utils import free_port

pytestmark = pytest.mark.distributed
WORLD, K, ALPHA, ITERS = 2, 2, 0.5, 2


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))  # bias of 1: an empty shard


def data():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2 * WORLD, 8, generator=g) for _ in range(ITERS)]


def run_sfpo(model, xs, poison_rank=None, rank=0):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sfpo = SFPO(opt, K=K, alpha=ALPHA)
    stats = []
    for x in xs:

        def closure(x=x):
            opt.zero_grad()
            loss = model(x).square().mean()
            loss.backward()
            if rank == poison_rank:  # only this rank's shard goes bad
                local = opt.param_groups[0]["params"][0]
                grad = local.grad.to_local() if hasattr(local.grad, "to_local") else local.grad
                grad.fill_(float("inf"))
            return loss

        stats.append(sfpo.step(closure))
    return stats, sfpo


def worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    results = {}
    for case, poison in (("clean", None), ("poisoned", 1)):
        model = make_model()
        fully_shard(model[0], mesh=mesh)
        fully_shard(model, mesh=mesh)
        xs = [x[rank * 2 : rank * 2 + 2] for x in data()]  # this rank's half of the batch
        stats, sfpo = run_sfpo(model, xs, poison_rank=poison, rank=rank)
        local_bytes = sum(p.to_local().numel() * 4 for p in model.parameters())
        full = [p.full_tensor() for p in model.parameters()]
        results[case] = {"full": full, "stats": stats, "bytes": (sfpo.snapshot_bytes, local_bytes)}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_sfpo_on_fsdp2_shards_matches_single_process(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    reference = make_model()
    run_sfpo(reference, data())
    for r in ranks:
        for got, want in zip(r["clean"]["full"], reference.parameters(), strict=True):
            torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
        held, local = r["clean"]["bytes"]
        assert held == local  # theta0 is one copy of this rank's shard only
    total = sum(p.numel() * 4 for p in reference.parameters())
    assert sum(r["clean"]["bytes"][0] for r in ranks) == total  # (shards are uneven)

    # a non-finite shard on rank 1 only: every rank restores theta0 (the flag is all-reduced)
    initial = list(make_model().parameters())
    for r in ranks:
        assert [s["restored_theta0"] for s in r["poisoned"]["stats"]] == [1.0] * ITERS
        for got, want in zip(r["poisoned"]["full"], initial, strict=True):
            torch.testing.assert_close(got, want.detach())
