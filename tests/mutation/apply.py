"""Scratch copy of the repository and exact-text mutations applied to it, one at a time."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.mutation.mutations import Mutation

REPO = Path(__file__).resolve().parents[2]
# what the catching tests import or launch: the package, the tests, train.py and its configs
COPIED = ("sfpo_lab", "tests", "conf", "hydra_plugins", "train.py", "pyproject.toml")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".cache", "outputs", "*.egg-info")


class MutationError(RuntimeError):
    """A mutation that cannot be applied: its exact text is gone or ambiguous."""


def make_scratch(dest: Path, repo: Path = REPO) -> Path:
    """Copy the parts of ``repo`` the tests need into ``dest`` (which must not exist)."""
    dest.mkdir(parents=True)
    for name in COPIED:
        src = repo / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORED)
        elif src.is_file():
            shutil.copy2(src, dest / name)
    return dest


def mutated_text(text: str, mutation: Mutation) -> str:
    """``text`` with the mutation's ``old`` replaced by ``new``; ``old`` must occur once."""
    count = text.count(mutation.old)
    if count != 1:
        found = "not found" if count == 0 else f"found {count} times"
        raise MutationError(
            f"mutation no longer applies: {mutation.name}: the text to replace in "
            f"{mutation.file} is {found} (update tests/mutation/mutations.py)"
        )
    return text.replace(mutation.old, mutation.new)


@contextmanager
def applied(root: Path, mutation: Mutation) -> Iterator[Path]:
    """Apply ``mutation`` inside the scratch copy ``root``; restore the file afterwards."""
    path = root / mutation.file
    if not path.is_file():
        raise MutationError(f"mutation no longer applies: {mutation.name}: no {mutation.file}")
    original = path.read_text()
    path.write_text(mutated_text(original, mutation))
    try:
        yield path
    finally:
        path.write_text(original)
