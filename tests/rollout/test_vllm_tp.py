"""Tensor-parallel colocated vLLM (``rollout.vllm.tensor_parallel_size`` = 2) on 2 gloo ranks.

The double (``fake_vllm.py``) enforces vLLM's external-launcher rule that the ranks of a TP
group submit identical requests and RNG states. Each rank passes only its own prompts; the
engine gathers the group's, and each rank gets back exactly its rows of what one process with
TP 1 generates from all prompts with the same seed and keys.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.dist_utils import free_port

WORLD = 2
PROMPTS = [[5, 6, 7], [2, 3, 4, 5, 9, 8], [11], [20, 21, 22, 23], [3, 3], [9, 8, 7, 6, 5]]
SPLIT = [[0, 1, 2], [3, 4, 5]]  # contiguous slices per rank, as the datamodule gives them


def _engine(model_dir: str, **kwargs):
    from fake_vllm import EOS, FAKE_VLLM, PAD

    import sfpo_lab.rollout.vllm as vllm_mod

    vllm_mod.import_vllm = lambda: FAKE_VLLM  # this process only
    return vllm_mod.VLLMEngine(model_dir, PAD, EOS, max_model_len=64, device="cpu", **kwargs)


def _params():
    from sfpo_lab.rollout import SamplingParams

    return SamplingParams(n=2, max_new_tokens=6, return_logprobs=True)


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    engine = _engine(
        os.path.join(out_dir, "model"),
        tensor_parallel_size=2,
        world_size=WORLD,
        rank=rank,
        local_rank=rank,
    )
    mine = [PROMPTS[i] for i in SPLIT[rank]]
    batch = engine.generate(mine, _params(), seed=7, keys=SPLIT[rank])
    try:  # a rank-dependent seed: refused on every rank before anything is sampled
        engine.generate(mine, _params(), seed=rank)
        refused = ""
    except RuntimeError as err:
        refused = str(err)
    torch.save({"batch": batch, "refused": refused}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_tp2_group_generates_the_union_and_each_rank_gets_its_rows(tmp_path):
    from fake_vllm import tiny_model as make_vllm_model

    make_vllm_model(0).save_pretrained(tmp_path / "model")  # the base every engine starts on
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    one = _engine(str(tmp_path / "model"))
    want = one.generate(PROMPTS, _params(), seed=7, keys=list(range(len(PROMPTS))))
    n = _params().n
    for rank, res in enumerate(ranks):
        got = res["batch"]
        rows = [i * n + k for i in SPLIT[rank] for k in range(n)]
        r = got.response_mask.shape[1]  # this rank's longest response: its own padding
        assert r == int(want.response_mask[rows].sum(-1).max())
        resp = want.input_ids[rows, want.prompt_len : want.prompt_len + r]
        assert torch.equal(got.response_ids, resp), rank
        assert torch.equal(got.response_mask, want.response_mask[rows, :r]), rank
        assert torch.equal(got.logprobs, want.logprobs[rows, :r]), rank
        assert "must share one seed" in res["refused"], rank
    assert not torch.equal(ranks[0]["batch"].response_ids[:2], ranks[1]["batch"].response_ids[:2])
