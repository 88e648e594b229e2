"""Checkpoints at rollout-batch boundaries: atomic ``last.ckpt``, keep-last-N, ``best.ckpt``.

Lightning's ModelCheckpoint counts optimizer steps (K+1 per SFPO iteration, 1 after the
entropy trigger), so it cannot save "every N iterations"; this callback counts iterations.
A checkpoint is written to a temporary file, flushed to disk and renamed, so a kill (or a
power loss) during a save never leaves a corrupt ``last.ckpt``: it names the previous complete
checkpoint until the new one is whole. ``last.ckpt`` is a hard link to the newest
``iter-N.ckpt`` (no second copy on disk); older ``iter-*.ckpt`` beyond ``keep_last`` are deleted
only after the new one is in place.

``best.ckpt`` holds only weights that were validated, saved right after the validation that
scored them, with that score (``best``) and their iteration (``best_iteration``): the base
weights after the iteration-0 validation (``on_train_start``), later ones after a validation in
``on_train_batch_end`` / ``on_train_end`` (the :class:`ValidationCallback` runs first). When no
validation scored the current weights, there is no candidate: a stale score is never credited
to weights that were updated after it.

Two formats (``checkpoint.format``, :func:`sfpo_lab.model.parallel.checkpoint_format`): ``full``, one
``torch.save`` file, and ``sharded`` (FSDP2's default), a directory per checkpoint holding each
rank's shards (``torch.distributed.checkpoint``) and ``meta.pt`` (everything but tensors of the
model and optimizer), as Lightning's ModelParallelStrategy writes it. For directories
``last.ckpt`` is a relative symlink to the newest ``iter-N.ckpt`` (a directory cannot be hard
linked), swapped atomically; a directory that replaces an existing one (``best.ckpt``) is renamed
in two steps, the old one first set aside as ``.<name>.old``, which the next start puts back if a
kill came in between. Read either format with :func:`checkpoint_meta` (no tensors) or
:func:`load_full_checkpoint`; ``python -m sfpo_lab.checkpointing <dir> <file>`` consolidates a
sharded checkpoint into one full file (more commands: :mod:`sfpo_lab.checkpointing.cli`).

Every file is written beside its destination, never in ``$TMPDIR`` (:class:`CheckpointFileIO`,
which this callback installs in place of Lightning's ``TorchCheckpointIO``: that one buffers the
whole checkpoint in memory, writes it to ``$TMPDIR`` and copies it over), and carries a digest
checked before it is read (:mod:`sfpo_lab.checkpointing.integrity`); every reader here reads with
``torch.load(weights_only=True)`` (:mod:`sfpo_lab.checkpointing.safety`, docs/security.md).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.plugins.io import TorchCheckpointIO

from sfpo_lab.checkpointing import integrity
from sfpo_lab.checkpointing.safety import check_sharded, safe_load
from sfpo_lab.eval.callback import ValidationCallback


class CheckpointFileIO(TorchCheckpointIO):
    """Lightning's checkpoint file IO, written and read the safe way: a save streams into a
    temporary file beside the destination with its digest (:func:`integrity.save_file`); a
    load checks the digest, then reads with ``weights_only=True`` unless Lightning is told
    ``weights_only=False`` (the runner's ``trust_checkpoint=true``)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("CheckpointFileIO.save_checkpoint takes no storage_options")
        integrity.save_file(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        name = f"ckpt_path={str(path)!r}"
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        if _first_process():  # one hash pass per job (runner.check_resume_checkpoint too)
            integrity.verify(path, name)
        return safe_load(path, name=name, trust=weights_only is False)


class IterationCheckpoint(L.Callback):
    def __init__(self, dirpath: str | Path, every: int, keep_last: int = 2, save_best: bool = True):
        self.dirpath = Path(dirpath)
        self.every = every
        self.keep_last = keep_last
        self.save_best = save_best
        self.best = -math.inf
        self.best_iteration: int | None = None
        # names written by this process: the same on every rank, unlike a filesystem check
        # (per-node dirs, NFS caching), so "save or not" (a collective) is decided alike
        self.saved: set[str] = set()

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_iteration": self.best_iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best", -math.inf)
        self.best_iteration = state.get("best_iteration")

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        """Write checkpoints with :class:`CheckpointFileIO` unless another IO was chosen."""
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = CheckpointFileIO()

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        # temporaries of a save that was killed: never complete, never referenced
        if trainer.is_global_zero and self.dirpath.is_dir():
            for stale in [*self.dirpath.glob(".*.ckpt.tmp"), *self.dirpath.glob(".*.part")]:
                _remove(stale)
            for old in self.dirpath.glob(".*.ckpt.old"):  # a directory set aside mid-replace
                final = self.dirpath / old.name[1:].removesuffix(".old")
                if final.exists():
                    _remove(old)
                else:
                    os.replace(old, final)
        trainer.strategy.barrier()

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._save_best_if_validated(trainer, pl_module)  # the base, scored at iteration 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        self._save_best_if_validated(trainer, pl_module)
        it = pl_module.iteration
        if self.every and it % self.every == 0:
            self.save(trainer, f"iter-{it:06d}.ckpt", also_last=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._save_best_if_validated(trainer, pl_module)
        name = f"iter-{pl_module.iteration:06d}.ckpt"
        if name not in self.saved:
            self.save(trainer, name, also_last=True)

    def _save_best_if_validated(self, trainer: L.Trainer, pl_module: Any) -> None:
        """``best.ckpt`` <- the current weights iff a validation scored these very weights
        (at this iteration) higher than any before (ties keep the earlier model)."""
        if not self.save_best:
            return
        scored = latest_validation(trainer)
        if scored is None or int(scored["iteration"]) != pl_module.iteration:
            return  # no score for the current weights (a stale one belongs to older weights)
        score = scored.get("val/avg", -math.inf)
        if score > self.best:
            self.best, self.best_iteration = score, pl_module.iteration
            self.save(trainer, "best.ckpt")

    def save(self, trainer: L.Trainer, name: str, also_last: bool = False) -> Path:
        """Write ``name`` atomically (all ranks take part, rank 0 renames)."""
        final = self.dirpath / name
        tmp = self.dirpath / f".{name}.tmp"
        trainer.save_checkpoint(tmp)  # refuses non-finite weights (SFPOModule.on_save_checkpoint)
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            if tmp.is_dir():  # sharded: every rank's files are in; a full file has its digest
                integrity.write_manifest(tmp)
            _fsync_tree(tmp)
            _replace(tmp, final)
            if also_last:
                last_tmp = self.dirpath / ".last.ckpt.tmp"
                _remove(last_tmp)
                if final.is_dir():  # sharded: a relative symlink (a directory has no hard link)
                    os.symlink(final.name, last_tmp)
                else:
                    os.link(final, last_tmp)
                _replace(last_tmp, self.dirpath / "last.ckpt")
                self._prune(keep=final)
            _fsync(self.dirpath)
        trainer.strategy.barrier()
        self.saved.add(name)
        return final

    def _prune(self, keep: Path) -> None:
        """Delete the oldest ``iter-*.ckpt`` beyond ``keep_last``, never ``keep`` (the target of
        ``last.ckpt``: a symlink to a deleted directory would leave no resume point)."""
        kept = sorted(self.dirpath.glob("iter-*.ckpt"))
        for old in kept[: max(0, len(kept) - self.keep_last)]:
            if old != keep:
                _remove(old)


def latest_validation(trainer: L.Trainer) -> dict[str, float] | None:
    """The newest validation record (``iteration``, ``val/avg``, ...), or None if none ran."""
    for cb in trainer.callbacks:
        if isinstance(cb, ValidationCallback) and cb.history:
            return cb.history[-1]
    return None


def _remove(path: Path) -> None:
    """Delete a checkpoint of either format (or a link to one); nothing if absent."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()


def _replace(src: Path, dst: Path) -> None:
    """``os.replace`` for files and links; a directory replacing a directory is renamed in two
    steps (the old one set aside as ``.<name>.old`` first, deleted last)."""
    if dst.is_dir() and not dst.is_symlink():
        old = dst.with_name(f".{dst.name}.old")
        _remove(old)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)


def _fsync_tree(path: Path) -> None:
    """:func:`_fsync` a file, or every file and directory of a sharded checkpoint (rank 0
    syncs the shards of all ranks: one node, or a shared filesystem)."""
    if path.is_dir():
        for sub in sorted(path.rglob("*")):
            _fsync(sub)
    _fsync(path)


def _fsync(path: Path) -> None:
    """Flush a file's data (or a directory's entries) to disk before it is relied upon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


META_FILE = "meta.pt"  # Lightning's name for a sharded checkpoint's non-tensor part
TENSOR_KEYS = ("state_dict", "optimizer_states")


def is_sharded(path: str | os.PathLike[str]) -> bool:
    """A sharded checkpoint: a directory (or a link to one) holding ``meta.pt``."""
    return Path(path).is_dir() and (Path(path) / META_FILE).is_file()


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    """A checkpoint of either format exists at ``path`` (a file, or a sharded directory)."""
    return Path(path).is_file() or is_sharded(path)


def checkpoint_meta(path: str | os.PathLike[str], trust: bool = False) -> dict[str, Any]:
    """Everything of a checkpoint but the model and optimizer tensors, either format, read with
    ``weights_only=True`` (``trust``: the user's ``trust_checkpoint=true``).

    Returns:
        Lightning's checkpoint dict without ``state_dict`` / ``optimizer_states``: among others
        ``sfpo_counters`` (``iteration``, ...), ``sfpo_config`` (the run config),
        ``hyper_parameters`` when saved, ``callbacks`` (their states) and the loops' states.

    Raises:
        FileNotFoundError: no checkpoint of either format at ``path``.
        UnsafeCheckpoint: reading it would run code from it (one line; nothing was run).
    """
    p = Path(path)
    name = repr(str(path))
    if is_sharded(p):
        meta = safe_load(p / META_FILE, name=f"{name} ({META_FILE})", trust=trust)
    elif p.is_file():
        meta = safe_load(p, name=name, trust=trust, mmap=True)
    else:
        raise FileNotFoundError(
            f"{str(path)!r}: no checkpoint (neither a file nor a directory with {META_FILE})"
        )
    if not isinstance(meta, dict):
        raise ValueError(f"{str(path)!r}: not a Lightning checkpoint (a {type(meta).__name__})")
    return {k: v for k, v in meta.items() if k not in TENSOR_KEYS}


def check_checkpoint(
    path: str | os.PathLike[str], trust: bool = False, setting: str = "ckpt_path"
) -> None:
    """Refuse, in one line and before anything heavy, a checkpoint that is corrupt (its digest)
    or whose reading would run code (every pickle in it is read with ``weights_only=True``;
    skipped with ``trust``). ``setting`` names it in the message (``ckpt_path`` / ``ckpt``).

    Raises:
        CheckpointRefused: :class:`CorruptCheckpoint` or :class:`UnsafeCheckpoint`.
    """
    p = Path(path)
    name = f"{setting}={str(path)!r}"
    if _first_process():  # one hash pass per job, not one per rank (a refusal ends the job)
        integrity.verify(p, name, setting)
    if is_sharded(p):
        check_sharded(p, name, trust=trust)
        safe_load(p / META_FILE, name=f"{name} ({META_FILE})", trust=trust)
    elif p.is_file():
        safe_load(p, name=name, trust=trust, mmap=True)


def _first_process() -> bool:
    """Global rank 0 of a launch (torchrun ``RANK``, SLURM ``SLURM_PROCID``), or no launcher."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "SLURM_PROCID"))


def load_full_checkpoint(
    path: str | os.PathLike[str], weights_only: bool = False, trust: bool = False
) -> dict[str, Any]:
    """A checkpoint as one full-state dict on the host, either format (no process group).

    A sharded one is consolidated from its shards: ``state_dict`` holds the full tensors;
    ``optimizer_states`` (omitted when ``weights_only``: the weights without the optimizer, not
    torch's flag) is keyed by parameter name (FSDP2's ``get_optimizer_state_dict``), where a
    full file keys it by parameter index. The digest is checked and every pickle is read with
    ``torch.load(weights_only=True)`` first (:func:`check_checkpoint`); ``trust`` unpickles it
    fully (``trust_checkpoint=true``).
    """
    p = Path(path)
    if not is_checkpoint(p):
        checkpoint_meta(p)  # raises the FileNotFoundError
    check_checkpoint(p, trust=trust, setting="ckpt")
    if not is_sharded(p):
        ckpt = safe_load(p, name=repr(str(path)), trust=trust, mmap=True)
        return {k: v for k, v in ckpt.items() if k != "optimizer_states"} if weights_only else ckpt
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    tensors: dict[str, Any] = {}
    keys = {"state_dict"} if weights_only else None
    reader = FileSystemReader(str(p))  # its pickles were just shown to be plain data
    _load_state_dict(tensors, reader, planner=_EmptyStateDictLoadPlanner(keys=keys), no_dist=True)
    out = checkpoint_meta(p, trust=trust) | {"state_dict": tensors.pop("state_dict")}
    optimizers = sorted((k for k in tensors if k.startswith("optimizer_")), key=_index)
    if optimizers:
        out["optimizer_states"] = [tensors[k] for k in optimizers]
    return out


def _index(key: str) -> int:
    return int(key.rsplit("_", 1)[1])


def consolidate(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write sharded checkpoint ``src`` as one full file ``dst`` (loads like a ``full`` one)."""
    if not is_sharded(src):
        raise ValueError(f"{str(src)!r} is not a sharded checkpoint (a directory with {META_FILE})")
    return integrity.save_file(load_full_checkpoint(src), dst)
