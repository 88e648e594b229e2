"""The deliberate bugs of the mutation check (issue 16.1), each with the tests that must fail.

Every mutation is an exact text replacement in one file of ``sfpo_lab/``: ``old`` must occur
exactly once there (else the check reports "mutation no longer applies", a failure, never a
skip). ``tests`` are pytest node ids, the fastest tests that catch the bug; the runner runs
only those against the mutated copy and requires at least one of them to fail.
"""

from __future__ import annotations

from dataclasses import dataclass

CATCHERS = "tests/algos/test_mutation_catchers.py"
ENGINE = "tests/algos/test_sfpo_engine.py"
EQUIV = "tests/test_equivalence.py"
REF = "tests/reference/test_update_reference.py"
PASS = "tests/test_update_pass.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "policy_loss_sign",
        "sfpo_lab/algos/losses.py",
        "    loss_unclipped = -advantages * ratio\n"
        "    loss_clipped = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)\n",
        "    loss_unclipped = advantages * ratio\n"
        "    loss_clipped = advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)\n",
        ("tests/algos/test_losses.py::test_policy_loss_hand_values_and_gradient",),
        "clipped surrogate with the advantage's sign flipped (gradient descent on -J)",
    ),
    Mutation(
        "trainer_loss_sign",
        "sfpo_lab/training/stages.py",
        "        loss = pg_loss\n",
        "        loss = -pg_loss\n",
        (f"{CATCHERS}::test_update_pass_gradient_is_the_hand_assembled_grpo_gradient",),
        "the update pass back-propagates -L (the learning test also fails: reward falls)",
    ),
    Mutation(
        "advantage_not_divided_by_std",
        "sfpo_lab/algos/advantages.py",
        "(centred / denom if norm_by_std else centred)",
        "(centred if norm_by_std else centred)",
        ("tests/algos/test_grpo_advantages.py::test_grpo_hand_values",),
        "GRPO advantages centred but not divided by the group std (Eq. 2)",
    ),
    Mutation(
        "dp_size_times_2",
        "sfpo_lab/training/stages.py",
        '            "dp_size": world,\n',
        '            "dp_size": 2 * world,\n',
        (f"{CATCHERS}::test_update_pass_gradient_is_the_hand_assembled_grpo_gradient",),
        "loss (and gradient) scaled by 2 dp_size on every world size",
    ),
    Mutation(
        "dp_size_ignored",
        "sfpo_lab/training/stages.py",
        '            "dp_size": world,\n',
        '            "dp_size": 1,\n',
        (f"{EQUIV}::test_one_update_is_the_same_on_1_process_ddp_and_fsdp2[ddp]",),
        "dp_size left at 1: on 2 ranks the averaged gradient is half the full-batch one",
    ),
    Mutation(
        "token_denominator_local",
        "sfpo_lab/training/stages.py",
        '            "batch_num_tokens": _sum(m, mask.sum()),\n',
        '            "batch_num_tokens": mask.sum(),\n',
        (
            "tests/test_update_pass.py::test_fsdp2_two_processes_match_the_one_process_padded_update",
        ),
        "token-mean over this rank's tokens instead of the global count (~2x on 2 ranks)",
    ),
    Mutation(
        "alpha_not_applied",
        "sfpo_lab/algos/sfpo.py",
        "torch._foreach_lerp_(local, self._theta0, 1.0 - alpha)",
        "torch._foreach_lerp_(local, self._theta0, 0.0)",
        (f"{ENGINE}::test_unified_sgd_update_eq12",),
        "Stage II keeps theta_K instead of theta0 + alpha (theta_K - theta0) (Eq. 7)",
    ),
    Mutation(
        "slow_step_skipped",
        "sfpo_lab/algos/sfpo.py",
        "return 1 if (not self._alpha_s or self.slow_correction) else 0",
        "return 1 if not self._alpha_s else 0",
        (f"{ENGINE}::test_unified_sgd_update_eq12",),
        "Stage III (slow correction) never runs while alpha > 0 (Eq. 9)",
    ),
    Mutation(
        "old_logprobs_recomputed_each_pass",
        "sfpo_lab/training/stages.py",
        "            old,\n",
        "            logprobs.detach(),\n",
        (f"{CATCHERS}::test_update_pass_gradient_is_the_hand_assembled_grpo_gradient",),
        "the clip ratio taken against the current pass's log-probs (always 1), not theta0's",
    ),
    Mutation(
        "response_mask_shifted",
        "sfpo_lab/rollout/base.py",
        "    response_mask = (eos_before == 0).long()\n",
        "    response_mask = (eos_before == 0).long().roll(1, -1)\n",
        (
            "tests/rollout/test_rollout_base.py::test_mask_after_eos_keeps_first_eos_and_pads_the_rest",
        ),
        "the rollout's response mask shifted right by one token",
    ),
    Mutation(
        "update_mask_shifted",
        "sfpo_lab/training/stages.py",
        "        mask = micro.response_mask\n",
        "        mask = micro.response_mask.roll(1, -1)\n",
        (f"{CATCHERS}::test_update_pass_gradient_is_the_hand_assembled_grpo_gradient",),
        "the update pass's loss mask shifted right by one token",
    ),
    Mutation(
        "eos_left_out_of_mask",
        "sfpo_lab/rollout/base.py",
        "    eos_before = is_eos.cumsum(-1) - is_eos",
        "    eos_before = is_eos.cumsum(-1)",
        (
            "tests/rollout/test_rollout_base.py::test_mask_after_eos_keeps_first_eos_and_pads_the_rest",
        ),
        "the EOS token itself not trained on (mask stops before it)",
    ),
    Mutation(
        "trigger_z_wrong_sign",
        "sfpo_lab/algos/trigger.py",
        '(z if self.mode == "upper" else abs(z)) >= self.tau',
        '(-z if self.mode == "upper" else abs(z)) >= self.tau',
        ("tests/algos/test_sfpo_trigger.py::test_trigger_fires_at_predicted_iteration[upper-50]",),
        "the one-sided trigger fires on an entropy drop instead of a spike",
    ),
    Mutation(
        "theta0_after_first_fast_step",
        "sfpo_lab/algos/sfpo.py",
        "        for _ in range(n):\n            passes()\n",
        "        for _ in range(n):\n            passes()\n"
        "            if passes.updates == 1 and self._theta0 is not None:\n"
        "                self._snapshot()\n",
        (f"{ENGINE}::test_unified_sgd_update_eq12",),
        "theta0 snapshot taken after the first fast step instead of before it",
    ),
    Mutation(
        "fast_steps_after_trigger",
        "sfpo_lab/algos/sfpo.py",
        "return self.K if self._alpha_s else 0",
        "return self.K",
        ("tests/algos/test_sfpo_trigger.py::test_trigger_fires_at_predicted_iteration[upper-50]",),
        "alpha = 0 after the trigger but the K fast steps still run",
    ),
    Mutation(
        "boxed_wrong_answer_rewarded_1",
        "sfpo_lab/rewards/reward.py",
        "return 0.1 if grade.boxed else 0.0",
        "return 1.0 if grade.boxed else 0.0",
        ("tests/rewards/test_reward_schemes.py::test_authors_scheme_values",),
        "a boxed but wrong answer paid like a correct one",
    ),
    # ---- one per term of the update (issue 29): each caught by the independent reference
    Mutation(
        "entropy_bonus_sign",
        "sfpo_lab/training/stages.py",
        "            loss = loss - lc.entropy_coeff * ent\n",
        "            loss = loss + lc.entropy_coeff * ent\n",
        (f"{REF}::test_each_setting_alone_equals_the_reference[entropy_coeff-padded]",),
        "the entropy bonus added to the loss (entropy minimised instead of kept up)",
    ),
    Mutation(
        "entropy_coeff_dropped",
        "sfpo_lab/training/stages.py",
        "            loss = loss - lc.entropy_coeff * ent\n",
        "            loss = loss - ent\n",
        (f"{REF}::test_each_setting_alone_equals_the_reference[entropy_coeff-padded]",),
        "the entropy bonus without its coefficient",
    ),
    Mutation(
        "kl_term_sign",
        "sfpo_lab/training/stages.py",
        "            loss = loss + lc.kl_coef * kl\n",
        "            loss = loss - lc.kl_coef * kl\n",
        (f"{REF}::test_each_setting_alone_equals_the_reference[kl_k3-padded]",),
        "the KL-to-reference term rewarded instead of penalised",
    ),
    Mutation(
        "kl_coef_dropped",
        "sfpo_lab/training/stages.py",
        "            loss = loss + lc.kl_coef * kl\n",
        "            loss = loss + kl\n",
        (f"{REF}::test_each_setting_alone_equals_the_reference[kl_k3-padded]",),
        "the KL term without its coefficient",
    ),
    Mutation(
        "kl_straight_through_dropped",
        "sfpo_lab/algos/losses.py",
        "    return k2 - k2.detach() + value.detach()\n",
        "    return value\n",
        (f"{REF}::test_each_setting_alone_equals_the_reference[kl_k3_straight_through-padded]",),
        "'k3+' takes k3's gradient instead of k2's (straight-through lost)",
    ),
    Mutation(
        "temperature_forward_dropped",
        "sfpo_lab/algos/logits.py",
        "    return z.to(dtype) / t  # always",
        "    return z.to(dtype) * 1.0  # always",
        (f"{REF}::test_temperature_enters_every_path[1.3-padded]",),
        "log-probs and entropy of the raw logits, not logits / T (every chunked and fused path)",
    ),
    Mutation(
        "temperature_backward_dropped",
        "sfpo_lab/algos/logits.py",
        "                g.div_(t)\n",
        "                pass\n",
        (f"{REF}::test_temperature_enters_every_path[1.3-padded]",),
        "the chunked backward forgets the 1/T of d(z/T)/dz (gradient T times too large)",
    ),
    Mutation(
        "clip_low_bound_uses_clip_high",
        "sfpo_lab/algos/losses.py",
        "torch.clamp(ratio, 1 - clip_low, 1 + clip_high)",
        "torch.clamp(ratio, 1 - clip_high, 1 + clip_high)",
        (f"{REF}::test_each_setting_alone_equals_the_reference[clip_asymmetric-padded]",),
        "the lower clip bound taken from clip_high",
    ),
    Mutation(
        "clip_high_bound_sign",
        "sfpo_lab/algos/losses.py",
        "torch.clamp(ratio, 1 - clip_low, 1 + clip_high)",
        "torch.clamp(ratio, 1 - clip_low, 1 - clip_high)",
        (f"{REF}::test_each_setting_alone_equals_the_reference[baseline-padded]",),
        "the upper clip bound below 1 (sign of clip_high flipped)",
    ),
    Mutation(
        "dual_clip_sign",
        "sfpo_lab/algos/losses.py",
        "        loss_cap = -advantages * clip_c\n",
        "        loss_cap = advantages * clip_c\n",
        (f"{REF}::test_each_setting_alone_equals_the_reference[dual_clip-padded]",),
        "the dual-clip cap with the advantage's sign flipped",
    ),
    Mutation(
        "seq_mean_denominator_dropped",
        "sfpo_lab/algos/losses.py",
        "        seq_loss = seq_loss / (tokens_per_seq + 1e-8)\n",
        "        seq_loss = seq_loss / (mask.shape[-1] + 1e-8)\n",
        (f"{REF}::test_each_setting_alone_equals_the_reference[agg_seq_mean_token_mean-padded]",),
        "seq-mean-token-mean divides by the padded width, not each sequence's length",
    ),
    Mutation(
        "loss_scale_factor_ignored",
        "sfpo_lab/algos/losses.py",
        "        loss = loss / (mask.shape[-1] if loss_scale_factor is None else loss_scale_factor)\n",
        "        loss = loss / mask.shape[-1]\n",
        (f"{REF}::test_each_setting_alone_equals_the_reference[agg_token_sum_norm-padded]",),
        "Dr. GRPO's constant normaliser (loss.loss_scale_factor) ignored",
    ),
    Mutation(
        "fused_old_logprobs_refilled_after_step",
        "sfpo_lab/training/stages.py",
        "            exp.old_logprobs, entropy = self._theta0\n",
        "            _, entropy = self._theta0\n",
        (f"{PASS}::test_old_logprobs_from_the_first_pass_equal_the_separate_no_grad_pass[padded]",),
        "fused old log-probs not kept: every pass reuses its own forward's log-probs after a "
        "step (ratio 1 off theta0)",
    ),
    Mutation(
        "fused_old_logprobs_despite_dropout",
        "sfpo_lab/training/experience.py",
        "    if not model.training:\n        return False\n",
        "    if model.training:\n        return False\n",
        (f"{PASS}::test_the_fused_old_logprobs_are_used_only_where_exact",),
        "the update forward's log-probs taken as the old ones while dropout is on",
    ),
)
