"""The project root: the directory holding ``train.py`` and ``pyproject.toml``.

Relative defaults that belong to the project, not to the shell's working directory
(``paths.root_dir``, and through it ``paths.cache_dir`` = ``<root>/.cache``), are read from
``$PROJECT_ROOT`` in the configs (``${oc.env:PROJECT_ROOT,.}``). :func:`setup_root` sets it
before Hydra composes, so ``python /abs/path/train.py`` or ``python -m sfpo_lab.eval`` started
from any directory caches models in the same ``.cache``. An exported ``PROJECT_ROOT`` (or
``SFPO_CACHE_DIR`` for the cache alone) still wins.
"""

from __future__ import annotations

import os
from pathlib import Path

MARKERS = ("train.py", "pyproject.toml")
"""Files whose directory is the project root."""


def project_root() -> Path:
    """The directory holding :data:`MARKERS` above this package; the working directory when
    sfpo_lab is installed without its project (a wheel in site-packages)."""
    here = Path(__file__).resolve().parents[2]
    return here if all((here / m).is_file() for m in MARKERS) else Path.cwd()


def setup_root() -> Path:
    """Set ``$PROJECT_ROOT`` to :func:`project_root` unless it is set already; returns it."""
    root = os.environ.get("PROJECT_ROOT") or str(project_root())
    os.environ["PROJECT_ROOT"] = root
    return Path(root)
