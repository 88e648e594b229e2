"""SFPO on TRL's GRPOTrainer: a plain TRL GRPO script with one line changed.

Runs on CPU in seconds with a tiny random Qwen2 and the kit's character tokenizer (nothing
is downloaded); pass ``--model PATH`` for a real local model. Needs the ``trl`` extra::

    python examples/trl_sfpo.py --steps 4
    python examples/trl_sfpo.py --model /path/to/Qwen2.5-0.5B --steps 50 --alpha 0.8
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig

# the one changed line (was: from trl import GRPOTrainer)
from sfpo_lab.integrations.trl import SFPOGRPOTrainer as GRPOTrainer

PROBLEMS = [
    ("What is 2+3?", "5"),
    ("What is 7-4?", "3"),
    ("What is 3*3?", "9"),
    ("What is 8/2?", "4"),
]


def correct(completions: list[str], answer: list[str], **_: object) -> list[float]:
    """1 if the completion contains the gold answer, else 0."""
    return [float(gold in text) for text, gold in zip(completions, answer, strict=True)]


def tiny_model(out: Path):
    from sfpo_lab.data.tokenizer import build_char_tokenizer
    from sfpo_lab.model.build import tiny_qwen2_config

    tok = build_char_tokenizer(out / "tokenizer")
    cfg = tiny_qwen2_config(
        len(tok), hidden_size=64, num_layers=2, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(cfg), tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="local model dir (default: a tiny random Qwen2)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--K", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=0.8)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="trl_sfpo_"))
    if a.model:
        model, tok = a.model, AutoTokenizer.from_pretrained(a.model)
    else:
        model, tok = tiny_model(out)
    data = Dataset.from_list([{"prompt": q, "answer": ans} for q, ans in PROBLEMS])
    args = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=16,
        learning_rate=1e-4,
        max_steps=a.steps,
        num_iterations=1,  # SFPO's K replaces TRL's mu
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=correct,
        args=args,
        train_dataset=data,
        processing_class=tok,
        sfpo={"K": a.K, "alpha": a.alpha},  # optional: the authors' settings by default
    )
    trainer.train()
    for row in trainer.state.log_history:
        if "sfpo/alpha" in row:
            print({k: row[k] for k in ("step", "reward", "sfpo/alpha", "sfpo/z") if k in row})


if __name__ == "__main__":
    main()
