"""The KL reference is rebuilt from the base on resume, never checkpointed (issue 24 item 9).

Through the real CLI on one process, ``loss.kl_coef>0`` with the fused head: a 2-iteration run
writes checkpoints without ``ref_policy.*`` weights but with the base's identity; a resume from
iteration 1 (reference rebuilt from the base) logs the same KL at iteration 2 as the straight
run; a resume after the base's weights changed on disk is refused, naming both bases.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.test_train_e2e import run_train

KL = ["iterations=2", "loss.kl_coef=0.05", "update.fused_lm_head=true", "rollout.reward_workers=0"]


def _kl_rows(run_dir: Path) -> dict[int, str]:
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return {int(float(r["train/iteration"])): r["train/kl"] for r in rows if r.get("train/kl")}


@pytest.mark.slow
def test_resume_rebuilds_the_reference_same_kl_and_refuses_another_base(tmp_path):
    cache = tmp_path / "cache"
    straight = tmp_path / "straight"
    run_train(straight, *KL, cache=cache)
    ckpt = torch.load(straight / "iter-000001.ckpt", weights_only=False)
    assert ckpt["state_dict"] and all(k.startswith("policy.") for k in ckpt["state_dict"])
    base = ckpt["sfpo_base"]
    assert set(base) == {"path", "digest"} and Path(base["path"]).is_dir()

    resumed = tmp_path / "resumed"
    run_train(resumed, *KL, f"ckpt_path={straight / 'iter-000001.ckpt'}", cache=cache)
    kl_straight, kl_resumed = _kl_rows(straight), _kl_rows(resumed)
    assert float(kl_straight[2]) != 0.0, "a KL of 0 would compare nothing"
    assert kl_resumed[2] == kl_straight[2]  # the rebuilt reference is the same pi_ref

    weights = Path(base["path"]) / "model.safetensors"  # another base at the same path
    state = load_file(weights)
    name = next(iter(state))
    state[name] = state[name] + 0.01
    save_file(state, weights, metadata={"format": "pt"})
    proc = run_train(
        tmp_path / "refused",
        *KL,
        f"ckpt_path={straight / 'iter-000001.ckpt'}",
        cache=cache,
        check=False,
    )
    assert proc.returncode != 0
    assert f"checkpoint was trained from base {base['path']!r} (digest {base['digest']})" in (
        proc.stdout + proc.stderr
    )
