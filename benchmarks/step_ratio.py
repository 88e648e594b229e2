"""Section step_ratio — predicted SFPO / GRPO step time at the paper's setting (issue 14, 6d).

The model of one iteration (the authors' verl loop, ``authors_hparams.md``):

    GRPO = gen + logprob + 1 x update + push
    SFPO = gen + logprob + (K+1) x update + bookkeeping + push

* gen: sampling B x G responses (seconds per generated token x B x G x mean response);
* logprob: the no-grad old log-prob + entropy pass at theta0 (per prompt + response token;
  KL is off in the paper, so there is no reference pass);
* update: one pass over the batch = ``mini`` AdamW steps (256 x 8 / mini-batch 64 x 8 = 4):
  fwd + bwd per token, plus ``mini`` optimizer steps (per parameter, not per token);
* bookkeeping: SFPO's snapshot of theta0 + reposition (``_foreach_lerp_``) + finite check;
* push: the weights into the rollout engine, once per iteration in both methods.

MEASURED here, each on the same model in one process: seconds per generated token of our
``HFEngine`` (every response runs to the length cap: the engine's EOS is an id the model
cannot emit), per token of ``response_logprobs`` and of one ``UpdatePass`` (real AdamW, token
budget + remove_padding as the paper config), per AdamW step, of the real ``SFPO`` engine's
begin + reposition + end, and of ``push_full_weights`` into an HF engine owning a copy.
ASSUMED: (1) every cost per token is the measured one, whatever the batch and sequence
length (on a GPU, vLLM's batched decoding makes generation far cheaper per token than on
this CPU, and attention grows with length); (2) every term scales with the parameter count
alike, so the ratio does not depend on model size; (3) lengths: DAPO prompts (mean
``PROMPT_MEAN`` Qwen tokens, measured by the padfree section) and responses
LogNormal(median 600, sigma 0.75) <= 2560 (benchmarks/README.md), B x G = 256 x 8, K = 3.

The paper reports no step time; its Fig. 4 gives GRPO / SFPO ratios of rollouts and of
wall-clock to reach GRPO's best accuracy, so (rollout ratio / wall-clock ratio) is SFPO's
mean time per iteration over GRPO's on their 8 x H100 runs (SFPO turns into GRPO after the
entropy trigger, so this averages both kinds of iteration). Under the model above it implies
an update share u / (gen + logprob + u + push) = (ratio - 1) / K of a GRPO step; the row
"update share" gives ours.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from benchmarks.common import (
    Row,
    free_memory,
    interleaved,
    not_measured,
    smollm2_dir,
    smollm2_unavailable,
    toy_config,
)

SECTION = "step_ratio"
PROMPT_MEAN = 165.0  # DAPO-Math prompts in Qwen2.5's chat format (padfree section, n=17,916)
# Fig. 4 of the paper (analysis/paper.py FIG4): model -> (rollouts GRPO/SFPO, wall GRPO/SFPO)
PAPER_FIG4 = {
    "ds-r1-distill-qwen-1.5b": (3.21, 2.62),
    "qwen3-4b-base": (3.50, 2.65),
    "ds-r1-distill-qwen-7b": (4.93, 4.19),
}


@dataclass(frozen=True)
class Setting:
    """One iteration's shape: B prompts x G samples, K fast passes, ``mini`` AdamW steps per
    pass, mean prompt / response lengths in tokens."""

    prompts: int = 256
    n: int = 8
    K: int = 3
    mini: int = 4
    prompt_mean: float = PROMPT_MEAN
    response_mean: float = 0.0  # 0: the stated LogNormal's mean, see response_mean()


@dataclass(frozen=True)
class Costs:
    """Measured seconds: per generated token, per (prompt + response) token of the log-prob
    pass and of an update pass's forward + backward, per AdamW step, per SFPO bookkeeping
    (snapshot + reposition + check) and per weight push."""

    gen_per_token: float
    logprob_per_token: float
    fwd_bwd_per_token: float
    opt_step: float
    bookkeeping: float
    push: float


def response_mean(median: float = 600.0, sigma: float = 0.75, cap: int = 2560) -> float:
    """Mean of LogNormal(median, sigma) truncated (clipped) at ``cap``, by 10^6 draws."""
    rng = np.random.default_rng(0)
    return float(np.exp(rng.normal(np.log(median), sigma, 1_000_000)).clip(1, cap).mean())


def step_model(c: Costs, s: Setting) -> dict[str, float]:
    """Predicted seconds of each stage of one GRPO and one SFPO iteration (pure arithmetic).

    Returns: ``gen, logprob, update`` (one pass), ``bookkeeping, push, grpo, sfpo, ratio``
    (sfpo / grpo) and ``update_share`` (update / grpo).
    """
    if s.K < 0 or s.mini < 1 or s.prompts < 1 or s.n < 1:
        raise ValueError(f"step_model: bad setting {s} (K >= 0, mini, prompts, n >= 1)")
    rows = s.prompts * s.n
    resp = s.response_mean or response_mean()
    gen = c.gen_per_token * rows * resp
    logprob = c.logprob_per_token * rows * (s.prompt_mean + resp)
    update = c.fwd_bwd_per_token * rows * (s.prompt_mean + resp) + s.mini * c.opt_step
    grpo = gen + logprob + update + c.push
    sfpo = gen + logprob + (s.K + 1) * update + c.bookkeeping + c.push
    return {
        "gen": gen,
        "logprob": logprob,
        "update": update,
        "bookkeeping": c.bookkeeping,
        "push": c.push,
        "grpo": grpo,
        "sfpo": sfpo,
        "ratio": sfpo / grpo,
        "update_share": update / grpo,
    }


@dataclass(frozen=True)
class Scale:
    """The small measured case: ``prompts`` x ``n`` rollouts of ``new`` tokens from prompts of
    ``prompt_len`` tokens; the update and log-prob passes on ``rows`` rows of those lengths."""

    model: str  # "toy" | "smollm2"
    prompts: int
    n: int
    prompt_len: int
    new: int
    rows: int
    repeats: int


def scale_for(mode: str) -> Scale:
    return {
        "smoke": Scale("toy", 2, 2, 8, 8, 4, 1),
        "quick": Scale("smollm2", 2, 2, 32, 32, 4, 1),
        "full": Scale("smollm2", 4, 2, 96, 128, 8, 1),
    }[mode]


def load_model(kind: str) -> tuple[torch.nn.Module, int]:
    """(model, pad id): SmolLM2 (``common.smollm2_dir``) or the toy config at random init."""
    from sfpo_lab.model.build import build_causal_lm

    torch.manual_seed(0)
    if kind == "toy":
        return build_causal_lm(toy_config()), 0
    model = build_causal_lm(smollm2_dir())
    pad = model.config.pad_token_id
    return model, int(model.config.eos_token_id if pad is None else pad)


def measure(sc: Scale) -> tuple[Costs, dict]:
    """Every term of :class:`Costs` on one model, in this process (CPU time: see common)."""
    from sfpo_lab.rollout.base import SamplingParams
    from sfpo_lab.rollout.hf import HFEngine
    from sfpo_lab.rollout.sync import push_full_weights

    model, pad = load_model(sc.model)
    vocab = model.config.vocab_size
    never = vocab  # an EOS id the model cannot emit: every response runs to the cap
    engine = HFEngine(model, pad, never)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (sc.prompt_len,), generator=g).tolist()] * sc.prompts
    params = SamplingParams(n=sc.n, max_new_tokens=sc.new)
    generated: list[int] = []

    def gen() -> None:
        generated.append(int(engine.generate(prompts, params, seed=1).response_mask.sum()))

    copy = HFEngine.from_config(model.config, pad, never)
    fns, tokens, mini = _training_fns(model, sc)
    t = interleaved(
        {"gen": gen, **fns, "push": lambda: push_full_weights(model, copy)},
        repeats=sc.repeats,
        warmup=1,
        clock="cpu",
    )
    expected = sc.prompts * sc.n * sc.new
    if generated[-1] != expected:
        raise RuntimeError(f"step_ratio: generated {generated[-1]} tokens, expected {expected}")
    sec = {k: v["min"] for k, v in t.items()}
    costs = Costs(
        gen_per_token=sec["gen"] / expected,
        logprob_per_token=sec["logprob"] / tokens,
        fwd_bwd_per_token=max(sec["update"] - mini * sec["opt_step"], 0.0) / tokens,
        opt_step=sec["opt_step"],
        bookkeeping=sec["bookkeeping"],
        push=sec["push"],
    )
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    info = {"seconds": t, "generated_tokens": expected, "pass_tokens": tokens,
            "params_millions": params_m, "mini_batches": mini}  # fmt: skip
    return costs, info


def _training_fns(model: torch.nn.Module, sc: Scale) -> tuple[dict, int, int]:
    """The timed training-side stages on ``sc.rows`` rows of ``prompt_len + new`` tokens:
    old log-prob pass, one ``UpdatePass`` (``mini`` AdamW steps, token budget +
    remove_padding), one AdamW step, SFPO's begin + reposition + end. Returns (fns, real
    tokens of the batch, mini)."""
    from benchmarks.padfree import _Host, layout
    from sfpo_lab.algos.sfpo import SFPO
    from sfpo_lab.config import RunConfig, UpdateConfig
    from sfpo_lab.training.experience import response_logprobs
    from sfpo_lab.training.stages import UpdatePass

    vocab = model.config.vocab_size
    exp = layout(np.full(sc.rows, sc.prompt_len), np.full(sc.rows, sc.new), vocab)
    exp.old_logprobs = -torch.rand(exp.response_mask.shape)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
    mini = min(4, sc.rows)
    update = UpdateConfig(ppo_mini_batches=mini, max_tokens_per_micro_batch=4096,
                          remove_padding=True)  # fmt: skip
    updater = UpdatePass(_Host(model, replace(RunConfig(), update=update), opt))
    sfpo = SFPO(opt, K=3, alpha=0.8)

    def bookkeeping() -> None:
        sfpo.begin()
        sfpo.reposition()
        sfpo.end()

    def opt_step() -> None:
        for p in model.parameters():  # AdamW on zero grads: the same arithmetic as any step
            p.grad = torch.zeros_like(p) if p.grad is None else p.grad.zero_()
        opt.step()

    fns = {
        "logprob": lambda: response_logprobs(model, exp, with_entropy=True),
        "update": lambda: updater(exp),
        "opt_step": opt_step,
        "bookkeeping": bookkeeping,
    }
    return fns, int(exp.attention_mask.sum()), mini


def rows_for(costs: Costs, info: dict, label: str, setting: Setting | None = None) -> list[Row]:
    """The table: predicted ratio and shares at the paper's setting, then the paper's Fig. 4."""
    s = setting or Setting()
    pred = step_model(costs, s)
    resp = s.response_mean or response_mean()
    cfg = (f"B x G = {s.prompts} x {s.n}, K = {s.K}, {s.mini} AdamW steps per pass, prompt "
           f"mean {s.prompt_mean:.0f}, response mean {resp:.0f}; costs of {label}")  # fmt: skip
    details = {"costs": asdict(costs), "predicted_s": pred, "measured": info}
    note = ("MEASURED per-token/per-step costs (HF engine generation, CPU time), ASSUMED "
            "length-independent and scaled by tokens (module docstring)")  # fmt: skip
    out = [
        Row(SECTION, "predicted SFPO / GRPO step time (paper setting)", pred["ratio"],
            config=cfg, note=note, details=details),
        Row(SECTION, "predicted update-pass share of a GRPO step", pred["update_share"],
            config=cfg, details=details),
        Row(SECTION, "predicted generation share of a GRPO step", pred["gen"] / pred["grpo"],
            config=cfg, details=details),
    ]  # fmt: skip
    for model, (rollouts, wall) in PAPER_FIG4.items():
        ratio = rollouts / wall
        out.append(
            Row(
                SECTION,
                f"paper: SFPO / GRPO time per iteration ({model})",
                ratio,
                config="Fig. 4, 8 x H100, verl + vLLM",
                note=f"rollout ratio {rollouts} / wall-clock ratio {wall}; implies update "
                f"share (ratio - 1) / K = {(ratio - 1) / s.K:.3f}",
            )  # fmt: skip
        )
    return out


def run(mode: str, device: torch.device) -> list[Row]:
    sc = scale_for(mode)
    if device.type != "cpu":
        why = "CPU-only section (its costs are CPU time; gpu_check measures GPU stages)"
        return [not_measured(SECTION, "predicted SFPO / GRPO step time (paper setting)", "", why)]
    if sc.model == "smollm2" and (why := smollm2_unavailable()):
        return [not_measured(SECTION, "predicted SFPO / GRPO step time (paper setting)", "", why)]
    start = time.perf_counter()
    costs, info = measure(sc)
    free_memory()
    info["section_s"] = time.perf_counter() - start
    name = "SmolLM2-135M (fp32)" if sc.model == "smollm2" else "toy Qwen2 (random)"
    label = (f"{name} on CPU: {sc.prompts} x {sc.n} x {sc.new} new tokens, "
             f"passes on {sc.rows} rows of {sc.prompt_len} + {sc.new}")  # fmt: skip
    return rows_for(costs, info, label)
