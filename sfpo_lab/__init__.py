"""SFPO (slow-fast policy optimization) for LLM RL on Lightning + Hydra; one folder per part.

algos/          pure RL math: advantages, losses, the SFPO update engine and entropy trigger
rollout/        generation engines behind one interface (HF, vLLM)
rewards/        answer extraction and verification, toy-task rewards
data/           datamodules, prompt templates, benchmark loaders, the toy task
model/          the policy: build (HF, GGUF, tiny Qwen2), attention kernel, precision and
                FSDP sharding, the toy base model's warm-up
training/       one RL iteration per training_step: module, stages, experience, packing
checkpointing/  save, load, integrity, safe loading (python -m sfpo_lab.checkpointing)
config/         typed configs (dataclasses) and their validation
run/            runner, preflight, launcher, preemption, run dir, loggers, perf, plots
eval/           avg@k / pass@k, the validation callback (python -m sfpo_lab.eval)
integrations/   SFPO on TRL's GRPOTrainer
"""
