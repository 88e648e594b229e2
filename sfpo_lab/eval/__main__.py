"""``python -m sfpo_lab.eval``: evaluate a model (and optionally a training checkpoint) on
benchmarks and write summaries + per-problem records (settings: ``conf/eval.yaml``).

    python -m sfpo_lab.eval ckpt=outputs/.../best.ckpt          # that run, as it validated
    python -m sfpo_lab.eval model=toy benchmarks=[math500,aime24] n=2 limit=3 out=/tmp/ev
    python -m sfpo_lab.eval model=<dir> file=held.jsonl problem_field=q answer_field=a

A checkpoint of a run carries the run's config: the model, tokenizer, prompt template, chat
setting and (toy) task and base come from it, and a ``model=`` / ``tokenizer=`` / ``template=``
/ ``chat=`` / ``toy_warmup_steps=`` that contradicts it is an error naming both values. Unset
sampling and grading settings take the run's validation values (benchmarks, limit, n,
temperature, top_p, max_new_tokens, seed, answer_parsing) and sample the validation's own
streams at the checkpoint's iteration, so the printed number is the run's validation number;
one set explicitly to another value is used and reported as a difference.

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
from sfpo_lab.eval.cli import hydra_help, tidy_run_dir
from sfpo_lab.eval.record import check_out, evaluated, taken_from_run
from sfpo_lab.eval.suit import AUTO, conf_model, conf_model_source, suit_to_model
from sfpo_lab.eval.table import results_table
from sfpo_lab.rollout.base import SamplingParams

TOY = "toy"
ALL = "all"  # limit=all: every problem (also when the run validated on val.limit of them)
_TRUE = {"1", "true", "yes", "on"}


class EvalConfigError(ValueError):
    """A bad evaluation setting (the message names it, its value and what is allowed)."""


def fill_standalone(cfg: DictConfig) -> set[str]:
    """Unset settings (no run) take ``standalone`` defaults (template: toy for model=toy);
    returns the keys filled (``chat=auto`` and ``max_new_tokens`` then suit the model)."""
    filled = {key for key in cfg.standalone if cfg[key] is None}
    for key in filled:
        cfg[key] = cfg.standalone[key]
    if cfg.template is None:
        cfg.template = TOY if cfg.model == TOY else "authors"
    return filled


def resolve(cfg: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """``cfg`` with every setting filled (from the checkpoint's run, else the standalone
    defaults), and what the run adds: ``run`` (its RunConfig), ``ckpt`` (the loaded dict),
    ``iteration`` and ``differs``."""
    from sfpo_lab.eval.evaluate import VALIDATION, apply_run, read_checkpoint, saved_run

    given = {k: cfg[k] for k in VALIDATION}
    cfg = cfg.copy()
    extra: dict[str, Any] = {"run": None, "ckpt": None, "iteration": 0, "differs": {}}
    extra["from_run"], extra["file_limit"] = {}, _limit(given["limit"])
    if cfg.ckpt is not None:
        path = str(cfg.ckpt)
        if not Path(path).expanduser().exists():
            raise EvalConfigError(f"ckpt={path!r}: no such file (a Lightning .ckpt)")
        try:
            trust = bool(cfg.get("trust_checkpoint", False))  # runs code from the file
            extra["ckpt"] = read_checkpoint(Path(path).expanduser(), trust=trust)
            run = saved_run(extra["ckpt"], path)
        except ValueError as e:
            raise EvalConfigError(str(e)) from None
        if run is None and cfg.model in (None, TOY):
            raise EvalConfigError(
                f"ckpt={path!r} holds no run config (not an sfpo_lab training checkpoint, or an "
                f"old one): give model=<the dir or hub id it was trained from>"
                f"{'' if cfg.model is None else f'; model={TOY} needs the run config'}"
            )
        if run is not None:
            extra["run"] = run
            try:
                extra["differs"] = apply_run(cfg, run, path)
            except ValueError as e:  # a setting that contradicts the run
                raise EvalConfigError(str(e)) from None
            counters = extra["ckpt"].get("sfpo_counters") or {}
            extra["iteration"] = int(counters.get("iteration", 0))
            extra["from_run"] = taken_from_run(given, cfg, VALIDATION)
    extra["standalone"] = fill_standalone(cfg)
    return cfg, extra


# ---------------------------------------------------------------- checks and loading


def _toy_run(cfg: DictConfig, run: Any | None = None) -> Any:
    """The RunConfig whose toy base (and held-out split) ``model=toy`` means: the run's own, or
    (no run) the default training run's (:mod:`sfpo_lab.eval.toy`)."""
    from sfpo_lab.eval.toy import toy_run

    steps = None if run is not None or cfg.toy_warmup_steps is None else int(cfg.toy_warmup_steps)
    return toy_run(str(cfg.cache_dir), steps, run)


def check_settings(cfg: DictConfig) -> None:
    """Fail on a bad model, ckpt or benchmark name before anything heavy happens."""
    if OmegaConf.is_missing(cfg, "model") or cfg.model is None:
        raise EvalConfigError(
            f"model is required (or a ckpt of a run): a local dir, a hub id or {TOY}"
        )
    model = str(cfg.model)
    if model != TOY and conf_model(model) is None:
        from sfpo_lab.model.build import is_plausible_hub_id

        path = Path(model).expanduser()
        looks_local = model.startswith((".", "/", "~")) or path.exists()
        if not path.is_dir() and (looks_local or not is_plausible_hub_id(model)):
            raise EvalConfigError(
                f"model={model!r}: no such local model directory and not a hub id "
                f"('org/name'); or use model={TOY}"
            )
    if cfg.ckpt is not None and not Path(str(cfg.ckpt)).expanduser().exists():
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
    if cfg.limit not in (None, ALL) and (not str(cfg.limit).isdigit() or int(cfg.limit) < 1):
        raise EvalConfigError(f"limit={cfg.limit}: must be an integer >= 1, {ALL} or null")


def _benchmark_names(cfg: DictConfig) -> list[str]:
    if cfg.benchmarks is None:
        return [] if cfg.file is not None else list(PAPER_BENCHMARKS)
    if isinstance(cfg.benchmarks, str):
        return [cfg.benchmarks]
    return [str(b) for b in cfg.benchmarks]


def file_name(cfg: DictConfig) -> str | None:
    """The benchmark name of ``file=`` (``name=``, else the file's stem); None without a file."""
    return None if cfg.file is None else str(cfg.name or Path(str(cfg.file)).stem)


def _limit(value: Any) -> int | None:
    return None if value in (None, ALL) else int(value)


def load_problem_sets(
    cfg: DictConfig, run: Any | None = None, file_limit: Any = "same"
) -> dict[str, list[Problem]]:
    """Benchmark name -> problems: registered names, ``toy`` (the run's toy task, if a run),
    and ``file`` by field mapping: whole unless ``file_limit`` (the ``limit=`` given on the
    command line; ``"same"``: ``cfg.limit``) cuts it; a run's ``val.limit`` is its benchmarks'."""
    limit = _limit(cfg.limit)
    file_limit = limit if file_limit == "same" else _limit(file_limit)
    sets: dict[str, list[Problem]] = {}
    for name in _benchmark_names(cfg):
        if name == TOY:
            from sfpo_lab.model.warmup import toy_task

            sets[name] = toy_task(_toy_run(cfg, run)).heldout(limit)
        else:
            sets[name] = load_benchmark(name, cfg.data_dir, limit)
    if cfg.file is not None:
        try:
            problems = load_benchmark_from_fields(
                str(cfg.file),
                str(cfg.problem_field),
                str(cfg.answer_field),
                answer_extraction=cfg.answer_extraction,
                id_field=cfg.id_field,
                name=cfg.name,
                limit=file_limit,
            )
        except (ValueError, FileNotFoundError) as e:  # names the file, row, field or option
            raise EvalConfigError(str(e)) from None
        name = str(file_name(cfg))
        sets[name] = [replace(p, source=name) for p in problems]
    if not sets:
        raise EvalConfigError("benchmarks=[] and no file=...: nothing to evaluate")
    return sets


def model_source(cfg: DictConfig, run: Any | None = None) -> str:
    """The model dir or hub id ``model=`` means (``toy``: the cached toy base, built if missing;
    a run's GGUF model: its materialised directory)."""
    source = str(cfg.model)
    named = None if run is not None else conf_model_source(source, str(cfg.cache_dir))
    if named is not None:
        source = named
    elif source == TOY:
        from sfpo_lab.model.warmup import toy_base_model

        source = str(toy_base_model(_toy_run(cfg, run)))
    elif run is not None and run.model.gguf is not None:
        from sfpo_lab.model.build import materialize_gguf

        source = str(materialize_gguf(run.model.gguf, Path(str(cfg.cache_dir)) / "models"))
    return source


def load_tokenizer(cfg: DictConfig, source: str) -> Any:
    """The tokenizer (``tokenizer=`` or the model's); ``chat=true`` needs a chat template."""
    from transformers import AutoTokenizer

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE or Path(source).is_dir()
    name = cfg.tokenizer or source
    tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=offline)
    if (
        cfg.chat not in (None, AUTO)
        and bool(cfg.chat)
        and not getattr(tokenizer, "chat_template", None)
    ):
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


def load_model(cfg: DictConfig, source: str, extra: dict[str, Any] | None = None) -> Any:
    """The model on the configured device, ckpt weights applied. ``dtype=auto``: a run's
    compute dtype (its validation's), else bfloat16 on GPU and float32 on CPU."""
    import torch

    from sfpo_lab.eval.evaluate import load_policy_weights
    from sfpo_lab.model.build import build_causal_lm

    extra = extra or {}
    device = cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    dtype = cfg.dtype
    if dtype == "auto" and extra.get("run") is not None:
        from sfpo_lab.model.parallel import compute_dtype

        dtype = str(compute_dtype(extra["run"])).removeprefix("torch.")
    elif dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    from sfpo_lab.model.attention import configure_sdpa_backends, missing_attn_package

    # a run's attention settings on CUDA (its flash kernel needs a GPU); else the pad-safe sdpa
    run_cfg = extra.get("run")
    configure_sdpa_backends(None if run_cfg is None else run_cfg.model.sdpa_backends, device)
    attn = run_cfg.model.attn_implementation if run_cfg is not None and device == "cuda" else None
    flash = attn is not None and attn.startswith("flash")
    if flash and (missing_attn_package(attn) or dtype == "float32"):
        # the run's flash kernel needs its package and 16-bit compute: the pad-safe sdpa
        # computes the same attention (said, not silent)
        print(f"[eval] attention: sdpa, not the run's {attn} (needs its package and 16-bit)")
        attn = None
    model = build_causal_lm(source, dtype=dtype, attn_implementation=attn)
    if cfg.ckpt is not None:
        try:
            load_policy_weights(model, extra.get("ckpt") or str(cfg.ckpt))
        except ValueError as e:
            raise EvalConfigError(f"ckpt={str(cfg.ckpt)!r}: {e}") from None
    return model.to(device).eval()


def run(cfg: DictConfig) -> dict[str, Any]:
    """Resolve (a run's own settings) -> check -> load data -> load model -> evaluate -> write;
    returns the summary."""
    cfg, extra = resolve(cfg)
    check_settings(cfg)
    try:
        check_out(str(cfg.out))  # before the model: never over a training run's files
    except ValueError as e:
        raise EvalConfigError(str(e)) from None
    problem_sets = load_problem_sets(cfg, extra["run"], extra["file_limit"])
    extra["file"] = file_name(cfg)

    from sfpo_lab.data.prompts import model_context
    from sfpo_lab.eval.evaluate import evaluate, run_validation, write_outputs
    from sfpo_lab.rewards.pool import MathVerifier

    try:
        source = model_source(cfg, extra["run"])
    except ValueError as e:
        raise EvalConfigError(str(e)) from None
    tokenizer = load_tokenizer(cfg, source)
    if extra["run"] is None:  # standalone: chat and response length suit the model
        try:
            lines = suit_to_model(
                cfg, extra["standalone"], model_context(source), tokenizer, problem_sets
            )
        except ValueError as e:
            raise EvalConfigError(str(e)) from None
        print("\n".join(f"[eval] {line}" for line in lines))
    params = SamplingParams(
        n=int(cfg.n),
        max_new_tokens=int(cfg.max_new_tokens),
        temperature=float(cfg.temperature),
        top_p=float(cfg.top_p),
        top_k=int(cfg.top_k),
    )
    check_context(cfg, source, tokenizer, problem_sets, str(cfg.template))  # before the weights
    model = load_model(cfg, source, extra)
    parsing = str(cfg.answer_parsing)
    with MathVerifier(
        int(cfg.reward_workers), float(cfg.reward_timeout_s), parsing=parsing
    ) as verifier:
        summary, records = evaluate(
            model, tokenizer, problem_sets, params,
            template=str(cfg.template), chat=bool(cfg.chat), seed=int(cfg.seed),
            batch_prompts=int(cfg.batch_prompts), verifier=verifier, n_boot=int(cfg.n_boot),
            iteration=extra["iteration"],
        )  # fmt: skip
    summary["run_validation"] = run_validation(extra["ckpt"], extra["iteration"])
    settings = {
        **{k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"},
        "model_source": source,
        "benchmarks": list(problem_sets),
        "iteration": extra["iteration"],
        "differs_from_run_validation": {k: list(v) for k, v in extra["differs"].items()},
    }
    counts = {name: len(ps) for name, ps in problem_sets.items()}
    summary["evaluated"] = evaluated(cfg, extra, counts, source)
    out = write_outputs(cfg.out, summary, records, settings)
    print(results_table(summary, problem_sets, params.n, extra))
    print(f"-> {out}")
    return summary


CONFIG = Path(__file__).resolve().parents[2] / "conf" / "eval.yaml"


def register_config() -> None:
    """Store ``conf/eval.yaml`` as the primary config. It is not found through ``conf/`` as a
    search path because there ``model=`` would name the training config group ``conf/model/``
    instead of setting a value."""
    from hydra.core.config_store import ConfigStore

    node = OmegaConf.load(CONFIG)
    node.hydra.help = hydra_help(CONFIG.read_text())  # --help: every setting and its meaning
    ConfigStore.instance().store(name="eval", node=node)


register_config()


@hydra.main(version_base="1.3", config_path=None, config_name="eval")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from sfpo_lab.run import quiet

    quiet.install()  # known-harmless library notices, filtered at their loggers
    try:
        return run(cfg)["avg"]
    except EvalConfigError as err:
        raise SystemExit(f"error: {err}") from None
    finally:  # out= elsewhere, or a refused setting: no empty outputs/eval/runs/<time> left
        tidy_run_dir(HydraConfig.get().runtime.output_dir, str(cfg.out))


if __name__ == "__main__":
    from sfpo_lab.run.project import setup_root

    setup_root()  # cache_dir: <project root>/.cache from any working directory
    main()
