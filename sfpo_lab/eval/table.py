"""The results table ``python -m sfpo_lab.eval`` prints."""

from __future__ import annotations

from typing import Any

from sfpo_lab.data.records import Problem
from sfpo_lab.eval.record import from_run_note


def results_table(
    summary: dict[str, Any], sets: dict[str, list[Problem]], n: int, extra: dict[str, Any]
) -> str:
    """The printed results: a header row, one row per benchmark, the average; for a run's
    checkpoint also its own validation number at the checkpoint's iteration."""
    val, it = summary.get("run_validation") or {}, extra["iteration"]
    head = f"{'benchmark':>16}  {'problems':>8}  {'n':>4}  {'acc %':>6}  {'95% CI':<16}"
    head += f"  run's val @ it {it}" if val else ""
    lines = [head]
    for name, m in summary["benchmarks"].items():
        ci = f"[{m['ci_lo']:.2f}, {m['ci_hi']:.2f}]"
        row = f"{name:>16}  {len(sets[name]):>8}  {n:>4}  {m['acc']:6.2f}  {ci:<16}"
        got = val.get(f"val/{name}/acc")
        lines.append(row + (f"  {got:6.2f}" if val and got is not None else ""))
    lines.append(f"{'avg':>16}  {'':>8}  {'':>4}  {summary['avg']:6.2f}")
    held = extra.get("file")
    note = from_run_note(extra.get("from_run") or {}, held, len(sets.get(held or "", [])))
    if note:
        lines.append(f"note: {note}")
    if extra["differs"]:
        diff = ", ".join(f"{k}={a!r} (run: {b!r})" for k, (a, b) in extra["differs"].items())
        lines.append(f"note: not the run's validation settings: {diff}")
    if extra["run"] is not None and extra["run"].rollout.engine == "vllm":
        lines.append(
            "note: the run validated with vLLM (one seed per call), this evaluation samples "
            "with the HF engine: same settings, other samples"
        )
    return "\n".join(lines)
