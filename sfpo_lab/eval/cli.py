"""The command line around ``python -m sfpo_lab.eval``: its ``--help`` (every setting of
``conf/eval.yaml`` with the comment that explains it), and the tidying of Hydra's run dir (an
evaluation written elsewhere with ``out=`` leaves no empty ``outputs/eval/runs/<time>``)."""

from __future__ import annotations

import re
from pathlib import Path

from sfpo_lab.run.rundir import created_by_this_launch, remove_if_empty

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<value>[^#]*)(#\s?(?P<note>.*))?$")

HEADER = """\
python -m sfpo_lab.eval: evaluate a model, or a training run's checkpoint, on benchmarks
(avg@n accuracy with a 95% CI, pass@k, maj@n; summaries and per-problem records under out).

  python -m sfpo_lab.eval ckpt=<run>/best.ckpt                 # that run, as it validated
  python -m sfpo_lab.eval model=smollm2-135m-instruct benchmarks=[gsm8k] limit=20 n=2
  python -m sfpo_lab.eval model=<dir> file=held.jsonl problem_field=q answer_field=a

== Settings (key=value; conf/eval.yaml, docs/eval.md) ==
"""
FOOTER = """
Show the composed settings: python -m sfpo_lab.eval [key=value ...] --cfg job
Hydra's own flags:          python -m sfpo_lab.eval --hydra-help
"""


def describe_settings(yaml_text: str) -> list[tuple[str, str, str]]:
    """``(key, default, meaning)`` for each setting of an eval YAML file, from its comments.

    A key's meaning is the comment block directly above it, its inline comment and the
    comment lines that continue it; ``standalone.*`` keys are listed under their dotted name.
    The ``hydra`` block is Hydra's, not a setting, and is left out. ``default`` is the value
    as written (an interpolation is shown as ``(computed)``).
    """
    rows: list[tuple[str, str, str]] = []
    above: list[str] = []
    parent = ""
    for line in yaml_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            note = stripped.lstrip("#").strip()
            if rows and not above and line.startswith(" " * 8) and rows[-1][2]:
                key, default, meaning = rows[-1]  # a continued inline comment
                rows[-1] = (key, default, f"{meaning} {note}")
            else:
                above.append(note)
            continue
        m = _KEY.match(line)
        if not stripped or m is None:
            above = []
            continue
        indent, key = len(m["indent"]), m["key"]
        if indent == 0:
            parent = key
        if parent == "hydra" or indent > 2:
            above = []
            continue
        name = key if indent == 0 else f"{parent}.{key}"
        value = m["value"].strip()
        default = "(computed)" if "${" in value else value
        meaning = "; ".join(s for s in (m["note"], " ".join(above)) if s)
        rows.append((name, default, meaning))
        above = []
    return rows


def help_text(yaml_text: str) -> str:
    """The whole ``--help`` text: :data:`HEADER`, one line per setting, :data:`FOOTER`."""
    lines = []
    for key, default, meaning in describe_settings(yaml_text):
        lines.append(f"  {key + ('=' + default if default else ''):<32} {meaning}".rstrip())
    return HEADER + "\n".join(lines) + "\n" + FOOTER


def hydra_help(yaml_text: str) -> dict[str, str]:
    """``hydra.help`` for the stored config: the template is plain text (``$`` and ``${``
    escaped so Hydra and OmegaConf print it as it is)."""
    text = help_text(yaml_text).replace("${", "\\${").replace("$", "$$")
    return {"app_name": "sfpo_lab.eval", "header": "", "footer": "", "template": text}


def tidy_run_dir(run_dir: str | Path, out: str | Path) -> None:
    """Remove Hydra's run dir (and the ``outputs/eval/runs`` above it) when this launch made it
    and left it empty: the evaluation went to another ``out=``, or stopped at a bad setting."""
    path = Path(run_dir).absolute()
    if path == Path(out).expanduser().absolute() and any(path.iterdir()):
        return
    for _ in range(4):  # <time>, runs, eval, outputs: only those still empty and made now
        if not path.is_dir() or not created_by_this_launch(path):
            return
        remove_if_empty(path)
        path = path.parent
