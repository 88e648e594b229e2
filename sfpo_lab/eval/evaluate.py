"""Standalone evaluation: sample n completions per benchmark problem, grade them, and write
summaries plus per-problem records from which every number can be recomputed.

The pieces are reused from training — the HF rollout engine, the math-verify process pool and
the metrics — so a standalone number and a ``val/<benchmark>/acc`` logged during training mean
the same thing. ``python -m sfpo_lab.eval`` (see ``__main__.py``) wires them to the command line.

A training checkpoint carries its run's config (``sfpo_config``): :func:`apply_run` fills the
evaluation settings from it, so evaluating a run's ``best.ckpt`` repeats that run's validation.

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
from omegaconf import DictConfig, OmegaConf

from sfpo_lab.data.prompts import encode_prompts
from sfpo_lab.data.records import Problem
from sfpo_lab.eval.callback import problem_key, validation_seed
from sfpo_lab.eval.metrics import summarize
from sfpo_lab.rewards.pool import MathVerifier
from sfpo_lab.rollout.base import SamplingParams, stop_token_ids
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
    iteration: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluate ``model`` on every benchmark: ``params.n`` samples per problem.

    Prompts go to the engine ``batch_prompts`` at a time; sample j of problem i of benchmark b
    draws from its own stream keyed by ``(validation_seed(seed, iteration), problem_key(b, i),
    j)``, exactly as the training-time validation at ``iteration`` does, so the samples do not
    depend on ``batch_prompts`` or on the other benchmarks, and a run's checkpoint evaluated
    with its seed and iteration draws its own validation's samples.

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
        iteration: the training iteration whose validation stream to draw (0 for a base).

    Returns:
        ``(summary, records)``: ``summary`` is ``metrics.summarize`` output (percent: ``acc`` =
        avg@n pass@1, ``ci_lo``/``ci_hi``, ``pass@k`` for k in (1, n), ``maj@n``; ``avg`` =
        macro average of ``acc``); ``records`` holds one dict per problem, benchmark-major.
    """
    if batch_prompts < 1:
        raise ValueError(f"batch_prompts must be >= 1, got {batch_prompts}")
    eos = stop_token_ids(model, tokenizer)  # as the training engines stop
    engine = HFEngine(model, _pad_id(tokenizer), eos)
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
                    template, chat, validation_seed(seed, iteration), keys,
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


def load_policy_weights(
    model: torch.nn.Module, ckpt: str | os.PathLike[str] | Mapping[str, Any]
) -> int:
    """Load the ``policy.*`` weights of a Lightning training checkpoint into ``model``.

    Tied output embeddings may be absent from the checkpoint; any other missing or unexpected
    parameter is an error (the checkpoint belongs to another architecture).

    Args:
        model: the HF model to load into.
        ckpt: a checkpoint file, or its already loaded dict (``read_checkpoint``).

    Returns:
        The number of tensors loaded.
    """
    loaded = ckpt if isinstance(ckpt, Mapping) else read_checkpoint(ckpt)
    name = "<loaded checkpoint>" if isinstance(ckpt, Mapping) else str(ckpt)
    state = loaded.get("state_dict", loaded)
    policy = {k[len(POLICY_PREFIX) :]: v for k, v in state.items() if k.startswith(POLICY_PREFIX)}
    if not policy:
        raise ValueError(f"ckpt={name!r}: no '{POLICY_PREFIX}*' weights in its state_dict")
    result = model.load_state_dict(policy, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = sorted(set(result.missing_keys) - tied)
    if missing or result.unexpected_keys:
        raise ValueError(
            f"ckpt={name!r} does not match model: missing {missing[:5]}, "
            f"unexpected {sorted(result.unexpected_keys)[:5]}"
        )
    if tied:
        model.tie_weights()
    return len(policy)


def read_checkpoint(path: str | os.PathLike[str], trust: bool = False) -> dict[str, Any]:
    """A training checkpoint as a dict without optimizer state (a file's tensors memory-mapped,
    not copied; a directory, FSDP2's sharded format, consolidated on the host), read through
    ``sfpo_lab.checkpointing.load_full_checkpoint``: its digest is checked and every pickle in
    it is read with ``torch.load(weights_only=True)``, so no code from the file runs (``trust``:
    the user's ``trust_checkpoint=true``, which unpickles it fully).

    Raises:
        ValueError: naming ``ckpt`` when it is not a readable checkpoint, is corrupt, or would
            run code when read (``CheckpointRefused``, one line).
    """
    from sfpo_lab.checkpointing import check_checkpoint, load_full_checkpoint

    path = Path(path)
    try:
        check_checkpoint(path, trust=trust, setting="ckpt")  # names ckpt=... in its one line
        loaded = load_full_checkpoint(path, weights_only=True, trust=trust)
    except ValueError:
        raise
    except Exception as e:  # truncated / not a torch file / no shards: several types
        raise ValueError(f"ckpt={str(path)!r}: not a readable checkpoint ({e})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"ckpt={str(path)!r}: not a Lightning checkpoint (a {type(loaded)})")
    return loaded


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


# --------------------------------------------------------------------------- a run's checkpoint

IDENTITY = ("model", "tokenizer", "template", "chat", "toy_warmup_steps")
"""Settings that say which model is evaluated: one that contradicts the run is an error."""
VALIDATION = ("benchmarks", "limit", "data_dir", "n", "temperature", "top_p", "top_k")
VALIDATION += ("max_new_tokens", "seed", "answer_parsing")
"""Settings of the run's validation: unset ones take its values, others are reported."""


def run_values(run: Any) -> dict[str, Any]:
    """The eval settings a run's own validation used (``run``: its ``RunConfig``)."""
    toy = run.model.name_or_path is None and run.model.gguf is None
    v = run.val
    return {
        "model": "toy" if toy else run.model.name_or_path or run.model.gguf,
        "tokenizer": run.model.tokenizer,
        "template": run.data.template,
        "chat": run.model.chat_template,
        "toy_warmup_steps": run.model.warmup.steps if toy and run.model.warmup else None,
        "benchmarks": list(v.benchmarks),
        "limit": v.limit,
        "data_dir": v.data_dir,
        "n": v.n,
        "temperature": v.temperature,
        "top_p": v.top_p,
        "top_k": 0,  # validation samples without top-k (ValidationCallback's SamplingParams)
        "max_new_tokens": v.max_new_tokens or run.rollout.max_new_tokens,
        "seed": run.seed,
        "answer_parsing": run.rollout.answer_parsing,
    }


def saved_run(ckpt: dict[str, Any], path: str) -> Any | None:
    """The ``RunConfig`` saved in a training checkpoint (``None``: it holds none)."""
    from sfpo_lab.config import ConfigError, to_run_config

    saved = (ckpt.get("sfpo_config") or {}).get("run")
    if saved is None:
        return None
    try:
        return to_run_config(OmegaConf.create(saved))
    except ConfigError as e:
        raise ValueError(
            f"ckpt={path!r}: its saved run config does not fit this sfpo_lab ({e})"
        ) from None


def _contradiction(key: str, given: Any, run: Any, values: dict[str, Any]) -> bool:
    ours = values[key]
    if key == "model":  # the run's model may be named by its path / hub id or model.name
        return given not in {ours, run.model.name}
    if key == "tokenizer":  # unset in the run: the model's own tokenizer
        return given not in {ours, run.model.name_or_path} - {None}
    if key == "chat":
        return bool(given) != bool(ours)
    if key == "toy_warmup_steps":
        return ours is None or int(given) != int(ours)
    return str(given) != str(ours)


def apply_run(cfg: DictConfig, run: Any, path: str) -> dict[str, tuple[Any, Any]]:
    """Fill ``cfg``'s unset settings from the run; refuse an identity setting that contradicts
    it. Returns the validation settings explicitly set to another value: ``{key: (ours, run's)}``."""
    values = run_values(run)
    for key in IDENTITY:
        given = cfg[key]
        if given is not None and _contradiction(key, given, run, values):
            raise ValueError(
                f"{key}={given!r} contradicts the run of ckpt={path!r}, which has "
                f"{key}={values[key]!r} (model.name={run.model.name!r}); leave {key}= out to "
                "evaluate the run as it was trained"
            )
        if key == "model" or given is None:
            cfg[key] = values[key]
    differs = {}
    for key in VALIDATION:
        if key == "benchmarks" and cfg.benchmarks is None and cfg.file is not None:
            continue  # file=... alone: only that file, as without a run
        given = cfg[key]
        if given is None:
            cfg[key] = values[key]
        elif key != "data_dir" and _differs(given, values[key]):  # a dir moves, data stays
            differs[key] = (given, values[key])
    return differs


def _differs(given: Any, ours: Any) -> bool:
    if OmegaConf.is_config(given):
        given = OmegaConf.to_container(given)
    if isinstance(ours, float) or isinstance(given, float):
        return float(given) != float(ours)
    if isinstance(ours, list):
        return [given] != ours if isinstance(given, str) else list(given) != ours
    return given != ours


def run_validation(ckpt: dict[str, Any] | None, iteration: int) -> dict[str, float]:
    """The run's own validation metrics at ``iteration`` as its checkpoint recorded them."""
    for state in ((ckpt or {}).get("callbacks") or {}).values():
        if isinstance(state, dict) and isinstance(state.get("history"), list):
            for row in reversed(state["history"]):
                if int(row.get("iteration", -1)) == iteration:
                    return dict(row)
    return {}
