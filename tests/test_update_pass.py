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
from sfpo_lab.model.build import build_causal_lm, tiny_qwen2_config
from sfpo_lab.training.experience import response_logprobs
from sfpo_lab.training.stages import UpdatePass
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


# ------------------------------------------------------------------ old log-probs from the pass
class Stepper(Recorder):
    """A real SGD step after recording the gradients: the second pass runs away from theta0."""

    def __init__(self, model, lr=2.0):
        super().__init__(model)
        self.sgd = torch.optim.SGD(model.parameters(), lr=lr)

    def step(self):
        super().step()
        self.sgd.step()


def two_passes(setting: str, fused: bool, temperature: float = 0.7):
    """Two update passes (SFPO's K=1 fast pass + slow pass without reposition) with real SGD
    steps; the old log-probs from the no-grad pass at theta0, or (``fused``) from the first
    pass's own forward."""
    model = make_model()
    run = make_run(setting, kl_coef=0.1, clip_low=0.1, clip_high=0.15)
    run = replace(run, rollout=replace(run.rollout, temperature=temperature))
    host = Host(model, run)
    host.opt = Stepper(model)
    exp = experience()
    u = run.update
    kw = {"max_tokens": u.max_tokens_per_micro_batch, "remove_padding": u.remove_padding}
    kw |= {"fused": u.fused_lm_head, "chunk_tokens": u.logits_chunk_tokens}
    lp, ent = response_logprobs(model, exp, temperature, 2, with_entropy=True, **kw)
    exp.old_logprobs = None if fused else lp
    updater = UpdatePass(host)
    stats = [updater(exp), updater(exp)]
    mask = exp.response_mask.float()
    h_s = float((ent * mask).sum() / mask.sum())  # ExperienceMaker's train/entropy
    return host.opt.steps, stats, exp.old_logprobs, lp, h_s


@pytest.mark.parametrize("setting", ["padded", "packed", "fused", "fused_padded"])
def test_old_logprobs_from_the_first_pass_equal_the_separate_no_grad_pass(setting):
    """The fused path (no no-grad pass; the first pass's detached forward at theta0 becomes the
    old log-probs for every later pass, and gives H_s) equals the separate pass: loss, every
    statistic and every step's gradient, over two passes with a real step in between."""
    want_steps, want, _, lp, h_s = two_passes(setting, fused=False)
    steps, got, old, _, _ = two_passes(setting, fused=True)
    assert len(steps) == len(want_steps) == 2
    for a, b in zip(steps, want_steps, strict=True):
        for g, w in zip(a, b, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    for g, w in zip(got, want, strict=True):
        for key in ("pg_loss", "pg_clipfrac", "ppo_kl", "kl", "entropy", "grad_norm"):
            assert g[key] == pytest.approx(w[key], rel=1e-6, abs=1e-7), key
    mask = experience().response_mask.bool()
    torch.testing.assert_close(old[mask], lp[mask], rtol=1e-6, atol=1e-6)
    assert got[0]["entropy_theta0"] == pytest.approx(h_s, rel=1e-6)
    assert "entropy_theta0" not in got[1]
    assert want[1]["pg_clipfrac"] > 0  # the second pass is off theta0: its ratio is not 1


def test_old_logprobs_from_the_pass_are_refused_with_several_mini_batches():
    model = make_model()
    run = make_run("padded")
    host = Host(model, replace(run, update=replace(run.update, ppo_mini_batches=2)))
    exp = experience()
    exp.old_logprobs = None
    with pytest.raises(RuntimeError, match="update.ppo_mini_batches=1"):
        UpdatePass(host)(exp)


def blocker(model=None, engine_logprobs=False, alpha=0.8, K=3, **update):
    from sfpo_lab.training.stages import fusion_blocker

    run = RunConfig()
    run = replace(run, update=replace(run.update, **update))
    module = SimpleNamespace(
        run_cfg=run,
        policy=model if model is not None else make_model(),
        sfpo=SimpleNamespace(alpha=alpha, K=K),
    )
    return fusion_blocker(module, engine_logprobs)


def test_the_fused_old_logprobs_are_used_only_where_exact():
    assert blocker() == "" and blocker(alpha=0.0, K=3) == "" and blocker(alpha=0.0, K=0) == ""
    assert "ppo_mini_batches" in blocker(ppo_mini_batches=2)
    assert "engine" in blocker(engine_logprobs=True)
    assert "sfpo.K=0" in blocker(alpha=0.5, K=0)
    assert "fuse_old_logprobs=false" in blocker(fuse_old_logprobs=False)
    torch.manual_seed(0)
    cfg = tiny_qwen2_config(VOCAB, hidden_size=32, num_layers=2, intermediate_size=64)
    cfg.attention_dropout = 0.1
    dropped = build_causal_lm(cfg)
    assert "dropout" in blocker(dropped.train())
    assert blocker(dropped.eval()) == ""  # eval mode draws no dropout masks
    plain = make_model()
    plain.model.layers[0].mlp.act_fn = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Dropout(0.2))
    assert "dropout" in blocker(plain.train())
