"""A real character-level tokenizer (``tokenizers`` + ``PreTrainedTokenizerFast``) for the toy
model: every character is one token and decoding reproduces the text exactly.

The vocabulary is the printable ASCII characters plus newline and tab (digits, ``+-*=(){}\\``,
letters, punctuation: everything the toy task and the prompt templates use), after the special
tokens ``<pad>`` (0), ``<eos>`` (1), ``<unk>`` (2). Characters outside it encode to ``<unk>``.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
SPECIALS = (PAD, EOS, UNK)
CHARS = string.digits + string.ascii_letters + string.punctuation + " \n\t"


def char_vocab(extra_chars: str = "") -> dict[str, int]:
    """Token -> id: the special tokens, then :data:`CHARS` and ``extra_chars`` (deduplicated)."""
    chars = dict.fromkeys(CHARS + extra_chars)
    return {tok: i for i, tok in enumerate([*SPECIALS, *chars])}


def _core_tokenizer(vocab: dict[str, int]) -> Tokenizer:
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Each character is its own word (the regex also isolates newlines); Fuse joins the tokens
    # back without the spaces a WordLevel decoder would insert.
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return core


def _check_covers(tok: PreTrainedTokenizerFast, save_dir: Path, extra_chars: str) -> None:
    missing = sorted(set(CHARS + extra_chars) - set(tok.get_vocab()))
    if missing:
        raise ValueError(
            f"{save_dir} holds a tokenizer without the characters {missing}; "
            "use another directory (or delete it) to build one with them"
        )


def build_char_tokenizer(save_dir: str | Path, extra_chars: str = "") -> PreTrainedTokenizerFast:
    """Build the character tokenizer into ``save_dir`` (or reload it if already there).

    Args:
        save_dir: directory for ``save_pretrained``; ``AutoTokenizer.from_pretrained(save_dir)``
            loads the result.
        extra_chars: characters to add to the vocabulary (e.g. unicode used by a custom task).

    Returns:
        The tokenizer: ``pad_token="<pad>"`` != ``eos_token="<eos>"``, no BOS, no automatic
        special tokens, ``decode(encode(text)) == text`` for text in the vocabulary.
    """
    save_dir = Path(save_dir)
    if (save_dir / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(save_dir)
        _check_covers(tok, save_dir, extra_chars)
        return tok
    tok = PreTrainedTokenizerFast(
        tokenizer_object=_core_tokenizer(char_vocab(extra_chars)),
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )
    save_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(save_dir)
    return tok
