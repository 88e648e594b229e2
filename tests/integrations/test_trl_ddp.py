"""SFPO on TRL under DDP with gradient accumulation (issue 26 item 1): 2 gloo ranks on CPU,
gradient_accumulation_steps = 2, K = 2. The fast passes run inside transformers' no_sync
window; their gradients must still be all-reduced, so both replicas end equal and equal one
process stepping on the global batch (both ranks' slices); the rollout H_s the trigger sees is
the token mean over both ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

from sfpo_lab.algos import SFPO  # noqa: E402

from . import _tiny_trl as T  # noqa: E402
from ._ddp_trl import OVERRIDES, SFPO_CFG  # noqa: E402
from .test_trl_sfpo import _dapo_loss, _max_diff  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

SCRIPT = Path(__file__).with_name("_ddp_trl.py")
LAUNCHER_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def _launch(out: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env |= {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run = subprocess.run(
        [*cmd, str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=400
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def _one_process(tok, ranks: list[dict]) -> list[torch.Tensor]:
    """The same SFPO iterations in one process: each optimizer step accumulates the DAPO loss
    of slice j of *both* ranks (the global batch; DDP's mean over ranks x the per-rank
    normaliser N_global / 2 = one process's N_global), clips, steps."""
    model = T.model(tok)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.05)
    engine = SFPO(opt, K=SFPO_CFG["K"], alpha=SFPO_CFG["alpha"])
    ga, spg = OVERRIDES["gradient_accumulation_steps"], OVERRIDES["steps_per_generation"]
    for it in range(len(ranks[0]["batches"])):

        def one_pass(it=it):
            for start in range(0, spg, ga):
                opt.zero_grad()
                for j in range(start, start + ga):
                    for rank in ranks:
                        _dapo_loss(model, rank["batches"][it][j], ga=ga, spg=spg).backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()

        engine.step(update=one_pass)
    return [p.detach() for p in params]


def _rollout_entropy(model, batch_of_both_ranks) -> float:
    """Token-mean entropy at theta0 over both ranks' slices."""
    num = den = 0.0
    for inputs in batch_of_both_ranks:
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        att = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        width = inputs["completion_ids"].size(1)
        logits = model(input_ids=ids, attention_mask=att).logits[:, -width - 1 : -1].float()
        logp = logits.log_softmax(-1)
        ent = -(logp.exp() * logp).sum(-1)
        m = inputs["completion_mask"].float()
        num, den = num + float((ent * m).sum()), den + float(m.sum())
    return num / den


def test_ddp_with_gradient_accumulation_equals_one_process(tmp_path):
    ranks = _launch(tmp_path)
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["fast_steps"] == 2
    # different prompts per rank, so unsynchronised fast steps would make these differ
    assert not torch.equal(
        ranks[0]["batches"][0][0]["prompt_ids"], ranks[1]["batches"][0][0]["prompt_ids"]
    )
    for a, b in zip(ranks[0]["weights"], ranks[1]["weights"], strict=True):
        assert torch.equal(a, b)
    tok = T.tokenizer(tmp_path)
    ours = _one_process(tok, ranks)
    # SGD is linear in the gradient: DDP's all-reduce order only adds float round-off
    assert _max_diff(ranks[0]["weights"], ours) < 1e-6
    before = [p.detach() for p in T.model(tok).parameters()]
    assert _max_diff(ranks[0]["weights"], before) > 1e-3  # the runs did move the weights
    # the trigger's H_s (source=rollout) is the global token mean, equal on both ranks
    assert ranks[0]["rollout_entropy"] == ranks[1]["rollout_entropy"]
    with torch.no_grad():
        h0 = _rollout_entropy(T.model(tok), ranks[0]["batches"][0] + ranks[1]["batches"][0])
    assert abs(ranks[0]["rollout_entropy"][0] - h0) < 1e-5
