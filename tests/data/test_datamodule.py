"""RLDataModule: deterministic order, exact batch counts, resume, and per-rank slicing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from sfpo_lab.data.datamodule import RLDataModule, RolloutBatchSampler
from sfpo_lab.data.records import Problem

PROBLEMS = [Problem(id=f"p{i}", problem=f"{i}+1", answer=str(i + 1)) for i in range(10)]


def batches(dm: RLDataModule) -> list[dict[str, list[str]]]:
    return list(dm.train_dataloader())


def test_batches_are_lists_of_ids_problems_answers():
    (batch, *_) = batches(RLDataModule(PROBLEMS, batch_size=4, iterations=3, seed=0))
    assert set(batch) == {"ids", "problems", "answers"}
    assert all(isinstance(v, list) and len(v) == 4 for v in batch.values())
    for pid, text, answer in zip(batch["ids"], batch["problems"], batch["answers"], strict=True):
        i = int(pid[1:])
        assert (text, answer) == (f"{i}+1", str(i + 1))


def test_exactly_iterations_batches_and_deterministic():
    a = batches(RLDataModule(PROBLEMS, batch_size=4, iterations=7, seed=1))
    b = batches(RLDataModule(PROBLEMS, batch_size=4, iterations=7, seed=1))
    c = batches(RLDataModule(PROBLEMS, batch_size=4, iterations=7, seed=2))
    assert len(a) == 7 and a == b and a != c
    assert len(RLDataModule(PROBLEMS, 4, 7).train_dataloader()) == 7


def test_epochs_are_seeded_permutations_chained_without_drops():
    sampler = RolloutBatchSampler(n=10, batch_size=4, iterations=10, seed=5)
    stream = [i for it in range(10) for i in sampler.global_indices(it)]  # 40 = 4 epochs
    for epoch in range(4):
        expected = torch.randperm(10, generator=torch.Generator().manual_seed(5 + epoch))
        assert stream[epoch * 10 : (epoch + 1) * 10] == expected.tolist()
    assert sampler.global_indices(2) == stream[8:12]  # straddles epochs 0 and 1


def test_iteration_maps_to_the_same_prompts_regardless_of_start():
    full = batches(RLDataModule(PROBLEMS, batch_size=4, iterations=9, seed=3))
    dm = RLDataModule(PROBLEMS, batch_size=4, iterations=9, seed=3)
    dm.set_position(4)
    assert batches(dm) == full[4:]
    dm.advance(3)
    assert batches(dm) == full[7:]
    dm.set_position(9)
    assert batches(dm) == []


def test_resume_from_state_dict_replays_the_same_sequence():
    first = RLDataModule(PROBLEMS, batch_size=4, iterations=8, seed=0)
    seen = []
    for batch in first.train_dataloader():
        seen.append(batch)
        first.advance()
        if len(seen) == 3:
            break
    state = first.state_dict()
    assert state["position"] == 3
    resumed = RLDataModule(PROBLEMS, batch_size=4, iterations=8, seed=0)
    resumed.load_state_dict(state)
    assert seen + batches(resumed) == batches(RLDataModule(PROBLEMS, 4, 8, seed=0))


@pytest.mark.parametrize(
    ("key", "kwargs"),
    [("n", {"problems": PROBLEMS[:9]}), ("batch_size", {"batch_size": 2}), ("seed", {"seed": 9})],
)
def test_resume_with_another_data_config_is_refused(key: str, kwargs: dict):
    state = RLDataModule(PROBLEMS, batch_size=4, iterations=8, seed=0).state_dict()
    args = {"problems": PROBLEMS, "batch_size": 4, "iterations": 8, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=f"{key}="):
        RLDataModule(**args).load_state_dict(state)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_take_contiguous_slices_of_the_same_global_batch(world: int):
    samplers = [
        RolloutBatchSampler(n=10, batch_size=8, iterations=5, seed=0, rank=r, world_size=world)
        for r in range(world)
    ]
    reference = RolloutBatchSampler(n=10, batch_size=8, iterations=5, seed=0)
    per_rank = [list(s) for s in samplers]
    for it in range(5):
        assert sum((per_rank[r][it] for r in range(world)), []) == reference.global_indices(it)


def test_rank_and_world_come_from_the_attached_trainer():
    dm = RLDataModule(PROBLEMS, batch_size=4, iterations=3, seed=0)
    single = batches(dm)
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2, lightning_module=None)
    assert [b["ids"] for b in batches(dm)] == [b["ids"][2:] for b in single]
    dm.trainer = SimpleNamespace(global_rank=0, world_size=3, lightning_module=None)
    with pytest.raises(ValueError, match="batch_size=4 is not divisible by the 3"):
        dm.train_dataloader()


def test_position_is_read_from_the_modules_iteration_counter():
    dm = RLDataModule(PROBLEMS, batch_size=4, iterations=3, seed=0)
    dm.trainer = SimpleNamespace(
        global_rank=0, world_size=1, lightning_module=SimpleNamespace(iteration=2)
    )
    assert dm.state_dict()["position"] == 2


def test_invalid_settings():
    with pytest.raises(ValueError, match="empty"):
        RLDataModule([], batch_size=4, iterations=3)
    with pytest.raises(ValueError, match="batch_size"):
        RLDataModule(PROBLEMS, batch_size=0, iterations=3)
    with pytest.raises(ValueError, match="position"):
        RLDataModule(PROBLEMS, batch_size=2, iterations=3).set_position(-1)


class _Recorder(L.LightningModule):
    """Counts rollout batches in ``iteration`` like the SFPO module does."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.layer = torch.nn.Linear(1, 1)
        self.iteration = 0
        self.seen: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["ids"])
        self.iteration += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path: Path) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
    )


def test_lightning_fit_sees_every_batch_and_checkpoints_the_position(tmp_path: Path):
    dm = RLDataModule(PROBLEMS, batch_size=4, iterations=5, seed=0)
    module = _Recorder()
    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=dm)
    assert module.seen == [b["ids"] for b in batches(RLDataModule(PROBLEMS, 4, 5, seed=0))]
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert ckpt["RLDataModule"]["position"] == 5


def test_sampler_reads_a_live_start_each_time_it_starts():
    position = [0]
    sampler = RolloutBatchSampler(
        n=10, batch_size=4, iterations=6, seed=2, start=lambda: position[0]
    )
    everything = [sampler.local_indices(it) for it in range(6)]
    it = iter(sampler)
    position[0] = 3  # read at iter(), not at the first next()
    assert list(it) == everything
    assert list(sampler) == everything[3:]
    position[0] = 6
    assert list(sampler) == []
    assert len(sampler) == 6, "the length is the whole run (Lightning's epoch), not what is left"
    position[0] = -1
    with pytest.raises(ValueError, match="position must be >= 0, got -1"):
        iter(sampler)


class _Stepper(_Recorder):
    """A run of ``total`` rollout batches that checkpoints its counter like SFPOModule."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total

    def training_step(self, batch, batch_idx):
        super().training_step(batch, batch_idx)
        if self.iteration >= self.total:
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint):
        checkpoint["iteration"] = self.iteration

    def on_load_checkpoint(self, checkpoint):
        self.iteration = checkpoint["iteration"]


class _SaveAt(L.Callback):
    """Saves ``at-<k>.ckpt`` at the end of rollout batch k (where IterationCheckpoint saves)."""

    def __init__(self, dirpath: Path, at: tuple[int, ...]) -> None:
        self.dirpath, self.at = dirpath, at

    def on_train_batch_end(self, trainer, pl_module, *args):
        if pl_module.iteration in self.at:
            trainer.save_checkpoint(self.dirpath / f"at-{pl_module.iteration}.ckpt")


def _fit(tmp_path: Path, total: int, save_at=(), ckpt: Path | None = None) -> list[list[str]]:
    """The ids of every batch trained by a ``max_epochs=-1`` fit (as runner.build_trainer)."""
    module = _Stepper(total)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[_SaveAt(tmp_path, save_at)],
        default_root_dir=tmp_path,
    )
    dm = RLDataModule(PROBLEMS, batch_size=4, iterations=total, seed=3)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=False)
    assert module.iteration == total
    return module.seen


def test_lightning_resume_trains_every_later_batch_exactly_once(tmp_path: Path):
    """Resumed at k of 12, the run trains batches k+1..12 once each, in order. (It replayed
    k+1..2k when the sampler started at a fixed k and reported 12 - k batches: Lightning ends
    the resumed epoch when its restored batch count reaches the length, then starts a new one
    on the same sampler.)"""
    at = (1, 3, 4, 5, 6, 8, 11)
    full = _fit(tmp_path, 12, save_at=at)
    for k in at:
        assert _fit(tmp_path / str(k), 12, ckpt=tmp_path / f"at-{k}.ckpt") == full[k:], k


def test_lightning_resume_twice_and_extended(tmp_path: Path):
    """A resumed run resumed again, then extended past its planned end (``iterations`` may
    change on resume): the stream is the one of an uninterrupted 16-batch run."""
    full = _fit(tmp_path, 16)
    first = _fit(tmp_path / "a", 12, save_at=(3,))[:3]
    second = _fit(tmp_path / "b", 12, save_at=(9, 12), ckpt=tmp_path / "a" / "at-3.ckpt")
    assert first + second == full[:12]
    extended = _fit(tmp_path / "c", 16, ckpt=tmp_path / "b" / "at-12.ckpt")
    assert extended == full[12:]
    resumed_again = _fit(tmp_path / "d", 12, ckpt=tmp_path / "b" / "at-9.ckpt")
    assert first + second[:6] + resumed_again == full[:12]


def test_the_train_loader_says_it_is_resumable():
    """Lightning's "dataloader is not resumable ... unreliable results" warning came on every
    exact resume (issue 30, item 6): the loader implements the Stateful protocol, its state
    is the position the module's counter owns, and loading it changes nothing."""
    from lightning.fabric.utilities.types import _Stateful

    dm = RLDataModule([Problem(str(i), "x", "1") for i in range(8)], batch_size=4, iterations=3)
    dm.set_position(2)
    loader = dm.train_dataloader()
    assert isinstance(loader, _Stateful)
    assert loader.state_dict() == {"position": 2}
    loader.load_state_dict({"position": 0})
    assert [len(b["ids"]) for b in loader] == [4]  # iteration 2 of 3: one batch left
