"""Checks that run before any model loads: master/compute precision, prompt + response vs the
model's context, the chat template, and prompt lengths (training filter, validation refusal)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sfpo_lab.config import ConfigError, RunConfig
from sfpo_lab.data.prompts import check_val_prompts, filter_long_prompts
from sfpo_lab.data.records import Problem
from sfpo_lab.data.tokenizer import build_char_tokenizer
from sfpo_lab.model.build import tiny_qwen2_config
from sfpo_lab.model.parallel import (
    check_precision,
    compute_dtype,
    lightning_precision,
    mixed_precision_policy,
)
from sfpo_lab.run.runner import preflight, prepare_model


def make_run(tmp_path: Path, **trainer: str) -> RunConfig:
    run = RunConfig()
    run.paths.output_dir = str(tmp_path / "out")
    run.paths.cache_dir = str(tmp_path / "cache")
    for key, value in trainer.items():
        setattr(run.trainer, key, value)
    return run


@pytest.mark.parametrize(
    ("precision", "dtype", "strategy", "error"),
    [
        ("bf16-mixed", "float32", "auto", None),  # the authors' setting
        ("bf16-mixed", "float32", "fsdp", None),
        ("32-true", "float32", "ddp", None),
        ("bf16-true", "bfloat16", "auto", None),  # pure bf16, asked for by name
        ("bf16-mixed", "bfloat16", "auto", "would train bfloat16 master weights"),
        ("16-mixed", "float16", "ddp", "would train float16 master weights"),
        ("bf16-true", "float32", "auto", "name different master weights"),
        ("32-true", "bfloat16", "auto", "trainer.precision='bf16-true' to train in pure"),
        ("16-mixed", "float32", "fsdp", "gradient scaler"),
        # on CPU Lightning swaps 16-mixed for bf16-mixed with only a warning: refused by name
        ("16-mixed", "float32", "auto", "would silently run bf16-mixed"),
    ],
)
def test_master_and_compute_precision_must_agree(tmp_path, precision, dtype, strategy, error):
    run = make_run(tmp_path, precision=precision, strategy=strategy)
    run.model.dtype = dtype
    if error is None:
        check_precision(run)
        return
    with pytest.raises(ConfigError, match=error) as info:
        preflight(run)  # refused before anything exists
    assert f"trainer.precision={precision!r}" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_precision_is_decided_once():
    run = RunConfig()
    run.trainer.precision = "bf16-mixed"
    assert compute_dtype(run) == torch.bfloat16
    assert lightning_precision(run) == "bf16-mixed"  # single device / DDP: autocast
    policy = mixed_precision_policy(run)
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    run.trainer.strategy = "fsdp"
    assert lightning_precision(run) == "32-true"  # the FSDP2 policy casts; no autocast on top
    run.trainer.precision = "32-true"
    assert mixed_precision_policy(run) is None and compute_dtype(run) == torch.float32
    with pytest.raises(ConfigError, match=r"trainer\.precision='64-true'"):
        type(run.trainer)(precision="64-true")


def test_prompt_plus_response_longer_than_the_tiny_context(tmp_path):
    run = make_run(tmp_path)  # model.tiny.max_position_embeddings = 128
    run.data.max_prompt_len, run.rollout.max_new_tokens = 100, 28
    preflight(run)
    run.rollout.max_new_tokens = 29
    with pytest.raises(ConfigError) as info:
        preflight(run)
    assert (
        "data.max_prompt_len=100 + rollout.max_new_tokens=29 = 129 tokens > the model's "
        "context 128 (max_position_embeddings of model.tiny)" in str(info.value)
    )
    run.rollout.max_new_tokens, run.val.max_new_tokens = 8, 40
    with pytest.raises(ConfigError, match=r"val\.max_new_tokens=40 = 140 tokens > .* 128"):
        preflight(run)


def test_context_of_a_local_model_is_read_from_its_config(tmp_path, monkeypatch):
    model_dir = tmp_path / "m"
    tiny_qwen2_config(vocab_size=10, max_position_embeddings=64).save_pretrained(model_dir)
    run = make_run(tmp_path)
    run.model.name_or_path, run.model.tiny, run.model.warmup = str(model_dir), None, None
    run.data.max_prompt_len, run.rollout.max_new_tokens = 32, 33
    with pytest.raises(ConfigError, match=rf"= 65 tokens > the model's context 64 .*{model_dir}"):
        preflight(run)
    assert not (tmp_path / "out").exists()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # (offline, uncached: refused before)
    run.model.name_or_path = "no-such-org/not-cached-xyz"  # config unreadable: not checked
    preflight(run)


def test_chat_template_requested_without_one(tmp_path):
    run = make_run(tmp_path)
    run.model.chat_template = True
    with pytest.raises(ConfigError, match="character tokenizer has no chat template"):
        preflight(run)
    model_dir = tmp_path / "m"
    build_char_tokenizer(model_dir)
    run.model.name_or_path, run.model.tiny, run.model.warmup = str(model_dir), None, None
    with pytest.raises(ConfigError, match=r"model\.chat_template=true, but the tokenizer of"):
        prepare_model(run)


def problems(*lengths: int) -> list[Problem]:
    return [Problem(id=f"q{i}", problem="1" * (n - 1), answer="1") for i, n in enumerate(lengths)]


def test_long_training_prompts_are_dropped_and_counted(tmp_path):
    tok = build_char_tokenizer(tmp_path / "tok")
    run = make_run(tmp_path)
    run.data.template, run.data.max_prompt_len = "toy", 5  # toy: "<problem>=", one char a token
    lines = []
    kept, dropped = filter_long_prompts(run, problems(3, 6, 5, 9), tok, log=lines.append)
    assert [p.id for p in kept] == ["q0", "q2"] and dropped == 2
    assert lines == [
        "[data] dropped 2 of 4 training prompts longer than data.max_prompt_len=5 tokens "
        "after the template (longest 9 tokens)"
    ]
    with pytest.raises(
        ConfigError,
        match=r"max_prompt_len=5: every one of the 2 training prompts .*\(shortest 6 tokens",
    ):
        filter_long_prompts(run, problems(6, 9), tok)


def test_long_validation_prompts_stop_the_run_naming_them(tmp_path):
    tok = build_char_tokenizer(tmp_path / "tok")
    run = make_run(tmp_path)
    run.data.template, run.data.max_prompt_len = "toy", 5
    check_val_prompts(run, {"a": problems(5, 4)}, tok)
    with pytest.raises(ConfigError) as info:
        check_val_prompts(run, {"a": problems(5), "b": problems(4, 7, 6)}, tok)
    msg = str(info.value)
    assert "validation prompt 'q1' of benchmark 'b' is 7 tokens" in msg
    assert "(2 validation prompts are longer)" in msg and "never dropped" in msg


def test_resume_compares_the_whole_config_except_what_may_change(tmp_path):
    """Issue 25 item 5: a setting outside RESUME_MAY_CHANGE (here the toy task's operand range,
    which keeps the problem count's order of magnitude) refuses the resume in preflight; the
    allowed ones (iterations, validation cadence, micro-batch size) do not."""
    from dataclasses import asdict

    from sfpo_lab.run.preflight import check_resumable

    saved = RunConfig()
    ckpt = tmp_path / "last.ckpt"
    torch.save({"sfpo_counters": {"iteration": 2}, "sfpo_config": {"run": asdict(saved)}}, ckpt)
    ok = RunConfig()
    ok.iterations, ok.val.every, ok.update.micro_batch_size = 80, 2, 4
    check_resumable(ok, str(ckpt))
    other = RunConfig()
    other.data.toy.max_operand = 8
    with pytest.raises(ConfigError, match=r"data\.toy\.max_operand=29, this run has .*=8"):
        check_resumable(other, str(ckpt))


def test_a_checkpoint_older_than_a_setting_resumes_under_its_old_value(tmp_path):
    """A checkpoint written before data.toy.split existed (no such key in its config) resumes
    under split=text, the only split there was, and is refused under split=terms (review: every
    pre-split checkpoint was refused with "made with data.toy.split=None")."""
    from dataclasses import asdict

    from sfpo_lab.run.preflight import check_resumable

    saved = asdict(RunConfig())
    del saved["data"]["toy"]["split"]
    ckpt = tmp_path / "last.ckpt"
    torch.save({"sfpo_counters": {"iteration": 2}, "sfpo_config": {"run": saved}}, ckpt)
    check_resumable(RunConfig(), str(ckpt))
    other = RunConfig()
    other.data.toy.split = "terms"
    with pytest.raises(ConfigError, match=r"data\.toy\.split='text', this run has .*='terms'"):
        check_resumable(other, str(ckpt))


def test_optim_impl_resumes_from_an_older_checkpoint_and_is_otherwise_fixed(tmp_path):
    """A checkpoint from before optim.impl resumes under the default (auto); a different
    optim.impl is refused: the optimizer state's step counters sit where the saved kernels put
    them (review: a fused <-> foreach switch on CUDA leaves them on the wrong device)."""
    from dataclasses import asdict

    from sfpo_lab.run.preflight import check_resumable

    saved = asdict(RunConfig())
    del saved["optim"]["impl"]
    ckpt = tmp_path / "last.ckpt"
    torch.save({"sfpo_counters": {"iteration": 2}, "sfpo_config": {"run": saved}}, ckpt)
    check_resumable(RunConfig(), str(ckpt))
    other = RunConfig()
    other.optim.impl = "fused"
    with pytest.raises(ConfigError, match=r"optim\.impl='auto', this run has .*='fused'"):
        check_resumable(other, str(ckpt))
