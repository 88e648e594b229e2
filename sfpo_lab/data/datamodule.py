"""Rollout-batch data: a deterministic, resumable order of prompts, sliced per rank.

Iteration i always maps to the same global prompts, whatever the world size and however often
the run was resumed: the prompt stream is epoch 0's permutation (seeded by ``seed + 0``), then
epoch 1's (``seed + 1``)..., chained without dropping anything, and global batch i is items
``[i * B, (i + 1) * B)`` of that stream. Rank r of W takes its contiguous slice of each global
batch. The Trainer must not replace the sampler (``use_distributed_sampler=False``).

The stream position has one owner, the LightningModule's ``iteration`` counter: each time the
sampler starts (the first epoch, a resume, a new Lightning epoch) it reads that counter and
yields the batches from there to the end. Its length is the whole run (``iterations``): that is
what Lightning takes as an epoch's length, against which it counts a resumed epoch's batches
from the checkpoint's loop state (= the iterations already done). A sampler fixed at its start
that reported what was left as its length made Lightning end a resumed epoch after
``iterations - 2 * start`` batches and re-iterate it from ``start`` (``max_epochs=-1``): a run
resumed at 4 of 12 trained on the batches of iterations 5-8 again at 9-12.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sfpo_lab.data.records import Problem

Batch = dict[str, list[str]]


class _Problems(Dataset):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems

    def __len__(self) -> int:
        return len(self.problems)

    def __getitem__(self, i: int) -> Problem:
        return self.problems[i]


class RolloutBatchSampler(Sampler[list[int]]):
    """Yields this rank's dataset indices for rollout batches ``start .. iterations - 1``.

    Args:
        n: dataset size.
        batch_size: prompts per global rollout batch (B), divisible by ``world_size``.
        iterations: total rollout batches of the run (also ``len()``: see the module docstring).
        seed: epoch e is ``torch.randperm(n)`` under ``manual_seed(seed + e)``.
        start: first iteration to yield, or a callable read each time iteration starts (the
            live position: the module's iteration counter).
        rank, world_size: this rank's slice ``[rank * B/W, (rank + 1) * B/W)`` of each batch.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        iterations: int,
        seed: int = 0,
        start: int | Callable[[], int] = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_layout(n, batch_size, iterations, rank, world_size)
        self.n, self.batch_size, self.iterations = n, batch_size, iterations
        self.seed, self.start, self.rank, self.world_size = seed, start, rank, world_size
        self._perm_cache: dict[int, list[int]] = {}

    def first(self) -> int:
        """The iteration the next ``iter()`` starts at (read now, if ``start`` is live)."""
        first = self.start() if callable(self.start) else self.start
        if first < 0:
            raise ValueError(f"the data position must be >= 0, got {first}")
        return first

    def _permutation(self, epoch: int) -> list[int]:
        if epoch not in self._perm_cache:
            self._perm_cache = {k: v for k, v in self._perm_cache.items() if k >= epoch - 1}
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._perm_cache[epoch] = torch.randperm(self.n, generator=generator).tolist()
        return self._perm_cache[epoch]

    def global_indices(self, iteration: int) -> list[int]:
        """Dataset indices of global rollout batch ``iteration`` (all ranks together)."""
        out: list[int] = []
        pos = iteration * self.batch_size
        while len(out) < self.batch_size:
            epoch, offset = divmod(pos, self.n)
            take = min(self.n - offset, self.batch_size - len(out))
            out += self._permutation(epoch)[offset : offset + take]
            pos += take
        return out

    def local_indices(self, iteration: int) -> list[int]:
        """This rank's contiguous slice of :meth:`global_indices`."""
        per_rank = self.batch_size // self.world_size
        return self.global_indices(iteration)[self.rank * per_rank : (self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        first = self.first()  # now, not at the first next(): the position is read at iter()
        return (self.local_indices(it) for it in range(first, self.iterations))

    def __len__(self) -> int:
        """The whole run, not what is left: Lightning counts a resumed epoch's restored batches
        against this length (a shorter one ends the resumed epoch early)."""
        return self.iterations


def _check_layout(n: int, batch_size: int, iterations: int, rank: int, world_size: int) -> None:
    if n < 1:
        raise ValueError("the training set is empty")
    if batch_size < 1 or iterations < 0:
        raise ValueError(
            f"need data.batch_size >= 1 and iterations >= 0; got {batch_size}, {iterations}"
        )
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is not in a world of size {world_size}")
    if batch_size % world_size:
        raise ValueError(
            f"data.batch_size={batch_size} is not divisible by the {world_size} data-parallel ranks"
        )


class PositionLoader(DataLoader):
    """A DataLoader that says it is resumable (Lightning's ``state_dict`` / ``load_state_dict``
    protocol), which it is: its sampler starts at the module's iteration counter. Without it,
    every exact resume printed Lightning's "dataloader is not resumable ... unreliable
    results" warning. Its state is that position, for the record; loading it does nothing
    (the counter, restored with the module, owns it; :meth:`RLDataModule.load_state_dict`
    refuses a checkpoint made with another data order)."""

    position: Callable[[], int] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position() if self.position is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def collate_problems(problems: list[Problem]) -> Batch:
    """A batch as parallel lists (no tensors): ``ids``, ``problems`` (raw text), ``answers``."""
    return {
        "ids": [p.id for p in problems],
        "problems": [p.problem for p in problems],
        "answers": [p.answer for p in problems],
    }


class RLDataModule(L.LightningDataModule):
    """Train prompts for ``iterations`` rollout batches of ``batch_size`` prompts (global).

    The position (next iteration to yield) is checkpointed through ``state_dict``: it is the
    attached LightningModule's ``iteration`` counter (completed rollout batches) when it has
    one, else the value last given to :meth:`set_position` / :meth:`advance`. Reading it from
    the module rather than counting yielded batches matters: Lightning fetches a batch ahead.

    Args:
        problems: the training set.
        batch_size: prompts per rollout batch, summed over data-parallel ranks.
        iterations: rollout batches in the whole run.
        seed: seeds the order (see the module docstring).
    """

    def __init__(self, problems: list[Problem], batch_size: int, iterations: int, seed: int = 0):
        super().__init__()
        _check_layout(len(problems), batch_size, iterations, 0, 1)
        self.problems = list(problems)
        self.batch_size, self.iterations, self.seed = batch_size, iterations, seed
        self.position = 0

    def set_position(self, iteration: int) -> None:
        """Make the sampler start at rollout batch ``iteration`` (used only while no module
        with an ``iteration`` counter is attached: that counter owns the position)."""
        if iteration < 0:
            raise ValueError(f"position must be >= 0, got {iteration}")
        self.position = iteration

    def advance(self, n: int = 1) -> None:
        """Record that ``n`` more rollout batches were consumed."""
        self.set_position(self.position + n)

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _current_position(self) -> int:
        trainer = getattr(self, "trainer", None)
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        iteration = getattr(module, "iteration", None)
        return iteration if isinstance(iteration, int) else self.position

    def sampler(self) -> RolloutBatchSampler:
        """The batch sampler for this rank; each ``iter()`` starts at the current position."""
        rank, world = self._rank_world()
        return RolloutBatchSampler(
            len(self.problems),
            self.batch_size,
            self.iterations,
            self.seed,
            start=self._current_position,
            rank=rank,
            world_size=world,
        )

    def train_dataloader(self) -> DataLoader:
        loader = PositionLoader(
            _Problems(self.problems),
            batch_sampler=self.sampler(),
            collate_fn=collate_problems,
            num_workers=0,
        )
        loader.position = self._current_position
        return loader

    def state_dict(self) -> dict[str, Any]:
        return {
            "position": self._current_position(),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "n": len(self.problems),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ours_by_key = {"n": len(self.problems), "batch_size": self.batch_size, "seed": self.seed}
        for key, ours in ours_by_key.items():
            if state.get(key) not in (None, ours):
                raise ValueError(
                    f"checkpoint data order was made with {key}={state[key]}, this run has "
                    f"{key}={ours}: resuming would replay different prompts"
                )
        self.set_position(int(state["position"]))
