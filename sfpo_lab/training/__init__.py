"""The training loop: one SFPO/GRPO iteration per ``training_step``.

module (the LightningModule), stages (rollout, rewards, old log-probs, update pass),
experience + packing (the batch the update reads), iteration (the pure SFPO iteration),
reference (the frozen KL reference), runtime (RNG, grad norm, scaler)."""
