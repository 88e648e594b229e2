"""The KL reference model under FSDP2 (issue 14 item 5, issue 24 items 6 and 9), 2 gloo ranks.

Built by ``SFPOModule.configure_model`` (``trainer.strategy=fsdp``, ``loss.kl_coef>0``): each
rank holds half of the reference's weights (DTensor shards, resharded again after each no-grad
log-prob pass), in the compute dtype, and its log-probs and the KL term on that rank's rows
equal the one-process values of the unsharded model, with ``update.fused_lm_head`` off and on
(on, the reference used to be resharded by a forward hook before the fused projection read
``lm_head``: "the FSDP root resharded lm_head after forward" at the first iteration).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sfpo_lab.algos.losses import kl_penalty
from sfpo_lab.model.build import build_causal_lm, tiny_qwen2_config
from sfpo_lab.training.experience import response_logprobs
from tests.dist_utils import free_port
from tests.test_fsdp_init import configured_module, fsdp_run, init_gloo
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


def worker(rank: int, port: int, path: str, out_dir: str) -> None:
    mesh = init_gloo(rank, port)
    module = configured_module(path, fsdp_run("32-true", kl_coef=0.01, fused=True), mesh)
    ref = module.ref_policy
    full_numel = sum(p.numel() for p in ref.parameters())
    exp = experience().rows(torch.tensor(RANK_ROWS[rank]))
    lp, _ = response_logprobs(ref, exp, 1.0, 1)  # one row per micro-batch: two forwards
    fused, _ = response_logprobs(ref, exp, 1.0, 1, fused=True)  # as update.fused_lm_head does
    params = list(ref.parameters())
    out = {
        "logprobs": lp,
        "fused": fused,
        "kl": kl_penalty(exp.old_logprobs, fused) * exp.response_mask,
        "all_dtensor": all(_is_dtensor(p) for p in params),
        "frozen": not any(p.requires_grad for p in params) and not ref.training,
        "dtype": {str(p.dtype) for p in params},
        "local_numel": sum(p.to_local().numel() for p in params),  # resharded after the pass
        "full_numel": full_numel,
        "not_in_state_dict": not any(k.startswith("ref") for k in module.state_dict()),
        "shares_nothing": not {p.to_local().data_ptr() for p in params}
        & {p.to_local().data_ptr() for p in module.policy.parameters()},
    }
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_sharded_reference_matches_one_process_logprobs_and_kl_fused_or_not(tmp_path):
    path = tmp_path / "base"
    make_policy().save_pretrained(path)
    mp.spawn(worker, args=(free_port(), str(path), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    exp = experience()
    want_lp, _ = response_logprobs(make_policy().eval(), exp, 1.0, 1)
    want_kl = kl_penalty(exp.old_logprobs, want_lp) * exp.response_mask
    assert want_kl.abs().sum() > 0, "a KL of 0 everywhere would compare nothing"
    held = 0
    for rank, res in enumerate(ranks):
        assert res["all_dtensor"] and res["frozen"] and res["shares_nothing"]
        assert res["dtype"] == {"torch.float32"}  # the compute dtype of 32-true
        assert res["not_in_state_dict"]  # never checkpointed (issue 24 item 9)
        rows = RANK_ROWS[rank]
        torch.testing.assert_close(res["logprobs"], want_lp[rows], rtol=0, atol=1e-6)
        torch.testing.assert_close(res["fused"], want_lp[rows], rtol=0, atol=1e-5)
        torch.testing.assert_close(res["kl"], want_kl[rows], rtol=0, atol=1e-5)
        held += res["local_numel"]
        assert res["local_numel"] < res["full_numel"], f"rank {rank} holds the full reference"
    # the shards partition the model: the ranks together hold each weight once, none gathered
    assert held == ranks[0]["full_numel"]
