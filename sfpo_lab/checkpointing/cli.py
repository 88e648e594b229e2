"""``python -m sfpo_lab.checkpointing``: convert, export, check and consolidate checkpoints.

    python -m sfpo_lab.checkpointing check  CKPT            # digest + safe to read? one line
    python -m sfpo_lab.checkpointing convert OLD NEW        # an old-format file -> a safe one
    python -m sfpo_lab.checkpointing export CKPT OUT_DIR [MODEL]   # policy -> HF safetensors dir
    python -m sfpo_lab.checkpointing SHARDED_DIR FILE       # consolidate (also: consolidate ...)

``convert`` unpickles OLD fully (it runs any code OLD names: only for a file you trust, e.g.
one you wrote before checkpoints became plain data) and writes NEW with plain types only (NumPy
arrays become tensors, NumPy scalars numbers), then checks that NEW reads with
``weights_only=True``. ``export`` writes the policy as a Hugging Face model directory
(``model.safetensors``, ``config.json``, the tokenizer): no pickle at all, loadable with
``from_pretrained`` and by ``python -m sfpo_lab.eval model=OUT_DIR``. MODEL is the base the run
trained from when the checkpoint's run config does not say (an old checkpoint).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

USAGE = (
    "usage: python -m sfpo_lab.checkpointing {check CKPT | convert OLD NEW | "
    "export CKPT OUT_DIR [MODEL] | [consolidate] SHARDED_DIR FILE}"
)


def plain(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` with only types ``torch.load(weights_only=True)`` reads: NumPy arrays as tensors
    (unsigned ones widened to int64), NumPy scalars as Python numbers, paths as strings.

    Raises:
        TypeError: naming the first value of another type and where it is.
    """
    import numpy as np
    import torch

    if obj is None or isinstance(obj, bool | int | float | str | bytes | torch.Tensor):
        return obj
    if isinstance(obj, np.ndarray):
        wide = obj.astype(np.int64) if obj.dtype.kind == "u" else obj
        return torch.from_numpy(np.ascontiguousarray(wide))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        out = {k: plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
        return OrderedDict(out) if isinstance(obj, OrderedDict) else out
    if isinstance(obj, list | tuple):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, torch.dtype | torch.Size):
        return obj
    raise TypeError(f"{where}: a {type(obj).__module__}.{type(obj).__name__} has no plain form")


def convert(old: str, new: str) -> Path:
    """Rewrite checkpoint ``old`` (trusted: fully unpickled) as a safe, digested file ``new``,
    without the reference model's tensors an older checkpoint held."""
    from sfpo_lab.checkpointing import integrity, is_sharded, load_full_checkpoint

    if Path(new).exists():
        raise SystemExit(f"error: {new} exists; choose a new path (nothing was written)")
    source = load_full_checkpoint(old, trust=True)
    if is_sharded(old):
        print(f"note: {old} is sharded: written as one full file")
    from sfpo_lab.training.reference import drop_reference_keys

    # the KL reference is rebuilt from the base since 2026-12-07: an older file's copy would
    # fail FSDP2's strict full-file load
    if dropped := drop_reference_keys(source):
        print(f"note: dropped {dropped} reference-model tensors (ref_policy.*)")
    try:
        converted = plain(source)
    except TypeError as e:
        raise SystemExit(f"error: {old}: cannot convert ({e}); nothing was written") from None
    out = integrity.save_file(converted, new)
    load_full_checkpoint(out)  # reads with weights_only=True, or raises
    return out


def export(ckpt: str, out_dir: str, model: str | None = None) -> Path:
    """The policy of ``ckpt`` as a Hugging Face directory (safetensors + config + tokenizer),
    in the dtype it was saved in; the base model is the run's (or ``model``)."""
    from omegaconf import OmegaConf

    from sfpo_lab.eval.__main__ import CONFIG, load_model, load_tokenizer, model_source, resolve

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: {out} is not empty; choose a new directory")
    cfg = OmegaConf.load(CONFIG)
    cfg.ckpt, cfg.model = str(ckpt), model
    cfg, extra = resolve(cfg)
    source = model_source(cfg, extra["run"])
    tokenizer = load_tokenizer(cfg, source)
    state = extra["ckpt"].get("state_dict", {})
    first = next((v for k, v in state.items() if k.startswith("policy.")), None)
    cfg.device = "cpu"
    cfg.dtype = "float32" if first is None else str(first.dtype).removeprefix("torch.")
    policy = load_model(cfg, source, extra)
    policy.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def check(ckpt: str) -> str:
    """One line: the checkpoint is intact and reads without running code, or why not."""
    from sfpo_lab.checkpointing import check_checkpoint
    from sfpo_lab.checkpointing.safety import CheckpointRefused

    try:
        check_checkpoint(ckpt, setting="ckpt")
    except CheckpointRefused as e:
        raise SystemExit(f"error: {e}") from None
    from sfpo_lab.checkpointing.integrity import MANIFEST, stored_digest

    p = Path(ckpt)
    digested = (p / MANIFEST).is_file() if p.is_dir() else stored_digest(p) is not None
    state = "its digest matches" if digested else "no digest (written before digests): unchecked"
    return f"{ckpt}: {state}; reads with weights_only=True (no code from it runs)"


def main(argv: list[str]) -> None:
    """Dispatch ``argv`` (see the module docstring); errors are one line, exit code 1."""
    try:
        _dispatch(argv)
    except (ValueError, OSError) as e:  # CheckpointRefused, EvalConfigError: one line each
        sys.exit(f"error: {e}")


def _dispatch(argv: list[str]) -> None:
    from sfpo_lab.checkpointing import consolidate

    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    if cmd == "check" and len(args) == 1:
        print(check(args[0]))
    elif cmd == "convert" and len(args) == 2:
        print(convert(*args))
    elif cmd == "export" and len(args) in (2, 3):
        print(export(*args))
    elif cmd == "consolidate" and len(args) == 2:
        print(consolidate(*args))
    elif len(argv) == 2 and cmd not in ("check", "convert", "export", "consolidate"):
        print(consolidate(*argv))
    else:
        sys.exit(USAGE)
