"""Loading a checkpoint never runs code from it (issue 31).

A malicious checkpoint is a pickle whose ``__reduce__`` makes the reader call ``os.system``
(here: create a marker file). Eval (``ckpt=``), resume (``ckpt_path=``, the runner's check and
Lightning's own load) and the sharded loader must refuse it in one line, and the marker must
not exist afterwards. The sharded format has three pickles to poison: ``meta.pt``, DCP's
``.metadata`` (torch reads it with plain ``pickle.load``) and a non-tensor item in a shard
(torch reads those with ``weights_only=False``). Old-format files load only through
``trust_checkpoint`` or after ``convert``; ``export`` writes a pickle-free HF directory.
"""

from __future__ import annotations

import os
import pickle
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sfpo_lab.checkpointing import load_full_checkpoint
from sfpo_lab.checkpointing.safety import UnsafeCheckpoint
from sfpo_lab.config import ConfigError, RunConfig


class _RunsCode:
    """Unpickling this calls ``os.system('touch <marker>')``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def _looks_like_ours(payload: Any = None) -> dict[str, Any]:
    """A plausible sfpo_lab checkpoint (so no reader stops early for another reason)."""
    run = RunConfig()
    ckpt = {
        "state_dict": {"policy.w": torch.ones(2)},
        "sfpo_counters": {"iteration": 1},
        "sfpo_config": {"model": run.model.name, "run": asdict(run)},
    }
    if payload is not None:
        ckpt["sfpo_rng"] = payload
    return ckpt


def _assert_refused(err: BaseException, marker: Path) -> None:
    msg = str(err)
    assert "\n" not in msg and "no code from it was run" in msg, msg
    assert "trust_checkpoint" in msg, msg
    assert not marker.exists(), "the checkpoint's code ran"


@pytest.fixture
def evil_file(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    path = tmp_path / "shared.ckpt"
    torch.save(_looks_like_ours(_RunsCode(marker)), path)
    return path, marker


def test_eval_refuses_a_checkpoint_that_runs_code(evil_file):
    from omegaconf import OmegaConf

    from sfpo_lab.eval.__main__ import CONFIG, EvalConfigError, resolve

    path, marker = evil_file
    cfg = OmegaConf.load(CONFIG)
    cfg.ckpt = str(path)
    with pytest.raises(EvalConfigError) as err:
        resolve(cfg)
    _assert_refused(err.value, marker)
    assert "posix.system" in str(err.value)


def test_resume_refuses_a_checkpoint_that_runs_code(evil_file, tmp_path):
    from sfpo_lab.run.runner import train

    path, marker = evil_file
    run = RunConfig(ckpt_path=str(path))
    run.paths.output_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError) as err:
        train(run, {})
    _assert_refused(err.value, marker)


def test_lightnings_resume_refuses_it_without_the_runner(evil_file, tmp_path):
    from tests.test_checkpoint_integrity import _fit

    path, marker = evil_file
    with pytest.raises(UnsafeCheckpoint) as err:
        _fit(tmp_path / "run", total=2, ckpt=str(path))
    _assert_refused(err.value, marker)


def _sharded(path: Path, state: dict[str, Any], meta: Any) -> Path:
    import torch.distributed.checkpoint as dcp

    dcp.save(state, checkpoint_id=str(path), no_dist=True)
    torch.save(meta, path / "meta.pt")
    return path


@pytest.mark.parametrize("poisoned", ["meta.pt", ".metadata", "shard item"])
def test_sharded_loader_refuses_each_poisoned_pickle(tmp_path, poisoned):
    marker = tmp_path / "PWNED"
    evil = _RunsCode(marker)
    state: dict[str, Any] = {"state_dict": {"policy.w": torch.ones(3)}}
    if poisoned == "shard item":
        state["optimizer_0"] = {"param_groups": [{"lr": evil}]}
    meta = _looks_like_ours(evil if poisoned == "meta.pt" else None)
    meta.pop("state_dict")
    path = _sharded(tmp_path / "iter-000001.ckpt", state, meta)
    if poisoned == ".metadata":
        (path / ".metadata").write_bytes(pickle.dumps(evil))
    from sfpo_lab.eval.evaluate import read_checkpoint
    from sfpo_lab.run.runner import check_resume_checkpoint

    with pytest.raises(UnsafeCheckpoint) as loaded:
        load_full_checkpoint(path)
    with pytest.raises(ValueError) as evaluated:
        read_checkpoint(path)
    run = RunConfig(ckpt_path=str(path))
    with pytest.raises(ConfigError) as resumed:
        check_resume_checkpoint(run)
    for err in (loaded, evaluated, resumed):
        _assert_refused(err.value, marker)


def test_a_plain_sharded_checkpoint_still_loads(tmp_path):
    state = {"state_dict": {"policy.w": torch.arange(3.0)}, "optimizer_0": {"lr": 0.5}}
    meta = _looks_like_ours()
    meta.pop("state_dict")
    path = _sharded(tmp_path / "iter-000001.ckpt", state, meta)
    got = load_full_checkpoint(path)
    assert torch.equal(got["state_dict"]["policy.w"], torch.arange(3.0))
    assert got["optimizer_states"] == [{"lr": 0.5}] and got["sfpo_counters"] == {"iteration": 1}


def _old_format(path: Path) -> Path:
    """A checkpoint as sfpo_lab wrote them before RNG states were tensors (NumPy inside)."""
    ckpt = _looks_like_ours(
        {"numpy": ("MT19937", np.arange(624, dtype=np.uint32), 3, 0, 0.0), "seed": np.int64(7)}
    )
    torch.save(ckpt, path)
    return path


def test_an_old_format_file_needs_trust_or_convert(tmp_path):
    from sfpo_lab.checkpointing.cli import convert
    from sfpo_lab.eval.evaluate import read_checkpoint

    old = _old_format(tmp_path / "old.ckpt")
    with pytest.raises(UnsafeCheckpoint, match="numpy") as err:
        read_checkpoint(old)
    assert "\n" not in str(err.value) and "convert" in str(err.value)
    trusted = read_checkpoint(old, trust=True)  # trust_checkpoint=true: the user's word
    assert isinstance(trusted["sfpo_rng"]["numpy"][1], np.ndarray)

    new = convert(str(old), str(tmp_path / "new.ckpt"))
    converted = read_checkpoint(new)  # weights_only=True now
    name, keys, pos, *_ = converted["sfpo_rng"]["numpy"]
    assert (name, pos, converted["sfpo_rng"]["seed"]) == ("MT19937", 3, 7)
    assert torch.equal(keys, torch.arange(624, dtype=torch.int64))
    assert torch.equal(converted["state_dict"]["policy.w"], torch.ones(2))


def test_trust_checkpoint_lets_the_resume_checks_read_an_old_file(tmp_path):
    from sfpo_lab.checkpointing import checkpoint_meta
    from sfpo_lab.checkpointing.safety import trusted
    from sfpo_lab.run.runner import check_resume_checkpoint

    old = _old_format(tmp_path / "old.ckpt")
    with pytest.raises(ConfigError, match="trust_checkpoint=true"):
        check_resume_checkpoint(RunConfig(ckpt_path=str(old)))
    assert check_resume_checkpoint(RunConfig(ckpt_path=str(old), trust_checkpoint=True)) == str(old)
    with trusted(old):  # train() holds this around preflight, which reads the file too
        assert checkpoint_meta(old)["sfpo_counters"] == {"iteration": 1}
    with pytest.raises(UnsafeCheckpoint):
        checkpoint_meta(old)  # only that file, only inside


def test_export_writes_a_pickle_free_hf_directory(tmp_path):
    from transformers import AutoModelForCausalLM

    from sfpo_lab.checkpointing.cli import export
    from sfpo_lab.checkpointing.integrity import save_file
    from tests.integrations import _tiny_trl as T

    base = tmp_path / "base"
    tok = T.tokenizer(tmp_path)
    T.model(tok).save_pretrained(base)
    tok.save_pretrained(base)
    trained = {f"policy.{k}": v + 0.25 for k, v in T.model(tok).state_dict().items()}
    run = RunConfig()
    run.model.name_or_path = str(base)
    ckpt = {
        "state_dict": trained,
        "sfpo_counters": {"iteration": 4},
        "sfpo_config": {"model": run.model.name, "run": asdict(run)},
    }
    path = save_file(ckpt, tmp_path / "best.ckpt")

    out = export(str(path), str(tmp_path / "shared"))
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer_config.json"} <= files, files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    shared = AutoModelForCausalLM.from_pretrained(out)
    for k, v in shared.state_dict().items():
        assert torch.equal(v, trained[f"policy.{k}"]), k
