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
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sfpo_lab.algos import (
    agg_loss,
    entropy_from_logits,
    get_advantage_estimator,
    get_policy_loss,
    kl_penalty,
    logprobs_from_logits,
)
from sfpo_lab.data.templates import render_prompt
from sfpo_lab.experience import (
    Experience,
    old_logprobs_policy,
    response_logits,
    response_logprobs,
)
from sfpo_lab.rewards.pool import MathVerifier
from sfpo_lab.rewards.reward import compute_rewards
from sfpo_lab.rollout.base import SamplingParams, concat_rollouts, derive_seed
from sfpo_lab.runtime import clip_grad_norm

if TYPE_CHECKING:
    from sfpo_lab.module import SFPOModule


def _sum(module: SFPOModule, x: float | Tensor) -> float:
    """Sum a scalar over all ranks (identity on one process)."""
    t = torch.as_tensor(x, dtype=torch.float64, device=module.device)
    return float(module.trainer.strategy.reduce(t, reduce_op="sum"))


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
        self.verifier = MathVerifier(num_workers=r.reward_workers, timeout_s=r.reward_timeout_s)
        self.advantage_fn = get_advantage_estimator(module.run_cfg.loss.advantage)

    def encode(self, problems: list[str]) -> list[list[int]]:
        run, tok = self.m.run_cfg, self.m.tokenizer
        texts = [
            render_prompt(p, run.data.template, tok, chat=run.model.chat_template) for p in problems
        ]
        ids = tok(texts, add_special_tokens=False)["input_ids"]
        return [list(x) for x in ids]

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, salt: int = 0):
        """Generate in chunks, each seeded by (seed, iteration, global chunk index), so the
        samples do not depend on the number of ranks."""
        m = self.m
        per = m.run_cfg.rollout.prompts_per_generate or len(prompt_ids)
        base_chunk = m.global_rank * (len(prompt_ids) // per)
        batches = []
        for c, start in enumerate(range(0, len(prompt_ids), per)):
            seed = derive_seed(m.run_cfg.seed, m.iteration, base_chunk + c, salt)
            batches.append(m.engine.generate(prompt_ids[start : start + per], params, seed=seed))
        return batches[0] if len(batches) == 1 else concat_rollouts(batches)

    def __call__(self, batch: dict[str, list]) -> tuple[Experience, dict[str, float]]:
        m, run = self.m, self.m.run_cfg
        t0 = time.perf_counter()
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
        mb = run.update.micro_batch_size
        exp.old_logprobs, entropy = response_logprobs(m.policy, exp, t_b, mb, with_entropy=True)
        exp.old_logprobs, lp_metrics = old_logprobs_policy(
            run.rollout.logprobs, exp.old_logprobs, ro.logprobs, exp.response_mask
        )
        if m.ref_policy is not None:
            exp.ref_logprobs, _ = response_logprobs(m.ref_policy, exp, t_b, mb)
        if hasattr(m.policy, "reshard"):
            m.policy.reshard()  # FSDP2 leaves the root unsharded after a no_grad forward
        mask = exp.response_mask.float()
        n_tok = _sum(m, mask.sum())
        lengths = mask.sum(-1)
        metrics = {
            "train/reward": _sum(m, rewards.sum()) / _sum(m, len(rewards)),
            "train/acc": _sum(m, rmetrics["acc"] * len(rewards)) / _sum(m, len(rewards)),
            **{f"train/{k}": v for k, v in rmetrics.items() if k not in ("acc", "reward_mean")},
            "train/entropy": _sum(m, (entropy * mask).sum()) / max(n_tok, 1.0),  # H_s
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
        return exp, metrics


class UpdatePass:
    """One fast step: ``ppo_mini_batches`` optimizer steps over the whole rollout batch."""

    def __init__(self, module: SFPOModule) -> None:
        self.m = module
        self.loss_fn = get_policy_loss(module.run_cfg.loss.policy_loss)

    def __call__(self, exp: Experience) -> dict[str, float]:
        m, run = self.m, self.m.run_cfg
        opt = m.optimizers()
        t0 = time.perf_counter()
        totals: dict[str, float] = {}
        minis = list(exp.split(len(exp) // run.update.ppo_mini_batches))
        for mini in minis:
            stats = self._mini_batch_step(opt, mini)
            for k, v in stats.items():
                w = 1.0 if k == "skipped_steps" else 1.0 / len(minis)
                totals[k] = totals.get(k, 0.0) + v * w
        totals["update_s"] = time.perf_counter() - t0
        return totals

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
        for micro in mini.split(run.update.micro_batch_size):
            loss, micro_stats = self._micro_loss(micro, denom)
            m.manual_backward(loss)
            for k, v in micro_stats.items():
                # pg_loss / kl are partial sums over global denominators: add them up
                w = 1.0 if k in ("pg_loss", "kl") else len(micro) / len(mini)
                stats[k] = stats.get(k, 0.0) + v * w
        grad_norm = clip_grad_norm(m.policy, run.optim.grad_clip)
        for k in ("pg_loss", "kl"):
            if k in stats:  # each rank holds dp_size x its share of the global mean
                stats[k] = _sum(m, stats[k]) / world
        # decide on global quantities only (grad norm and loss are reduced over ranks), so
        # every rank skips or steps together
        finite = math.isfinite(grad_norm) and math.isfinite(stats.get("pg_loss", 0.0))
        stats["grad_norm"] = grad_norm
        if finite:
            opt.step()
            m.consecutive_skips = 0
        else:
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

    def _micro_loss(self, micro: Experience, denom: dict[str, float]) -> tuple[Tensor, dict]:
        m, lc = self.m, self.m.run_cfg.loss
        if lc.loss_scale_factor is not None:
            denom = {**denom, "loss_scale_factor": lc.loss_scale_factor}
        logits = response_logits(m.policy, micro, m.run_cfg.rollout.temperature)
        logprobs = logprobs_from_logits(logits, micro.input_ids[:, -micro.response_len :])
        mask = micro.response_mask
        adv = micro.advantages[:, None].expand_as(logprobs)
        pg_loss, metrics = self.loss_fn(
            logprobs,
            micro.old_logprobs,
            adv,
            mask,
            clip_low=lc.clip_low,
            clip_high=lc.clip_high,
            clip_c=lc.clip_c,
            agg=lc.agg,
            **denom,
        )
        loss = pg_loss
        out = {"pg_loss": float(pg_loss.detach())} | {k: float(v) for k, v in metrics.items()}
        if lc.entropy_coeff:
            ent = agg_loss(entropy_from_logits(logits), mask, lc.agg, **denom)
            loss = loss - lc.entropy_coeff * ent
        if lc.kl_coef > 0:
            kl_mat = kl_penalty(logprobs, micro.ref_logprobs, lc.kl_kind)
            kl = agg_loss(kl_mat, mask, lc.agg, **denom)
            loss = loss + lc.kl_coef * kl
            out["kl"] = float(kl)
        return loss, out
