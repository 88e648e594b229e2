"""pytest plugin of the mutation check: refuses to run tests unless the code under test (the
package and every collected test file) is the scratch copy's, and records each test's
outcome."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest


class Guard:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.failed: list[str] = []
        self.passed: list[str] = []
        self.imported_from: str = ""

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        pkg = Path(importlib.import_module("sfpo_lab").__file__).resolve()
        self.imported_from = str(pkg)
        outside = [str(i.path) for i in session.items if self.root not in i.path.parents]
        if self.root not in pkg.parents or outside:
            raise pytest.UsageError(
                f"mutation guard: sfpo_lab imported from {pkg}, "
                f"tests outside {self.root}: {outside[:3]}"
            )

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed and report.nodeid not in self.failed:
            self.failed.append(report.nodeid)
        elif report.when == "call" and report.passed:
            self.passed.append(report.nodeid)
