"""Data: problem records, file/hub loaders, prompt templates, the toy task, the char tokenizer
and the rollout-batch datamodule."""

from sfpo_lab.data.records import Problem
from sfpo_lab.data.sources import load_problems, read_rows
from sfpo_lab.data.templates import TEMPLATES, render_prompt
from sfpo_lab.data.toy import ToyArithmetic, sft_target

__all__ = [
    "TEMPLATES",
    "Problem",
    "ToyArithmetic",
    "load_problems",
    "read_rows",
    "render_prompt",
    "sft_target",
]
