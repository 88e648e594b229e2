"""The toy base does not depend on the caller's thread count (issue 25): the warm-up runs on
``WARMUP_THREADS`` intra-op threads whatever ``torch.set_num_threads`` / ``OMP_NUM_THREADS``
say, and gives back the caller's count afterwards. In-process, a ~30k-parameter model, 3 steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from sfpo_lab.config import RunConfig
from sfpo_lab.model import warmup


def _tiny_run(cache: Path) -> RunConfig:
    run = RunConfig(seed=0)
    t = run.model.tiny
    t.hidden_size, t.num_layers, t.num_heads, t.num_kv_heads = 32, 1, 2, 1
    t.intermediate_size, t.max_position_embeddings = 64, 64
    run.model.warmup.steps, run.model.warmup.batch_size = 3, 8
    run.paths.cache_dir = str(cache)
    return run


def check_same_base_under_1_and_2_threads(tmp: Path) -> None:
    """The check itself; runs in a fresh interpreter (see the test)."""
    build, seen = warmup._build, []

    def spy(run, out):  # the real build; records the thread count it ran under
        seen.append(torch.get_num_threads())
        return build(run, out)

    warmup._build = spy
    weights = {}
    for n in (1, 2):
        torch.set_num_threads(n)
        assert torch.get_num_threads() == n, "this interpreter cannot set its thread count"
        base = warmup.toy_base_model(_tiny_run(tmp / f"cache{n}"), log=lambda _: None)
        assert torch.get_num_threads() == n  # the caller's count is given back
        weights[n] = load_file(base / "model.safetensors")
    assert seen == [1, 1], seen  # WARMUP_THREADS
    assert weights[1].keys() == weights[2].keys()
    for name, w in weights[1].items():
        assert torch.equal(w, weights[2][name]), name  # bit for bit, no tolerance


def test_warmup_base_is_the_same_under_1_and_2_caller_threads(tmp_path):
    """In a fresh interpreter: inside a pytest-xdist worker that earlier tests have used, torch
    may no longer raise its intra-op thread count (set_num_threads(2) then reads 1; CI)."""
    code = (
        "import sys; from pathlib import Path; import tests.test_warmup_threads as t; "
        "t.check_same_base_under_1_and_2_threads(Path(sys.argv[1]))"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
