"""The standalone evaluation: records and summaries on the tiny toy model over the six real
benchmarks, recomputation of every summary number from the records, checkpoint loading, the
CLI as a subprocess, and bad settings failing before any model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from sfpo_lab.data.records import Problem
from sfpo_lab.eval.__main__ import (
    CONFIG,
    EvalConfigError,
    check_context,
    check_settings,
    load_tokenizer,
)
from sfpo_lab.eval.benchmarks import PAPER_BENCHMARKS, load_benchmark
from sfpo_lab.eval.evaluate import evaluate, load_policy_weights, pass_ks, write_outputs
from sfpo_lab.eval.metrics import avg_at_k, bootstrap_ci, maj_at_k, mean_pass_at_k
from sfpo_lab.model.build import build_causal_lm
from sfpo_lab.model.warmup import toy_base_model
from sfpo_lab.rewards.verify import Grade
from sfpo_lab.rollout.base import SamplingParams

WARMUP_STEPS = 5  # a barely trained base: these tests check plumbing, not accuracy
N, LIMIT = 2, 3
RECORD_FIELDS = {"id", "benchmark", "problem", "gold", "samples", "preds", "correct"}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def toy_dir(cache_dir: Path) -> Path:
    """The toy base as ``model=toy toy_warmup_steps=5`` with ``SFPO_CACHE_DIR=cache_dir`` builds it
    (the default training run's task, composed from conf/)."""
    from sfpo_lab.eval.toy import toy_run

    return toy_base_model(toy_run(str(cache_dir), WARMUP_STEPS), log=lambda *_: None)


class ParityVerifier:
    """Grades by the parity of the response's character codes, so the flags mix 0 and 1
    without a trained model (length parity does not: untrained responses all run to the cap)."""

    def grade_many(self, completions: list[str], golds: list[str]) -> list[Grade]:
        return [
            Grade(correct=sum(map(ord, c)) % 2 == 0, boxed=True, pred=c[:1]) for c in completions
        ]


def _read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluate_six_benchmarks_writes_summaries_and_records(toy_dir, benchmarks_dir, tmp_path):
    from sfpo_lab.rewards.pool import MathVerifier

    model = build_causal_lm(toy_dir)
    tok = AutoTokenizer.from_pretrained(toy_dir)
    sets = {name: load_benchmark(name, benchmarks_dir, LIMIT) for name in PAPER_BENCHMARKS}
    params = SamplingParams(n=N, max_new_tokens=8, top_p=0.7)
    with MathVerifier(num_workers=0) as verifier:
        summary, records = evaluate(
            model, tok, sets, params, template="toy", seed=0, batch_prompts=2, verifier=verifier
        )
    write_outputs(tmp_path, summary, records, {"n": N})

    assert set(summary["benchmarks"]) == set(PAPER_BENCHMARKS)
    top = json.loads((tmp_path / "summary.json").read_text())
    assert top["settings"] == {"n": N} and top["avg"] == pytest.approx(summary["avg"])
    for name in PAPER_BENCHMARKS:
        metrics = json.loads((tmp_path / f"{name}.summary.json").read_text())
        assert metrics["n_problems"] == LIMIT and metrics["n_samples"] == N
        assert {"acc", "ci_lo", "ci_hi", "pass@1", f"pass@{N}", f"maj@{N}"} <= set(metrics)
        rows = _read_records(tmp_path / f"{name}.records.jsonl")
        assert [r["id"] for r in rows] == [p.id for p in sets[name]]
        for r in rows:
            assert set(r) >= RECORD_FIELDS and r["benchmark"] == name and r["gold"]
            assert len(r["samples"]) == len(r["preds"]) == len(r["correct"]) == N


def test_summary_recomputes_from_records(toy_dir, benchmarks_dir, tmp_path):
    model = build_causal_lm(toy_dir)
    tok = AutoTokenizer.from_pretrained(toy_dir)
    sets = {name: load_benchmark(name, benchmarks_dir, 4) for name in ("math500", "amc23")}
    n = 3
    params = SamplingParams(n=n, max_new_tokens=6)
    summary, records = evaluate(
        model, tok, sets, params, template="toy", seed=1, batch_prompts=3,
        verifier=ParityVerifier(),
    )  # fmt: skip
    write_outputs(tmp_path, summary, records, {})

    accs = []
    for name in sets:
        rows = _read_records(tmp_path / f"{name}.records.jsonl")
        correct = [r["correct"] for r in rows]
        metrics = json.loads((tmp_path / f"{name}.summary.json").read_text())
        assert metrics["acc"] == pytest.approx(avg_at_k(correct))
        assert metrics["pass@1"] == pytest.approx(metrics["acc"])
        for k in pass_ks(n):
            assert metrics[f"pass@{k}"] == pytest.approx(mean_pass_at_k(correct, k))
        assert metrics[f"maj@{n}"] == pytest.approx(maj_at_k([r["preds"] for r in rows], correct))
        lo, hi = bootstrap_ci(correct, seed=1)
        assert (metrics["ci_lo"], metrics["ci_hi"]) == pytest.approx((lo, hi))
        accs.append(metrics["acc"])
    assert 0 < sum(accs) < 100 * len(accs)  # the flags really mix
    top = json.loads((tmp_path / "summary.json").read_text())
    assert top["avg"] == pytest.approx(sum(accs) / len(accs))


def test_evaluate_is_reproducible_given_seed(toy_dir, benchmarks_dir):
    model = build_causal_lm(toy_dir)
    tok = AutoTokenizer.from_pretrained(toy_dir)
    sets = {"aime24": load_benchmark("aime24", benchmarks_dir, 2)}
    params = SamplingParams(n=2, max_new_tokens=6)
    runs = [evaluate(model, tok, sets, params, "toy", seed=3, verifier=ParityVerifier())[1]
            for _ in range(2)]  # fmt: skip
    assert runs[0] == runs[1]


def test_load_policy_weights_from_lightning_checkpoint(toy_dir, tmp_path):
    trained = build_causal_lm(toy_dir)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)
    state = {f"policy.{k}": v for k, v in trained.state_dict().items()}
    torch.save({"state_dict": {**state, "ref.other": torch.zeros(1)}}, tmp_path / "last.ckpt")

    fresh = build_causal_lm(toy_dir)
    assert load_policy_weights(fresh, tmp_path / "last.ckpt") == len(state)
    for (name, a), b in zip(trained.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    torch.save({"state_dict": {"policy.nope": torch.zeros(1)}}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="does not match model"):
        load_policy_weights(fresh, tmp_path / "bad.ckpt")


def _cfg(*overrides: str):
    return OmegaConf.merge(OmegaConf.load(CONFIG), OmegaConf.from_dotlist(list(overrides)))


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        (["model=toy", "benchmarks=[math500,nope]"], "benchmarks"),
        (["model=./no/such/dir"], "model"),
        (["model=toy", "ckpt=/no/such.ckpt"], "ckpt"),
        (["model=toy", "limit=some"], "limit"),
        (["model=toy", "limit=0"], "limit"),
        (["model=org/name", "benchmarks=[toy]"], "benchmarks"),
        ([], "model"),
    ],
)
def test_bad_settings_fail_naming_the_setting(overrides, setting):
    with pytest.raises(EvalConfigError, match=rf"^{setting}"):
        check_settings(_cfg(*overrides))


@pytest.mark.slow
def test_cli_subprocess_with_field_mapped_file(toy_dir, cache_dir, benchmarks_dir, tmp_path):
    """``python -m sfpo_lab.eval`` on the cached toy base: the toy benchmark plus a file in
    another layout (question / GSM8K-style solution ending in ``#### n``) by field mapping
    alone; the quoted override is how a shell passes ``after:####`` through Hydra."""
    held = tmp_path / "held.jsonl"
    rows = [{"q": f"{a}+{a}", "sol": f"{a} and {a}: {2 * a}\n#### {2 * a}", "uid": f"h{a}"}
            for a in range(4)]  # fmt: skip
    held.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, SFPO_CACHE_DIR=str(cache_dir), SFPO_DATA_DIR=str(benchmarks_dir),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")  # fmt: skip
    cmd = [
        sys.executable, "-m", "sfpo_lab.eval", "model=toy", f"toy_warmup_steps={WARMUP_STEPS}",
        "benchmarks=[toy]", f"file={held}", "problem_field=q", "answer_field=sol",
        'answer_extraction="after:####"', "id_field=uid", "name=held", "n=2", "limit=3",
        "max_new_tokens=6", "reward_workers=1", f"out={out}",
        f"hydra.run.dir={tmp_path / 'hydra'}",  # not under the repo's outputs/
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warm-up" not in proc.stdout  # reused the cached base
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["benchmarks"]) == {"toy", "held"}
    assert summary["settings"]["template"] == "toy"
    held_rows = _read_records(out / "held.records.jsonl")
    assert [(r["id"], r["gold"]) for r in held_rows] == [("h0", "0"), ("h1", "2"), ("h2", "4")]


def test_prompt_plus_response_past_the_context_fails_before_the_model_loads(
    toy_dir, benchmarks_dir
):
    """The toy model has 128 positions: real benchmark prompts do not fit, toy prompts do."""
    tok = load_tokenizer(_cfg(f"model={toy_dir}"), str(toy_dir))
    sets = {"aime24": load_benchmark("aime24", benchmarks_dir, 3)}
    lengths = [len(tok(f"{p.problem}=")["input_ids"]) for p in sets["aime24"]]
    longest = max(lengths)
    pid = sets["aime24"][lengths.index(longest)].id
    cfg = _cfg(f"model={toy_dir}", "max_new_tokens=6")
    with pytest.raises(EvalConfigError) as info:
        check_context(cfg, str(toy_dir), tok, sets, "toy")
    assert str(info.value).startswith(
        f"max_new_tokens: prompt {pid!r} of 'aime24'={longest} + max_new_tokens=6 = "
        f"{longest + 6} tokens > the model's context 128"
    )
    short = {"toy": [Problem(id="t0", problem="1" * 121, answer="1")]}  # 122 tokens + 6 = 128
    check_context(cfg, str(toy_dir), tok, short, "toy")
    with pytest.raises(EvalConfigError, match="= 129 tokens"):
        check_context(_cfg(f"model={toy_dir}", "max_new_tokens=7"), str(toy_dir), tok, short, "toy")


def test_chat_without_a_chat_template_fails_naming_chat(toy_dir):
    with pytest.raises(EvalConfigError, match="^chat=true, but the tokenizer of"):
        load_tokenizer(_cfg(f"model={toy_dir}", "chat=true"), str(toy_dir))


# Held-out files written the way public sets write their answers: (rows, extraction, golds).
FORMATS = {
    "gsm8k": (
        [{"question": "3+4", "answer": "3 + 4 = <<3+4=7>>7 eggs.\n#### 7"},
         {"question": "999+1", "answer": "She pays $<<999+1=1000>>1000.\n#### 1,000"}],
        "after:####", ["7", "1000"],
    ),
    "answer_is": (
        [{"question": "9+9", "answer": "Nine and nine. The answer is 18."},
         {"question": "5-7", "answer": "Five minus seven. The answer is -2."}],
        "regex:answer is (\\S+)", ["18", "-2"],
    ),
    "math": (
        [{"question": "1/2+1/2", "answer": "Adding, $\\boxed{1}$."},
         {"question": "half", "answer": "It is $\\boxed{\\frac{1}{2}}$."}],
        "last_boxed", ["1", "\\frac{1}{2}"],
    ),
    "number_at_end": (
        [{"question": "2*3", "answer": "Two threes make 6"},
         {"question": "1000+250", "answer": "In all 1,250"}],
        "last_number", ["6", "1250"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_held_out_file_in_each_format_evaluates_by_field_mapping(fmt, toy_dir, tmp_path):
    """End to end (``run``, as the CLI calls it): golds equal the answers the format marks."""
    from sfpo_lab.eval.__main__ import run

    rows, extraction, golds = FORMATS[fmt]
    held = tmp_path / f"{fmt}.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(f"model={toy_dir}", f"file={held}", "problem_field=question",
               f"answer_extraction={extraction}", "template=toy", "n=1", "max_new_tokens=4",
               "reward_workers=0", "n_boot=10", f"out={tmp_path / 'out'}")  # fmt: skip
    del cfg["hydra"]
    summary = run(cfg)
    assert list(summary["benchmarks"]) == [fmt]
    records = _read_records(tmp_path / "out" / f"{fmt}.records.jsonl")
    assert [r["gold"] for r in records] == golds
    bad = tmp_path / "bad.jsonl"
    bad.write_text(held.read_text() + json.dumps({"question": "q", "answer": "no answer"}) + "\n")
    cfg.file = str(bad)
    with pytest.raises(EvalConfigError) as info:
        run(cfg)
    assert str(info.value).startswith(f"{bad}: row 3: answer_extraction={extraction!r} found no")
