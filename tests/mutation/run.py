"""Run the mutation check: ``python -m tests.mutation [--only NAME ...]`` (``make mutation``).

1. Copies the package, tests and configs to a scratch directory (tests/mutation/apply.py).
2. Runs every catching test there unmutated: all must pass, else the check means nothing.
3. For each mutation (tests/mutation/mutations.py): applies it, runs only its catching tests
   against the copy and requires at least one of them to fail; restores the file.
4. Prints a table mutation -> catching test and exits 1 if any mutation survived, no longer
   applies or its run errored.

Each pytest run is a fresh ``fork`` of this process, which has already imported the heavy
third-party modules (torch, transformers, lightning) but never ``sfpo_lab`` or the tests, so
every run imports the mutated copy (checked by tests/mutation/guard.py) without paying for
torch again. Subprocesses the tests launch (train.py, gloo ranks) get ``PYTHONPATH`` = the copy.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tests.mutation.apply import REPO, MutationError, applied, make_scratch
from tests.mutation.mutations import MUTATIONS, Mutation

HEAVY = (
    "numpy",
    "torch",
    "torch.distributed",
    "transformers",
    "transformers.models.qwen2.modeling_qwen2",
    "lightning",
    "hydra",
    "omegaconf",
    "math_verify",
    "safetensors.torch",
    "pytest",
)
RUN_TIMEOUT_S = 1200  # per pytest run; a safety net (the slowest catcher takes ~1.5 min)


@dataclass
class Outcome:
    rc: int
    failed: list[str]
    passed: list[str]
    seconds: float
    note: str = ""


def matches(nodeid: str, wanted: str) -> bool:
    return nodeid == wanted or nodeid.startswith(wanted + "[")


def run_pytest(root: Path, test_ids: list[str], out: Path) -> Outcome:
    """pytest on ``test_ids`` in a forked child whose imports resolve to ``root`` only."""
    start = time.perf_counter()
    out.unlink(missing_ok=True)  # never read a previous run's report
    pid = os.fork()
    if pid == 0:  # child: never returns
        rc = 3
        try:
            os.setpgrp()  # its own process group: a timeout ends train.py / gloo ranks too
            rc = _child(root, test_ids, out)
        finally:
            os._exit(rc)
    deadline, status = time.monotonic() + RUN_TIMEOUT_S, None
    try:
        while status is None and time.monotonic() < deadline:
            done, st = os.waitpid(pid, os.WNOHANG)
            status = st if done else None
            time.sleep(0 if done else 0.2)
    finally:
        if status is None:  # timed out or interrupted: end the child's whole group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, 9)
            os.waitpid(pid, 0)
    if status is None:
        return Outcome(124, [], [], time.perf_counter() - start, "timed out")
    rc = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if not out.is_file():
        return Outcome(rc, [], [], seconds, "the pytest child wrote no report")
    rep = json.loads(out.read_text())
    return Outcome(rc, rep["failed"], rep["passed"], seconds)


def _child(root: Path, test_ids: list[str], out: Path) -> int:
    import pytest

    from tests.mutation.guard import Guard

    for name in list(sys.modules):  # forget every project module: import them from root
        if name.split(".")[0] in ("sfpo_lab", "tests", "conftest", "hydra_plugins"):
            del sys.modules[name]
    here = {"", ".", str(REPO)}
    sys.path[:] = [str(root)] + [p for p in sys.path if p not in here]
    importlib.invalidate_caches()
    os.chdir(root)
    guard = Guard(root)
    args = ["-qq", "-x", "--tb=line", "-p", "no:cacheprovider", "-o", "addopts=", *test_ids]
    rc = int(pytest.main(["--strict-markers", *args], plugins=[guard]))
    report = {"failed": guard.failed, "passed": guard.passed, "sfpo_lab": guard.imported_from}
    out.write_text(json.dumps(report))
    return rc


def check_mutation(root: Path, m: Mutation, out: Path) -> tuple[str, str, float]:
    """(result, catching test or reason, seconds) for one mutation."""
    try:
        with applied(root, m):
            res = run_pytest(root, list(m.tests), out)
    except MutationError as err:
        return "NO LONGER APPLIES", str(err), 0.0
    caught = [f for f in res.failed if any(matches(f, t) for t in m.tests)]
    if res.rc == 1 and caught:
        return "caught", caught[0], res.seconds
    if res.rc == 0:
        return "SURVIVED", "all catching tests passed", res.seconds
    return "ERROR", f"pytest exit {res.rc} {res.note} failed={res.failed}", res.seconds


def baseline(root: Path, mutations: list[Mutation], out: Path) -> list[str]:
    """Problems with the unmutated copy: every catching test must exist and pass."""
    ids = sorted({t for m in mutations for t in m.tests})
    res = run_pytest(root, ids, out)
    print(f"baseline (unmutated, {len(ids)} test ids): exit {res.rc} in {res.seconds:.0f} s")
    problems = [f"baseline: {f} failed" for f in res.failed]
    problems += [
        f"baseline: {t} did not run" for t in ids if not any(matches(p, t) for p in res.passed)
    ]
    if res.rc != 0:
        problems.append(f"baseline: pytest exit {res.rc} {res.note}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument(
        "--tests", nargs="+", metavar="NODEID", help="run these tests instead of the listed ones"
    )
    args = parser.parse_args(argv)
    mutations = list(MUTATIONS)
    if args.only:
        unknown = set(args.only) - {m.name for m in mutations}
        if unknown:
            parser.error(f"unknown mutation(s) {sorted(unknown)}; see --list")
        mutations = [m for m in mutations if m.name in args.only]
    if args.tests:
        mutations = [replace(m, tests=tuple(args.tests)) for m in mutations]
    if args.list:
        for m in mutations:
            print(f"{m.name:36s} {m.file:28s} {m.why}")
        return 0
    for name in HEAVY:  # paid once here, not in every forked run
        importlib.import_module(name)
    with tempfile.TemporaryDirectory(prefix="sfpo_mutation_") as tmp:
        root = make_scratch(Path(tmp) / "repo")
        os.environ.update(
            PYTHONPATH=str(root),
            PYTHONDONTWRITEBYTECODE="1",  # a same-size mutation must never hit a stale .pyc
            SFPO_TEST_CACHE=str(Path(tmp) / "cache"),  # one warmed-up toy base for all runs
        )
        sys.dont_write_bytecode = True
        out = Path(tmp) / "report.json"
        problems = baseline(root, mutations, out)
        rows = [] if problems else [(m, *check_mutation(root, m, out)) for m in mutations]
    return report(rows, problems)


def report(rows: list[tuple], problems: list[str]) -> int:
    for p in problems:
        print(p)
    if problems:
        print("the unmutated copy fails its catching tests: the mutation check means nothing")
        return 1
    print(f"\n| mutation | file | result | catching test | s |\n|{'---|' * 5}")
    for m, result, detail, seconds in rows:
        print(f"| {m.name} | {m.file} | {result} | {detail} | {seconds:.0f} |")
    bad = [m.name for m, result, *_ in rows if result != "caught"]
    print(
        f"\n{len(rows) - len(bad)}/{len(rows)} mutations caught" + (f"; NOT: {bad}" if bad else "")
    )
    return 1 if bad else 0
