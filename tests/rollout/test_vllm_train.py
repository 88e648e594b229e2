"""``train.py rollout=vllm`` end to end on the tiny model: 3 SFPO iterations with a colocated
vLLM engine, and before every generation vLLM's weights equal the trainer's (nothing stale)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed (rollout=vllm route)", allow_module_level=True)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TINY = [  # as tests/test_train_e2e.py
    "iterations=3",
    "data.batch_size=4",
    "rollout.n=4",
    "rollout.max_new_tokens=8",
    "update.micro_batch_size=8",
    "val.every=2",
    "val.limit=8",
    "val.n=2",
    "checkpoint.every=1",
    "model.warmup.steps=30",
    "optim.lr=1e-3",
    "wandb.mode=disabled",
]


class EngineWeightAudit(L.Callback):
    """After every ``engine.generate`` of a run (training and validation), record how far the
    weights vLLM generated with are from the trainer's policy; JSON lines in ``out``."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        engine, generate = pl_module.engine, pl_module.engine.generate

        def audited(prompts, params, *args, **kwargs):
            batch = generate(prompts, params, *args, **kwargs)  # pushes first if it must
            state = {k: v.detach().clone() for k, v in pl_module.policy.state_dict().items()}
            diff = engine.weight_mismatch(state.items())  # the weights it generated with
            record = {
                "iteration": pl_module.iteration,
                "training": params.return_logprobs,  # validation asks for no log-probs
                "weights": len(diff),
                "max_diff": max(diff.values()),
                "checksum": sum(float(v.double().abs().sum()) for v in state.values()),
            }
            with open(self.out, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            return batch

        engine.generate = audited


def test_three_sfpo_iterations_with_vllm_hold_no_stale_weights(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    target = "tests.rollout.test_vllm_train.EngineWeightAudit"  # importable via PYTHONPATH
    env = dict(
        os.environ,
        SFPO_CACHE_DIR=str(tmp_path / "cache"),
        OMP_NUM_THREADS="1",
        WANDB_MODE="disabled",
        PYTHONPATH=str(REPO),
    )
    cmd = [
        sys.executable,
        "train.py",
        f"hydra.run.dir={tmp_path / 'run'}",
        *TINY,
        "algorithm=sfpo",
        "rollout=vllm",
        "rollout.vllm.cpu_kv_cache_gib=0.25",
        f"+callbacks.vllm_audit._target_={target}",
        f"+callbacks.vllm_audit.out={audit}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"

    with open(tmp_path / "run" / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train/iteration")]
    assert [int(float(r["train/iteration"])) for r in rows] == [1, 2, 3]
    for r in rows:
        assert float(r["perf/weight_sync_s"]) > 0  # pushed once per weight version
        # vLLM (processed log-probs, fp32) vs the trainer's recomputed log-probs at theta0
        assert float(r["rollout/logprob_diff_max"]) < 1e-4
        assert float(r["rollout/logprob_diff_mean"]) < 1e-5
        assert float(r["sfpo/alpha"]) == 0.8

    records = [json.loads(line) for line in audit.read_text().splitlines()]
    training = [r for r in records if r["training"]]
    assert [r["iteration"] for r in training] == [0, 1, 2]
    assert len(records) > len(training)  # validation generated with vLLM too
    assert all(r["weights"] >= 10 for r in records)
    stale = [r for r in records if r["max_diff"] > 1e-6]
    assert not stale, f"vLLM generated with weights other than the trainer's: {stale}"
    checksums = [r["checksum"] for r in training]
    assert len(set(checksums)) == 3, "the policy did not change between iterations"
