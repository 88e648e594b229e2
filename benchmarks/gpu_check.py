"""GPU paths in one short script: SFPO on CUDA (bf16 autocast), FSDP2 on one GPU, and the
training runner end to end with ``trainer=gpu`` / ``trainer=fsdp`` on the toy task.

Run on a CUDA machine (one GPU is enough)::

    python benchmarks/gpu_check.py --out gpu_check.json

It prints one table and writes JSON. What it measures, each in the same process:

* ``snapshot``: CUDA bytes allocated by ``SFPO.begin()`` (the theta0 copy) vs the parameter
  bytes of a Qwen2.5-0.5B-shaped policy (random weights, fp32 master params, bf16 autocast).
* ``peak``: peak CUDA memory of one SFPO iteration (K=3 + slow) minus that of one GRPO update
  on the same batch, in units of the parameter bytes (the engine's target: 1 copy).
* ``time``: SFPO iteration / ((K + 1) x one plain update); reposition / one ``optimizer.step``.
* ``fsdp2``: the same SFPO iteration on ``fully_shard``-ed weights (world size 1, NCCL):
  finite, theta0 held as local shards, alpha-interpolation exact against a float64 reference.
* ``e2e``: ``train.py`` for a few iterations with ``trainer=gpu`` (bf16-mixed) and
  ``trainer=fsdp trainer.devices=1`` with activation checkpointing and the KL term; exit
  code, final metrics.

``--tiny`` runs everything small (also on CPU) to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sfpo_lab.algos import SFPO  # noqa: E402
from sfpo_lab.algos.logits import logprobs_from_logits  # noqa: E402
from sfpo_lab.algos.losses import policy_loss  # noqa: E402
from sfpo_lab.model.build import tiny_qwen2_config  # noqa: E402


def policy_config(tiny: bool):
    """Qwen2.5-0.5B's shape (random init; nothing is downloaded) or a tiny one."""
    if tiny:
        return tiny_qwen2_config(vocab_size=64)
    return tiny_qwen2_config(
        vocab_size=151_936,
        hidden_size=896,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        intermediate_size=4864,
        max_position_embeddings=4096,
    )


def make_update(model, opt, batch, device):
    """One GRPO update on a fixed batch: clipped surrogate, token-mean, bf16 autocast."""
    ids, adv, old = batch
    mask = torch.ones_like(old)

    def update() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(input_ids=ids).logits[:, :-1]
        logp = logprobs_from_logits(logits.float(), ids[:, 1:])
        loss, _ = policy_loss(logp, old, adv, mask)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return update


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(tiny: bool, device, seed: int = 0):
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(policy_config(tiny)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    rows, length = (4, 32) if tiny else (16, 512)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, length), generator=g).to(device)
    adv = torch.randn(rows, generator=g).to(device)
    old = (-torch.rand(rows, length - 1, generator=g) * 5).to(device)
    return model, opt, (ids, adv, old)


def param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def check_sfpo(tiny: bool, device) -> dict:
    """Snapshot bytes, peak over GRPO, and time ratios of one SFPO iteration (K=3)."""
    model, opt, batch = build(tiny, device)
    update = make_update(model, opt, batch, device)
    update()  # creates Adam state and warms the kernels up
    pbytes = param_bytes(model)
    out: dict = {"params": sum(p.numel() for p in model.parameters()), "param_bytes": pbytes}
    cuda = device.type == "cuda"

    def peak_of(fn) -> int:
        if not cuda:
            fn()
            return 0
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated() - base

    sfpo = SFPO(opt, K=3, alpha=0.8, slow_correction=True)
    before = torch.cuda.memory_allocated() if cuda else 0
    sfpo.begin()
    out["snapshot_alloc_bytes"] = (torch.cuda.memory_allocated() - before) if cuda else None
    out["snapshot_bytes"] = sfpo.snapshot_bytes
    sfpo.fast(update)
    sfpo.reposition()
    sfpo.slow(update)
    sfpo.end()
    sfpo._theta0 = None  # measure the next iteration from a cold snapshot, as the first one

    peak_grpo = peak_of(update)
    peak_sfpo = peak_of(lambda: sfpo.step(update=update))
    out["peak_grpo_bytes"], out["peak_sfpo_bytes"] = peak_grpo, peak_sfpo
    out["peak_extra_over_params"] = (peak_sfpo - peak_grpo) / pbytes if cuda else None

    repeats = 3 if not tiny else 2
    t_update = timed(update, device, repeats)
    t_sfpo = timed(lambda: sfpo.step(update=update), device, repeats)
    t_opt = timed(opt.step, device, repeats)
    stats = sfpo.step(update=update)
    out.update(
        t_update_s=t_update,
        t_sfpo_s=t_sfpo,
        t_opt_step_s=t_opt,
        sfpo_over_k1_updates=t_sfpo / (4 * t_update),
        reposition_over_opt_step=stats["reposition_s"] / t_opt,
        loss_finite=all(torch.isfinite(p).all().item() for p in model.parameters()),
    )
    return out


def check_fsdp2(tiny: bool, device) -> dict:
    """One SFPO iteration on FSDP2 (world size 1) with bf16 autocast; exact reposition."""
    import torch.distributed as dist

    from sfpo_lab.model.parallel import shard_fsdp2

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29577")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=0, world_size=1)
    model, opt, batch = build(tiny, device, seed=1)
    shard_fsdp2(model, None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    update = make_update(model, opt, batch, device)
    update()
    sfpo = SFPO(opt, K=2, alpha=0.6, slow_correction=False)
    sfpo.begin()
    theta0 = [p.to_local().detach().double().clone() for p in model.parameters()]
    sfpo.fast(update)
    theta_k = [p.to_local().detach().double().clone() for p in model.parameters()]
    sfpo.reposition()
    err = max(
        (p.to_local().double() - (t0 + 0.6 * (tk - t0))).abs().max().item()
        for p, t0, tk in zip(model.parameters(), theta0, theta_k, strict=True)
    )
    stats = sfpo.end()
    dist.destroy_process_group()
    local_bytes = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
    return {
        "snapshot_bytes": stats["snapshot_bytes"],
        "local_param_bytes": local_bytes,
        "reposition_max_abs_err": err,
        "finite": not stats["restored_theta0"],
    }


def run_train(label: str, overrides: list[str], timeout: int) -> dict:
    """``train.py`` for a few iterations; returns exit code, seconds and the last metrics."""
    import csv

    run_dir = Path(tempfile.mkdtemp(prefix=f"gpu_{label}_"))
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", "logger=csv", *overrides]
    start = time.perf_counter()
    # a fresh rendezvous: this process's own group (check_fsdp2) holds MASTER_PORT
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    out: dict = {"rc": proc.returncode, "seconds": round(time.perf_counter() - start, 1)}
    metrics = run_dir / "metrics.csv"
    if metrics.is_file():
        rows = list(csv.DictReader(metrics.open()))
        keep = ("train/iteration", "train/pg_loss", "train/reward", "sfpo/alpha", "perf/", "val/")
        last: dict = {}
        for row in rows:
            last.update({k: v for k, v in row.items() if v and k.startswith(keep)})
        out["last_metrics"] = last
    if proc.returncode != 0:
        out["stderr_tail"] = proc.stderr[-2500:]
    return out


E2E = {
    "gpu_bf16": ["trainer=gpu", "iterations=3"],
    "fsdp2_1gpu_ac": [
        "trainer=fsdp",
        "trainer.devices=1",
        "model.activation_checkpointing=true",
        "loss.kl_coef=0.01",
        "iterations=3",
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--tiny", action="store_true", help="small sizes (runs on CPU too)")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--e2e-timeout", type=int, default=180)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report: dict = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    path = Path(args.out)

    def save() -> None:
        path.write_text(json.dumps(report, indent=2, default=str))

    for name, fn in (("sfpo", check_sfpo), ("fsdp2", check_fsdp2)):
        try:
            report[name] = fn(args.tiny, device)
        except Exception as exc:  # report and go on: one failure must not hide the rest
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(name, json.dumps(report[name], default=str), flush=True)
        save()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not args.skip_e2e:
        for label, overrides in E2E.items():
            try:
                report[f"e2e_{label}"] = run_train(label, overrides, args.e2e_timeout)
            except subprocess.TimeoutExpired:
                report[f"e2e_{label}"] = {"rc": "timeout", "seconds": args.e2e_timeout}
            print(label, json.dumps(report[f"e2e_{label}"], default=str), flush=True)
            save()


if __name__ == "__main__":
    main()
