"""Section 5 — the same GRPO work in TRL's ``GRPOTrainer`` and in our trainer, same process.

Identical: the tiny model (the cached toy base of the CPU default), the prompts (toy task,
rendered with the same template), B prompts x G samples per optimizer step, the response
budget, temperature 1, the reward (math-verify through the same ``MathVerifier``, authors'
1 / 0.1 / 0 scheme), one optimizer step per rollout batch, AdamW at the same learning rate,
HF ``generate`` for rollouts, fp32 on CPU. Time per iteration: ours = ``perf/step_s`` (the
whole ``training_step``: rollout, reward, old log-probs + entropy, update), TRL = between its
``on_step_begin`` and ``on_step_end`` callbacks (generation, reward and the update all happen
inside its ``training_step``); ours runs in a fresh process, TRL in the section's (each starts
clean); means over the iterations after the first ``WARM`` = 2 (TRL's
second iteration was still ~20 % slower than its later ones: 0.58, 0.34, 0.29, 0.25 s).

Both skip the separate old-log-prob forward: TRL with ``num_iterations=1``, ours where it is
exact (``update.fuse_old_logprobs``: the first update pass's own forward at theta0 gives the old
log-probs and the entropy H_s the SFPO trigger needs; before issue 29 ours always ran it, 16 %
of an iteration). The same objective: TRL's ``entropy_coef`` is our ``loss.entropy_coeff``
(the authors' 0.001; TRL's default 0 would spare it the backward through every response
token's entropy). Install TRL only for this benchmark: ``pip install -e .[bench]``.
"""

from __future__ import annotations

import importlib.util
import statistics
import tempfile
import time
from typing import Any

import torch

from benchmarks.common import Row, not_measured, row
from benchmarks.ours import compose, fit_fresh, split

SECTION = "peer"
METRIC = "ours / TRL GRPOTrainer time per iteration"
WARM = 2  # iterations left out of both means (one-off warm-ups)


def sizes(mode: str) -> dict[str, int]:
    if mode == "smoke":
        return {"B": 2, "G": 2, "T": 4, "iterations": 2}
    if mode == "quick":
        return {"B": 8, "G": 8, "T": 16, "iterations": 8}
    return {"B": 16, "G": 8, "T": 16, "iterations": 12}


def run(mode: str, device: torch.device) -> list[Row]:
    s = sizes(mode)
    label = f"toy base, B x G = {s['B']} x {s['G']}, {s['T']} tokens"
    if importlib.util.find_spec("trl") is None:
        return [not_measured(SECTION, METRIC, "<= 1", "trl is not installed", label)]
    common = [
        f"data.batch_size={s['B']}",
        f"rollout.n={s['G']}",
        f"rollout.max_new_tokens={s['T']}",
        f"iterations={s['iterations']}",
        "update.ppo_mini_batches=1",
        f"update.micro_batch_size={s['B'] * s['G']}",
    ]
    if device.type != "cpu":
        common.append("trainer=gpu")
    # ours in a fresh process, TRL in this one (nothing ran here before it): neither run pays
    # for the other's heap (benchmarks.ours.fit_fresh)
    ours = split(fit_fresh(["algorithm=grpo", *common]), skip_first=WARM)
    try:
        trl = trl_seconds(common, s, device)
    except Exception as err:  # a TRL/transformers incompatibility is a finding, not a crash
        return [
            not_measured(SECTION, METRIC, "<= 1", f"TRL failed: {type(err).__name__}: {err}", label)
        ]
    return [
        row(
            SECTION,
            METRIC,
            ours["step"] / trl["step"],
            "<=",
            1.0,
            config=label,
            note=f"ours {ours['step']:.2f}s vs TRL {trl['step']:.2f}s per iteration "
            f"(mean response {ours['response_length']:.1f} vs {trl['response_length']:.1f} "
            f"tokens; TRL {_version('trl')}; both skip the old-log-prob pass: "
            f"ours fused it in {ours.get('fused_old_logprobs', 0):.0%} of iterations)",
            details={"ours": ours, "trl": trl},
        ),
        row(
            SECTION,
            "ours / TRL GRPOTrainer CPU time per iteration",
            ours["cpu_step"] / trl["cpu_step"],
            "<=",
            1.0,
            config=label,
            note=f"this process's CPU seconds: ours {ours['cpu_step']:.2f}s vs TRL "
            f"{trl['cpu_step']:.2f}s (not stretched by other jobs on a loaded machine; "
            "grading runs in worker processes for both)",
            details={"ours": ours, "trl": trl},
        ),
    ]


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


def trl_seconds(common: list[str], s: dict[str, int], device: torch.device) -> dict[str, float]:
    """Run TRL's GRPOTrainer on the same model/prompts/sizes; mean seconds per step."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from sfpo_lab.data.templates import render_prompt
    from sfpo_lab.rewards.pool import MathVerifier
    from sfpo_lab.rewards.reward import compute_rewards
    from sfpo_lab.run import runner

    with tempfile.TemporaryDirectory(prefix="bench_trl_") as out:
        run = compose(["algorithm=grpo", *common], out)
        model_path, tokenizer = runner.prepare_model(run)
        problems = runner.train_problems(run)
        data = Dataset.from_list(
            [
                {"prompt": render_prompt(p.problem, run.data.template), "answer": p.answer}
                for p in problems
            ]
        )
        verifier = MathVerifier(num_workers=run.rollout.reward_workers)
        steps: list[float] = []
        cpu: list[float] = []  # this process's CPU seconds per step

        class Timer(TrainerCallback):
            def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
                self.t0, self.c0 = time.perf_counter(), time.process_time()

            def on_step_end(self, *args: Any, **kwargs: Any) -> None:
                steps.append(time.perf_counter() - self.t0)
                cpu.append(time.process_time() - self.c0)

        reward_s: list[float] = []  # wall seconds of each reward call (grading in workers)

        def reward(completions: list[str], answer: list[str], **_: Any) -> list[float]:
            t0 = time.perf_counter()
            grades = verifier.grade_many(completions, answer)
            rewards, _ = compute_rewards(grades, run.rollout.reward_scheme)
            reward_s.append(time.perf_counter() - t0)
            return rewards.tolist()

        config = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=s["B"] * s["G"],  # completions per step
            num_generations=s["G"],
            max_completion_length=s["T"],
            temperature=run.rollout.temperature,
            top_p=1.0,
            learning_rate=run.optim.lr,
            max_steps=s["iterations"],
            beta=0.0,
            entropy_coef=run.loss.entropy_coeff,  # the same objective: our entropy bonus
            num_iterations=1,
            use_cpu=device.type == "cpu",
            bf16=False,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            seed=run.seed,
        )
        trainer = GRPOTrainer(
            model=model_path,
            reward_funcs=reward,
            args=config,
            train_dataset=data,
            processing_class=tokenizer,
            callbacks=[Timer()],
        )
        try:
            trainer.train()
        finally:
            verifier.close()
        logged = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]  # fmt: skip
    kept = steps[WARM:] or steps
    lengths = logged[WARM:] or logged
    return {
        "response_length": statistics.mean(lengths) if lengths else float("nan"),
        "step": statistics.mean(kept),
        "cpu_step": statistics.mean(cpu[WARM:] or cpu),
        "reward": statistics.mean(reward_s[WARM:] or reward_s),
        "iterations": float(len(kept)),
        "all": steps,
    }
