"""Standalone evaluation: sample n completions per benchmark problem, grade them, and write
summaries plus per-problem records from which every number can be recomputed.

The pieces are reused from training — the HF rollout engine, the math-verify process pool and
the metrics — so a standalone number and a ``val/<benchmark>/acc`` logged during training mean
the same thing. ``python -m sfpo_lab.eval`` (see ``__main__.py``) wires them to the command line.

Output layout under ``out``::

    summary.json                 {"benchmarks": {name: metrics}, "avg": ..., "settings": {...}}
    <name>.summary.json          metrics of one benchmark + settings
    <name>.records.jsonl         one line per problem: id, benchmark, problem, gold, samples,
                                 preds, correct, boxed, truncated, response_tokens
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sfpo_lab.data.prompts import encode_prompts
from sfpo_lab.data.records import Problem
from sfpo_lab.eval.callback import problem_key, validation_seed
from sfpo_lab.eval.metrics import summarize
from sfpo_lab.rewards.pool import MathVerifier
from sfpo_lab.rollout.base import SamplingParams
from sfpo_lab.rollout.hf import HFEngine

POLICY_PREFIX = "policy."
"""Prefix of the policy's HF parameter names in a training checkpoint's ``state_dict``."""


def pass_ks(n: int) -> tuple[int, ...]:
    """The pass@k budgets reported for n samples: 1 and n (just 1 when n == 1)."""
    return tuple(sorted({1, n}))


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    benchmarks: Mapping[str, Sequence[Problem]],
    params: SamplingParams,
    template: str = "authors",
    chat: bool = False,
    seed: int = 0,
    batch_prompts: int = 16,
    verifier: MathVerifier | None = None,
    n_boot: int = 1000,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluate ``model`` on every benchmark: ``params.n`` samples per problem.

    Prompts go to the engine ``batch_prompts`` at a time; sample j of problem i of benchmark b
    draws from its own stream keyed by ``(validation_seed(seed, 0), problem_key(b, i), j)``,
    exactly as the training-time validation at iteration 0 does, so the samples do not depend
    on ``batch_prompts``, on the other benchmarks, and equal a run's iteration-0 validation.

    Args:
        model: a HF causal LM (already on its device, in eval mode or not).
        tokenizer: its tokenizer (``pad_token_id``/``eos_token_id``, ``decode``).
        benchmarks: name -> problems.
        params: sampling settings; ``params.n`` is the n of avg@n.
        template: prompt template name (see ``sfpo_lab.data.templates``).
        chat: wrap prompts with the tokenizer's chat template.
        seed: base seed of the sampling.
        batch_prompts: prompts per ``generate`` call.
        verifier: grading pool to reuse; one with 2 workers is made (and closed) if None.
        n_boot: bootstrap draws for the CI (seeded with ``seed``).

    Returns:
        ``(summary, records)``: ``summary`` is ``metrics.summarize`` output (percent: ``acc`` =
        avg@n pass@1, ``ci_lo``/``ci_hi``, ``pass@k`` for k in (1, n), ``maj@n``; ``avg`` =
        macro average of ``acc``); ``records`` holds one dict per problem, benchmark-major.
    """
    if batch_prompts < 1:
        raise ValueError(f"batch_prompts must be >= 1, got {batch_prompts}")
    engine = HFEngine(model, _pad_id(tokenizer), _eos_ids(model, tokenizer))
    own_verifier = verifier is None
    verifier = verifier or MathVerifier(num_workers=2)
    records: list[dict[str, Any]] = []
    try:
        for name, problems in benchmarks.items():
            if not problems:
                raise ValueError(f"benchmark {name!r} has no problems")
            for start in range(0, len(problems), batch_prompts):
                chunk = list(problems[start : start + batch_prompts])
                keys = [problem_key(name, start + i) for i in range(len(chunk))]
                records += _evaluate_chunk(
                    engine, tokenizer, verifier, name, chunk, params,
                    template, chat, validation_seed(seed, 0), keys,
                )  # fmt: skip
    finally:
        if own_verifier:
            verifier.close()
    return summarize_records(records, params.n, seed=seed, n_boot=n_boot), records


def _evaluate_chunk(
    engine: HFEngine,
    tokenizer: Any,
    verifier: MathVerifier,
    name: str,
    problems: list[Problem],
    params: SamplingParams,
    template: str,
    chat: bool,
    seed: int,
    keys: list[int],
) -> list[dict[str, Any]]:
    """Generate, decode and grade n samples for each problem of one prompt batch."""
    n = params.n
    # encoded as in training: chat templates hold their special tokens, plain prompts get none
    prompt_ids = encode_prompts([p.problem for p in problems], tokenizer, template, chat)
    batch = engine.generate(prompt_ids, params, seed=seed, keys=keys)
    samples = batch.decode_responses(tokenizer)
    grades = verifier.grade_many(samples, [p.answer for p in problems for _ in range(n)])
    lengths = batch.response_lengths.tolist()
    truncated = batch.truncated.tolist()
    out = []
    for i, p in enumerate(problems):
        rows = range(i * n, (i + 1) * n)
        out.append(
            {
                "id": p.id,
                "benchmark": name,
                "problem": p.problem,
                "gold": p.answer,
                "samples": [samples[r] for r in rows],
                "preds": [grades[r].pred for r in rows],
                "correct": [bool(grades[r].correct) for r in rows],
                "boxed": [bool(grades[r].boxed) for r in rows],
                "truncated": [bool(truncated[r]) for r in rows],
                "response_tokens": [int(lengths[r]) for r in rows],
            }
        )
    return out


def summarize_records(
    records: Sequence[Mapping[str, Any]], n: int, seed: int = 0, n_boot: int = 1000
) -> dict[str, Any]:
    """Benchmark metrics recomputed from records alone (what analysis does with the files)."""
    correct: dict[str, list[list[bool]]] = {}
    preds: dict[str, list[list[str | None]]] = {}
    for r in records:
        correct.setdefault(r["benchmark"], []).append(list(r["correct"]))
        preds.setdefault(r["benchmark"], []).append(list(r["preds"]))
    return summarize(correct, ks=pass_ks(n), answers_by_benchmark=preds, n_boot=n_boot, seed=seed)


def write_outputs(
    out: str | os.PathLike[str],
    summary: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
) -> Path:
    """Write ``summary.json`` and, per benchmark, ``<name>.summary.json`` and
    ``<name>.records.jsonl`` under ``out`` (created if missing); returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _dump(out / "summary.json", {**summary, "settings": dict(settings)})
    for name, metrics in summary["benchmarks"].items():
        _dump(out / f"{name}.summary.json", {"benchmark": name, **metrics, "settings": settings})
        with open(out / f"{name}.records.jsonl", "w") as fh:
            for r in records:
                if r["benchmark"] == name:
                    fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return out


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def load_policy_weights(model: torch.nn.Module, ckpt: str | os.PathLike[str]) -> int:
    """Load the ``policy.*`` weights of a Lightning training checkpoint into ``model``.

    Tied output embeddings may be absent from the checkpoint; any other missing or unexpected
    parameter is an error (the checkpoint belongs to another architecture).

    Returns:
        The number of tensors loaded.
    """
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state = state.get("state_dict", state)
    policy = {k[len(POLICY_PREFIX) :]: v for k, v in state.items() if k.startswith(POLICY_PREFIX)}
    if not policy:
        raise ValueError(f"ckpt={str(ckpt)!r}: no '{POLICY_PREFIX}*' weights in its state_dict")
    result = model.load_state_dict(policy, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = sorted(set(result.missing_keys) - tied)
    if missing or result.unexpected_keys:
        raise ValueError(
            f"ckpt={str(ckpt)!r} does not match model: missing {missing[:5]}, "
            f"unexpected {sorted(result.unexpected_keys)[:5]}"
        )
    if tied:
        model.tie_weights()
    return len(policy)


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def _eos_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """EOS ids of the tokenizer and the model's generation config (Qwen chat has two)."""
    ids = [tokenizer.eos_token_id]
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    ids += extra if isinstance(extra, list) else [extra]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))
