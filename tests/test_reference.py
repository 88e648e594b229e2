"""The frozen KL reference (issue 24 item 9): compute dtype, out of the state dict and the
checkpoints, and the base identity that makes a resume on another base fail."""

from __future__ import annotations

import shutil
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from sfpo_lab.config import RunConfig, TrainerConfig
from sfpo_lab.model.build import build_causal_lm, tiny_qwen2_config
from sfpo_lab.training.reference import (
    base_identity,
    check_same_base,
    drop_reference_keys,
    reference_copy,
)


@pytest.fixture
def base(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_qwen2_config(48, hidden_size=32, num_layers=2, intermediate_size=64)
    path = tmp_path / "base"
    build_causal_lm(cfg).save_pretrained(path)
    return path


def test_base_identity_follows_the_content_not_the_path(base, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(base, moved)
    a, b = base_identity(str(base)), base_identity(str(moved))
    assert a["path"] == str(base) and a["digest"] == b["digest"]
    weights = moved / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0xFF  # one byte of the last weight
    weights.write_bytes(bytes(raw))
    assert base_identity(str(moved))["digest"] != a["digest"]
    assert base_identity("Qwen/Qwen2.5-Math-7B") != base_identity("Qwen/Qwen2.5-7B")


def test_check_same_base_refuses_another_base_in_one_line():
    ours = {"path": "/models/a", "digest": "0123"}
    check_same_base(None, ours)  # a checkpoint from before the identity was kept
    check_same_base({"path": "/elsewhere/a", "digest": "0123"}, ours)  # moved, same weights
    with pytest.raises(ValueError) as err:
        check_same_base({"path": "/models/b", "digest": "4567"}, ours)
    msg = str(err.value)
    assert "\n" not in msg
    assert "base '/models/b' (digest 4567)" in msg and "'/models/a' (digest 0123)" in msg


def test_old_checkpoints_lose_their_reference_weights():
    ckpt = {"state_dict": {"policy.w": 1, "ref_policy.w": 2, "ref_policy.b": 3}}
    assert drop_reference_keys(ckpt) == 2 and ckpt["state_dict"] == {"policy.w": 1}
    assert drop_reference_keys({"state_dict": torch.nn.Linear(1, 1)}) == 0  # sharded: in place


def test_reference_copy_is_frozen_in_the_compute_dtype_with_fp32_rope(base):
    policy = build_causal_lm(str(base)).train()
    ref = reference_copy(policy, torch.bfloat16)
    assert {p.dtype for p in ref.parameters()} == {torch.bfloat16}
    assert {b.dtype for b in ref.buffers()} == {torch.float32}  # RoPE frequencies
    assert ref.lm_head.weight is ref.model.embed_tokens.weight  # still tied
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert {p.dtype for p in policy.parameters()} == {torch.float32}  # the policy untouched


def _module(path, precision: str):
    from sfpo_lab.training.module import SFPOModule

    run = RunConfig()
    run = replace(
        run,
        trainer=TrainerConfig(precision=precision),
        loss=replace(run.loss, kl_coef=0.01),
    )
    module = SFPOModule(run, str(path), SimpleNamespace(pad_token_id=0, eos_token_id=1))
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    module.configure_model()
    return module


@pytest.mark.parametrize(
    ("precision", "dtype"), [("32-true", torch.float32), ("bf16-mixed", torch.float32)]
)
def test_module_reference_is_in_the_policys_dtype_and_in_no_state_dict(base, precision, dtype):
    """One device / DDP: the reference has the policy's dtype (the autocast computes both
    alike); under FSDP2 its parameters are bf16 like the policy's gathered ones
    (tests/test_fsdp_init.py)."""
    module = _module(base, precision)
    assert {p.dtype for p in module.ref_policy.parameters()} == {dtype}
    assert {p.dtype for p in module.policy.parameters()} == {torch.float32}
    keys = list(module.state_dict())
    assert keys and all(k.startswith("policy.") for k in keys)
    module.train()  # Lightning's switch at fit start leaves the reference in eval mode
    assert not module.ref_policy.training


def test_module_load_drops_old_reference_keys_and_refuses_another_base(base):
    module = _module(base, "32-true")
    ckpt = {"state_dict": {"ref_policy.lm_head.weight": torch.zeros(1)}, "sfpo_counters": {}}
    ckpt["sfpo_base"] = module.base_identity()
    module.on_load_checkpoint(ckpt)
    assert ckpt["state_dict"] == {}
    ckpt["sfpo_base"] = {"path": "/models/other", "digest": "ffff"}
    with pytest.raises(ValueError, match="trained from base '/models/other'"):
        module.on_load_checkpoint(ckpt)


def test_kl_is_zero_at_theta0_under_bf16_autocast(base):
    """Review finding: a bf16 copy of an fp32-master policy under bf16-mixed differs from the
    policy at theta0 (its residual stream is bf16), so the KL term pulled towards rounding
    noise. The reference must give the policy's own log-probs there."""
    module = _module(base, "bf16-mixed")
    ids = torch.randint(1, 20, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        lp_policy = torch.log_softmax(module.policy(input_ids=ids).logits.float(), -1)
        lp_ref = torch.log_softmax(module.ref_policy(input_ids=ids).logits.float(), -1)
    assert torch.equal(lp_policy, lp_ref)
