"""The assertions of :mod:`benchmarks.gpu_paper_shape`, read from its JSON record and the
captured gradients: each check is ``{"name", "ok", "detail"}``; names start with the kind
(``ran/``, ``finite/``, ``grads/``, ``attn/``, ``dtype/``, ``fp16/``, ``memory/``, ``budget``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

PROBES = ("single", "fsdp", "fp16", "attn_alt")
# (name, section/mode, reference section/mode): the gradients that must agree
GRAD_PAIRS = (
    ("single_packed_vs_padded", "single/packed", "single/padded"),
    ("fsdp_packed_vs_padded", "fsdp/packed", "fsdp/padded"),
    ("fsdp_vs_single", "fsdp/packed", "single/packed"),
    ("fp16_vs_bf16", "fp16/packed", "single/packed"),
    ("attn_alt_vs_sdpa", "attn_alt/packed", "single/packed"),
)
NOT_RUN = ("refused", "not_run")  # a documented refusal / a path this machine lacks


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), "detail": detail}


def rel_l2(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """``||a - b|| / ||b||`` (nan when either is missing or the shapes differ)."""
    if a is None or b is None or a.shape != b.shape:
        return math.nan
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _finite_values(stats: dict[str, Any]) -> list[str]:
    """Keys of ``stats`` whose number is not finite."""
    return [k for k, v in stats.items() if isinstance(v, float) and not math.isfinite(v)]


def finite_checks(name: str, rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every log-prob, entropy, loss / statistic and applied gradient of one section finite."""
    out = []
    if "rollout" in rec:
        ok = rec["rollout"]["logprobs_finite"]
        out.append(_check(f"finite/{name}/rollout", ok, "engine log-probs of the responses"))
    lp = rec.get("logprobs", {})
    flags = {k: v for k, v in lp.items() if k.endswith("_finite")}
    out.append(_check(f"finite/{name}/logprobs", bool(flags) and all(flags.values()), str(flags)))
    for mode in rec.get("update_modes", []):
        stats = rec.get("update", {}).get(mode)
        bad = ["missing"] if stats is None else _finite_values(stats)
        if stats is not None and stats.get("skipped_steps"):
            bad.append("skipped_steps (non-finite loss or grad norm)")
        out.append(_check(f"finite/{name}/update_{mode}", not bad, f"non-finite: {bad}"))
        ok = rec.get("grads_finite", {}).get(mode, False)
        out.append(_check(f"finite/{name}/grads_{mode}", ok, "applied gradient (all params)"))
    return out


def section_checks(name: str, rec: dict[str, Any], attn: str) -> list[dict[str, Any]]:
    """Attention setting, compute dtypes and per-stage memory/seconds of one section."""
    want = rec.get("requested", attn)
    got = rec.get("attn_implementation")
    # the kit may register its own variant of a kernel under a name that contains it
    # (sdpa -> sdpa_pad_safe: the pad-safe mask of issue 24 item 1)
    ok = isinstance(got, str) and (got == want or want in got)
    out = [_check(f"attn/{name}", ok, f"asked {want}, model loaded with {got}")]
    compute = "float16" if name == "fp16" else "bfloat16"
    dtypes = rec.get("dtypes", {})
    stages = [s for s in ("validation", "rollout", "logprobs") if s in dtypes]
    stages += [f"update_{m}" for m in rec.get("update_modes", [])]
    seen = {s: dtypes.get(s) for s in stages}
    ok = all(v == [compute] for v in seen.values())
    out.append(_check(f"dtype/{name}", ok, f"want {compute} everywhere: {seen}"))
    mem, secs = rec.get("memory_gib", {}), rec.get("stage_s", {})
    missing = [s for s in secs if not mem.get(s, 0) > 0]
    ok = bool(secs) and not missing
    out.append(_check(f"memory/{name}", ok, f"stages {sorted(secs)}; no memory: {missing}"))
    return out


def grad_checks(
    grads: dict[str, torch.Tensor | None], sections: dict[str, Any], tol: float
) -> list[dict[str, Any]]:
    """Gradient pairs that must agree within ``tol`` (relative L2), where both ran."""
    out = []
    for name, a, b in GRAD_PAIRS:
        status = [sections.get(k.split("/")[0], {}).get("status") for k in (a, b)]
        if any(s in NOT_RUN for s in status):
            continue
        err = rel_l2(grads.get(a), grads.get(b))
        detail = f"rel L2 {err:.3g} (tol {tol}); sections {status}"
        out.append(_check(f"grads/{name}", math.isfinite(err) and err <= tol, detail))
    return out


def fp16_checks(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """16-mixed is refused with a message, or its reported grad norm is the unscaled one
    (close to bf16-mixed's on the same batch, not 2**16 times it)."""
    rec = sections.get("fp16", {})
    if rec.get("status") == "refused":
        return [_check("fp16/path", bool(rec.get("refusal")), f"refused: {rec.get('refusal')}")]
    if rec.get("status") != "ok":
        return []
    mine = rec.get("update", {}).get("packed", {}).get("grad_norm", math.nan)
    ref = sections.get("single", {}).get("update", {}).get("packed", {}).get("grad_norm", math.nan)
    ratio = mine / ref if ref else math.nan
    detail = f"reported grad norm 16-mixed {mine:.4g} / bf16-mixed {ref:.4g} = {ratio:.4g}"
    return [_check("fp16/grad_norm", 0.5 <= ratio <= 2.0, detail)]


def checks(
    out: dict[str, Any], grads: dict[str, torch.Tensor | None], attn: str
) -> list[dict[str, Any]]:
    """All checks of one run record."""
    sections = out["sections"]
    result = []
    for name in ("setup", *PROBES):
        rec = sections.get(name, {"status": "missing"})
        status = rec["status"]
        why = rec.get("error") or rec.get("reason") or rec.get("refusal") or ""
        result.append(_check(f"ran/{name}", status in ("ok", *NOT_RUN), f"{status} {why}"))
        if name in PROBES and status == "ok":
            result += finite_checks(name, rec) + section_checks(name, rec, attn)
    result += grad_checks(grads, sections, out["rel_tol"])
    result += fp16_checks(sections)
    budget = out["budget_s"]
    result.append(
        _check("budget", not out["over_budget"], f"{out['total_s']:.1f} s of {budget:.0f} s")
    )
    return result
