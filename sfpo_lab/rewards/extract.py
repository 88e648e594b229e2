"""Answer extraction: the content of the last ``\\boxed{...}`` in a completion.

Model outputs are hostile input (1 MB strings, thousands of nested braces, unterminated
boxes), so everything here is linear time and runs in C where it can: ``str.rfind`` finds
the box command and a compiled regex walks the braces.
"""

from __future__ import annotations

import re

BOX_COMMANDS: tuple[str, ...] = ("\\boxed", "\\fbox")
"""LaTeX commands whose argument counts as a final answer."""

MAX_BOX_CHARS = 4096
"""Boxed contents longer than this are treated as unterminated: no real answer is that long,
and it bounds the brace walk on adversarial input."""

_BRACE = re.compile(r"[{}]")
_ARG_START = re.compile(r"[ \t]*\{")


def _brace_after(text: str, index: int) -> int | None:
    """Index of the ``{`` opening a command's argument at ``index`` (spaces allowed), or None."""
    match = _ARG_START.match(text, index)
    return match.end() - 1 if match else None


def _last_command(text: str, commands: tuple[str, ...]) -> int | None:
    """Index of the ``{`` after the last box command whose argument is braced.

    ``\\boxed 5`` and ``\\boxedfoo`` are skipped and the search goes on to the left. Each
    command keeps its own search end, so every character is scanned at most once per command.
    """
    found = {cmd: text.rfind(cmd) for cmd in commands}
    while True:
        cmd, start = max(found.items(), key=lambda item: item[1])
        if start < 0:
            return None
        brace = _brace_after(text, start + len(cmd))
        if brace is not None:
            return brace
        found[cmd] = text.rfind(cmd, 0, start)


def matching_brace(text: str, open_index: int, max_chars: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_index``, or None within ``max_chars``.

    Braces are counted without regard to escapes (``\\{ \\}`` come in pairs in practice),
    as verl and math-verify do.
    """
    depth = 0
    limit = min(len(text), open_index + max_chars + 2)
    for match in _BRACE.finditer(text, open_index, limit):
        depth += 1 if match.group() == "{" else -1
        if depth == 0:
            return match.start()
    return None


def last_boxed(
    text: str, max_chars: int = MAX_BOX_CHARS, commands: tuple[str, ...] = BOX_COMMANDS
) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``.

    A box command without a braced argument (``\\boxed 5``) is skipped. The reward's own
    extraction is :func:`sfpo_lab.rewards.parsing.extract_answer` (the authors' rules by
    default); this function serves the data loaders and the ``strict_box`` parsing.

    Args:
        text: a model completion (any length; cost is linear and mostly in C).
        max_chars: contents longer than this count as unterminated.
        commands: the box commands that count.

    Returns:
        The text between the braces (may be empty), or None when there is no box, or the
        last box is unterminated or longer than ``max_chars``.

    Examples:
        >>> last_boxed(r"so \\boxed{1} or rather \\boxed{\\frac{1}{2}}")
        '\\\\frac{1}{2}'
        >>> last_boxed(r"\\boxed{1") is None
        True
    """
    open_index = _last_command(text, commands)
    if open_index is None:
        return None
    close = matching_brace(text, open_index, max_chars)
    if close is None:
        return None
    return text[open_index + 1 : close]
