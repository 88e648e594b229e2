"""Checkpoint integrity and where saves write (issue 30 items 1 and 3).

A real Lightning fit of a tiny AdamW module with :class:`IterationCheckpoint` writes
``iter-1..3`` and ``last.ckpt``; then the bytes of ``last.ckpt`` are damaged the two ways the
fault audit found loading silently (64 random bytes in the optimizer state; 1,024 weights
overwritten) and every reader must refuse it in one line naming ``iter-000002.ckpt``. A save
with a ``$TMPDIR`` that has no room must still succeed: the temporary file is written beside
the checkpoint.
"""

from __future__ import annotations

import builtins
import errno
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from sfpo_lab.checkpointing import IterationCheckpoint, check_checkpoint, load_full_checkpoint
from sfpo_lab.config import ConfigError, RunConfig


class _Adam(L.LightningModule):
    """One AdamW step per batch on a 64x64 linear layer; ``iteration`` counts batches."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.automatic_optimization = False
        torch.manual_seed(0)
        self.policy = torch.nn.Linear(64, 64)
        self.total, self.iteration = total, 0

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(self.policy(torch.ones(2, 64)).square().mean())
        opt.step()
        self.iteration += 1
        if self.iteration >= self.total:
            self.trainer.should_stop = True

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sfpo_counters"] = {"iteration": self.iteration}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.iteration = checkpoint["sfpo_counters"]["iteration"]


def _fit(out: Path, total: int, ckpt: str | None = None) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[IterationCheckpoint(out, every=1, keep_last=total)],
        default_root_dir=out,
    )
    data = DataLoader(range(100), batch_size=1)
    trainer.fit(_Adam(total), train_dataloaders=data, ckpt_path=ckpt)
    return trainer


def _record_offset(path: Path, tensor: torch.Tensor) -> int:
    """Byte offset in ``path`` of the zip record that stores ``tensor``'s data."""
    want = tensor.contiguous().numpy().tobytes()
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if "/data/" in info.filename and zf.read(info) == want:
                with open(path, "rb") as fh:
                    fh.seek(info.header_offset + 26)
                    name_len, extra_len = (int.from_bytes(fh.read(2), "little") for _ in "ne")
                return info.header_offset + 30 + name_len + extra_len
    raise AssertionError("record not found")


def _damage(path: Path, where: str) -> None:
    """64 random bytes into the optimizer's ``exp_avg`` / 1,024 weights overwritten."""
    ckpt = torch.load(path, weights_only=True)
    if where == "optimizer":
        target, data = ckpt["optimizer_states"][0]["state"][0]["exp_avg"], os.urandom(64)
    else:
        target = ckpt["state_dict"]["policy.weight"]
        data = torch.full((1024,), 0.5).numpy().tobytes()
    offset = _record_offset(path, target)
    with open(path, "r+b") as fh:
        fh.seek(offset + 128)
        fh.write(data)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("integrity") / "run"
    _fit(out, total=3)
    return out


@pytest.mark.parametrize("where", ["optimizer", "weights"])
def test_a_damaged_checkpoint_is_refused_naming_the_newest_intact_one(run_dir, tmp_path, where):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run_dir, out)  # last.ckpt: its own copy now, not a link to iter-3
    (out / "iter-000003.ckpt").unlink()
    os.link(out / "last.ckpt", out / "iter-000003.ckpt")
    _damage(out / "last.ckpt", where)
    intact = str(out / "iter-000002.ckpt")

    with pytest.raises(ValueError) as resumed:  # Lightning's resume (the callback's file IO)
        _fit(out, total=5, ckpt=str(out / "last.ckpt"))
    with pytest.raises(ValueError) as loaded:  # the readers (eval, tests, analysis)
        load_full_checkpoint(out / "last.ckpt")
    run = RunConfig(ckpt_path="last")
    run.paths.output_dir = str(out)
    from sfpo_lab.run.runner import check_resume_checkpoint

    with pytest.raises(ConfigError) as checked:  # train.py, before preflight or a model load
        check_resume_checkpoint(run)
    for err in (resumed.value, loaded.value, checked.value):
        msg = str(err)
        assert "\n" not in msg and "corrupt checkpoint" in msg, msg
        assert intact in msg, msg
    assert f"resume with ckpt_path={intact}" in str(checked.value)
    check_checkpoint(out / "iter-000002.ckpt")  # the one it names is intact


def test_an_intact_checkpoint_carries_its_digest_and_stays_a_plain_zip(run_dir):
    from sfpo_lab.checkpointing.integrity import problem, stored_digest

    path = run_dir / "last.ckpt"
    assert os.path.samefile(path, run_dir / "iter-000003.ckpt")
    assert stored_digest(path) is not None and problem(path) is None
    with zipfile.ZipFile(path) as zf:
        assert zf.comment.startswith(b"sfpo-sha256-64m:") and zf.testzip() is None
    ckpt = torch.load(path, weights_only=True)  # torch reads it as before
    assert ckpt["sfpo_counters"] == {"iteration": 3}


@pytest.fixture
def no_room_in_tmpdir(tmp_path, monkeypatch) -> Path:
    """``$TMPDIR`` is a directory where every write fails with ENOSPC (a small /tmp)."""
    small = tmp_path / "small_tmp"
    small.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(small))

    def full(path: Any) -> bool:
        return isinstance(path, str | os.PathLike) and str(path).startswith(str(small))

    real_os_open, real_open = os.open, builtins.open

    def os_open(path, flags, *a, **kw):
        if full(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_os_open(path, flags, *a, **kw)

    def open_(file, mode="r", *a, **kw):
        if full(file) and any(m in mode for m in "wax+"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    return small


def test_saves_write_their_temporary_file_beside_the_checkpoint(tmp_path, no_room_in_tmpdir):
    with pytest.raises(OSError, match="No space"):  # the simulated $TMPDIR is full
        tempfile.mkstemp()
    out = tmp_path / "run"
    _fit(out, total=2)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["iter-000001.ckpt", "iter-000002.ckpt", "last.ckpt"], names
    assert not list(no_room_in_tmpdir.iterdir())
    check_checkpoint(out / "last.ckpt")


@pytest.mark.slow
@pytest.mark.distributed
def test_a_sharded_checkpoint_lists_its_digests_and_a_damaged_shard_is_refused(tmp_path):
    """FSDP2's directory format (one gloo rank): ``integrity.json`` covers every file; a shard
    with changed bytes is refused by the readers and by the resume check."""
    import json

    from sfpo_lab.checkpointing.integrity import MANIFEST
    from sfpo_lab.run.runner import check_resume_checkpoint
    from tests.test_sharded_checkpoint import _fit as fit_sharded

    out = tmp_path / "run"
    fit_sharded(out, total=3, scores={0: 1.0, 2: 2.0, 3: 3.0})
    last = out / "last.ckpt"
    listed = json.loads((last / MANIFEST).read_text())["files"]
    on_disk = {p.relative_to(last).as_posix() for p in last.rglob("*") if p.is_file()}
    assert set(listed) == on_disk - {MANIFEST} and "meta.pt" in listed and ".metadata" in listed
    check_checkpoint(last)

    shard = next(last.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit pattern flipped inside the tensors
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{shard.name} does not match") as loaded:
        load_full_checkpoint(last)
    run = RunConfig(ckpt_path="last")
    run.paths.output_dir = str(out)
    with pytest.raises(ConfigError, match="corrupt checkpoint") as checked:
        check_resume_checkpoint(run)
    for err in (loaded.value, checked.value):
        assert "\n" not in str(err) and str(out / "iter-000002.ckpt") in str(err), str(err)


@pytest.mark.parametrize("piece", [3, 64, 4093, 4096, 1 << 26])
def test_the_digest_written_while_saving_is_the_one_read_back_at_any_piece_size(
    tmp_path, monkeypatch, piece
):
    """Streamed while torch writes, re-read in parallel pieces: equal for piece boundaries that
    fall anywhere, including inside the 2 bytes the comment length replaces; one flipped byte
    anywhere in the file is found."""
    from sfpo_lab.checkpointing import integrity

    monkeypatch.setattr(integrity, "PIECE", piece)
    path = integrity.save_file({"w": torch.arange(1000.0), "n": "x"}, tmp_path / "a.ckpt")
    assert integrity.check_file(path) is None
    size = path.stat().st_size
    data = bytearray(path.read_bytes())
    for at in (0, size // 2, size - integrity.COMMENT_LEN - 3):
        flipped = tmp_path / f"flip{at}.ckpt"
        damaged = bytearray(data)
        damaged[at] ^= 0x01
        flipped.write_bytes(bytes(damaged))
        assert integrity.check_file(flipped) is not None, at
