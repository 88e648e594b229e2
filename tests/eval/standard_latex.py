"""A rule that writes a gold's value in standard LaTeX, independently of the gold normalisers.

Used by the gold test: an answer a model could write (``4.5 \\cdot 10^{33}`` for the upstream
gold ``4.5e33``) must be graded correct against the normalised gold. Plain-text arithmetic
(e-notation, ``-1./3``, ``62.5%``, ``np.arcsin(10/13)``) is read by sympy's Python-syntax
parser; LaTeX golds are read by math-verify and printed back by ``sympy.latex`` (so ``\\dfrac``,
``\\$``, ``\\!`` and units are gone). Text answers become ``\\text{...}``.
"""

from __future__ import annotations

import re

import sympy
from math_verify import parse

from sfpo_lab.rewards.verify import split_top_level

_PLAIN = re.compile(r"^[\s\d.eE+\-*/()%]*(?:(?:np\.)?[a-z]+\([\s\d.eE+\-*/()]*\)[\s\d.+\-*/()]*)?$")
_THOUSANDS = re.compile(r"^\d{1,3}(,\d{3})+(\.\d+)?$")
_FUNCS = {"arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan, "sqrt": sympy.sqrt}


def _plain_value(text: str) -> str | None:
    """Standard LaTeX of a plain-text arithmetic gold, or None if it is not one."""
    if not re.search(r"\d", text) or not _PLAIN.match(text):
        return None
    percent = text.endswith("%")
    try:
        expr = sympy.parse_expr(text.rstrip("%").replace("np.", ""), local_dict=dict(_FUNCS))
    except (SyntaxError, TypeError, ValueError):
        return None
    if re.search(r"\d[eE][+-]?\d", text) and expr.is_number:
        mantissa, exponent = f"{float(expr):.6e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')} \\cdot 10^{{{int(exponent)}}}"
    if isinstance(expr, sympy.Float) and not percent:
        rational = sympy.nsimplify(expr, rational=True)
        expr = rational if 1 < rational.q < 1000 else expr
    latex = sympy.latex(expr, inv_trig_style="full")
    return latex + "\\%" if percent else latex


def _complex(value: sympy.Expr) -> str:
    """``a + bi`` (math-verify reads ``i`` as the imaginary unit only in that shape)."""
    real, imag = value.as_real_imag()
    sign = "-" if imag < 0 else "+"
    return f"{sympy.latex(real)} {sign} {sympy.latex(abs(imag))}i"


def _latex_value(text: str) -> str:
    """math-verify's reading of a LaTeX gold, printed by ``sympy.latex``."""
    text = text.replace("\\$", "")
    if "\\!" in text and _THOUSANDS.match(re.sub(r"\\!|\s", "", text)):
        text = re.sub(r"\\!|\s|,", "", text)
    parsed = parse(f"${text}$")
    if not parsed:
        return text
    value = parsed[0]
    if isinstance(value, str):
        return f"\\text{{{value}}}"
    if isinstance(value, sympy.Expr) and [s.name for s in value.free_symbols] == ["i"]:
        return _complex(value.subs(next(iter(value.free_symbols)), sympy.I))
    return sympy.latex(value, inv_trig_style="full")


def standard_latex(raw_part: str) -> str:
    """Standard LaTeX for one raw gold part (upstream text, ``$`` and trailing ``.`` stripped)."""
    text = re.sub(r"(?<!\\)\$", "", raw_part).strip().rstrip(".").strip()
    return _plain_value(text) or _latex_value(text)


def standard_latex_parts(raw_parts: list[str]) -> str:
    """Standard LaTeX for a list-valued gold: each top-level part on its own, comma-joined
    (a list of tuples is printed tuple by tuple, as a model would write it)."""
    parts = [p for raw in raw_parts for p in split_top_level(re.sub(r"(?<!\\)\$", "", raw))]
    return ", ".join(standard_latex(p) for p in parts if p)
