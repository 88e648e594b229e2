"""UpdatePass with token-budget micro-batches and remove-padding gives the padded update's
gradients and loss (one process, and FSDP2 on 2 gloo processes), and reports ``entropy``."""

from __future__ import annotations

import os
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sfpo_lab.config import RunConfig, UpdateConfig
from sfpo_lab.experience import response_logprobs
from sfpo_lab.models import build_causal_lm, tiny_qwen2_config
from sfpo_lab.stages import UpdatePass
from tests.dist_utils import free_port
from tests.test_packing import VOCAB, make_experience

PROMPTS = [2, 5, 1, 3, 4, 2]
RESPONSES = [6, 1, 3, 2, 5, 4]
SETTINGS = {  # name -> update.* overrides; "padded" is today's fixed-row micro-batching
    "padded": {},
    "budget": {"max_tokens_per_micro_batch": 18},
    "packed": {"max_tokens_per_micro_batch": 14, "remove_padding": True},
    "fused": {"max_tokens_per_micro_batch": 14, "remove_padding": True, "fused_lm_head": True},
    "fused_padded": {"fused_lm_head": True},
}


class Recorder:
    """Optimizer stand-in that records the (full) gradients a step would apply."""

    def __init__(self, model):
        self.model, self.steps = model, []

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)

    def step(self):
        grads = [p.grad for p in self.model.parameters()]
        self.steps.append([g.full_tensor() if hasattr(g, "full_tensor") else g for g in grads])


class Host:
    """What UpdatePass reads from SFPOModule, doing the real thing (backward, all-reduce)."""

    def __init__(self, policy, run, world=1):
        self.policy, self.run_cfg, self.device = policy, run, torch.device("cpu")
        self.consecutive_skips, self.opt = 0, Recorder(policy)
        strategy = SimpleNamespace(reduce=self.reduce)
        self.trainer = SimpleNamespace(world_size=world, strategy=strategy)

    @staticmethod
    def reduce(t, reduce_op="sum"):
        if dist.is_initialized():
            op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[reduce_op]
            dist.all_reduce(t, op=op)
        return t

    def manual_backward(self, loss):
        loss.backward()

    def optimizers(self):
        return self.opt


def make_model():
    torch.manual_seed(0)
    cfg = tiny_qwen2_config(VOCAB, hidden_size=32, num_layers=2, intermediate_size=64)
    return build_causal_lm(cfg)


def make_run(setting: str, **loss) -> RunConfig:
    run = RunConfig()
    upd = UpdateConfig(micro_batch_size=2, logits_chunk_tokens=5, **SETTINGS[setting])
    return replace(
        run,
        update=upd,
        optim=replace(run.optim, grad_clip=0.0),
        loss=replace(run.loss, entropy_coeff=0.01, **loss),
    )


def experience(rows=slice(None)):
    exp = make_experience(PROMPTS, RESPONSES, p=6, r=7, seed=4)
    lp, _ = response_logprobs(make_model(), exp)  # theta0 = the same weights: ratio 1
    exp.old_logprobs = lp - 0.1 * torch.rand(lp.shape, generator=torch.Generator().manual_seed(5))
    exp.ref_logprobs = lp + 0.05
    return exp.rows(rows)


def run_pass(setting, exp, world=1, model=None, **loss):
    model = model if model is not None else make_model()
    host = Host(model, make_run(setting, **loss), world)
    stats = UpdatePass(host)(exp)
    return host.opt.steps, stats


def assert_same_steps(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        for g, w in zip(a, b, strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


@pytest.mark.parametrize("setting", ["budget", "packed", "fused", "fused_padded"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_token_budget_and_packed_updates_equal_the_padded_update(setting, agg):
    exp = experience()
    loss = {"agg": agg, "kl_coef": 0.1}
    ref_steps, ref = run_pass("padded", exp, **loss)
    steps, stats = run_pass(setting, exp, **loss)
    assert_same_steps(steps, ref_steps)
    for key in ("pg_loss", "kl", "grad_norm"):
        assert stats[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7)


def test_entropy_stat_is_the_mean_of_micro_batch_token_means():
    exp = experience()
    _, stats = run_pass("padded", exp)
    _, h = response_logprobs(make_model(), exp, 1.0, with_entropy=True)
    mask = exp.response_mask.float()
    means = [
        float((h[s] * mask[s]).sum() / mask[s].sum()) for s in (slice(i, i + 2) for i in (0, 2, 4))
    ]
    assert stats["entropy"] == pytest.approx(sum(means) / 3, rel=1e-5)
    assert {"pg_loss", "pg_clipfrac", "ppo_kl", "grad_norm", "update_s"} <= stats.keys()


# ------------------------------------------------------------------ FSDP2, 2 gloo processes
WORLD = 2
RANK_ROWS = [[0, 4, 2, 5], [1, 3]]  # uneven: rank 1 runs fewer micro-batches and pads


def worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    exp = experience(torch.tensor(RANK_ROWS[rank]))
    out = {}
    for setting in SETTINGS:
        model = make_model()
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)  # root: embeddings (tied lm_head) and final norm
        host = Host(model, make_run(setting), WORLD)
        run = host.run_cfg
        u = run.update
        kw = {"max_tokens": u.max_tokens_per_micro_batch, "reduce_max": host_max}
        kw |= {"remove_padding": u.remove_padding, "fused": u.fused_lm_head}
        lp, _ = response_logprobs(model, exp, 1.0, 2, **kw)
        model.reshard()
        stats = UpdatePass(host)(exp)
        out[setting] = {"steps": host.opt.steps, "stats": stats, "logprobs": lp}
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def host_max(n: int) -> int:
    t = torch.tensor(n)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp2_two_processes_match_the_one_process_padded_update(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    exp = experience()
    ref_steps, ref = run_pass("padded", exp)
    ref_lp, _ = response_logprobs(make_model(), exp)
    mask = exp.response_mask.bool()
    for rank, res in enumerate(ranks):
        for setting in SETTINGS:
            assert_same_steps(res[setting]["steps"], ref_steps)
            assert res[setting]["stats"]["pg_loss"] == pytest.approx(ref["pg_loss"], rel=1e-5)
            lp, want = res[setting]["logprobs"], ref_lp[RANK_ROWS[rank]]
            m = mask[RANK_ROWS[rank]]
            torch.testing.assert_close(lp[m], want[m], rtol=0, atol=1e-5)
