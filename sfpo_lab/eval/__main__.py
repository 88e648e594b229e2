"""``python -m sfpo_lab.eval``: evaluate a model (and optionally a training checkpoint) on
benchmarks and write summaries + per-problem records (settings: ``conf/eval.yaml``).

    python -m sfpo_lab.eval model=Qwen/Qwen2.5-Math-1.5B ckpt=outputs/.../best.ckpt
    python -m sfpo_lab.eval model=toy benchmarks=[math500,aime24] n=2 limit=3 out=/tmp/ev
    python -m sfpo_lab.eval model=<dir> file=held.jsonl problem_field=q answer_field=a

Every setting is checked, and every benchmark loaded, before the model is: a bad setting
fails in seconds with a message naming it.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from sfpo_lab.data.records import Problem
from sfpo_lab.eval.benchmarks import (
    BENCHMARKS,
    PAPER_BENCHMARKS,
    load_benchmark,
    load_benchmark_from_fields,
)
from sfpo_lab.rollout.base import SamplingParams

TOY = "toy"
_TRUE = {"1", "true", "yes", "on"}


class EvalConfigError(ValueError):
    """A bad evaluation setting (the message names it, its value and what is allowed)."""


def _toy_run(cfg: DictConfig) -> Any:
    """The RunConfig whose toy base (and toy held-out split) ``model=toy`` means."""
    from sfpo_lab.config import RunConfig

    run = RunConfig()
    run.paths.cache_dir = str(cfg.cache_dir)
    if cfg.toy_warmup_steps is not None:
        run.model.warmup.steps = int(cfg.toy_warmup_steps)
    return run


def check_settings(cfg: DictConfig) -> None:
    """Fail on a bad model, ckpt or benchmark name before anything heavy happens."""
    if OmegaConf.is_missing(cfg, "model"):
        raise EvalConfigError(f"model is required: a local dir, a hub id or {TOY}")
    model = str(cfg.model)
    if model != TOY:
        from sfpo_lab.models import is_plausible_hub_id

        path = Path(model).expanduser()
        looks_local = model.startswith((".", "/", "~")) or path.exists()
        if not path.is_dir() and (looks_local or not is_plausible_hub_id(model)):
            raise EvalConfigError(
                f"model={model!r}: no such local model directory and not a hub id "
                f"('org/name'); or use model={TOY}"
            )
    if cfg.ckpt is not None and not Path(str(cfg.ckpt)).expanduser().is_file():
        raise EvalConfigError(f"ckpt={cfg.ckpt!r}: no such file (a Lightning .ckpt)")
    for name in _benchmark_names(cfg):
        if name != TOY and name not in BENCHMARKS:
            raise EvalConfigError(
                f"benchmarks: unknown benchmark {name!r}; valid: {sorted(BENCHMARKS)} or {TOY!r} "
                "(other files: file=... problem_field=... answer_field=...)"
            )
        if name == TOY and model != TOY:
            raise EvalConfigError(f"benchmarks: {TOY!r} needs model={TOY}")
    if int(cfg.batch_prompts) < 1:
        raise EvalConfigError(f"batch_prompts={cfg.batch_prompts}: must be >= 1")
    if cfg.limit is not None and int(cfg.limit) < 1:
        raise EvalConfigError(f"limit={cfg.limit}: must be >= 1 or null")


def _benchmark_names(cfg: DictConfig) -> list[str]:
    if cfg.benchmarks is None:
        return [] if cfg.file is not None else list(PAPER_BENCHMARKS)
    if isinstance(cfg.benchmarks, str):
        return [cfg.benchmarks]
    return [str(b) for b in cfg.benchmarks]


def load_problem_sets(cfg: DictConfig) -> dict[str, list[Problem]]:
    """Benchmark name -> problems: registered names, ``toy``, and ``file`` by field mapping."""
    limit = None if cfg.limit is None else int(cfg.limit)
    sets: dict[str, list[Problem]] = {}
    for name in _benchmark_names(cfg):
        if name == TOY:
            from sfpo_lab.warmup import toy_task

            sets[name] = toy_task(_toy_run(cfg)).heldout(limit)
        else:
            sets[name] = load_benchmark(name, cfg.data_dir, limit)
    if cfg.file is not None:
        problems = load_benchmark_from_fields(
            str(cfg.file),
            str(cfg.problem_field),
            str(cfg.answer_field),
            answer_extraction=cfg.answer_extraction,
            id_field=cfg.id_field,
            name=cfg.name,
            limit=limit,
        )
        name = str(cfg.name or Path(str(cfg.file)).stem)
        sets[name] = [replace(p, source=name) for p in problems]
    if not sets:
        raise EvalConfigError("benchmarks=[] and no file=...: nothing to evaluate")
    return sets


def model_source(cfg: DictConfig) -> str:
    """The model dir or hub id ``model=`` means (``toy``: the cached toy base, built if missing)."""
    source = str(cfg.model)
    if source == TOY:
        from sfpo_lab.warmup import toy_base_model

        source = str(toy_base_model(_toy_run(cfg)))
    return source


def load_tokenizer(cfg: DictConfig, source: str) -> Any:
    """The tokenizer (``tokenizer=`` or the model's); ``chat=true`` needs a chat template."""
    from transformers import AutoTokenizer

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE or Path(source).is_dir()
    name = cfg.tokenizer or source
    tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=offline)
    if bool(cfg.chat) and not getattr(tokenizer, "chat_template", None):
        raise EvalConfigError(
            f"chat=true, but the tokenizer of {name!r} defines no chat template; use chat=false"
        )
    return tokenizer


def check_context(
    cfg: DictConfig, source: str, tokenizer: Any, sets: dict[str, list[Problem]], template: str
) -> None:
    """The longest prompt + ``max_new_tokens`` fit the model's context, before the model loads
    (the config alone is read; skipped with a note when it cannot be read offline)."""
    from sfpo_lab.data.prompts import context_error, model_context, prompt_lengths, too_long

    context = model_context(source)
    if context is None:
        print(f"note: {source}: no readable config; prompt + response vs context not checked")
        return
    lengths = {n: prompt_lengths(ps, tokenizer, template, bool(cfg.chat)) for n, ps in sets.items()}
    everything = too_long(sets, lengths, 0)  # all prompts, longest first
    if not everything:
        return
    name, pid, n = everything[0]
    msg = context_error(
        n, int(cfg.max_new_tokens), context, f"prompt {pid!r} of {name!r}", "max_new_tokens", source
    )
    if msg is not None:
        raise EvalConfigError(f"max_new_tokens: {msg}")


def load_model(cfg: DictConfig, source: str) -> Any:
    """The model on the configured device, ckpt weights applied."""
    import torch

    from sfpo_lab.eval.evaluate import load_policy_weights
    from sfpo_lab.models import build_causal_lm

    device = cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    dtype = cfg.dtype if cfg.dtype != "auto" else "bfloat16" if device == "cuda" else "float32"
    model = build_causal_lm(source, dtype=dtype)
    if cfg.ckpt is not None:
        load_policy_weights(model, str(cfg.ckpt))
    return model.to(device).eval()


def run(cfg: DictConfig) -> dict[str, Any]:
    """Check -> load data -> load model -> evaluate -> write; returns the summary."""
    check_settings(cfg)
    params = SamplingParams(
        n=int(cfg.n),
        max_new_tokens=int(cfg.max_new_tokens),
        temperature=float(cfg.temperature),
        top_p=float(cfg.top_p),
        top_k=int(cfg.top_k),
    )
    template = cfg.template or (TOY if cfg.model == TOY else "authors")
    problem_sets = load_problem_sets(cfg)

    from sfpo_lab.eval.evaluate import evaluate, write_outputs
    from sfpo_lab.rewards.pool import MathVerifier

    source = model_source(cfg)
    tokenizer = load_tokenizer(cfg, source)
    check_context(cfg, source, tokenizer, problem_sets, template)  # before the weights load
    model = load_model(cfg, source)
    parsing = str(cfg.answer_parsing)
    with MathVerifier(
        int(cfg.reward_workers), float(cfg.reward_timeout_s), parsing=parsing
    ) as verifier:
        summary, records = evaluate(
            model, tokenizer, problem_sets, params,
            template=template, chat=bool(cfg.chat), seed=int(cfg.seed),
            batch_prompts=int(cfg.batch_prompts), verifier=verifier, n_boot=int(cfg.n_boot),
        )  # fmt: skip
    settings = {
        **{k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"},
        "model_source": source,
        "template": template,
        "benchmarks": list(problem_sets),
    }
    out = write_outputs(cfg.out, summary, records, settings)
    lines = [f"{name:>16}: {m['acc']:6.2f}  [{m['ci_lo']:.2f}, {m['ci_hi']:.2f}]"
             for name, m in summary["benchmarks"].items()]  # fmt: skip
    print("\n".join([*lines, f"{'avg':>16}: {summary['avg']:6.2f}", f"-> {out}"]))
    return summary


CONFIG = Path(__file__).resolve().parents[2] / "conf" / "eval.yaml"


def register_config() -> None:
    """Store ``conf/eval.yaml`` as the primary config. It is not found through ``conf/`` as a
    search path because there ``model=`` would name the training config group ``conf/model/``
    instead of setting a value."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="eval", node=OmegaConf.load(CONFIG))


register_config()


@hydra.main(version_base="1.3", config_path=None, config_name="eval")
def main(cfg: DictConfig) -> float:
    try:
        return run(cfg)["avg"]
    except EvalConfigError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
