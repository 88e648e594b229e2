"""SFPO with TRL's ``use_vllm=True, vllm_mode="colocate"`` on vllm-cpu: each push TRL makes to
vLLM carries the post-slow-step weights of the iteration before, and vLLM's greedy output
from them is HF's."""

from __future__ import annotations

import copy
import gc
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from sfpo_lab.model.build import tiny_qwen2_config
from tests.integrations import _tiny_trl as T

NEW_TOKENS = 6


def _save_model(tok: Any, out: Path) -> Path:
    """A tiny Qwen2 with head_dim 32 (vLLM's CPU attention) and a wide init (varied greedy
    continuations), saved with its tokenizer: vLLM loads a directory."""
    torch.manual_seed(0)
    cfg = tiny_qwen2_config(
        len(tok),
        hidden_size=64,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.2,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@torch.no_grad()
def _greedy_gaps(trainer: Any, prompts: list[list[int]]) -> tuple[list[list[int]], list[float]]:
    """vLLM's greedy continuations (TRL's engine) against HF's greedy decoding (a copy of the
    trainer's model in the engine's dtype, argmax token by token): per prompt, 0.0 where the
    outputs are equal, else at the first token where they part HF's logit gap between its own
    argmax and vLLM's token (a bf16 near-tie when tiny)."""
    from vllm import SamplingParams

    llm = trainer.vllm_generation.llm
    outs = llm.generate(
        [{"prompt_token_ids": p} for p in prompts],
        SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS),
        use_tqdm=False,
    )
    hf = copy.deepcopy(trainer.model).to(llm.llm_engine.model_config.dtype).eval()
    seqs = [list(o.outputs[0].token_ids) for o in outs]
    gaps = []
    for p, seq in zip(prompts, seqs, strict=True):
        gap, ids = 0.0, []
        for tok in seq:
            logits = hf(torch.tensor([p + ids])).logits[0, -1].float()
            if int(logits.argmax()) != tok:
                gap = float(logits.max() - logits[tok])
                break
            ids.append(tok)
        gaps.append(gap)
    return seqs, gaps


class _Record(TrainerCallback):
    """After ``SFPOGRPOTrainer``'s own callback has ended the iteration: the post-slow-step
    weights."""

    def __init__(self, trainer: Any, post_slow: list) -> None:
        self.trainer, self.post_slow = trainer, post_slow

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        assert not self.trainer._in_iteration
        self.post_slow.append(_params(self.trainer.model))


@pytest.fixture
def vllm_env(monkeypatch: pytest.MonkeyPatch) -> Any:
    pytest.importorskip("vllm")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default takes most RAM
    import trl.generation.vllm_generation as trl_vllm_generation

    # CI time only: TRL's LLM() without torch.compile (the same weights, the same push)
    llm = trl_vllm_generation.LLM
    monkeypatch.setattr(
        trl_vllm_generation, "LLM", lambda *a, **kw: llm(*a, **kw, enforce_eager=True)
    )
    from vllm.distributed import parallel_state

    # TRL's engine joins vLLM's process-wide 1-rank world; it is torn down after the test only
    # if this test made it (a session engine of tests/rollout may share it)
    made_here = not parallel_state.model_parallel_is_initialized()
    yield
    gc.collect()
    if made_here:
        parallel_state.cleanup_dist_env_and_memory()


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_generates_from_the_post_slow_step_weights(tmp_path: Path, vllm_env: Any) -> None:
    from sfpo_lab.integrations.trl import SFPOGRPOTrainer
    from sfpo_lab.integrations.trl_vllm import vllm_weight_mismatch

    tok = T.tokenizer(tmp_path)
    args = T.args(
        tmp_path / "out",
        max_steps=3,  # 3 iterations (1 optimizer step each): pushes 2 and 3 are checked
        learning_rate=0.1,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_max_model_length=64,
    )
    trainer = SFPOGRPOTrainer(
        model=str(_save_model(tok, tmp_path / "model")),
        reward_funcs=T.reward,
        args=args,
        train_dataset=T.dataset(),
        processing_class=tok,
        sfpo={"K": 2, "alpha": 0.8, "entropy_control": {"enabled": False}},
        log_kl_theta0=True,  # the pass after the reposition: theta~ is recorded there
    )
    post_slow: list[dict[str, torch.Tensor]] = []
    repositioned: list[dict[str, torch.Tensor]] = []
    trainer.add_callback(_Record(trainer, post_slow))
    kl, push = trainer._reposition_kl, trainer.vllm_generation.sync_weights
    prompts = [tok(p)["input_ids"] for p in T.PROMPTS]
    pushes: list[dict[str, Any]] = []

    def after_reposition(recompute: bool) -> float:  # theta~, before the slow step
        repositioned.append(_params(trainer.model))
        return kl(recompute)

    def checked_push() -> None:
        push()
        vllm_greedy, gaps = _greedy_gaps(trainer, prompts)
        pushes.append(
            {
                "vllm_vs_model": max(vllm_weight_mismatch(trainer).values()),
                "vllm_vs_repositioned": max(
                    vllm_weight_mismatch(trainer, repositioned[-1]).values()
                )
                if repositioned
                else None,
                "model_vs_post_slow": _max_diff(_params(trainer.model), post_slow[-1])
                if post_slow
                else None,
                "greedy_gaps": gaps,
                "vllm_greedy": vllm_greedy,
            }
        )

    trainer._reposition_kl = after_reposition
    trainer.vllm_generation.sync_weights = checked_push
    trainer.train()

    assert len(pushes) == 3 and len(post_slow) == 3 and len(repositioned) == 3, pushes
    for p in pushes:  # every push: vLLM holds exactly the trainer's weights; greedy is HF's
        assert p["vllm_vs_model"] == 0.0, pushes
        assert max(p["greedy_gaps"]) < 0.1, pushes  # (but for bf16 near-ties)
        assert sum(g == 0.0 for g in p["greedy_gaps"]) >= len(prompts) - 1, pushes
    for p in pushes[1:]:  # iterations 2, 3: those are the previous iteration's post-slow weights
        assert p["model_vs_post_slow"] == 0.0, pushes
        assert p["vllm_vs_repositioned"] > 1e-3, pushes  # not theta~: the slow step moved it
    assert pushes[0]["vllm_greedy"] != pushes[2]["vllm_greedy"]  # the pushes changed generation


def test_vllm_server_mode_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    from sfpo_lab.integrations.trl import SFPOGRPOTrainer

    args = T.args(tmp_path / "out", use_vllm=True, vllm_mode="server")
    with pytest.raises(ValueError, match=r"vllm_mode='server' is not supported.*colocate"):
        SFPOGRPOTrainer(
            model=str(tmp_path / "no-model-here"),
            reward_funcs=T.reward,
            args=args,
            train_dataset=T.dataset(),
        )
