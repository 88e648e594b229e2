"""Checkpoints carry a digest of what was written, checked before they are read (issue 30).

Random bytes in a checkpoint's optimizer state, or overwritten weights, load without any error
from torch (its zip reader does not check the CRCs it writes), so a digest is written with
every checkpoint and checked on every load:

* a full checkpoint (one ``torch.save`` file, a zip archive) keeps the digest of the bytes
  torch wrote as its zip comment (``sfpo-sha256-64m:<hex>``), so the digest travels with the
  file, through hard links (``last.ckpt``) and copies, and the file stays a valid zip that
  ``torch.load`` reads as before; the digest covers the file as torch wrote it, i.e. with a
  comment length of 0;
* a sharded checkpoint (a directory) lists the digest of each of its files in
  ``integrity.json``, written into the directory before it is renamed into place.

The digest is SHA-256 over the SHA-256 of each 64 MiB piece (:func:`digest_of`): written in one
stream as torch writes, checked with the pieces hashed in parallel threads (hashlib releases the
GIL), so a load pays the hash once per core, not once per file.

A file without a digest (written before this change, or by another tool) is read without
the check. A refused checkpoint is named in one line with the newest intact checkpoint beside
it (:class:`CorruptCheckpoint`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from sfpo_lab.checkpointing.safety import CheckpointRefused

PREFIX = b"sfpo-sha256-64m:"
PIECE = 64 << 20  # bytes per hashed piece
COMMENT_LEN = len(PREFIX) + 64  # hex SHA-256
EOCD = b"PK\x05\x06"  # zip end-of-central-directory record, 22 bytes plus its comment
EOCD_LEN = 22
MANIFEST = "integrity.json"  # a sharded checkpoint's digests, one per file


class CorruptCheckpoint(CheckpointRefused):
    """The checkpoint's bytes differ from those written (its digest does not match)."""


class HashingWriter:
    """A write-only file wrapper that digests what passes through it (``torch.save`` target),
    piece by piece as :func:`digest_of` reads it back."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.pieces: list[bytes] = []
        self.sha, self.filled = hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        while len(view):
            take = min(len(view), PIECE - self.filled)
            self.sha.update(view[:take])
            self.filled += take
            if self.filled == PIECE:
                self.pieces.append(self.sha.digest())
                self.sha, self.filled = hashlib.sha256(), 0
            view = view[take:]
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()

    def hexdigest(self) -> str:
        """The digest of everything written (the last, partial piece included)."""
        last = [self.sha.digest()] if self.filled else []
        return hashlib.sha256(b"".join(self.pieces + last)).hexdigest()


def save_file(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path`` atomically, with its digest: the bytes go to a temporary
    file beside ``path`` (same filesystem, never ``$TMPDIR``; nothing is buffered in memory),
    are hashed on the way, flushed to disk and renamed into place."""
    import torch

    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.part")
    try:
        with open(tmp, "w+b") as fh:
            writer = HashingWriter(fh)
            torch.save(obj, writer)
            append_digest(fh, writer.hexdigest())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def append_digest(fh: IO[bytes], digest: str) -> None:
    """Store ``digest`` as the zip comment of the archive just written to ``fh`` (opened
    ``w+b``, positioned at its end)."""
    fh.flush()
    fh.seek(-EOCD_LEN, os.SEEK_END)
    record = fh.read(EOCD_LEN)
    if record[:4] != EOCD or record[-2:] != b"\0\0":
        raise RuntimeError("torch.save wrote no plain zip end record: cannot add a digest")
    fh.seek(-2, os.SEEK_END)
    fh.write(struct.pack("<H", COMMENT_LEN) + PREFIX + digest.encode())


def stored_digest(path: Path) -> str | None:
    """The digest kept in a full checkpoint's zip comment, or None if it has none."""
    size = path.stat().st_size
    if size < EOCD_LEN + COMMENT_LEN:
        return None
    with open(path, "rb") as fh:
        fh.seek(size - EOCD_LEN - COMMENT_LEN)
        tail = fh.read()
    record, comment = tail[:EOCD_LEN], tail[EOCD_LEN:]
    if record[:4] != EOCD or record[-2:] != struct.pack("<H", COMMENT_LEN):
        return None
    if not comment.startswith(PREFIX):
        return None
    return comment[len(PREFIX) :].decode("ascii", errors="replace")


def digest_of(path: Path, length: int | None = None, tail: bytes = b"") -> str:
    """The piecewise digest of the first ``length`` bytes of ``path`` (all by default) followed
    by ``tail``, its pieces hashed in parallel threads."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size if length is None else length
        total = size + len(tail)
        with contextlib.ExitStack() as stack:
            if size:
                mm = stack.enter_context(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
                view = memoryview(mm)
                stack.callback(view.release)
            else:
                view = memoryview(b"")

            def piece(start: int) -> bytes:
                end = min(total, start + PIECE)
                sha = hashlib.sha256(view[start : min(end, size)] if start < size else b"")
                if end > size:
                    sha.update(tail[max(0, start - size) : end - size])
                return sha.digest()

            workers = max(1, min(8, os.cpu_count() or 1))
            with ThreadPoolExecutor(workers) as pool:
                pieces = list(pool.map(piece, range(0, total, PIECE)))
    return hashlib.sha256(b"".join(pieces)).hexdigest()


def check_file(path: Path) -> str | None:
    """The problem with a full checkpoint's bytes, or None (intact, or no digest to check)."""
    digest = stored_digest(path)
    if digest is None:
        return None
    # as torch wrote it: the 2 bytes before the comment were a comment length of 0
    actual = digest_of(path, path.stat().st_size - COMMENT_LEN - 2, tail=b"\0\0")
    return None if actual == digest else "its bytes do not match the digest written with it"


def write_manifest(directory: Path) -> None:
    """``integrity.json`` in a sharded checkpoint: the SHA-256 of each of its files."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    digests = {p.relative_to(directory).as_posix(): digest_of(p) for p in files}
    text = json.dumps(
        {"algorithm": "sha256 of 64 MiB pieces' sha256", "files": digests}, indent=1, sort_keys=True
    )
    (directory / MANIFEST).write_text(text + "\n")


def check_directory(directory: Path) -> str | None:
    """The problem with a sharded checkpoint's files, or None (intact, or no manifest)."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return None
    try:
        listed = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"its {MANIFEST} is unreadable"
    for rel, digest in sorted(listed.items()):
        part = directory / rel
        if not part.is_file():
            return f"{rel} is missing"
        if digest_of(part) != digest:
            return f"{rel} does not match the digest written with it"
    return None


_checked: dict[tuple[Any, ...], str | None] = {}


def problem(path: str | os.PathLike[str]) -> str | None:
    """What is wrong with the checkpoint at ``path`` (either format), or None. A result is
    remembered for the same files (inode, size, mtime each) within the process: a resume
    checks once, though the runner and Lightning both read the checkpoint."""
    p = Path(path)
    parts = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    key = (os.path.realpath(p), *(_identity(f) for f in parts))
    if key not in _checked:
        _checked[key] = check_directory(p) if p.is_dir() else check_file(p)
    return _checked[key]


def _identity(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return path.name, st.st_ino, st.st_size, st.st_mtime_ns


def verify(path: str | os.PathLike[str], name: str, setting: str = "ckpt_path") -> None:
    """Refuse a checkpoint whose digest does not match, naming the newest intact one beside it.

    Args:
        path: a checkpoint file or sharded directory.
        name: how the message names it (``"ckpt_path='run/last.ckpt'"``).
        setting: the setting to use the intact one with (``ckpt_path`` to resume).

    Raises:
        CorruptCheckpoint: one line.
    """
    what = problem(path)
    if what is None:
        return
    intact = newest_intact(Path(path))
    verb = {"ckpt_path": "resume", "ckpt": "evaluate"}.get(setting, "use it")
    hint = (
        f"the newest intact checkpoint beside it: {verb} with {setting}={intact}"
        if intact is not None
        else "no intact checkpoint is beside it"
    )
    raise CorruptCheckpoint(f"{name}: corrupt checkpoint ({what}; nothing was loaded); {hint}")


def newest_intact(path: Path) -> Path | None:
    """The intact ``iter-N.ckpt`` with the highest N beside ``path`` (not ``path`` itself, nor
    a link to it), else an intact ``best.ckpt``, else None."""
    folder = path.parent
    bad = os.path.realpath(path)
    candidates = sorted(folder.glob("iter-*.ckpt"), reverse=True) + [folder / "best.ckpt"]
    for c in candidates:
        if not c.exists() or os.path.realpath(c) == bad or _same_file(c, path):
            continue
        if problem(c) is None:
            return c
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
