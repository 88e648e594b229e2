"""Section 1 — the SFPO update engine against the K+1 plain updates it performs.

* ``sfpo_step / ((K+1) x plain update)``: one ``SFPO.step(closure)`` (K fast steps, reposition,
  slow step) against K+1 times ``closure(); optimizer.step()`` on the same model and batch.
* ``engine bookkeeping / ((K+1) x plain update)``: the same ``SFPO.step`` with no-op update
  passes, i.e. exactly what the engine adds (theta0 snapshot, reposition, finite check).
* ``reposition / one update``: Stage II (the one in-place ``_foreach_lerp_`` over the
  parameters that ``SFPO.reposition`` runs) against one plain update (forward, backward,
  AdamW step); the engine's own wall-clock ``reposition_s`` is kept in the JSON.
* ``per-parameter loop / foreach``: ``p.lerp_(theta0_p, w)`` for each tensor against the one
  ``torch._foreach_lerp_`` call ``SFPO.reposition`` makes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmarks.common import (
    Row,
    interleaved,
    model_dtype,
    paired_ratio,
    qwen05b_config,
    row,
    toy_config,
)
from sfpo_lab.algos import SFPO
from sfpo_lab.model.build import build_causal_lm, count_parameters

SECTION = "engine"
K, ALPHA = 3, 0.8


@dataclass(frozen=True)
class Case:
    name: str
    config: str  # "toy" | "mid" | "0.5b"
    batch: int  # sequences
    length: int  # tokens per sequence
    repeats: int


def cases(mode: str, device: torch.device) -> list[Case]:
    if device.type == "cuda" and mode != "smoke":  # a GPU: paper-like tokens per update
        return [
            Case("toy", "toy", 64, 256, 9),
            Case("mid", "mid", 32, 512, 7),
            Case("0.5B-size", "0.5b", 16, 512, 5),
        ]
    if mode == "smoke":
        return [Case("toy", "toy", 4, 16, 2)]
    if mode == "quick":
        return [Case("toy", "toy", 32, 48, 16), Case("mid", "mid", 16, 64, 12)]
    return [
        Case("toy", "toy", 64, 64, 9),
        Case("mid", "mid", 16, 64, 12),
        Case("0.5B-size", "0.5b", 2, 32, 3),
    ]


def _model(config: str, device: torch.device) -> torch.nn.Module:
    cfg = {
        "toy": toy_config,
        # ~11M parameters: large enough that the optimizer and the lerp are not all overhead
        "mid": lambda: toy_config(
            vocab_size=8192, hidden_size=384, num_layers=6, num_heads=6, intermediate_size=1024
        ),
        "0.5b": qwen05b_config,
    }[config]()
    torch.manual_seed(0)
    with torch.device(device):
        return build_causal_lm(cfg, dtype=model_dtype(device)).train()


def _problem(case: Case, device: torch.device):
    """(model, optimizer, closure) on a fixed random batch ``[batch, length]``."""
    model = _model(case.config, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)  # foreach AdamW (torch default)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (case.batch, case.length), generator=g).to(device)

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        return loss

    return model, opt, closure


def _loop_lerp(params: list[torch.Tensor], theta0: list[torch.Tensor], w: float) -> None:
    for p, t in zip(params, theta0, strict=True):
        p.lerp_(t, w)


def run(mode: str, device: torch.device) -> list[Row]:
    rows: list[Row] = []
    for case in cases(mode, device):
        rows += _case(case, device)
    return rows


def _case(case: Case, device: torch.device) -> list[Row]:
    model, opt, closure = _problem(case, device)
    t, reposition_s = _time_steps(opt, closure, case.repeats, device)
    params = [p.detach() for p in model.parameters()]
    theta0 = [p.clone() for p in params]
    lerp = interleaved(
        {
            "foreach": lambda: torch._foreach_lerp_(params, theta0, 1 - ALPHA),
            "loop": lambda: _loop_lerp(params, theta0, 1 - ALPHA),
        },
        repeats=max(20, case.repeats),
        warmup=3,
        device=device,
        clock="cpu",
    )
    n = count_parameters(model)
    cfg = f"{case.name} ({n / 1e6:.1f}M params), {case.batch}x{case.length} tokens/update, K={K}"
    base = {"seconds": t, "params": n, "tensors": len(params)}
    return [
        row(
            SECTION,
            "sfpo_step / ((K+1) x plain update)",
            paired_ratio(t, "sfpo", "plain_k1"),
            "<=",
            1.05,
            config=cfg,
            note="median over rounds of the ratio within a round (CPU time on CPU)",
            details=base | {"min_ratio": t["sfpo"]["min"] / t["plain_k1"]["min"]},
        ),
        row(
            SECTION,
            "engine bookkeeping / ((K+1) x plain update)",
            paired_ratio(t, "noop", "plain_k1"),
            "<=",
            0.05,
            config=cfg,
            note="SFPO.step with no-op passes: snapshot + reposition + finite check",
            details=base,
        ),
        _reposition_row(t, lerp, reposition_s, cfg),
        row(
            SECTION,
            "per-parameter lerp loop / foreach lerp (speed-up)",
            lerp["loop"]["min"] / lerp["foreach"]["min"],
            ">=",
            1.0,
            config=f"{case.name}, {len(params)} tensors",
            details={"seconds": lerp},
        ),
    ]


def _time_steps(opt, closure, repeats: int, device: torch.device):
    """Interleaved timings of (K+1) plain updates, one SFPO step, the engine alone, one update."""
    sfpo = SFPO(opt, K=K, alpha=ALPHA, slow_correction=True)
    bookkeeping = SFPO(opt, K=K, alpha=ALPHA, slow_correction=True)
    reposition_s: list[float] = []

    def plain_k1() -> None:
        for _ in range(K + 1):
            closure()
            opt.step()

    def sfpo_step() -> None:
        reposition_s.append(sfpo.step(closure)["reposition_s"])

    def noop_step() -> None:
        bookkeeping.step(update=lambda: None)

    def one_update() -> None:
        closure()
        opt.step()

    fns = {"plain_k1": plain_k1, "sfpo": sfpo_step, "noop": noop_step, "one": one_update}
    return interleaved(fns, repeats, device=device, clock="cpu"), reposition_s


def _reposition_row(t: dict, lerp: dict, reposition_s: list[float], cfg: str) -> Row:
    # Stage II is exactly one _foreach_lerp_ over the params (timed on the same clock as the
    # update); the engine's own wall-clock reposition_s is kept in the details
    one, repo = t["one"]["min"], lerp["foreach"]["min"]
    return row(
        SECTION,
        "reposition / one update (fwd+bwd+AdamW)",
        repo / one,
        "<",
        0.02,
        config=cfg,
        note="lerp is O(params), an update O(params x tokens): the ratio falls as 1/tokens",
        details={
            "reposition_s": repo,
            "one_update_s": one,
            "engine_reposition_s_wall_min": min(reposition_s),
            "one_update_s_wall_min": t["one"]["wall_min"],
        },
    )
