"""Reading a checkpoint never runs code from it (issue 31).

A ``torch.save`` file is a pickle, and a pickle can name any function to call while it is
read. Every checkpoint is therefore read with ``torch.load(weights_only=True)``: tensors,
numbers, strings, ``None``, lists, tuples, dicts, ``OrderedDict`` and the types of
:data:`SAFE_GLOBALS`, registered once with ``torch.serialization.add_safe_globals`` (this file
is the one place that names them). A sharded directory holds two more pickles that torch's
own reader opens without that guard (``torch.distributed.checkpoint`` 2.13:
``FileSystemReader.read_metadata`` calls ``pickle.load`` on ``.metadata``, and
``DefaultLoadPlanner.load_bytes`` calls ``torch.load(weights_only=False)`` on every non-tensor
item): :func:`check_sharded` reads ``.metadata`` with an unpickler that admits only DCP's
metadata classes and probes each non-tensor item with ``weights_only=True`` first, so torch's
reader only ever meets data that was shown to be plain.

A checkpoint that needs more is refused in one line (:class:`UnsafeCheckpoint`) naming what
it asked for. ``trust_checkpoint=true`` is the only way past that: it unpickles the file as
torch did before 2.6, which runs whatever code the file names; use it only for a file you
wrote yourself, or convert such a file once (``python -m sfpo_lab.checkpointing convert OLD
NEW``) and share the result. :func:`trusted` scopes that decision to one path for the readers
called under it (the resume checks in ``preflight`` read the same file).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


class CheckpointRefused(ValueError):
    """A checkpoint that is not read: the one-line message names it, why and what to do."""


class UnsafeCheckpoint(CheckpointRefused):
    """Reading the checkpoint would call code it names (nothing from it was run)."""


SAFE_GLOBALS: list[Any] = []
"""Types beyond plain containers that sfpo_lab's checkpoints hold. Empty today: the run
config is a plain dict, RNG states are tuples and tensors (:func:`sfpo_lab.training.runtime.rng_state`),
the SFPO engine and trigger states are dicts of numbers and lists, and Lightning 2.6.6's own
entries (loops, callback states, LambdaLR's state with ``lr_lambdas=[{}]``) are plain too.
Add a type here, never at a call site, and only one whose construction runs no code."""

TRUST_HINT = (
    "set trust_checkpoint=true only for a file you wrote yourself (it runs code from the file), "
    "or convert it once: python -m sfpo_lab.checkpointing convert OLD NEW (docs/security.md)"
)

_trusted: set[str] = set()
_registered = False


def register_safe_globals() -> None:
    """Allow :data:`SAFE_GLOBALS` in ``torch.load(weights_only=True)`` (once per process)."""
    global _registered
    if not _registered:
        torch.serialization.add_safe_globals(SAFE_GLOBALS)
        _registered = True


@contextlib.contextmanager
def trusted(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Readers called inside unpickle ``path`` (a file or sharded directory) fully; ``None``:
    nothing is trusted. The user's ``trust_checkpoint=true`` for that one checkpoint."""
    key = None if path is None else os.path.realpath(path)
    if key is not None:
        _trusted.add(key)
    try:
        yield
    finally:
        if key is not None:
            _trusted.discard(key)


def is_trusted(path: str | os.PathLike[str]) -> bool:
    """``path`` (or the sharded directory holding it) is under :func:`trusted`."""
    real = os.path.realpath(path)
    return real in _trusted or os.path.dirname(real) in _trusted


def safe_load(
    source: str | os.PathLike[str] | io.BytesIO,
    *,
    name: str,
    trust: bool = False,
    mmap: bool = False,
) -> Any:
    """``torch.load`` on the host with ``weights_only=True`` (full unpickling only if
    ``trust`` or :func:`is_trusted`).

    Args:
        source: a file, or bytes already read from one.
        name: how the refusal names the checkpoint, e.g. ``"ckpt_path='run/last.ckpt'"``.
        trust: the user's ``trust_checkpoint=true``.
        mmap: map the file's tensors instead of reading them (files only).

    Raises:
        UnsafeCheckpoint: the file names a global outside the allowed types.
    """
    register_safe_globals()
    full = trust or (not isinstance(source, io.BytesIO) and is_trusted(source))
    if full:
        return torch.load(source, map_location="cpu", weights_only=False, mmap=mmap)
    try:
        return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise refusal(name, str(e)) from None


def refusal(name: str, message: str) -> UnsafeCheckpoint:
    """The one-line :class:`UnsafeCheckpoint` for ``name``, from a weights-only refusal's
    (many-line) ``message``."""
    found = re.search(r"GLOBAL\s+([\w.]+)", message)
    if found:
        why = (
            f"it names {found.group(1)!r}, outside the plain types a weights-only read allows "
            "(a full unpickle calls what a file names: any code)"
        )
    else:
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", message)
        op = detail.group(1).strip() if detail else message.strip().splitlines()[-1][:80]
        why = f"its pickle does something weights-only loading does not allow ({op})"
    return UnsafeCheckpoint(
        f"{name}: refused: {why} (no code from it was run; sfpo_lab checkpoints hold tensors, "
        f"numbers, strings, lists and dicts only); {TRUST_HINT}"
    )


# ----------------------------------------------------------------- sharded (DCP) directories

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_DCP_CLASSES = {
    (_DCP_METADATA, n)
    for n in (
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "_MEM_FORMAT_ENCODING",
    )
}
_DCP_CLASSES |= {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a layout by its name: torch's own allowlist has it
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Admits DCP's metadata dataclasses, ``torch.Size``, dtypes and paths, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DCP_CLASSES or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")


def check_sharded(path: Path, name: str, trust: bool = False) -> None:
    """A sharded checkpoint's pickles hold only plain data (see the module docstring).

    Raises:
        UnsafeCheckpoint: ``.metadata`` or a non-tensor item names another global.
        CheckpointRefused: ``.metadata`` is missing or unreadable.
    """
    if trust or is_trusted(path):
        return
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    try:
        with open(path / ".metadata", "rb") as fh:
            meta = _MetadataUnpickler(fh).load()
    except pickle.UnpicklingError as e:
        raise refusal(f"{name} (.metadata)", str(e)) from None
    except (OSError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise CheckpointRefused(f"{name}: unreadable .metadata ({type(e).__name__})") from None
    items = getattr(meta, "state_dict_metadata", None)
    storage = getattr(meta, "storage_data", None)
    if not isinstance(items, dict) or not isinstance(storage, dict):
        raise CheckpointRefused(f"{name}: .metadata is not a torch.distributed.checkpoint index")
    for fqn, item in items.items():
        if isinstance(item, BytesStorageMetadata):
            info = storage.get(MetadataIndex(fqn))
            safe_load(_item_bytes(path, info, name, fqn), name=f"{name} (item {fqn!r})")


def _item_bytes(path: Path, info: Any, name: str, fqn: str) -> io.BytesIO:
    """The raw bytes DCP stored for the non-tensor item ``fqn``."""
    if info is None or getattr(info, "transform_descriptors", None):
        raise CheckpointRefused(
            f"{name}: item {fqn!r} is stored in a form this reader does not check; {TRUST_HINT}"
        )
    with open(path / info.relative_path, "rb") as fh:
        fh.seek(info.offset)
        return io.BytesIO(fh.read(info.length))
