"""The benchmark harness: one command, a printed table, a JSON file.

    python benchmarks/run.py [--quick | --smoke] [--only SECTION[,SECTION]] [--json PATH]
                             [--device cpu|cuda]

Sections: engine, memory, rollouts, vllm_rollouts, iteration, peer, padfree, logits, step_ratio
(benchmarks/README.md). ``--quick`` is
the fast setting (~24 minutes on the 2-core CI machine, 16 of them the trainer runs of
``iteration``; it is not part of CI); ``--smoke`` uses toy sizes and
checks only the plumbing (its numbers mean nothing). Every figure is a ratio of two
quantities measured in the same process (except `iteration`'s two-run rows and `peer`; each section runs in a child process of its own,
so one section's memory never adds to the next's), printed with its target and PASS/FAIL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/run.py` from anywhere
    sys.path.insert(0, str(REPO))

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Only the standard library at import time: math-verify's forkserver workers re-import this
# script (``__main__``), and torch + transformers here would cost seconds per worker.

SECTIONS = (
    "engine",
    "memory",
    "rollouts",
    "vllm_rollouts",
    "iteration",
    "peer",
    "padfree",
    "logits",
    "step_ratio",
)


def _section(name: str) -> Callable:
    """Import a section lazily, so ``--only engine`` never imports vLLM or TRL."""
    import importlib

    return importlib.import_module(f"benchmarks.{name}").run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fast sizes (~24 min on 2 cores)")
    size.add_argument("--smoke", action="store_true", help="toy sizes: plumbing check only")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--json", type=Path, default=None, help="output file")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--section-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        p.error(f"--only: unknown section(s) {unknown}; allowed: {list(SECTIONS)}")
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.json is None:
        stamp = dt.datetime.now().strftime("%Y-%m-%d_%H%M%S")
        args.json = REPO / "benchmarks" / "results" / f"{stamp}_{args.mode}.json"
    return args


def run_section(name: str, mode: str, device: str, out: Path) -> None:
    """Child process: run one section here and write its rows to ``out``."""
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from benchmarks.common import table

    rows = _section(name)(mode, torch.device(device))
    print(table(rows), flush=True)
    out.write_text(json.dumps([r.to_dict() for r in rows], default=str))


def _spawn(name: str, args: argparse.Namespace, device: str) -> tuple[list[dict], str | None]:
    """Run a section in its own process (memory of one section never adds to the next's,
    e.g. vLLM's engine or the 0.5B trainer); its output streams through."""
    with tempfile.TemporaryDirectory(prefix="bench_section_") as tmp:
        out = Path(tmp) / "rows.json"
        flag = {"smoke": ["--smoke"], "quick": ["--quick"], "full": []}[args.mode]
        cmd = [sys.executable, __file__, *flag, "--only", name, "--device", device]
        proc = subprocess.run([*cmd, "--section-out", str(out)], cwd=REPO)
        if proc.returncode != 0 or not out.is_file():
            code = proc.returncode
            why = " (SIGKILL: out of memory?)" if code in (-9, 137) else ""
            return [], f"section process exited with {code}{why}"
        return json.loads(out.read_text()), None


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.section_out is not None:  # child process of _spawn
        run_section(args.sections[0], args.mode, args.device, args.section_out)
        return {}
    import torch

    from benchmarks.common import Row, machine, table

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    result: dict = {
        "mode": args.mode,
        "device": device,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "sections": {},
        "rows": [],
    }
    for name in args.sections:
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        rows, error = _spawn(name, args, device)
        seconds = time.perf_counter() - t0
        result["sections"][name] = {"seconds": round(seconds, 1), "error": error}
        result["rows"] += rows
        print(f"[bench] {name} took {seconds:.0f}s" + (f"; FAILED: {error}" if error else ""))
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    result["machine"]["loadavg_1m_at_end"] = os.getloadavg()[0]
    all_rows = [Row(**r | {"measured": _nan(r["measured"])}) for r in result["rows"]]
    print("=" * 30 + " summary " + "=" * 30)
    print(table(all_rows))
    failed = [r for r in all_rows if r.passed is False]
    errors = {k: v["error"] for k, v in result["sections"].items() if v["error"]}
    print(
        f"\n{sum(r.passed is True for r in all_rows)} pass, {len(failed)} fail, "
        f"{sum(r.passed is None for r in all_rows)} without verdict, "
        f"{len(errors)} section(s) failed {errors or ''}; "
        f"{result['total_seconds']:.0f}s total ({args.mode}, {device})"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"[bench] wrote {args.json}")
    return result


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


if __name__ == "__main__":
    main()
