"""The grading environment is the authors': math-verify 0.9 with the antlr 4.9.3 build.

On 0.3.3 (what pip picks when the antlr extra cannot be met beside Hydra) a ``\\text{(D)}``
answer matches the gold ``\\text{(C)}`` and every Minerva answer with a unit is rejected.
"""

from __future__ import annotations

import importlib.metadata as metadata

from sfpo_lab.rewards.verify import grade


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in metadata.version(name).split(".")[:3] if x.isdigit())


def test_math_verify_is_0_9_with_the_antlr_4_9_3_runtime():
    assert _version("math-verify") >= (0, 9, 0), metadata.version("math-verify")
    assert _version("latex2sympy2_extended") >= (1, 11, 0)
    assert metadata.version("antlr4-python3-runtime") == "4.9.3"
    extras = [r for r in metadata.requires("math-verify") or [] if "antlr4_9_3" in r]
    assert extras, "math-verify has no antlr4_9_3 extra (older than 0.9?)"
    import antlr4  # the runtime the extra installs, importable

    assert antlr4.__name__ == "antlr4"


def test_text_answers_match_only_their_own_text():
    assert not grade(r"\boxed{\text{(D)}}", r"\text{(C)}").correct
    assert not grade(r"\boxed{\text{west}}", r"\text{east}").correct
    assert not grade(r"\boxed{\text{odd}}", r"\text{even}").correct
    assert grade(r"\boxed{\text{(C)}}", r"\text{(C)}").correct
    assert grade(r"\boxed{\text{even}}", r"\text{even}").correct


def test_numbers_with_units_percent_and_degrees_read_as_numbers():
    assert grade(r"\boxed{1.6 \text{ cm}}", "1.6").correct
    assert grade(r"\boxed{1.6}", r"1.6 \text{ cm}").correct
    assert grade(r"\boxed{8\%}", r"8 \%").correct
    assert grade(r"\boxed{90°}", "90").correct
    assert grade(r"\boxed{204.}", "204").correct
    assert not grade(r"\boxed{1.7 \text{ cm}}", "1.6").correct
