"""What :mod:`sfpo_lab.integrations.trl` checks before it trains: the TRL / transformers it
runs on (version range and the private hooks it overrides) and the TRL settings it refuses.

Every refusal is one line that names the setting, raised before the model is loaded where
the arguments allow it.
"""

from __future__ import annotations

import os
from typing import Any

from sfpo_lab.config.algo import SFPOConfig
from sfpo_lab.integrations.trl_vllm import check_vllm_args

# the TRL releases this adapter was run against (tests/integrations, CPU); pyproject's `trl`
# extra pins the same range
TRL_MIN, TRL_BELOW = (1, 16), (1, 17)
SUPPORTED = "trl>=1.16,<1.17"
# keys TRL adds to a generation batch for vision-language models: the theta0 log-prob pass
# (``_logps``) does not forward them, so SFPO's ratios would be against a text-only policy
MULTIMODAL_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "mm_token_type_ids",
    "image_position_ids",
)
# the hooks overridden or called, by class: a TRL / transformers without one fails here, at
# import, instead of mid-training (transformers 4.57 has no Trainer._clip_grad_norm)
PROBES = {
    "GRPOTrainer": (
        "_prepare_inputs",
        "_get_per_token_logps_and_entropies",
        "compute_loss",
        "_compute_loss",
    ),
    "Trainer": (
        "_clip_grad_norm",
        "_run_epoch",
        "_save_checkpoint",
        "_load_optimizer_and_scheduler",
        "compute_loss_context_manager",
    ),
}


def _release(version: str) -> tuple[int, int]:
    """``"1.16.0.dev0"`` -> ``(1, 16)``."""
    major, minor = (version.split(".") + ["0"])[:2]
    digits = "".join(ch for ch in minor if ch.isdigit()) or "0"
    return int(major), int(digits)


def check_versions(trl_version: str, transformers_version: str, classes: dict[str, type]) -> None:
    """Raise ``ImportError`` (one line, installed and supported versions) unless TRL is in
    :data:`SUPPORTED` and every hook of :data:`PROBES` exists on ``classes``."""
    where = f"installed trl=={trl_version}, transformers=={transformers_version}"
    if not TRL_MIN <= _release(trl_version) < TRL_BELOW:
        raise ImportError(
            f'sfpo_lab.integrations.trl supports {SUPPORTED} ({where}); pip install "{SUPPORTED}"'
        )
    missing = [
        f"{name}.{attr}"
        for name, attrs in PROBES.items()
        for attr in attrs
        if not hasattr(classes[name], attr)
    ]
    if missing:
        raise ImportError(
            f"sfpo_lab.integrations.trl needs {', '.join(missing)}, absent in this install "
            f"({where}); supported: {SUPPORTED} with the transformers it requires"
        )


def check_args(args: Any, cfg: SFPOConfig) -> None:
    """Refuse TRL settings under which the SFPO mapping would be silently wrong."""
    ga, spg = args.gradient_accumulation_steps, args.steps_per_generation
    if args.num_iterations != 1:
        raise ValueError(
            f"SFPOGRPOTrainer: num_iterations={args.num_iterations}; SFPO's K (sfpo.K) replaces "
            "TRL's mu: set num_iterations=1 (the slow / plain GRPO pass)"
        )
    if spg % ga:
        raise ValueError(
            f"SFPOGRPOTrainer: steps_per_generation={spg} must be a multiple of "
            f"gradient_accumulation_steps={ga} (a fast step is a whole number of optimizer steps)"
        )
    if isinstance(cfg.K, bool) or not isinstance(cfg.K, int) or cfg.K < 1:
        raise ValueError(f"SFPOGRPOTrainer: sfpo.K={cfg.K!r}; allowed: an integer >= 1")
    if cfg.alpha > 0 and not cfg.slow_correction:
        raise ValueError(
            "SFPOGRPOTrainer: sfpo.slow_correction=False is not supported (TRL's own pass is "
            "the slow step); allowed: True"
        )
    if cfg.lr_schedule != "per_batch":
        raise ValueError(
            f"SFPOGRPOTrainer: sfpo.lr_schedule={cfg.lr_schedule!r} is not supported; allowed: "
            "per_batch (TRL steps its scheduler once per optimizer step of its own pass)"
        )
    check_vllm_args(args)
    _check_boundaries(args, spg // ga)
    refuse_sharded_engines(
        deepspeed=bool(getattr(args, "deepspeed", None)) or _env_flag("ACCELERATE_USE_DEEPSPEED"),
        fsdp=bool(getattr(args, "fsdp", None) or getattr(args, "fsdp_plugin_args", None))
        or _env_flag("ACCELERATE_USE_FSDP"),
    )


def _check_boundaries(args: Any, per_iteration: int) -> None:
    """Training may stop and save only at the end of an SFPO iteration (``per_iteration``
    optimizer steps): inside one, theta0 and the fast steps' state are lost."""
    unit = (
        f"a multiple of steps_per_generation / gradient_accumulation_steps = {per_iteration} "
        "(optimizer steps per SFPO iteration)"
    )
    if args.max_steps > 0 and args.max_steps % per_iteration:
        raise ValueError(f"SFPOGRPOTrainer: max_steps={args.max_steps} must be {unit}")
    if str(getattr(args.save_strategy, "value", args.save_strategy)) != "steps":
        return
    every = args.save_steps
    if every < 1 and args.max_steps > 0:  # a ratio of the run, as transformers resolves it
        every = int(-(-args.max_steps * every // 1))
    if every >= 1 and int(every) % per_iteration:
        raise ValueError(f"SFPOGRPOTrainer: save_steps={args.save_steps} must be {unit}")


def refuse_vision(processing_class: Any, train_dataset: Any) -> None:
    """Vision-language inputs: SFPO's theta0 log-prob pass is text only (refused until wired)."""
    from transformers import ProcessorMixin

    columns = set(getattr(train_dataset, "column_names", None) or ())
    image_cols = sorted(columns & {"image", "images"})
    if isinstance(processing_class, ProcessorMixin) or image_cols:
        what = f"train_dataset column {image_cols[0]!r}" if image_cols else "a ProcessorMixin"
        raise ValueError(
            f"SFPOGRPOTrainer: vision-language inputs ({what}) are not supported yet (the "
            "theta0 log-prob pass drops pixel_values and the like); train on text prompts"
        )


def refuse_multimodal_batch(inputs: dict[str, Any]) -> None:
    """The same refusal, for a generation batch that carries image tensors anyway."""
    found = [k for k in MULTIMODAL_KEYS if inputs.get(k) is not None]
    if found:
        raise ValueError(
            f"SFPOGRPOTrainer: the generation batch has {found[0]} (vision-language inputs "
            "are not supported yet: the theta0 log-prob pass drops them)"
        )


def _env_flag(name: str) -> bool:
    """An ``accelerate launch`` setting passed to the process (``ACCELERATE_USE_*=true``)."""
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def refuse_sharded_engines(deepspeed: bool, fsdp: bool) -> None:
    """SFPO's reposition (Eq. 7) writes the parameters in place: under DeepSpeed the optimizer's
    fp32 master copy overwrites it at the next step, and ZeRO-3 / FSDP parameters are empty
    outside a gather, so it would be lost without an error. Refused until supported."""
    if deepspeed or fsdp:
        engine = "DeepSpeed" if deepspeed else "accelerate FSDP"
        raise ValueError(
            f"SFPOGRPOTrainer: {engine} is not supported yet (SFPO's reposition writes the "
            "parameters in place, which the sharded/master-weight copies would silently undo); "
            "train on one device or with DDP (no deepspeed=/fsdp= in the args or accelerate config)"
        )
