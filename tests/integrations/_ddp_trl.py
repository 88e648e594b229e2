"""One rank of the 2-process DDP run of ``test_trl_ddp.py`` (``torch.distributed.run``, gloo on
CPU): SFPO on TRL with gradient_accumulation_steps = 2; saves this rank's final weights, every
generation batch it trained on (slices with the old log-probs at theta0) and the rollout H_s
the trigger saw, to ``OUT/rank{r}.pt``.

    python -m torch.distributed.run --standalone --nproc_per_node=2 _ddp_trl.py OUT
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _tiny_trl as T  # noqa: E402

from sfpo_lab.integrations.trl import SFPOGRPOTrainer  # noqa: E402

# one optimizer step per SFPO iteration, 2 micro-steps each: TRL's first micro-step (where the
# fast passes run) is inside transformers' no_sync window
OVERRIDES = {
    "gradient_accumulation_steps": 2,
    "steps_per_generation": 2,
    "per_device_train_batch_size": 2,
    "max_steps": 2,
}
SFPO_CFG = {"K": 2, "alpha": 0.6, "entropy_control": {"source": "rollout", "window": 10}}


class Recording(SFPOGRPOTrainer):
    """Keeps each generation batch after Stage I-II and the H_s of ``source=rollout``."""

    def _start_iteration(self) -> None:
        super()._start_iteration()
        self.batches = [*getattr(self, "batches", []), [dict(b) for b in self._buffered_inputs]]
        h_s = self._sfpo_stats["rollout_entropy"]
        self.rollout_entropy = [*getattr(self, "rollout_entropy", []), h_s]


def main(out: Path) -> None:
    rank = int(os.environ["RANK"])
    tok = T.tokenizer(out / f"tok{rank}")
    trainer = Recording(
        model=T.model(tok),
        reward_funcs=T.reward,
        args=T.args(out / "run", **OVERRIDES),
        train_dataset=T.dataset(),
        processing_class=tok,
        sfpo=SFPO_CFG,
    )
    trainer.train()
    saved = {
        "weights": [p.detach().cpu() for p in trainer.model.parameters()],
        "batches": trainer.batches,
        "rollout_entropy": trainer.rollout_entropy,
        "world": trainer.accelerator.num_processes,
        "fast_steps": trainer.sfpo.state_dict()["s"],
    }
    torch.save(saved, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
