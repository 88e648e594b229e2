"""Fig. 1: the SFPO pipeline for one rollout batch, drawn (no run data needed).

Stage I — K fast steps θ0 → θ1 … θK on the same batch; Stage II — reposition
θ̃ = θ0 + α(θK − θ0) on the line from θ0 to θK; Stage III — one slow (corrective) update
at θ̃, which becomes θ0 of the next batch. GRPO is one update from θ0.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from analysis.plotting import style

_FAST = np.array([[0.0, 0.0], [0.9, 1.0], [2.0, -0.1], [3.2, 1.2]])  # θ0, θ1, θ2, θ3 (K = 3)
_ALPHA = 0.6


def _arrow(
    ax: plt.Axes, a: np.ndarray, b: np.ndarray, color: str, ls: str = "-", lw: float = 1.8
) -> None:
    ax.add_patch(FancyArrowPatch(tuple(a), tuple(b), arrowstyle="-|>", mutation_scale=14, color=color, ls=ls, lw=lw, shrinkA=6, shrinkB=6))  # fmt: skip


def _stage_box(ax: plt.Axes, x: float, title: str, body: str, color: str) -> None:
    ax.add_patch(FancyBboxPatch((x, -2.05), 2.1, 1.0, boxstyle="round,pad=0.05", fc=color, ec="none", alpha=0.18))  # fmt: skip
    ax.text(x + 1.05, -1.3, title, ha="center", va="center", fontsize=8.5, weight="bold")
    ax.text(x + 1.05, -1.72, body, ha="center", va="center", fontsize=7.5)


def fig1(df: object = None) -> plt.Figure:
    """The pipeline diagram; ``df`` is accepted (and ignored) so every output has one signature."""
    style()
    fast, slow, grpo = "#0072B2", "#D55E00", "#555555"
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    theta0, theta_k = _FAST[0], _FAST[-1]
    for i in range(len(_FAST) - 1):  # Stage I — fast trajectory
        _arrow(ax, _FAST[i], _FAST[i + 1], fast)
    for i, p in enumerate(_FAST):
        ax.plot(*p, "o", color=fast if i else "k", ms=7, zorder=3)
        ax.annotate(rf"$\theta_{i}$" if i < len(_FAST) - 1 else r"$\theta_K$", p, textcoords="offset points", xytext=(-4, 9), fontsize=11)  # fmt: skip
    ax.plot(*zip(theta0, theta_k, strict=True), ls=":", color="k", lw=1)  # Stage II — reposition
    tilde = theta0 + _ALPHA * (theta_k - theta0)
    ax.plot(*tilde, "D", color=slow, ms=8, zorder=3)
    ax.annotate(r"$\tilde\theta=\theta_0+\alpha(\theta_K-\theta_0)$", tilde, xytext=(3.0, 0.15), fontsize=10, color=slow, arrowprops={"arrowstyle": "-", "color": slow, "lw": 0.6})  # fmt: skip
    nxt = tilde + np.array([0.25, 0.85])  # Stage III — slow correction
    _arrow(ax, tilde, nxt, slow, lw=2.4)
    ax.plot(*nxt, "o", color=slow, ms=7, zorder=3)
    ax.annotate(
        r"$\theta_0^{(s+1)}$", nxt, textcoords="offset points", xytext=(-38, 4), fontsize=11
    )
    _arrow(ax, theta0, theta0 + np.array([0.8, -0.45]), grpo, ls="--", lw=1.4)
    ax.text(0.85, -0.6, "GRPO: one update", fontsize=8, color=grpo)
    _stage_box(ax, -0.45, "Stage I — fast trajectory", "K updates on the same batch\n(clipped ratio vs θ0)", fast)  # fmt: skip
    _stage_box(ax, 1.8, "Stage II — reposition", "θ ← θ0 + α(θK − θ0), in place;\nα = 0 after the entropy stop", "k")  # fmt: skip
    _stage_box(ax, 4.05, "Stage III — slow correction", "one more update at θ̃;\nnext batch starts there", slow)  # fmt: skip
    ax.set_xlim(-0.6, 6.3)
    ax.set_ylim(-2.1, 2.3)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("Fig. 1 — SFPO on one rollout batch s (schematic parameter space, K = 3, α = 0.6)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig
