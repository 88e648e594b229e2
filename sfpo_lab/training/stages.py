"""The two halves of an RL iteration that the module composes.

* :class:`ExperienceMaker` — everything fixed at theta0: generate B x G samples, grade them,
  group advantages (Eq. 2), old/reference log-probs and the entropy H_s of the batch.
* :class:`UpdatePass` — one "fast step": one full pass over the rollout batch in
  ``ppo_mini_batches`` optimizer steps with micro-batched gradient accumulation (Eq. 4).

Both normalise by *global* counts (all ranks, whole mini-batch), so the gradient of a 2-rank
FSDP2 run equals that of a 1-process run on the same data.
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from sfpo_lab.algos import (
    agg_loss,
    get_advantage_estimator,
    get_policy_loss,
    kl_penalty,
    masked_mean,
)
from sfpo_lab.data.prompts import encode_prompts
from sfpo_lab.rewards.pool import MathVerifier
from sfpo_lab.rewards.reward import compute_rewards
from sfpo_lab.rollout.base import SamplingParams, concat_rollouts, derive_seed
from sfpo_lab.run.perf import NO_STAGES
from sfpo_lab.training.experience import (
    Experience,
    dropout_active,
    micro_logprobs,
    old_logprobs_policy,
    response_logprobs,
)
from sfpo_lab.training.packing import MicroBatch, micro_batches
from sfpo_lab.training.runtime import clip_grad_norm, grad_scaler, skip_scaled_step


class SFPOModule(Protocol):
    """What the stages read of :class:`sfpo_lab.training.module.SFPOModule` (a protocol: module.py
    imports this module, never the reverse)."""

    run_cfg: Any  # RunConfig
    policy: nn.Module
    ref_policy: nn.Module | None
    engine: Any  # RolloutEngine
    sfpo: Any  # SFPO engine (alpha, K), None before on_train_start
    tokenizer: Any
    device: torch.device
    trainer: Any  # world_size, strategy.reduce(tensor, reduce_op)
    iteration: int
    global_rank: int
    consecutive_skips: int

    def sync_engine(self) -> float: ...

    def optimizers(self) -> Any: ...

    def lr_schedulers(self) -> Any: ...

    def manual_backward(self, loss: Tensor) -> None: ...


def _sum(module: SFPOModule, x: float | Tensor) -> float:
    """Sum a scalar over all ranks (identity on one process)."""
    t = torch.as_tensor(x, dtype=torch.float64, device=module.device)
    return float(module.trainer.strategy.reduce(t, reduce_op="sum"))


def _micro_batching(module: SFPOModule) -> dict[str, Any]:
    """``micro_batches`` settings from ``update.*``, with the rank-wide MAX of the count
    (every rank must run the same number of forwards under DDP / FSDP)."""
    u = module.run_cfg.update

    def reduce_max(n: int) -> int:
        t = torch.tensor(float(n), dtype=torch.float64, device=module.device)
        return int(module.trainer.strategy.reduce(t, reduce_op="max"))

    return {
        "micro_batch_size": u.micro_batch_size,
        "max_tokens": u.max_tokens_per_micro_batch,
        "remove_padding": u.remove_padding,
        "reduce_max": reduce_max if module.trainer.world_size > 1 else None,
    }


def _logprob_kwargs(module: SFPOModule) -> dict[str, Any]:
    """Micro-batching and log-prob settings of every no-grad log-prob pass."""
    u = module.run_cfg.update
    return _micro_batching(module) | {
        "chunk_tokens": u.logits_chunk_tokens,
        "fused": u.fused_lm_head,
    }


def recompute_old_logprobs(module: SFPOModule, exp: Experience) -> dict[str, float]:
    """``sfpo.slow_old_logprobs=recompute``: the slow step's old log-probs become those at the
    repositioned point theta~ (a no-grad pass, micro-batched as at theta0).

    Replaces ``exp.old_logprobs`` ([N, R]) in place and returns ``kl_theta0``: the k1 estimate
    of KL(pi_theta0 || pi_theta~), masked token mean of old - new over all ranks."""
    t_b = module.run_cfg.rollout.temperature
    new, _ = response_logprobs(module.policy, exp, t_b, **_logprob_kwargs(module))
    if hasattr(module.policy, "reshard"):
        module.policy.reshard()
    mask = exp.response_mask.float()
    diff = _sum(module, ((exp.old_logprobs - new) * mask).sum())
    n_tok = _sum(module, mask.sum())
    exp.old_logprobs = new
    return {"kl_theta0": diff / n_tok if n_tok else math.nan}


def fusion_blocker(module: SFPOModule, engine_logprobs: bool) -> str:
    """Why the old log-probs of this iteration need their own no-grad pass at theta0; empty
    when the first update pass's detached forward gives exactly the same values (and H_s):
    every row's first forward is at theta0 (one mini-batch, and the iteration's first pass
    starts at theta0: GRPO's pass or SFPO's first fast pass), without dropout, on the same
    micro-batches and log-prob path (``update.*`` serves both), and no engine log-probs to
    compare with (``rollout.logprobs=engine``, vLLM's mismatch metric)."""
    run, sfpo = module.run_cfg, module.sfpo
    if not run.update.fuse_old_logprobs:
        return "update.fuse_old_logprobs=false"
    if run.update.ppo_mini_batches != 1:
        return "update.ppo_mini_batches > 1: later mini-batches run after an optimizer step"
    if engine_logprobs:
        return "the engine returns log-probs (compared with the trainer's at theta0)"
    if sfpo is None or (sfpo.alpha > 0 and sfpo.K == 0):
        return "no fast pass starts this iteration at theta0 (alpha > 0, sfpo.K=0)"
    if dropout_active(module.policy):
        return "dropout is on: two forwards at theta0 differ"
    return ""


class ExperienceMaker:
    """Builds the :class:`Experience` of one rollout batch at theta0."""

    def __init__(self, module: SFPOModule) -> None:
        self.m = module
        r = module.run_cfg.rollout
        self.params = SamplingParams(
            n=r.n,
            max_new_tokens=r.max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            # vLLM's log-probs come almost free: always measure the train/inference mismatch
            return_logprobs=r.engine == "vllm" or r.logprobs == "engine",
        )
        self.verifier = MathVerifier(
            num_workers=r.reward_workers, timeout_s=r.reward_timeout_s, parsing=r.answer_parsing
        )
        self.advantage_fn = get_advantage_estimator(module.run_cfg.loss.advantage)

    def encode(self, problems: list[str]) -> list[list[int]]:
        """Prompt ids exactly as the length filter, validation and evaluation encode them."""
        run = self.m.run_cfg
        return encode_prompts(
            problems, self.m.tokenizer, run.data.template, run.model.chat_template
        )

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, salt: int = 0):
        """Generate this rank's prompts; sample j of global prompt i draws from its own stream
        keyed by (seed, iteration, i, j), so the samples depend neither on the number of ranks
        nor on the chunking (``rollout.prompts_per_generate``)."""
        m = self.m
        per = m.run_cfg.rollout.prompts_per_generate or len(prompt_ids)
        first = m.global_rank * len(prompt_ids)  # ranks hold equal contiguous slices
        seed = derive_seed(m.run_cfg.seed, m.iteration, salt)
        batches = []
        # chunks of one rollout batch: no sleep in between; an update follows, so a level-1
        # vLLM engine need not keep theta on the host (the next push replaces it)
        with m.engine.keep_awake(replace_weights=True):
            for start in range(0, len(prompt_ids), per):
                chunk = prompt_ids[start : start + per]
                keys = list(range(first + start, first + start + len(chunk)))
                batches.append(m.engine.generate(chunk, params, seed=seed, keys=keys))
        return batches[0] if len(batches) == 1 else concat_rollouts(batches)

    def __call__(self, batch: dict[str, list]) -> tuple[Experience, dict[str, float]]:
        m, run = self.m, self.m.run_cfg
        t0 = time.perf_counter()
        mem = getattr(m, "stage_mem", NO_STAGES)  # perf/mem/<stage>
        with mem.stage("rollout"):  # weight push + generation
            sync_s = m.sync_engine()
            ro = self.generate(self.encode(batch["problems"]), self.params)
        t1 = time.perf_counter()
        texts = ro.decode_responses(m.tokenizer)
        golds = [a for a in batch["answers"] for _ in range(run.rollout.n)]
        grades = self.verifier.grade_many(texts, golds)
        rewards, rmetrics = compute_rewards(grades, run.rollout.reward_scheme)
        t2 = time.perf_counter()
        advantages, _ = self.advantage_fn(rewards, group_size=run.rollout.n)
        exp = Experience(
            input_ids=ro.input_ids,
            attention_mask=ro.attention_mask,
            position_ids=ro.position_ids,
            response_mask=ro.response_mask,
            advantages=advantages.to(ro.input_ids.device),
        )
        exp = exp.to(m.device)
        t_b = run.rollout.temperature
        kw = _logprob_kwargs(m)
        # old log-probs None: the first update pass fills them and H_s (fusion_blocker)
        separate = fusion_blocker(m, ro.logprobs is not None)
        entropy, lp_metrics = None, {}
        with mem.stage("logprobs"):  # old (and reference) log-probs at theta0
            if separate:
                exp.old_logprobs, entropy = response_logprobs(
                    m.policy, exp, t_b, with_entropy=True, **kw
                )
                exp.old_logprobs, lp_metrics = old_logprobs_policy(
                    run.rollout.logprobs, exp.old_logprobs, ro.logprobs, exp.response_mask
                )
            if m.ref_policy is not None:
                exp.ref_logprobs, _ = response_logprobs(m.ref_policy, exp, t_b, **kw)
        if hasattr(m.policy, "reshard"):
            m.policy.reshard()  # FSDP2 leaves the root unsharded after a no_grad forward
        mask = exp.response_mask.float()
        n_tok = _sum(m, mask.sum())
        lengths = mask.sum(-1)
        metrics = {
            "train/reward": _sum(m, rewards.sum()) / _sum(m, len(rewards)),
            "train/acc": _sum(m, rmetrics["acc"] * len(rewards)) / _sum(m, len(rewards)),
            **{f"train/{k}": v for k, v in rmetrics.items() if k not in ("acc", "reward_mean")},
            "train/response_length/mean": float(lengths.mean()),
            "train/response_length/max": float(lengths.max()),
            "train/response_length/clip_ratio": float(ro.truncated.float().mean()),
            "train/advantage_abs_mean": float(advantages.abs().mean()),
            "perf/rollout_s": t1 - t0,
            "perf/reward_s": t2 - t1,
            "perf/logprob_s": time.perf_counter() - t2,
            "perf/weight_sync_s": sync_s,
            "perf/tokens": n_tok,
        }
        metrics.update(lp_metrics)  # rollout/logprob_diff_{mean,max} when the engine gave them
        if entropy is not None:  # H_s at theta0; else the first update pass's entropy_theta0
            metrics["train/entropy"] = _sum(m, (entropy * mask).sum()) / max(n_tok, 1.0)
        metrics["perf/fused_old_logprobs"] = float(not separate)
        return exp, metrics


class UpdatePass:
    """One fast step: ``ppo_mini_batches`` optimizer steps over the whole rollout batch.

    Micro-batches come from :func:`sfpo_lab.training.packing.micro_batches` (fixed rows or a token
    budget, padded or packed); the stats key ``entropy`` is the mean over the pass's
    micro-batches (all ranks) of each one's masked token-mean entropy (verl
    ``actor/entropy_loss``), the H_s of ``sfpo.entropy_control.source=update``; ``ppo_kl_first``
    is the first mini-batch's ``ppo_kl`` (taken before any step of the pass). With
    ``sfpo.lr_schedule=per_step`` the LR scheduler steps after every optimizer step.
    """

    def __init__(self, module: SFPOModule) -> None:
        self.m = module
        self.loss_fn = get_policy_loss(module.run_cfg.loss.policy_loss)

    def __call__(self, exp: Experience) -> dict[str, float]:
        m, run = self.m, self.m.run_cfg
        opt = m.optimizers()
        t0 = time.perf_counter()
        totals: dict[str, float] = {}
        self._entropies: list[float] = []
        self._theta0 = self._theta0_buffers(exp) if exp.old_logprobs is None else None
        minis = list(exp.split(len(exp) // run.update.ppo_mini_batches))
        for i, mini in enumerate(minis):
            stats = self._mini_batch_step(opt, mini)
            if i == 0 and "ppo_kl" in stats:
                totals["ppo_kl_first"] = stats["ppo_kl"]
            for k, v in stats.items():
                w = 1.0 if k == "skipped_steps" else 1.0 / len(minis)
                totals[k] = totals.get(k, 0.0) + v * w
        count = _sum(m, len(self._entropies))
        totals["entropy"] = _sum(m, sum(self._entropies)) / count if count else math.nan
        if self._theta0 is not None:  # this pass ran at theta0: its log-probs are the old ones
            exp.old_logprobs, entropy = self._theta0
            mask = exp.response_mask.float()
            n_tok = _sum(m, mask.sum())
            totals["entropy_theta0"] = _sum(m, (entropy * mask).sum()) / max(n_tok, 1.0)
            self._theta0 = None
        totals["update_s"] = time.perf_counter() - t0
        return totals

    def _theta0_buffers(self, exp: Experience) -> tuple[Tensor, Tensor]:
        """``([N, R] log-probs, [N, R] entropy)`` zeros that the pass fills from its own
        detached forwards (:func:`fuse_old_logprobs`): exact only when every row's first
        forward happens at theta0, i.e. in one mini-batch before any optimizer step."""
        if self.m.run_cfg.update.ppo_mini_batches != 1:
            raise RuntimeError(
                "old log-probs from the update forward need update.ppo_mini_batches=1 (later "
                "mini-batches run after an optimizer step); compute them before the pass"
            )
        lps = torch.zeros(tuple(exp.response_mask.shape), device=exp.input_ids.device)
        return lps, torch.zeros_like(lps)

    def _mini_batch_step(self, opt: Any, mini: Experience) -> dict[str, float]:
        m, run = self.m, self.m.run_cfg
        opt.zero_grad(set_to_none=True)
        mask = mini.response_mask
        world = m.trainer.world_size
        # global denominators: summing micro-batch losses over the mini-batch and averaging
        # gradients over ranks (DDP/FSDP) gives exactly the full-batch aggregate
        denom = {
            "dp_size": world,
            "batch_num_tokens": _sum(m, mask.sum()),
            "global_batch_size": _sum(m, (mask.sum(-1) > 0).sum()),
        }
        stats: dict[str, float] = {}
        for mb in micro_batches(mini, **_micro_batching(m)):
            loss, micro_stats = self._micro_loss(mb, denom)
            m.manual_backward(loss)
            if mb.empty:
                continue  # rank padding: its loss and gradient are exactly zero
            self._entropies.append(micro_stats.pop("entropy"))
            for k, v in micro_stats.items():
                # pg_loss / kl are partial sums over global denominators: add them up
                w = 1.0 if k in ("pg_loss", "kl") else len(mb.index) / len(mini)
                stats[k] = stats.get(k, 0.0) + v * w
        # 16-mixed: the gradients hold the loss scale until the plugin unscales them inside
        # opt.step(); the clip and the logged norm account for it (runtime.clip_grad_norm)
        scaler = grad_scaler(m.trainer)
        grad_norm = clip_grad_norm(m.policy, run.optim.grad_clip, scaler)
        for k in ("pg_loss", "kl"):
            if k in stats:  # each rank holds dp_size x its share of the global mean
                stats[k] = _sum(m, stats[k]) / world
        # decide on global quantities only (grad norm and loss are reduced over ranks), so
        # every rank skips or steps together
        finite = math.isfinite(grad_norm) and math.isfinite(stats.get("pg_loss", 0.0))
        stats["grad_norm"] = grad_norm
        if finite:
            opt.step()
            if run.sfpo.lr_schedule == "per_step":
                m.lr_schedulers().step()
            m.consecutive_skips = 0
        else:
            skip_scaled_step(opt, scaler)  # a loss scaler lowers its scale, as for its own skips
            m.consecutive_skips += 1  # on the module: checkpointed with the other counters
            stats["skipped_steps"] = 1.0
            limit = run.update.max_skipped_steps
            if m.consecutive_skips >= limit:
                raise RuntimeError(
                    f"{limit} consecutive optimizer steps had a non-finite loss or gradient "
                    f"(update.max_skipped_steps={limit}); stopping before weights are corrupted"
                )
        opt.zero_grad(set_to_none=True)
        return stats

    def _micro_loss(self, mb: MicroBatch, denom: dict[str, float]) -> tuple[Tensor, dict]:
        m, run, micro = self.m, self.m.run_cfg, mb.exp
        lc, u = run.loss, run.update
        if lc.loss_scale_factor is not None:
            denom = {**denom, "loss_scale_factor": lc.loss_scale_factor}
        logprobs, entropy = micro_logprobs(
            m.policy, mb, run.rollout.temperature, u.logits_chunk_tokens, u.fused_lm_head
        )
        mask = micro.response_mask
        adv = micro.advantages[:, None].expand_as(logprobs)
        old = micro.old_logprobs
        if old is None:  # the first forward at theta0: its detached output is log pi_theta0
            old = logprobs.detach()
            if not mb.empty:
                r = old.shape[1]
                self._theta0[0][mb.index, :r] = old
                self._theta0[1][mb.index, :r] = entropy.detach()
        pg_loss, metrics = self.loss_fn(
            logprobs,
            old,
            adv,
            mask,
            **(denom | lc.policy_loss_kwargs()),  # loss_scale_factor may be in both: same value
        )
        loss = pg_loss
        out = {"pg_loss": float(pg_loss.detach())} | {k: float(v) for k, v in metrics.items()}
        out["entropy"] = float(masked_mean(entropy.detach(), mask))  # this micro-batch's H
        if lc.entropy_coeff:
            ent = agg_loss(entropy, mask, lc.agg, **denom)
            loss = loss - lc.entropy_coeff * ent
        if lc.kl_coef > 0:
            kl_mat = kl_penalty(logprobs, micro.ref_logprobs, lc.kl_kind)
            kl = agg_loss(kl_mat, mask, lc.agg, **denom)
            loss = loss + lc.kl_coef * kl
            out["kl"] = float(kl.detach())
        return loss, out
