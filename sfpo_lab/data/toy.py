"""The embedded toy verifiable task: integer arithmetic with difficulty knobs.

Problems like ``"17+25"`` (prompt ``"17+25="`` with the ``"toy"`` template), gold ``"42"``,
answered as ``\\boxed{42}`` so the real math-verify reward path grades them. A stable hash
(independent of the seed) puts a fraction of all problems into a held-out split that neither
the warm-up nor RL ever sees, so runs with different seeds are evaluated on the same held-out
problems. What is hashed is the ``split`` rule:

- ``text`` (the committed CPU reproduction's split): the problem string. Reorderings of one
  problem (``3+5-2``, ``5+3-2``, ``5-2+3``) land on both sides independently, so most
  held-out a±b±c problems have a training twin with the same signed terms.
- ``terms``: the multiset of signed terms (:func:`terms_key`), so every reordering of a
  problem, and ``x-0`` / ``x+0``, lands on the same side: no held-out problem shares its
  signed terms (hence its answer by the same computation) with a training problem.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass
from functools import cached_property

from sfpo_lab.data.records import Problem

OPS = "+-*"
MAX_ENUMERATED = 200_000
"""Problem spaces larger than this are sampled (``size`` problems, default this many)."""

_SPLIT_SALT = b"sfpo-toy-split-v1"
SPLITS = ("text", "terms")
"""Held-out rules (module docstring); ``text`` is the default so that older configs, which
have no ``data.toy.split``, resolve to the split they ran with."""


def evaluate(operands: tuple[int, ...], ops: tuple[str, ...]) -> int:
    """Value of ``operands[0] ops[0] operands[1] ...`` with ``*`` binding tighter than ``+ -``.

    >>> evaluate((2, 3, 4), ("+", "*"))
    14
    """
    terms, signs, product = [], [1], operands[0]
    for op, x in zip(ops, operands[1:], strict=True):
        if op == "*":
            product *= x
        else:
            terms.append(product)
            signs.append(1 if op == "+" else -1)
            product = x
    terms.append(product)
    return sum(s * t for s, t in zip(signs, terms, strict=True))


def render(operands: tuple[int, ...], ops: tuple[str, ...]) -> str:
    """``(37, 45), ("+",)`` -> ``"37+45"``."""
    out = [str(operands[0])]
    for op, x in zip(ops, operands[1:], strict=True):
        out += [op, str(x)]
    return "".join(out)


def split_score(problem: str) -> float:
    """A stable pseudo-random number in [0, 1) for ``problem`` (same on every machine/run)."""
    digest = hashlib.sha256(_SPLIT_SALT + problem.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def terms_key(problem: str) -> str:
    """Canonical multiset of signed terms: ``"5+3-2"`` and ``"3-2+5"`` -> ``"+3 +5 -2"``.

    A term is a maximal product (``*`` binds tighter), written as its sorted factors; a term
    whose value is 0 counts as ``+`` (``x-0`` is ``x+0``). Two problems with the same key
    have the same answer by the same sums.
    """
    terms, sign, factors, number = [], "+", [], ""
    for ch in problem + "+":
        if ch.isdigit():
            number += ch
            continue
        factors.append(int(number))
        number = ""
        if ch == "*":
            continue
        zero = 0 in factors
        terms.append(("+" if zero else sign) + "*".join(str(f) for f in sorted(factors)))
        sign, factors = ch, []
    return " ".join(sorted(terms))


def split_key(problem: str, split: str) -> str:
    """What the ``split`` rule hashes: the text (``text``) or :func:`terms_key` (``terms``)."""
    return problem if split == "text" else terms_key(problem)


def sft_target(problem: Problem) -> str:
    """The completion the supervised warm-up teaches: exactly ``\\boxed{<answer>}``."""
    return f"\\boxed{{{problem.answer}}}"


@dataclass(frozen=True)
class ToyArithmetic:
    """Arithmetic problems ``a op b op c ...`` with integer answers.

    Attributes:
        ops: operators to draw from, a non-empty subset of ``"+-*"``.
        num_operands: operands per problem (>= 2); more operands = harder.
        max_operand: largest operand (inclusive); 9 = one digit, 99 = two digits.
        heldout_frac: fraction of problems in the held-out split (by a hash, see ``split``).
        seed: seeds the sample when the problem space is larger than ``size``.
        min_operand: smallest operand (inclusive, >= 0).
        size: number of distinct problems to draw; None enumerates the whole space
            (or samples ``MAX_ENUMERATED`` problems when it is larger).
        split: held-out rule, ``text`` or ``terms`` (module docstring).
    """

    ops: str = "+"
    num_operands: int = 2
    max_operand: int = 29
    heldout_frac: float = 0.2
    seed: int = 0
    min_operand: int = 0
    size: int | None = None
    split: str = "text"

    def __post_init__(self) -> None:
        if not self.ops or set(self.ops) - set(OPS):
            raise ValueError(f"data.toy.ops={self.ops!r}: use a non-empty subset of {OPS!r}")
        if self.num_operands < 2:
            raise ValueError(f"data.toy.num_operands={self.num_operands}: must be >= 2")
        if not 0 <= self.min_operand <= self.max_operand:
            raise ValueError(
                f"data.toy.max_operand={self.max_operand}, min_operand={self.min_operand}: "
                "need 0 <= min_operand <= max_operand"
            )
        if not 0.0 < self.heldout_frac < 1.0:
            raise ValueError(f"data.toy.heldout_frac={self.heldout_frac}: must be in (0, 1)")
        if self.split not in SPLITS:
            raise ValueError(f"data.toy.split={self.split!r}: use one of {', '.join(SPLITS)}")
        if self.size is not None and self.size < 1:
            raise ValueError(f"data.toy.size={self.size}: must be >= 1 or null")

    @property
    def space_size(self) -> int:
        """Number of distinct problems the knobs allow."""
        values = self.max_operand - self.min_operand + 1
        return values**self.num_operands * len(set(self.ops)) ** (self.num_operands - 1)

    def _enumerate(self) -> list[str]:
        values = range(self.min_operand, self.max_operand + 1)
        op_seqs = list(itertools.product(sorted(set(self.ops)), repeat=self.num_operands - 1))
        operand_seqs = itertools.product(values, repeat=self.num_operands)
        return [render(a, o) for a in operand_seqs for o in op_seqs]

    def _sample(self, count: int) -> list[str]:
        rng, seen = random.Random(self.seed), set()
        ops = sorted(set(self.ops))
        while len(seen) < count:
            operands = tuple(
                rng.randint(self.min_operand, self.max_operand) for _ in range(self.num_operands)
            )
            seen.add(render(operands, tuple(rng.choice(ops) for _ in operands[1:])))
        return sorted(seen)

    @cached_property
    def _all(self) -> list[Problem]:
        """Every problem of the task, ordered by split score (a fixed pseudo-random order)."""
        space = self.space_size
        target = self.size if self.size is not None else min(space, MAX_ENUMERATED)
        texts = self._enumerate() if target >= space else self._sample(target)
        texts.sort(key=split_score)
        return [Problem(id=t, problem=t, answer=str(_value(t)), source="toy") for t in texts]

    def problems(self) -> list[Problem]:
        """All problems (train + held-out)."""
        return list(self._all)

    def is_heldout(self, problem: str) -> bool:
        """Whether the problem text belongs to the held-out split."""
        return split_score(split_key(problem, self.split)) < self.heldout_frac

    def train(self) -> list[Problem]:
        """Training problems (never held out)."""
        return [p for p in self._all if not self.is_heldout(p.problem)]

    def heldout(self, limit: int | None = None) -> list[Problem]:
        """Held-out problems in a fixed pseudo-random order, so ``limit`` takes a fair sample
        that is the same for every seed."""
        held = [p for p in self._all if self.is_heldout(p.problem)]
        return held[:limit] if limit is not None else held

    @staticmethod
    def sft_target(problem: Problem) -> str:
        """See :func:`sft_target`."""
        return sft_target(problem)


def _value(text: str) -> int:
    """Evaluate a rendered toy problem (digits and ``+ - *`` only)."""
    operands, ops, number = [], [], ""
    for ch in text:
        if ch.isdigit():
            number += ch
        else:
            operands.append(int(number))
            ops.append(ch)
            number = ""
    operands.append(int(number))
    return evaluate(tuple(operands), tuple(ops))
