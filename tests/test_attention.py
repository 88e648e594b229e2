"""Attention on the GPU path (issue 24, items 1, 3 and 4), on CPU with doubles.

* Item 1: under a plain-softmax SDPA that returns NaN on an all-masked row (cuDNN's behaviour,
  ``tests/doubles/attention.py``), left-padded batches give finite log-probs, entropies,
  gradients, generations and eval numbers, equal to torch's SDPA on the real tokens.
* Item 3: ``configure_sdpa_backends`` sets torch's CUDA SDPA flags (cuDNN off by default).
* Item 4: what the attention kernel receives on a packed forward: a dense ``[1, 1, T, T]`` mask
  under sdpa; ``cu_seqlens`` and no mask under transformers' own flash_attention_2 path (its
  flash-attn functions replaced by a spy that computes the same attention in plain torch).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers.modeling_flash_attention_utils as fa_utils
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import Tensor
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from sfpo_lab.config import ConfigError, ModelConfig, RunConfig, register_schema, to_run_config
from sfpo_lab.data.records import Problem
from sfpo_lab.data.tokenizer import build_char_tokenizer
from sfpo_lab.eval.evaluate import evaluate
from sfpo_lab.model.attention import (
    ATTN_IMPLEMENTATIONS,
    DEFAULT_SDPA_BACKENDS,
    PAD_SAFE_SDPA,
    attend_somewhere,
    configure_sdpa_backends,
    missing_attn_package,
    sdpa_backend_flags,
)
from sfpo_lab.model.build import build_causal_lm, tiny_qwen2_config
from sfpo_lab.rollout.base import SamplingParams
from sfpo_lab.rollout.hf import HFEngine
from sfpo_lab.run.preflight import preflight
from sfpo_lab.training.experience import micro_logprobs
from sfpo_lab.training.packing import MicroBatch, micro_batches, pack
from tests.doubles.attention import patch_sdpa, plain_softmax_sdpa
from tests.test_packing import VOCAB, make_experience

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [[5, 6, 7, 8, 9, 10], [3, 4], [11]]  # left-padded to 6: pad query rows in prefill


def _config(vocab: int = VOCAB):
    return tiny_qwen2_config(vocab, hidden_size=32, num_layers=2, intermediate_size=64)


@pytest.fixture(scope="module")
def models() -> tuple[PreTrainedModel, PreTrainedModel]:
    """(the kit's model, transformers' plain sdpa with the same weights)."""
    torch.manual_seed(0)
    fixed = build_causal_lm(_config()).eval()
    plain = AutoModelForCausalLM.from_config(_config(), attn_implementation="sdpa").eval()
    plain.load_state_dict(fixed.state_dict())
    return fixed, plain


@pytest.fixture(scope="module")
def padded() -> MicroBatch:
    """Three left-padded rows (prompts of 2, 5, 3 tokens in a width of 5), one micro-batch."""
    (mb,) = micro_batches(make_experience([2, 5, 3], [4, 6, 1]), micro_batch_size=8)
    return mb


def _real(mb: MicroBatch, values: Tensor) -> Tensor:
    return values[mb.exp.response_mask.bool()]


# ------------------------------------------------------------------ the double
def test_double_returns_nan_on_an_all_masked_row() -> None:
    """The double stands for cuDNN: NaN on an all-False row, and that NaN reaches a query that
    gives the row weight 0; torch's CPU SDPA returns 0 there (why CPU tests never saw NaN)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 8, generator=g) for _ in range(3))
    mask = torch.ones(4, 4, dtype=torch.bool).tril()
    mask[0] = False  # a left-pad query: attends to nothing
    out = plain_softmax_sdpa(q, k, v, attn_mask=mask)
    assert out[:, :, 0].isnan().all() and out[:, :, 1:].isfinite().all()
    torch.testing.assert_close(
        out[:, :, 1:], F.scaled_dot_product_attention(q, k, v, mask)[:, :, 1:]
    )
    assert F.scaled_dot_product_attention(q, k, v, mask)[:, :, 0].eq(0).all()
    v_nan = v.clone()
    v_nan[:, :, 0] = float("nan")  # the pad row's output, one layer later
    keys_1_to_3 = mask.clone()
    keys_1_to_3[:, 0] = False  # every query gives key 0 weight exactly 0 ...
    keys_1_to_3[0, 0] = True
    assert plain_softmax_sdpa(q, k, v_nan, attn_mask=keys_1_to_3)[:, :, 1:].isnan().all()  # ... NaN
    causal = plain_softmax_sdpa(q, k, v, is_causal=True)
    torch.testing.assert_close(causal, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_attend_somewhere_fills_only_all_false_rows() -> None:
    mask = torch.tensor([[False, False, False], [True, False, False], [False, True, True]])
    out = attend_somewhere(mask[None, None])[0, 0]
    assert out.tolist() == [[True, True, True], [True, False, False], [False, True, True]]


# ------------------------------------------------------------------ item 1: padded forwards
def test_kit_models_load_the_pad_safe_sdpa(models) -> None:
    fixed, _ = models
    assert fixed.config._attn_implementation == PAD_SAFE_SDPA
    copy = HFEngine.from_config(fixed.config, 0, 1).model  # the FSDP generation copy
    assert copy.config._attn_implementation == PAD_SAFE_SDPA


def test_pad_safe_sdpa_leaves_real_tokens_bit_identical(models, padded) -> None:
    """No double: the fix changes only pad query rows, so real tokens' numbers are unchanged."""
    fixed, plain = models
    with torch.no_grad():
        lp, ent = micro_logprobs(fixed, padded)
        lp0, ent0 = micro_logprobs(plain, padded)
    assert torch.equal(_real(padded, lp), _real(padded, lp0))
    assert torch.equal(_real(padded, ent), _real(padded, ent0))


def test_plain_sdpa_gives_nan_logprobs_under_the_double(models, padded, monkeypatch) -> None:
    """What e086ca0 computed on a cuDNN GPU: NaN on the real tokens of left-padded rows."""
    _, plain = models
    patch_sdpa(monkeypatch)
    with torch.no_grad():
        lp, ent = micro_logprobs(plain, padded)
    assert _real(padded, lp).isnan().any() and _real(padded, ent).isnan().any()


def test_padded_update_is_finite_under_the_double(models, padded, monkeypatch) -> None:
    """remove_padding=false: log-probs, entropies and gradients finite and equal (to float
    rounding of the two kernels) to torch's SDPA on the real tokens. Fails on e086ca0 (NaN)."""
    fixed, _ = models
    mask = padded.exp.response_mask.float()

    def forward_backward() -> tuple[Tensor, Tensor, list[Tensor]]:
        fixed.zero_grad(set_to_none=True)
        lp, ent = micro_logprobs(fixed, padded)
        ((lp + 0.1 * ent) * mask).sum().backward()
        grads = [p.grad.clone() for p in fixed.parameters() if p.grad is not None]
        return lp.detach(), ent.detach(), grads

    lp0, ent0, grads0 = forward_backward()
    patch_sdpa(monkeypatch)
    lp, ent, grads = forward_backward()
    fixed.zero_grad(set_to_none=True)
    assert lp.isfinite().all() and ent.isfinite().all()
    assert all(g.isfinite().all() for g in grads)
    torch.testing.assert_close(_real(padded, lp), _real(padded, lp0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_real(padded, ent), _real(padded, ent0), atol=1e-5, rtol=1e-5)
    for g, g0 in zip(grads, grads0, strict=True):
        torch.testing.assert_close(g, g0, atol=1e-5, rtol=1e-4)


def test_packed_forward_is_unchanged(models, padded, monkeypatch) -> None:
    """remove_padding=true (position ids only, a block-diagonal mask): equal to the padded
    forward, with torch's SDPA and under the double."""
    fixed, _ = models
    packed = MicroBatch(padded.exp, padded.index, packed=True)
    with torch.no_grad():
        lp0, _ = micro_logprobs(fixed, padded)
        lp_packed, _ = micro_logprobs(fixed, packed)
        patch_sdpa(monkeypatch)
        lp_double, _ = micro_logprobs(fixed, packed)
    torch.testing.assert_close(_real(padded, lp_packed), _real(padded, lp0), atol=1e-5, rtol=0)
    torch.testing.assert_close(_real(padded, lp_double), _real(padded, lp0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("greedy", [True, False])
def test_hf_generation_is_unchanged_under_the_double(models, monkeypatch, greedy) -> None:
    """Left-padded prefill + KV-cache decode (HFEngine): the same tokens and log-probs as with
    torch's SDPA. On e086ca0 the prefill's NaN reaches the logits of the shorter prompts."""
    fixed, _ = models
    params = SamplingParams(n=2, max_new_tokens=6, greedy=greedy, return_logprobs=True)
    engine = HFEngine(fixed, pad_token_id=0, eos_token_id=1)
    want = engine.generate(PROMPTS, params, seed=3)
    patch_sdpa(monkeypatch)
    got = engine.generate(PROMPTS, params, seed=3)
    assert got.logprobs.isfinite().all()
    assert torch.equal(got.input_ids, want.input_ids)
    real = got.response_mask.bool()
    torch.testing.assert_close(got.logprobs[real], want.logprobs[real], atol=1e-4, rtol=0)


class _ParityVerifier:
    """Grades by the parity of the response's character codes (mixes 0 and 1 untrained)."""

    def grade_many(self, completions: list[str], golds: list[str]) -> list:
        from sfpo_lab.rewards.verify import Grade

        return [
            Grade(correct=sum(map(ord, c)) % 2 == 0, boxed=True, pred=c[:1]) for c in completions
        ]


def test_eval_number_is_unchanged_under_the_double(tmp_path: Path, monkeypatch) -> None:
    """``sfpo_lab.eval.evaluate`` (what ``python -m sfpo_lab.eval`` and validation run) on
    prompts of different lengths: the same samples and summary as with torch's SDPA."""
    tok = build_char_tokenizer(tmp_path / "tok")
    torch.manual_seed(1)
    model = build_causal_lm(_config(len(tok))).eval()
    problems = [Problem(f"p{i}", q, "3", "t") for i, q in enumerate(["1+2", "10+20+300", "7"])]
    params = SamplingParams(n=2, max_new_tokens=5)

    def run() -> tuple[dict, list[dict]]:
        return evaluate(
            model, tok, {"toy": problems}, params, template="toy", seed=0,
            batch_prompts=3, verifier=_ParityVerifier(), n_boot=10,
        )  # fmt: skip

    summary0, records0 = run()
    patch_sdpa(monkeypatch)
    summary, records = run()
    assert [r["samples"] for r in records] == [r["samples"] for r in records0]
    assert summary == summary0 and summary["avg"] == summary["avg"]  # a number, not NaN


# ------------------------------------------------------------------ item 3: SDPA backends
@pytest.fixture
def restore_sdpa_flags() -> Iterator[None]:
    saved = sdpa_backend_flags()
    yield
    configure_sdpa_backends([name for name, on in saved.items() if on], "cuda")


def test_configure_sdpa_backends_sets_the_cuda_flags(restore_sdpa_flags) -> None:
    """The enable_*_sdp flags are settable on a CPU build; the default turns cuDNN off."""
    flags = configure_sdpa_backends(None, "cuda")
    assert (
        flags
        == sdpa_backend_flags()
        == {"flash": True, "efficient": True, "math": True, "cudnn": False}
    )
    assert set(DEFAULT_SDPA_BACKENDS) == {"flash", "efficient", "math"}
    assert configure_sdpa_backends(["math", "cudnn"], torch.device("cuda", 0)) == {
        "flash": False, "efficient": False, "math": True, "cudnn": True,
    }  # fmt: skip
    assert sdpa_backend_flags()["cudnn"] and not sdpa_backend_flags()["flash"]


def test_configure_sdpa_backends_leaves_other_devices_alone(restore_sdpa_flags) -> None:
    before = sdpa_backend_flags()
    assert configure_sdpa_backends(["math"], "cpu") is None
    assert sdpa_backend_flags() == before
    with pytest.raises(ValueError, match=r"model.sdpa_backends=\['fast'\].*allowed"):
        configure_sdpa_backends(["fast"], "cuda")


# ------------------------------------------------------------------ item 4: what kernels receive
def _sdpa_spy(calls: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        calls.append({"q": tuple(q.shape), "mask": attn_mask, **kwargs})
        return real(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)


def _flash_spy(calls: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    """flash-attn's functions as transformers 5.19 loads them (``lazy_import_flash_attention``),
    replaced by a varlen spy with flash_attn's signature that runs causal attention per
    ``cu_seqlens`` segment in plain torch (so the forward's numbers stay checkable)."""

    def varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
               softmax_scale=None, causal=False, window_size=(-1, -1), deterministic=False):  # fmt: skip
        calls.append({"q": tuple(q.shape), "cu_seqlens_q": cu_seqlens_q.tolist(),
                      "cu_seqlens_k": cu_seqlens_k.tolist(), "max_seqlen_q": int(max_seqlen_q),
                      "causal": causal})  # fmt: skip
        out = torch.empty_like(q)  # q: [T, H, D], k/v: [T, Hkv, D]
        bounds = cu_seqlens_q.tolist()
        for s, e in zip(bounds[:-1], bounds[1:], strict=True):
            qs, ks, vs = (x[s:e].transpose(0, 1)[None] for x in (q, k, v))
            out[s:e] = F.scaled_dot_product_attention(
                qs, ks, vs, is_causal=causal, scale=softmax_scale, enable_gqa=True
            )[0].transpose(0, 1)
        return out

    def refuse(*args, **kwargs):
        raise AssertionError("a packed forward must take the varlen path")

    fns = (refuse, varlen, None, fa_utils._pad_input, fa_utils._unpad_input)
    process = fa_utils._lazy_define_process_function(varlen)
    monkeypatch.setattr(
        fa_utils, "lazy_import_flash_attention", lambda *a, **k: (fns, (process, dict))
    )


def test_packed_forward_kernel_inputs_sdpa_vs_flash_attention_2(
    models, padded, monkeypatch
) -> None:
    """sdpa: every layer's kernel gets a dense [1, 1, T, T] bool mask (T^2 bytes per forward,
    256 MiB at the paper's T = 16,384, and SDPA's flash kernel cannot take a mask).
    flash_attention_2: cu_seqlens at the packed rows' boundaries, no mask, same log-probs."""
    fixed, _ = models
    packed = MicroBatch(padded.exp, padded.index, packed=True)
    pk = pack(padded.exp)
    t = pk.input_ids.shape[1]
    lengths = padded.exp.attention_mask.sum(-1).tolist()
    sdpa_calls: list[dict] = []
    with torch.no_grad(), monkeypatch.context() as m:
        _sdpa_spy(sdpa_calls, m)
        lp_sdpa, _ = micro_logprobs(fixed, packed)
    assert len(sdpa_calls) == fixed.config.num_hidden_layers
    for call in sdpa_calls:
        assert call["mask"].shape == (1, 1, t, t) and call["mask"].dtype == torch.bool
    first = sdpa_calls[0]["mask"][0, 0]
    assert first[lengths[0], lengths[0] - 1].item() is False  # block-diagonal: no cross-row keys

    flash = AutoModelForCausalLM.from_config(_config(), attn_implementation="eager").eval()
    flash.load_state_dict(fixed.state_dict())
    flash.config._attn_implementation = "flash_attention_2"  # skips transformers' CUDA check
    flash_calls: list[dict] = []
    _flash_spy(flash_calls, monkeypatch)
    with torch.no_grad():
        lp_flash, _ = micro_logprobs(flash, packed)
    offsets = torch.tensor([0, *lengths]).cumsum(0).tolist()
    assert len(flash_calls) == fixed.config.num_hidden_layers
    for call in flash_calls:
        assert call["q"][0] == t and call["causal"]  # [T, H, D]: no batch dim, no mask
        assert call["cu_seqlens_q"] == call["cu_seqlens_k"] == offsets
        assert call["max_seqlen_q"] == max(lengths)
    torch.testing.assert_close(_real(padded, lp_flash), _real(padded, lp_sdpa), atol=1e-5, rtol=0)


# ------------------------------------------------------------------ items 3, 4: settings, preflight
def test_settings_are_validated_naming_the_setting() -> None:
    ModelConfig(attn_implementation="flash_attention_2", sdpa_backends=["math", "efficient"])
    for bad, key in [
        ({"attn_implementation": "flash"}, r"model.attn_implementation='flash'.*sdpa \| eager"),
        ({"sdpa_backends": []}, r"model.sdpa_backends=\[\].*flash \| efficient \| math \| cudnn"),
        ({"sdpa_backends": ["math", "math"]}, r"model.sdpa_backends=\['math', 'math'\]"),
        ({"sdpa_backends": ["cuda"]}, r"model.sdpa_backends=\['cuda'\]"),
    ]:
        with pytest.raises(ConfigError, match=key):
            ModelConfig(**bad)
    assert set(ATTN_IMPLEMENTATIONS) - {"eager"} <= set(ALL_ATTENTION_FUNCTIONS.valid_keys())


def test_sdpa_backends_compose_from_the_command_line() -> None:
    register_schema()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train", overrides=["model.sdpa_backends=[math,efficient]", "paths.output_dir=/tmp/x"]
        )
    assert to_run_config(cfg).model.sdpa_backends == ["math", "efficient"]


def _gpu_run(tmp_path: Path, impl: str) -> RunConfig:
    run = RunConfig()
    run.paths.output_dir, run.paths.cache_dir = str(tmp_path / "out"), str(tmp_path / "cache")
    run.trainer.accelerator, run.trainer.precision = "gpu", "bf16-mixed"
    run.model.attn_implementation = impl
    return run


@pytest.mark.skipif(
    missing_attn_package("flash_attention_2") is None, reason="flash-attn installed"
)
def test_preflight_refuses_flash_attention_without_its_package(tmp_path: Path) -> None:
    """Named: the setting, the value and the package; refused before any model exists."""
    for impl, dist in [("flash_attention_2", "flash-attn"), ("flash_attention_3", "flash-attn-3")]:
        with pytest.raises(
            ConfigError, match=rf"model.attn_implementation='{impl}' needs .*'{dist}'"
        ):
            preflight(_gpu_run(tmp_path, impl))
    assert not (tmp_path / "out").exists()


def test_preflight_refuses_flash_attention_on_cpu_or_in_fp32(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("sfpo_lab.model.attention.missing_attn_package", lambda impl: None)
    run = _gpu_run(tmp_path, "flash_attention_2")
    run.trainer.accelerator = "cpu"
    with pytest.raises(ConfigError, match="CUDA GPUs only, but trainer.accelerator='cpu'"):
        preflight(run)
    run.trainer.accelerator, run.trainer.precision = "gpu", "32-true"
    with pytest.raises(ConfigError, match="bf16/fp16 only, but trainer.precision='32-true'"):
        preflight(run)
