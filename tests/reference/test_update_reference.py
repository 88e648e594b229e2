"""An independent reference of the whole update step (issue 29, items 1-2).

The reference below is plain PyTorch from raw logits and shares no code with ``sfpo_lab``'s
RL math: full-vocabulary ``log_softmax(logits / T)`` of a plain padded forward (no
``logits_to_keep``, no chunking, no packing, no fused head), the clipped ratio against the old
log-probs with both bounds and the dual clip, each aggregation mode over the whole mini-batch,
the entropy bonus, each KL kind (and its straight-through ``+`` variant), the constant loss
scale, mini-batches. The project's :class:`~sfpo_lab.training.stages.UpdatePass` runs the same batch
through the padded, packed and fused paths; its loss, every logged statistic and the gradient
of every optimizer step must equal the reference's (fp32: statistics within 1e-6 relative,
gradients within 1e-6 absolute), first with each setting that changes the update switched on alone, then all
together. The rollout side (old and reference log-probs, the theta0 entropy the trigger reads)
is checked against the same reference at temperature != 1.

Only the model (a tiny transformers Qwen2) and the ``Experience`` container come from outside
this file; the optimizer is a recorder, so every mini-batch's gradient is taken at theta0.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from sfpo_lab.config import RunConfig
from sfpo_lab.training.experience import Experience, response_logprobs
from sfpo_lab.training.stages import UpdatePass

VOCAB, P, R = 23, 6, 7
PROMPT_LENS = [2, 5, 1, 3, 4, 2]
RESP_LENS = [6, 1, 3, 2, 5, 4]
T = 0.7  # sampling temperature of every test unless it says otherwise

PATHS = {  # update.* of each path; "one micro-batch" variants keep the statistics exact
    "padded": {"micro_batch_size": 6},
    "packed": {"max_tokens_per_micro_batch": 200, "remove_padding": True},
    "fused": {"max_tokens_per_micro_batch": 200, "remove_padding": True, "fused_lm_head": True},
    "fused_padded": {"micro_batch_size": 6, "fused_lm_head": True},
}
SPLIT_PATHS = {  # several micro-batches: loss and gradients exact, statistics row-weighted
    "padded": {"micro_batch_size": 2},
    "packed": {"max_tokens_per_micro_batch": 14, "remove_padding": True},
    "fused": {"max_tokens_per_micro_batch": 14, "remove_padding": True, "fused_lm_head": True},
}
# each setting that changes the update, alone (LossConfig fields; "temperature" is rollout's)
ALONE = {
    "baseline": {},
    "entropy_coeff": {"entropy_coeff": 0.05},
    "kl_k1": {"kl_coef": 0.2, "kl_kind": "k1"},
    "kl_abs": {"kl_coef": 0.2, "kl_kind": "abs"},
    "kl_k2": {"kl_coef": 0.2, "kl_kind": "k2"},
    "kl_k3": {"kl_coef": 0.2, "kl_kind": "low_var_kl"},
    "kl_k3_straight_through": {"kl_coef": 0.2, "kl_kind": "k3+"},
    "kl_k1_straight_through": {"kl_coef": 0.2, "kl_kind": "k1+"},
    "clip_asymmetric": {"clip_low": 0.1, "clip_high": 0.28},
    "dual_clip": {"clip_c": 2.0},
    "agg_seq_mean_token_mean": {"agg": "seq-mean-token-mean"},
    "agg_seq_mean_token_sum": {"agg": "seq-mean-token-sum"},
    "agg_token_sum_norm": {"agg": "seq-mean-token-sum-norm", "loss_scale_factor": 16.0},
}
ALL_TOGETHER = {
    "entropy_coeff": 0.03,
    "kl_coef": 0.1,
    "kl_kind": "k3+",
    "clip_low": 0.15,
    "clip_high": 0.3,
    "clip_c": 2.5,
    "agg": "seq-mean-token-mean",
}


# ---------------------------------------------------------------- the independent reference
def ref_token_stats(model, batch, temperature):
    """``[N, R]`` log pi(token) and entropy from the full padded forward's raw logits."""
    out = model(
        input_ids=batch["ids"], attention_mask=batch["attn"], position_ids=batch["pos"]
    ).logits
    z = out[:, P - 1 : P + R - 1].float() / temperature  # position t - 1 predicts token t
    logp = torch.log_softmax(z, dim=-1)
    labels = batch["ids"][:, P:]
    lp = logp.gather(-1, labels[..., None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return lp, entropy


def ref_agg(x, mask, mode, scale):
    """The aggregate over the whole mini-batch (masked positions never enter)."""
    m = mask.float()
    x = torch.where(mask.bool(), x, torch.zeros_like(x))
    if mode == "token-mean":
        return (x * m).sum() / m.sum()
    per_seq, count = (x * m).sum(-1), m.sum(-1)
    if mode == "seq-mean-token-mean":
        per_seq = per_seq / count.clamp(min=1)
    loss = per_seq[count > 0].mean()
    if mode == "seq-mean-token-sum-norm":
        loss = loss / (R if scale is None else scale)
    return loss


def ref_kl(lp, ref, kind):
    """Per-token KL(pi || pi_ref) estimate; ``kind+`` = value of ``kind``, gradient of k2."""
    straight = kind.endswith("+")
    base = kind.rstrip("+")
    d = lp - ref
    if base in ("k1", "kl"):
        value = d
    elif base == "abs":
        value = d.abs()
    elif base in ("k2", "mse"):
        value = 0.5 * d * d
    else:  # k3 / low_var_kl
        x = (-d).clamp(-20, 20)
        value = (x.exp() - x - 1).clamp(-10, 10)
    if not straight or base in ("k2", "mse"):
        return value
    k2 = 0.5 * d * d
    return value.detach() + (k2 - k2.detach())


def ref_mini_batch(model, batch, loss_cfg, temperature, grad_clip):
    """Loss, statistics and (clipped) gradients of one optimizer step over ``batch``."""
    c = loss_cfg
    model.zero_grad(set_to_none=True)
    lp, entropy = ref_token_stats(model, batch, temperature)
    mask, adv = batch["mask"], batch["adv"][:, None]
    m = mask.float()
    log_ratio = (lp - batch["old"]).clamp(-20, 20)
    ratio = log_ratio.exp()
    plain = -adv * ratio
    clipped = -adv * ratio.clamp(1 - c.clip_low, 1 + c.clip_high)
    per_token = torch.maximum(plain, clipped)
    lower = torch.zeros_like(per_token)
    if c.clip_c is not None:
        cap = -adv * c.clip_c
        lower = ((per_token > cap) & (adv < 0)).float()
        per_token = torch.where(adv < 0, torch.minimum(per_token, cap), per_token)
    pg = ref_agg(per_token, mask, c.agg, c.loss_scale_factor)
    loss = pg - c.entropy_coeff * ref_agg(entropy, mask, c.agg, c.loss_scale_factor)
    stats = {
        "pg_loss": float(pg.detach()),
        "pg_clipfrac": float(((clipped > plain).float() * m).sum() / m.sum()),
        "pg_clipfrac_lower": float((lower * m).sum() / m.sum()),
        "ppo_kl": float((-log_ratio.detach() * m).sum() / m.sum()),
        "entropy": float((entropy.detach() * m).sum() / m.sum()),
    }
    if c.kl_coef > 0:
        kl = ref_agg(ref_kl(lp, batch["ref"], c.kl_kind), mask, c.agg, c.loss_scale_factor)
        loss = loss + c.kl_coef * kl
        stats["kl"] = float(kl.detach())
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
    if grad_clip > 0 and norm > grad_clip:
        grads = [g * (grad_clip / (norm + 1e-6)) for g in grads]
    stats["grad_norm"] = norm
    model.zero_grad(set_to_none=True)
    return stats, grads


# ---------------------------------------------------------------- the data and the project side
def make_model():
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        use_sliding_window=False,
    )
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa")


def make_batch(model):
    """A ragged batch: left-padded prompts, right-padded responses, old log-probs that clip
    on both sides and beyond the dual-clip bound, reference log-probs off by up to 0.5."""
    g = torch.Generator().manual_seed(4)
    n = len(PROMPT_LENS)
    attn = torch.zeros(n, P + R, dtype=torch.long)
    mask = torch.zeros(n, R, dtype=torch.long)
    for i, (lp, lr) in enumerate(zip(PROMPT_LENS, RESP_LENS, strict=True)):
        attn[i, P - lp : P + lr] = 1
        mask[i, :lr] = 1
    ids = torch.randint(1, VOCAB, (n, P + R), generator=g) * attn
    batch = {
        "ids": ids,
        "attn": attn,
        "pos": (attn.cumsum(-1) - 1).clamp(min=0),
        "mask": mask,
        "adv": torch.tensor([1.3, -0.7, 0.4, -1.6, 0.9, -0.2]),
    }
    with torch.no_grad():
        lp0, _ = ref_token_stats(model, batch, T)
    batch["old"] = (lp0 + torch.empty(n, R).uniform_(-1.5, 0.5, generator=g)) * mask
    batch["ref"] = (lp0 + torch.empty(n, R).uniform_(-0.5, 0.5, generator=g)) * mask
    return batch


def to_experience(batch):
    return Experience(
        input_ids=batch["ids"],
        attention_mask=batch["attn"],
        position_ids=batch["pos"],
        response_mask=batch["mask"],
        advantages=batch["adv"],
        old_logprobs=batch["old"],
        ref_logprobs=batch["ref"],
    )


class Recorder:
    """The optimizer: records the gradients a step would apply; the weights stay at theta0."""

    def __init__(self, model):
        self.model, self.steps = model, []

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)

    def step(self):
        self.steps.append([p.grad.clone() for p in self.model.parameters()])


class Host:
    """What UpdatePass reads from the LightningModule, on one process."""

    def __init__(self, model, run):
        self.policy, self.run_cfg, self.device = model, run, torch.device("cpu")
        self.consecutive_skips, self.opt = 0, Recorder(model)
        reduce = lambda t, reduce_op="sum": t  # noqa: E731  (one process: identity)
        self.trainer = SimpleNamespace(world_size=1, strategy=SimpleNamespace(reduce=reduce))

    def manual_backward(self, loss):
        loss.backward()

    def optimizers(self):
        return self.opt

    def lr_schedulers(self):
        return SimpleNamespace(step=lambda: None)


def make_run(path_cfg, loss, temperature=T, grad_clip=0.0, minis=1):
    run = RunConfig()
    run = replace(run, data=replace(run.data, batch_size=2), rollout=replace(run.rollout, n=3))
    return replace(
        run,
        rollout=replace(run.rollout, temperature=temperature),
        update=replace(run.update, ppo_mini_batches=minis, logits_chunk_tokens=5, **path_cfg),
        optim=replace(run.optim, grad_clip=grad_clip),
        loss=replace(run.loss, **({"entropy_coeff": 0.0} | loss)),
    )


def project_pass(run, model, batch):
    host = Host(model, run)
    stats = UpdatePass(host)(to_experience(batch))
    return stats, host.opt.steps


def reference_pass(run, model, batch):
    rows = len(batch["ids"]) // run.update.ppo_mini_batches
    out = []
    for start in range(0, len(batch["ids"]), rows):
        mini = {k: v[start : start + rows] for k, v in batch.items()}
        out.append(
            ref_mini_batch(model, mini, run.loss, run.rollout.temperature, run.optim.grad_clip)
        )
    return out


def assert_grads_equal(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def assert_stats_equal(stats, ref, keys):
    for key in keys:
        assert stats[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-7), key


STAT_KEYS = ("pg_loss", "pg_clipfrac", "pg_clipfrac_lower", "ppo_kl", "entropy", "grad_norm")


# ---------------------------------------------------------------- the tests
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("setting", list(ALONE))
def test_each_setting_alone_equals_the_reference(path, setting):
    model = make_model()
    batch = make_batch(model)
    run = make_run(PATHS[path], ALONE[setting])
    stats, steps = project_pass(run, model, batch)
    ((ref, ref_grads),) = reference_pass(run, model, batch)
    keys = STAT_KEYS + (("kl",) if run.loss.kl_coef > 0 else ())
    assert_stats_equal(stats, ref, keys)
    assert_grads_equal(steps[0], ref_grads)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("temperature", [1.0, 1.3])
def test_temperature_enters_every_path(path, temperature):
    model = make_model()
    batch = make_batch(model)
    run = make_run(PATHS[path], {"entropy_coeff": 0.05}, temperature=temperature)
    stats, steps = project_pass(run, model, batch)
    ((ref, ref_grads),) = reference_pass(run, model, batch)
    assert_stats_equal(stats, ref, STAT_KEYS)
    assert_grads_equal(steps[0], ref_grads)


@pytest.mark.parametrize("path", list(PATHS))
def test_all_settings_together_with_clipping_and_two_mini_batches(path):
    model = make_model()
    batch = make_batch(model)
    run = make_run(PATHS[path], ALL_TOGETHER, grad_clip=0.05, minis=2)
    stats, steps = project_pass(run, model, batch)
    ref = reference_pass(run, model, batch)
    assert len(steps) == 2
    for got, (_, want) in zip(steps, ref, strict=True):
        assert_grads_equal(got, want)
    for key in (*STAT_KEYS, "kl"):  # the pass reports the mean over its mini-batches
        assert stats[key] == pytest.approx(sum(r[key] for r, _ in ref) / 2, rel=1e-6, abs=1e-7)
    assert stats["ppo_kl_first"] == pytest.approx(ref[0][0]["ppo_kl"], rel=1e-6, abs=1e-7)
    assert min(r["grad_norm"] for r, _ in ref) > 0.05  # the clip was active


@pytest.mark.parametrize("path", list(SPLIT_PATHS))
def test_several_micro_batches_give_the_whole_mini_batch_loss_and_gradient(path):
    model = make_model()
    batch = make_batch(model)
    run = make_run(SPLIT_PATHS[path], ALL_TOGETHER)
    stats, steps = project_pass(run, model, batch)
    ((ref, ref_grads),) = reference_pass(run, model, batch)
    assert_stats_equal(stats, ref, ("pg_loss", "kl", "grad_norm"))
    assert_grads_equal(steps[0], ref_grads)


def test_the_reference_batch_exercises_every_term():
    """Guards the tests above from passing vacuously: both clip bounds and the dual clip are
    active on this batch, and the KL is not zero."""
    model = make_model()
    batch = make_batch(model)
    run = make_run(PATHS["padded"], ALL_TOGETHER)
    ((ref, _),) = reference_pass(run, model, batch)
    assert 0.1 < ref["pg_clipfrac"] < 0.9
    assert ref["pg_clipfrac_lower"] > 0
    assert abs(ref["kl"]) > 1e-3
    lp, _ = ref_token_stats(model, batch, T)
    ratio = (lp - batch["old"]).exp()[batch["mask"].bool()]
    assert (ratio < 0.85).any() and (ratio > 1.3).any()


# ---------------------------------------------------------------- the rollout side
@pytest.mark.parametrize(
    "path",
    [
        {"micro_batch_size": 4},
        {"max_tokens": 14, "remove_padding": True},
        {"max_tokens": 14, "remove_padding": True, "fused": True},
        {"micro_batch_size": 4, "fused": True},
    ],
    ids=["padded", "packed", "fused", "fused_padded"],
)
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_old_and_reference_logprobs_and_theta0_entropy(path, temperature):
    """``response_logprobs`` is what the rollout side runs for the old log-probs, the
    reference log-probs and the theta0 entropy (``train/entropy``, the trigger's H_s with
    ``sfpo.entropy_control.source=rollout``)."""
    model = make_model()
    batch = make_batch(model)
    with torch.no_grad():
        want_lp, want_ent = ref_token_stats(model, batch, temperature)
    kw = {"micro_batch_size": 16, "chunk_tokens": 5} | path
    lp, ent = response_logprobs(model, to_experience(batch), temperature, with_entropy=True, **kw)
    m = batch["mask"].bool()
    torch.testing.assert_close(lp[m], want_lp[m], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ent[m], want_ent[m], rtol=1e-6, atol=1e-6)
    h_s = (ent * m).sum() / m.sum()  # the masked token mean ExperienceMaker logs
    assert float(h_s) == pytest.approx(float((want_ent * m).sum() / m.sum()), rel=1e-6)
