"""The benchmark harness's plumbing and its non-timing measurements (no timing assertions).

(No ``__init__.py`` here: a ``tests/benchmarks`` package would shadow the real ``benchmarks``.)
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import Row, table  # noqa: E402
from benchmarks.memory import LiveBytes, peak_new_bytes  # noqa: E402
from benchmarks.run import parse_args  # noqa: E402

ROW_KEYS = {"section", "metric", "measured", "target", "passed", "config", "note", "details"}


@pytest.mark.slow
def test_cli_smoke_engine_and_memory_write_the_json_schema(tmp_path):
    out = tmp_path / "r.json"
    cmd = [sys.executable, "benchmarks/run.py", "--smoke", "--only", "engine,memory"]
    proc = subprocess.run(
        [*cmd, "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "summary" in proc.stdout and "PASS" in proc.stdout
    result = json.loads(out.read_text())
    assert result["mode"] == "smoke" and result["device"] == "cpu"
    assert {"cpu", "cores", "torch", "torch_threads"} <= set(result["machine"])
    assert result["machine"]["torch"] == torch.__version__
    assert set(result["sections"]) == {"engine", "memory"}
    assert all(s["error"] is None for s in result["sections"].values())
    rows = result["rows"]
    assert rows and all(set(r) == ROW_KEYS for r in rows)
    metrics = {(r["section"], r["metric"]) for r in rows}
    assert ("engine", "sfpo_step / ((K+1) x plain update)") in metrics
    assert ("engine", "reposition / one update (fwd+bwd+AdamW)") in metrics
    assert ("engine", "per-parameter lerp loop / foreach lerp (speed-up)") in metrics
    for r in rows:
        assert isinstance(r["measured"], float) and math.isfinite(r["measured"])
        assert r["passed"] in (True, False, None)
    # memory is counted, not timed: SFPO holds exactly one extra copy of the parameters,
    # the authors-style clones two
    mem = {r["metric"]: r for r in rows if r["section"] == "memory"}
    assert mem["(SFPO - GRPO) peak bytes / param bytes"]["measured"] == pytest.approx(1.0, abs=0.01)
    assert mem["(SFPO - GRPO) peak bytes / param bytes"]["passed"] is True
    theirs = mem["(authors-style - GRPO) peak bytes / param bytes"]["measured"]
    assert theirs == pytest.approx(2.0, abs=0.05)


def test_live_bytes_tracks_allocations_frees_and_peak():
    n = 1000

    def work():
        a = torch.ones(n)  # +4000
        b = torch.ones(2 * n)  # +8000 -> 12000 live
        a.add_(1)  # in place: no new memory
        _ = b[:10]  # a view: no new memory
        del a, b  # -> 0
        c = torch.ones(n)  # +4000
        return c

    with LiveBytes() as tracker:
        kept = work()
        assert tracker.current == 4 * n  # only c is alive
    assert tracker.peak == 12 * n
    assert peak_new_bytes(work, torch.device("cpu")) == 12 * n
    del kept


def test_rows_render_nan_as_not_measured():
    rows = [
        Row("rollouts", "vLLM / HFEngine tokens per s", math.nan, ">= 2.5", None, "toy", "x"),
        Row("engine", "ratio", 1.0123, "<= 1.05", True, "toy"),
    ]
    text = table(rows)
    assert "n/a" in text and "PASS" in text and "1.012" in text
    assert rows[0].to_dict()["measured"] is None


def test_hf_engine_reproduces_raw_generate_samples():
    from benchmarks.rollouts import Shape, hf_vs_raw

    (r,) = hf_vs_raw(Shape("toy", "toy", 3, 2, 6, 1), torch.device("cpu"))
    assert r.details["identical_samples"] is True


def test_unknown_section_is_rejected():
    with pytest.raises(SystemExit):
        parse_args(["--only", "engine,nope"])
    assert parse_args(["--quick", "--only", "peer"]).sections == ["peer"]


def test_padfree_rows_keep_the_width_of_the_rollout_batch_they_come_from():
    """The throughput rows are padded as the old pass padded them: to the longest prompt and
    response of the whole rollout batch, not of the rows measured (left-padded prompts,
    right-padded responses, positions counting real tokens only)."""
    import numpy as np

    from benchmarks.padfree import layout

    p, r = np.array([3, 5]), np.array([2, 4])
    own = layout(p, r, vocab=50)
    wide = layout(p, r, vocab=50, width=(7, 6))
    assert tuple(own.input_ids.shape) == (2, 9) and tuple(wide.input_ids.shape) == (2, 13)
    assert wide.attention_mask.sum(-1).tolist() == [5, 9]  # the same real tokens
    assert wide.attention_mask[0].tolist() == [0] * 4 + [1] * 5 + [0] * 4
    assert wide.response_mask.tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]]
    assert wide.position_ids[1, 2:11].tolist() == list(range(9))
    assert (wide.input_ids == 0).eq(wide.attention_mask == 0).all()


@pytest.mark.parametrize("size", [(64, 1024, 32), (300, 2048, 48)])
def test_logits_peaks_on_meta_equal_the_cpu_count(size):
    """The logits section counts CPU memory on the meta device (no bf16 arithmetic): every
    path creates the same storages there as on CPU tensors, to the byte (R = 300 leaves a
    partial chunk of 44 tokens)."""
    from benchmarks.logits import peak_bytes

    on_cpu = peak_bytes(*size, torch.device("cpu"))
    on_meta = peak_bytes(*size, torch.device("meta"))
    assert on_meta == on_cpu
    assert on_cpu["old"] > on_cpu["chunked"] > 0 and on_cpu["fused"] > 0


def test_interleaved_balances_positions_and_neighbours():
    """Over 2 n timed rounds each of n callables runs in every slot of a round equally often
    and after more than one neighbour (the engine section times four)."""
    from collections import Counter

    from benchmarks.common import interleaved

    calls: list[str] = []
    t = interleaved({k: (lambda k=k: calls.append(k)) for k in "abcd"}, repeats=8, warmup=1)
    assert all(t[k]["n"] == 8 for k in "abcd") and len(calls) == 4 * 9
    timed = ["".join(calls[i : i + 4]) for i in range(4, len(calls), 4)]
    assert timed[:4] == ["abcd", "dcba", "bcda", "adcb"]
    for slot in range(4):
        assert Counter(order[slot] for order in timed) == dict.fromkeys("abcd", 2)
    for k in "abcd":
        before = {order[order.index(k) - 1] for order in timed if order.index(k) > 0}
        assert len(before) >= 2
    two: list[str] = []
    interleaved({k: (lambda k=k: two.append(k)) for k in "ab"}, repeats=4, warmup=0)
    assert "".join(two) == "ab" + "ba" + "ba" + "ab"


def test_performance_doc_table_is_the_run_it_names():
    """docs/performance.md's top table is regenerated, row for row, from the results JSON its
    first paragraph names (a number there comes from a committed run)."""
    import re

    from benchmarks.common import markdown_table

    doc = (REPO / "docs" / "performance.md").read_text()
    head = doc[: doc.index("| section | metric |")]
    named = re.findall(r"JSON:\s*`(benchmarks/results/[^`]+\.json)`", head)
    assert len(named) == 1, named
    result = json.loads((REPO / named[0]).read_text())
    assert result["mode"] == "quick" and not any(v["error"] for v in result["sections"].values())
    assert markdown_table(result["rows"]) + "\n" in doc
