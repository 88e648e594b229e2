"""A tiny Qwen2 policy (~40k params), the toy char tokenizer and a prompt set for TRL tests
(no downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from sfpo_lab.data.tokenizer import build_char_tokenizer
from sfpo_lab.model.build import tiny_qwen2_config

PROMPTS = ["1+1=", "2+3=", "4+4=", "7-2=", "9-9=", "3+5=", "6-1=", "8+0="]


def tokenizer(tmp: Path) -> Any:
    return build_char_tokenizer(tmp / "tok")


def model(tok: Any, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = tiny_qwen2_config(
        len(tok),
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=64,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return AutoModelForCausalLM.from_config(cfg)


def dataset() -> Dataset:
    return Dataset.from_list([{"prompt": p} for p in PROMPTS])


def reward(completions: list[str], **_: Any) -> list[float]:
    """A code checksum of the completion: varied within a group, so advantages are not 0."""
    return [sum(ord(ch) for ch in c) % 7 / 7 for c in completions]


def args(out: Path, **overrides: Any) -> Any:
    from trl import GRPOConfig

    kw: dict[str, Any] = {
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 6,
        "learning_rate": 0.05,
        "optim": "sgd",
        "lr_scheduler_type": "constant",
        "max_steps": 3,
        "beta": 0.0,
        "loss_type": "dapo",  # TRL's default, spelled out: the tests write it by hand
        "num_iterations": 1,
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "seed": 0,
        "data_seed": 0,
        "dataloader_num_workers": 0,
    }
    kw.update(overrides)
    return GRPOConfig(**kw)
