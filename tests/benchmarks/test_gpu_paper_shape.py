"""``benchmarks/gpu_paper_shape.py --cpu-smoke``: the GPU acceptance script's code paths (HF
rollout of left-padded prompts, padded and packed updates with KL and the fused head, FSDP2 on
a 1-rank gloo group, 16-mixed through Lightning's GradScaler, an alternative attention kernel,
the per-stage memory meter) at a tiny shape on CPU, so the script cannot rot before a GPU runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("setup", "single", "fsdp", "fp16", "attn_alt")
PROBES = ("single", "fsdp", "fp16", "attn_alt")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    """One ``--cpu-smoke`` run: (exit code, its JSON, its output)."""
    out = tmp_path_factory.mktemp("gpu_paper_shape") / "smoke.json"
    env = os.environ | {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_paper_shape.py", "--cpu-smoke", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.returncode, json.loads(out.read_text()), proc.stdout + proc.stderr


@pytest.mark.slow
def test_cpu_smoke_writes_every_section_with_finite_numbers(smoke) -> None:
    _, rec, output = smoke
    assert set(SECTIONS) <= set(rec["sections"]), output[-3000:]
    for name in SECTIONS:
        section = rec["sections"][name]
        assert section["status"] != "skipped", (name, section)  # the budget is never hit here
        assert section["seconds"] >= 0, name
    finite = [c for c in rec["checks"] if c["name"].startswith("finite/")]
    assert finite and rec["all_finite"], [c for c in finite if not c["ok"]]
    single = rec["sections"]["single"]
    assert single["status"] == "ok", single
    assert set(single["stage_s"]) == {"rollout", "logprobs", "update_padded", "update_packed"}
    assert all(single["memory_gib"][s] > 0 for s in single["stage_s"])
    assert single["rollout"]["left_pad_rows"] > 0  # the rollout really had left-padded rows
    assert rec["sections"]["fp16"]["status"] in ("ok", "refused")
    assert not rec["over_budget"]


@pytest.mark.slow
def test_cpu_smoke_passes_every_check(smoke) -> None:
    code, rec, _ = smoke
    failed = [c for c in rec["checks"] if not c["ok"]]
    assert not failed, failed
    assert code == 0 and rec["all_ok"]
