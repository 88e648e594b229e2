"""Model builders: tiny Qwen2 config, local/hub loading rules (never the network), FSDP2 units."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

from sfpo_lab.config import ConfigError
from sfpo_lab.model.attention import PAD_SAFE_SDPA, missing_attn_package
from sfpo_lab.model.build import (
    build_causal_lm,
    count_parameters,
    decoder_layer_classes,
    is_plausible_hub_id,
    tiny_qwen2_config,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_tiny_config_defaults() -> None:
    config = tiny_qwen2_config(vocab_size=64)
    assert isinstance(config, Qwen2Config)
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads) == (128, 4, 2)
    assert config.tie_word_embeddings and config.vocab_size == 64
    assert tiny_qwen2_config(64, pad_token_id=3).pad_token_id == 3
    with pytest.raises(ValueError, match="divisible"):
        tiny_qwen2_config(64, hidden_size=100, num_heads=3)


def test_build_from_config_counts_about_a_million_params() -> None:
    model = build_causal_lm(tiny_qwen2_config(vocab_size=64))
    # per layer: q 128*128+128, k/v 2*(128*64+64), o 128*128, mlp 3*128*384, 2 norms of 128
    per_layer = 16512 + 2 * 8256 + 16384 + 147456 + 256
    expected = 4 * per_layer + 64 * 128 + 128  # layers + tied embedding + final norm
    assert count_parameters(model) == expected  # tied lm_head counted once
    assert 0.75e6 < expected < 1.2e6
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config._attn_implementation == PAD_SAFE_SDPA  # sdpa, every row attends somewhere
    model.model.embed_tokens.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == expected - 64 * 128


def test_build_dtype_and_bad_dtype() -> None:
    model = build_causal_lm(tiny_qwen2_config(16, num_layers=1), dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"dtype='fp8'.*allowed"):
        build_causal_lm(tiny_qwen2_config(16), dtype="fp8")


def test_local_directory_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_causal_lm(tiny_qwen2_config(16, num_layers=1))
    model.save_pretrained(tmp_path / "tiny")
    loaded = build_causal_lm(tmp_path / "tiny")
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_attn_implementation_passes_through_and_copies_inherit_it(tmp_path: Path) -> None:
    """model.attn_implementation reaches transformers (issue 24, item 4); a copy built from a
    model's config (HFEngine.from_config: the FSDP generation copy) attends the same way."""
    eager = build_causal_lm(tiny_qwen2_config(16, num_layers=1), attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    assert build_causal_lm(eager.config).config._attn_implementation == "eager"
    sdpa = build_causal_lm(tiny_qwen2_config(16, num_layers=1), attn_implementation="sdpa")
    assert build_causal_lm(sdpa.config).config._attn_implementation == PAD_SAFE_SDPA
    sdpa.save_pretrained(tmp_path / "m")
    for impl, want in [(None, PAD_SAFE_SDPA), ("eager", "eager"), ("sdpa", PAD_SAFE_SDPA)]:
        loaded = build_causal_lm(tmp_path / "m", attn_implementation=impl)
        assert loaded.config._attn_implementation == want


@pytest.mark.skipif(
    missing_attn_package("flash_attention_2") is None, reason="flash-attn installed"
)
def test_bad_attn_implementation_is_refused_before_loading(monkeypatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("sfpo_lab.model.build.AutoModelForCausalLM.from_config", never)
    monkeypatch.setattr("sfpo_lab.model.build.AutoModelForCausalLM.from_pretrained", never)
    with pytest.raises(ConfigError, match=r"attn_implementation='flash'.*allowed: sdpa \| eager"):
        build_causal_lm(tiny_qwen2_config(16), attn_implementation="flash")
    with pytest.raises(ConfigError, match=r"'flash_attention_2' needs the package 'flash-attn'"):
        build_causal_lm("Qwen/Qwen2.5-Math-1.5B", attn_implementation="flash_attention_2")


@pytest.mark.parametrize("path", ["./no/such/model", "/definitely/missing", "a/b/c", "~/x"])
def test_missing_local_path_names_it(path: str) -> None:
    with pytest.raises(ValueError, match="no such local directory"):
        build_causal_lm(path)


def test_uncached_hub_id_offline_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="Qwen/Qwen2.5-Math-1.5B.*not in the local"):
        build_causal_lm("Qwen/Qwen2.5-Math-1.5B", local_files_only=True, cache_dir=tmp_path)
    with pytest.raises(OSError, match="HF_HUB_OFFLINE"):  # None -> follows HF_HUB_OFFLINE=1
        build_causal_lm("Qwen/Qwen2.5-Math-1.5B", cache_dir=tmp_path)


def test_hub_id_plausibility() -> None:
    for good in ["gpt2", "Qwen/Qwen2.5-Math-1.5B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"]:
        assert is_plausible_hub_id(good)
    for bad in ["./x", "/x", "a/b/c", "a/../b", "", "x y"]:
        assert not is_plausible_hub_id(bad)


def test_decoder_layer_classes() -> None:
    model = build_causal_lm(tiny_qwen2_config(16, num_layers=2))
    assert decoder_layer_classes(model) == {Qwen2DecoderLayer}

    class Block(torch.nn.Module):
        pass

    class Bare(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList([Block(), Block()])

    assert decoder_layer_classes(Bare()) == {Block}
    with pytest.raises(ValueError, match="no decoder blocks"):
        decoder_layer_classes(torch.nn.Linear(2, 2))


def test_a_cached_hub_id_resolves_to_its_local_snapshot(tmp_path, monkeypatch):
    """Review finding: a hub id (every paper model file) reached FSDP2's streaming load and the
    base identity as a bare name; it is now the snapshot directory the hub cache holds."""
    import huggingface_hub.constants as hub

    from sfpo_lab.model.build import local_snapshot

    repo = tmp_path / "hub" / "models--org--tiny"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snap / "config.json").write_text("{}")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert local_snapshot("org/tiny") == "org/tiny"  # no safetensors: left to the loader
    (snap / "model.safetensors").write_bytes(b"x")
    assert Path(local_snapshot("org/tiny")) == snap
    assert local_snapshot("org/absent") == "org/absent"  # not cached while offline
    assert local_snapshot(str(tmp_path)) == str(tmp_path)  # a directory stays as it is
