"""The KL reference model under FSDP2 (issue 14 item 5): sharded like the policy, 2 gloo ranks.

Each rank holds half of the reference's weights (DTensor shards, resharded again after every
no-grad forward), and its log-probs and the KL term on that rank's rows equal the one-process
values of the unsharded model.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sfpo_lab.algos.losses import kl_penalty
from sfpo_lab.experience import response_logprobs
from sfpo_lab.models import build_causal_lm, tiny_qwen2_config
from sfpo_lab.parallel import shard_reference
from tests.dist_utils import free_port
from tests.test_packing import VOCAB, make_experience

WORLD = 2
PROMPTS, RESPONSES = [3, 5, 2, 6], [7, 2, 5, 4]
RANK_ROWS = [[0, 1], [2, 3]]


def make_policy() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = tiny_qwen2_config(VOCAB, hidden_size=32, num_layers=2, intermediate_size=64)
    return build_causal_lm(cfg).train()


def experience():
    exp = make_experience(PROMPTS, RESPONSES, p=6, r=7, seed=4)
    g = torch.Generator().manual_seed(5)
    exp.old_logprobs = -torch.rand(exp.response_mask.shape, generator=g) - 1.0  # "the policy"
    return exp


def _is_dtensor(p: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(p, DTensor)


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("data_parallel",))
    policy = make_policy()
    full_numel = sum(p.numel() for p in policy.parameters())
    ref = shard_reference(policy, mesh)
    exp = experience().rows(torch.tensor(RANK_ROWS[rank]))
    lp, _ = response_logprobs(ref, exp, 1.0, 1)  # one row per micro-batch: two forwards
    params = list(ref.parameters())
    out = {
        "logprobs": lp,
        "kl": kl_penalty(exp.old_logprobs, lp) * exp.response_mask,
        "all_dtensor": all(_is_dtensor(p) for p in params),
        "frozen": not any(p.requires_grad for p in params) and not ref.training,
        "local_numel": sum(p.to_local().numel() for p in params),  # resharded after forward
        "full_numel": full_numel,
        "policy_untouched": not any(_is_dtensor(p) for p in policy.parameters()),
    }
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_sharded_reference_matches_one_process_logprobs_and_kl(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    exp = experience()
    want_lp, _ = response_logprobs(make_policy().eval(), exp, 1.0, 1)
    want_kl = kl_penalty(exp.old_logprobs, want_lp) * exp.response_mask
    assert want_kl.abs().sum() > 0, "a KL of 0 everywhere would compare nothing"
    held = 0
    for rank, res in enumerate(ranks):
        assert res["all_dtensor"] and res["frozen"] and res["policy_untouched"]
        rows = RANK_ROWS[rank]
        torch.testing.assert_close(res["logprobs"], want_lp[rows], rtol=0, atol=1e-6)
        torch.testing.assert_close(res["kl"], want_kl[rows], rtol=0, atol=1e-6)
        held += res["local_numel"]
        assert res["local_numel"] < res["full_numel"], f"rank {rank} holds the full reference"
    # the shards partition the model: the ranks together hold each weight once, none gathered
    assert held == ranks[0]["full_numel"]
