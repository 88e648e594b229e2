"""Mixed precision as the authors run it: fp32 master weights, AdamW state and theta0 snapshot,
bf16 compute, fp32 gradients (the DDP all-reduce / FSDP2 reduce-scatter dtype), the HF
generation copy on the training device. One real training iteration through ``runner.train``
on the toy model at lr 1e-6, on 1 process, DDP and FSDP2 (2 gloo processes each).

Run as a script, this file is the probe job (Lightning relaunches it for rank 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RUN = [
    "iterations=1",
    "algorithm=sfpo",
    "sfpo.K=0",  # alpha 0.8 snapshots theta0, then exactly one update (the slow step)
    "trainer.precision=bf16-mixed",
    "model.dtype=float32",
    "optim.lr=1e-6",
    "data.batch_size=2",
    "rollout.n=4",
    "rollout.max_new_tokens=8",
    "update.micro_batch_size=4",
    "val.every=0",
    "val.limit=2",
    "val.n=1",
    "checkpoint.every=0",
    "model.warmup.steps=20",
    "logger=csv",
    "callbacks=none",
]
STRATEGIES = {
    "single": [],
    "ddp": ["trainer.strategy=ddp", "trainer.devices=2"],
    "fsdp": ["trainer.strategy=fsdp", "trainer.devices=2"],
}


def _local(t: torch.Tensor) -> torch.Tensor:
    return (t.to_local() if hasattr(t, "to_local") else t).detach()


def _dtypes(tensors) -> list[str]:
    return sorted({str(_local(t).dtype) for t in tensors})


def probe_callback(out: Path):
    """What one iteration left behind, per rank, as ``rank<r>.json`` under ``out``."""
    import lightning as L

    class Probe(L.Callback):
        def on_train_start(self, trainer, module) -> None:
            self.before = [_local(p).clone() for p in module.policy.parameters()]
            self.compute: set[str] = set()
            self.grads: set[str] = set()
            linear = module.policy.model.layers[0].mlp.down_proj

            def record(mod, inputs, output) -> None:
                if torch.is_grad_enabled():  # the training forward, not rollouts
                    self.compute.add(str(output.dtype))

            linear.register_forward_hook(record)

        def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
            self.grads |= set(_dtypes(p.grad for p in module.policy.parameters()))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            after = [_local(p) for p in module.policy.parameters()]
            state = module.optimizers().optimizer.state.values()
            gen = next(module.engine.model.parameters())
            result = {
                "changed": sum(
                    int((a != b).sum()) for a, b in zip(after, self.before, strict=True)
                ),
                "total": sum(b.numel() for b in self.before),
                "params": _dtypes(after),
                "adam": _dtypes(v for s in state for k, v in s.items() if k != "step"),
                "theta0": _dtypes(module.sfpo._theta0),
                "compute": sorted(self.compute),
                "grads": sorted(self.grads),
                "module_device": str(module.device),
                "engine_device": str(gen.device),
                "engine_dtype": str(gen.dtype),
                "engine_owns_copy": bool(module.engine.owns_model),
            }
            (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))

    return Probe()


def main(out: str, strategy: str, cache: str) -> None:
    from hydra import compose, initialize_config_dir

    from sfpo_lab.config import register_schema, to_run_config
    from sfpo_lab.run.runner import train

    register_schema()
    overrides = [*RUN, *STRATEGIES[strategy], f"paths.output_dir={out}", f"paths.cache_dir={cache}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        run = to_run_config(compose("train", overrides=overrides))
    train(run, {}, callbacks=[probe_callback(Path(out))])


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")  # one toy warm-up for all three runs


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy",
    [
        "single",
        pytest.param("ddp", marks=pytest.mark.distributed),
        pytest.param("fsdp", marks=pytest.mark.distributed),
    ],
)
def test_one_bf16_update_at_lr_1e6_moves_fp32_master_weights(tmp_path, cache, strategy):
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(Path(__file__).resolve()), str(tmp_path), strategy, str(cache)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
    assert len(ranks) == (1 if strategy == "single" else 2)
    changed, total = sum(r["changed"] for r in ranks), sum(r["total"] for r in ranks)
    assert changed > 0.99 * total, f"{changed}/{total} weights changed"
    for r in ranks:
        assert r["params"] == r["adam"] == r["theta0"] == r["grads"] == ["torch.float32"]
        assert r["compute"] == ["torch.bfloat16"]
        assert r["engine_device"] == r["module_device"] == "cpu"
        # FSDP2: the engine's own full copy, in the compute dtype; else the policy itself
        sharded = strategy == "fsdp"
        assert r["engine_owns_copy"] == sharded
        assert r["engine_dtype"] == ("torch.bfloat16" if sharded else "torch.float32")


def test_the_threshold_separates_fp32_from_bf16_master_weights():
    """Why > 99 %: the same one AdamW step at lr 1e-6 on bf16 weights of magnitude ~0.02
    changes almost none of them (one bf16 step there is ~1.2e-4)."""
    fractions = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        w = torch.nn.Parameter((0.02 * torch.randn(4096)).to(dtype))
        before = w.detach().clone()
        opt = torch.optim.AdamW([w], lr=1e-6, weight_decay=0.01)
        (w.float() * torch.randn(4096)).sum().backward()
        opt.step()
        fractions[dtype] = float((w.detach() != before).float().mean())
    assert fractions[torch.float32] > 0.99
    assert fractions[torch.bfloat16] < 0.05


if __name__ == "__main__":
    main(*sys.argv[1:4])
