"""Sharded (per-rank, directory) checkpoints under FSDP2 (issue 14 item 5).

A real Lightning fit with ModelParallelStrategy on one gloo rank (a 1-rank mesh writes the
same DCP directory + ``meta.pt`` layout as N ranks; the 2-rank kill-and-resume runs in
tests/test_reliability_resume.py): ``iter-N.ckpt`` directories, ``last.ckpt`` a symlink to the
newest, pruning, ``best.ckpt`` replaced, a resume from the directory, and the readers
(:func:`checkpoint_meta`, :func:`load_full_checkpoint`, ``consolidate``) on both formats.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from sfpo_lab.checkpointing import (
    IterationCheckpoint,
    checkpoint_meta,
    consolidate,
    is_checkpoint,
    load_full_checkpoint,
)
from sfpo_lab.config import CheckpointConfig, ConfigError, RunConfig, TrainerConfig
from sfpo_lab.model.parallel import checkpoint_format
from tests.test_checkpointing import _ScriptedValidation


class _Sharded(L.LightningModule):
    """One AdamW step per batch on an FSDP2-sharded MLP; ``iteration`` counts batches."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.total, self.iteration = total, 0
        self.last_val: dict[str, float] = {}
        self.policy: torch.nn.Module | None = None

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        torch.manual_seed(0)
        self.policy = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh())
        fully_shard(self.policy[0], mesh=self.device_mesh["data_parallel"])
        fully_shard(self.policy, mesh=self.device_mesh["data_parallel"])

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(self.policy(torch.ones(2, 4)).square().sum())
        opt.step()
        self.iteration += 1
        if self.iteration >= self.total:
            self.trainer.should_stop = True

    def configure_optimizers(self):
        return torch.optim.AdamW(self.policy.parameters(), lr=0.1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sfpo_counters"] = {"iteration": self.iteration}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.iteration = checkpoint["sfpo_counters"]["iteration"]


def _fit(out: Path, total: int, scores: dict[int, float], sharded: bool = True, ckpt=None):
    from lightning.pytorch.strategies import ModelParallelStrategy

    strategy = ModelParallelStrategy(
        data_parallel_size=1,
        tensor_parallel_size=1,
        process_group_backend="gloo",
        save_distributed_checkpoint=sharded,
    )
    val = _ScriptedValidation(scores, every=2)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=strategy,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[val, IterationCheckpoint(out, every=1, keep_last=2)],
        default_root_dir=out,
    )
    module = _Sharded(total)
    trainer.fit(module, train_dataloaders=DataLoader(range(100), batch_size=1), ckpt_path=ckpt)
    return module, val


def _full(module: _Sharded) -> dict[str, torch.Tensor]:
    return {f"policy.{k}": v.full_tensor() for k, v in module.policy.state_dict().items()}


@pytest.mark.slow
@pytest.mark.distributed
def test_sharded_checkpoints_names_links_pruning_best_resume_and_readers(tmp_path):
    out = tmp_path / "run"
    # validated at 0 (base), 2 and 4 (end): best is iteration 2, replacing the base's best
    module, val = _fit(out, total=4, scores={0: 10.0, 2: 30.0, 4: 20.0})
    names = sorted(p.name for p in out.glob("*.ckpt"))
    assert names == ["best.ckpt", "iter-000003.ckpt", "iter-000004.ckpt", "last.ckpt"]
    for name in ("best.ckpt", "iter-000003.ckpt", "iter-000004.ckpt"):
        assert (out / name).is_dir() and not (out / name).is_symlink(), name
        assert (out / name / "meta.pt").is_file() and list((out / name).glob("*.distcp")), name
    assert os.readlink(out / "last.ckpt") == "iter-000004.ckpt"  # relative: the run dir moves
    assert not list(out.glob(".*")), "no temporary or set-aside directory is left"

    meta = checkpoint_meta(out / "last.ckpt")
    assert meta["sfpo_counters"] == {"iteration": 4} and "state_dict" not in meta
    assert meta["callbacks"]["IterationCheckpoint"] == {"best": 30.0, "best_iteration": 2}
    full = load_full_checkpoint(out / "last.ckpt")
    want = _full(module)
    assert full["state_dict"].keys() == want.keys()
    for k, v in want.items():
        assert torch.equal(full["state_dict"][k], v), k
    moments = full["optimizer_states"][0]["state"]
    assert sorted(moments) == sorted(want)  # by parameter name (a full file: by index)
    live = module.trainer.optimizers[0].state
    for name, p in zip(
        ("policy.0.weight", "policy.0.bias"), module.policy.parameters(), strict=True
    ):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            value = live[p][key]
            value = value.full_tensor() if hasattr(value, "full_tensor") else value
            assert torch.equal(moments[name][key], value), (name, key)
    assert load_full_checkpoint(out / "best.ckpt", weights_only=True).keys() == full.keys() - {
        "optimizer_states"
    }
    best = load_full_checkpoint(out / "best.ckpt")["state_dict"]
    assert best.keys() == val.scored[2].keys()
    for k, v in val.scored[2].items():  # the weights validation scored at iteration 2
        assert torch.equal(best[k], v.full_tensor()), k

    # consolidated into one file: the same content, readable by the file readers
    single = consolidate(out / "iter-000004.ckpt", tmp_path / "one.ckpt")
    assert single.is_file() and is_checkpoint(single)
    assert checkpoint_meta(single)["sfpo_counters"] == {"iteration": 4}
    again = load_full_checkpoint(single)
    for k, v in want.items():
        assert torch.equal(again["state_dict"][k], v), k

    # resume from the symlinked directory: weights, optimizer state and counters come back
    resumed, _ = _fit(
        tmp_path / "resumed", total=5, scores={4: 0.0, 5: 0.0}, ckpt=out / "last.ckpt"
    )
    assert resumed.iteration == 5
    cont, _ = _fit(tmp_path / "straight", total=5, scores={0: 0.0, 2: 0.0, 4: 0.0, 5: 0.0})
    for k, v in _full(cont).items():
        assert torch.equal(_full(resumed)[k], v), k


def test_a_kill_between_the_two_renames_of_a_directory_is_undone_at_the_next_start(tmp_path):
    class _Trainer:  # what on_fit_start uses: rank 0 and a barrier
        is_global_zero = True
        strategy = type("S", (), {"barrier": staticmethod(lambda: None)})()

    (tmp_path / ".best.ckpt.old").mkdir()  # best.ckpt set aside, the new one not in place yet
    (tmp_path / ".best.ckpt.old" / "meta.pt").write_bytes(b"x")
    (tmp_path / ".iter-000002.ckpt.tmp").mkdir()  # a save that never finished
    (tmp_path / "iter-000001.ckpt").mkdir()
    (tmp_path / ".iter-000001.ckpt.old").mkdir()  # the replacement did finish: stale copy
    IterationCheckpoint(tmp_path, every=1).on_fit_start(_Trainer(), None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "iter-000001.ckpt"]
    assert (tmp_path / "best.ckpt" / "meta.pt").read_bytes() == b"x"


def _run(strategy: str, fmt: str | None) -> RunConfig:
    run = RunConfig()
    return replace(
        run,
        trainer=TrainerConfig(strategy=strategy, devices=2),
        checkpoint=CheckpointConfig(format=fmt),
        data=replace(run.data, batch_size=16),
    )


def test_checkpoint_format_defaults_and_contradiction():
    assert checkpoint_format(_run("fsdp", None)) == "sharded"
    assert checkpoint_format(_run("fsdp", "full")) == "full"
    assert checkpoint_format(_run("ddp", None)) == "full"
    with pytest.raises(
        ConfigError, match="checkpoint.format='sharded' with trainer.strategy='ddp'"
    ):
        checkpoint_format(_run("ddp", "sharded"))
    with pytest.raises(ConfigError, match="checkpoint.format"):
        CheckpointConfig(format="dcp")


def test_readers_refuse_a_path_that_is_no_checkpoint(tmp_path):
    (tmp_path / "empty.ckpt").mkdir()  # a directory without meta.pt
    assert not is_checkpoint(tmp_path / "empty.ckpt")
    with pytest.raises(FileNotFoundError, match="meta.pt"):
        checkpoint_meta(tmp_path / "empty.ckpt")
    with pytest.raises(ValueError, match="not a sharded checkpoint"):
        consolidate(tmp_path / "empty.ckpt", tmp_path / "x.ckpt")


def test_resume_checks_read_a_sharded_directory(tmp_path):
    """check_resumable and the iteration read take the meta.pt of a directory (no tensors)."""
    from dataclasses import asdict

    from sfpo_lab.run.runner import _checkpoint_iteration, check_resumable

    run = _run("fsdp", None)
    ckpt = tmp_path / "iter-000003.ckpt"
    ckpt.mkdir()
    saved = replace(run, seed=run.seed + 1)
    meta = {"sfpo_counters": {"iteration": 3}, "sfpo_config": {"run": asdict(saved)}}
    torch.save(meta, ckpt / "meta.pt")
    assert _checkpoint_iteration(str(ckpt)) == 3
    with pytest.raises(ConfigError, match=f"made with seed={saved.seed}, this run has seed="):
        check_resumable(run, str(ckpt))
    torch.save({**meta, "sfpo_config": {"run": asdict(run)}}, ckpt / "meta.pt")
    check_resumable(run, str(ckpt))  # the same config: accepted
    with pytest.raises(ConfigError, match="no such checkpoint"):
        check_resumable(run, str(tmp_path / "missing.ckpt"))
