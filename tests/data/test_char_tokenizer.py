"""The character tokenizer: exact round trips, specials, save/reload and idempotence."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from sfpo_lab.data.templates import render_prompt
from sfpo_lab.data.tokenizer import CHARS, build_char_tokenizer

TEXTS = [
    "37+45=\\boxed{82}",
    "12*3-(4+5)=\\boxed{-27}",
    render_prompt("Let $f(x) = x^2$; find f'(3) [hint: 6].", "authors"),
    "  two  spaces,\nnewline\ttab  ",
    "",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("char_tok")
    build_char_tokenizer(path)
    return path


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_exact_and_one_token_per_char(tok_dir: Path, text: str):
    tok = build_char_tokenizer(tok_dir)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_special_tokens(tok_dir: Path):
    tok = build_char_tokenizer(tok_dir)
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("<pad>", "<eos>", "<unk>")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.bos_token is None
    assert tok("1+1")["input_ids"] == tok("1+1", add_special_tokens=False)["input_ids"]
    ids = tok("5", add_special_tokens=False)["input_ids"] + [tok.eos_token_id, tok.pad_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "5"
    assert tok.decode(ids) == "5<eos><pad>"
    assert tok.decode(tok("é")["input_ids"]) == "<unk>"
    assert len(tok) == 3 + len(set(CHARS))


def test_padding_a_batch(tok_dir: Path):
    tok = build_char_tokenizer(tok_dir)
    batch = tok(["1+1=", "12+34="], padding=True)
    assert batch["input_ids"][0][-2:] == [0, 0]
    assert batch["attention_mask"][0] == [1, 1, 1, 1, 0, 0]


def test_auto_tokenizer_reloads_the_same_tokenizer(tok_dir: Path):
    built = build_char_tokenizer(tok_dir)
    loaded = AutoTokenizer.from_pretrained(tok_dir)
    assert loaded.get_vocab() == built.get_vocab()
    for text in TEXTS:
        assert loaded(text)["input_ids"] == built(text)["input_ids"]
        assert loaded.decode(loaded(text)["input_ids"]) == text
    assert loaded.pad_token_id != loaded.eos_token_id


def test_building_twice_reuses_the_saved_files(tmp_path: Path):
    first = build_char_tokenizer(tmp_path / "t")
    stamp = (tmp_path / "t" / "tokenizer.json").stat().st_mtime_ns
    second = build_char_tokenizer(tmp_path / "t")
    assert (tmp_path / "t" / "tokenizer.json").stat().st_mtime_ns == stamp
    assert second.get_vocab() == first.get_vocab()


def test_extra_chars(tmp_path: Path):
    tok = build_char_tokenizer(tmp_path / "x", extra_chars="πé")
    assert tok.decode(tok("π≈3, é")["input_ids"]) == "π<unk>3, é"
    with pytest.raises(ValueError, match="without the characters"):
        build_char_tokenizer(tmp_path / "x", extra_chars="≈")
