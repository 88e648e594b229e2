"""GPU acceptance script (issue 24): a random-weight Qwen2.5-0.5B-shaped policy at the paper's
lengths through the kit's GPU path, on one GPU, in at most ~8 minutes.

On the lent GPU (no network; torch / transformers / lightning there, the rest as wheels built
here with ``make gpu-wheels`` and carried as ``.whl``)::

    pip install --no-index --no-deps .whl/*.whl && \
        python benchmarks/gpu_paper_shape.py --out $OUT/gpu_paper_shape.json

In CI (tiny shape, CPU, well under a minute): ``python benchmarks/gpu_paper_shape.py
--cpu-smoke --out /tmp/smoke.json``.

Sections, each one Lightning ``fit`` of :class:`benchmarks.paper_shape_probe.ProbeModule` (the
kit's ``SFPOModule``: its ``configure_model``, engine, ``UpdatePass``, ``StageMemory``):

* ``single``: one device, ``bf16-mixed`` (fp32 master weights, bf16 autocast). HF rollout of
  left-padded prompts (``Shape.rollout_tokens`` real generated tokens, EOS unreachable), then
  responses FORCED to ``Shape.response_len`` tokens (random ids appended to the rollout's
  prompts) for the no-grad log-prob pass (policy + reference, padded rows, fused head) and
  one update pass padded and one packed (``update.remove_padding``), KL on, fused head.
* ``fsdp``: the same on FSDP2 (``trainer.strategy=fsdp``, one rank: NCCL on GPU, gloo on CPU;
  ``MixedPrecisionPolicy(bf16, fp32 reduce)``; the HF engine's own generation copy).
* ``fp16``: ``trainer.precision=16-mixed``, packed update only, or the kit's refusal
  (``sfpo_lab.model.parallel.check_precision``), recorded as such.
* ``attn_alt``: the packed update with ``model.attn_implementation=flash_attention_2`` when
  ``flash_attn`` imports on a GPU (eager at the smoke shape); otherwise the reason it did not run.

Asserted (``checks`` in the JSON; exit code 1 when one fails, after the JSON is written):
every log-prob, entropy, loss, statistic and applied gradient finite; packed == padded
gradients, FSDP == single device, 16-mixed == bf16-mixed and alt attention == sdpa within
``REL_TOL`` (relative L2 of the flattened gradient); the attention implementation the model
loaded with is the one asked for (item 4); rollout, validation-context generation and update
compute in the same 16-bit dtype (item 11); 16-mixed's reported grad norm is the unscaled one
(item 2); every stage has seconds and memory; the total stays within ``--budget-s``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.paper_shape_probe import (  # noqa: E402
    PAPER,
    SMOKE,
    Plan,
    ProbeModule,
    Shape,
    run_config,
    save_random_model,
)

SECTIONS = ("setup", "single", "fsdp", "fp16", "attn_alt")
# relative L2 distance between two flattened gradients computed in 16-bit: bf16 keeps 8
# significant bits (2**-8 = 0.4 % per rounding); through 24 layers and a different grouping of
# the same sums (padded vs packed, sharded vs not) a few percent is rounding, while a real
# mismatch (a masked-out token counted, a row dropped, a 2**16 scale) is O(1)
REL_TOL = 0.05


def flash_status() -> tuple[bool, str]:
    """Whether ``flash_attn`` imports (and its version or the import error)."""
    try:
        import flash_attn
    except Exception as err:  # ImportError, or a binary built for another torch / CUDA
        return False, f"flash_attn does not import: {type(err).__name__}: {err}"[:300]
    return True, f"flash_attn {getattr(flash_attn, '__version__', '?')}"


class Runner:
    """Runs the sections in order under a time budget, writing the JSON after each one."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.shape: Shape = SMOKE if args.cpu_smoke else PAPER
        if args.rollout_tokens:
            self.shape = Shape(**{**self.shape.__dict__, "rollout_tokens": args.rollout_tokens})
        self.device = "cuda" if torch.cuda.is_available() and not args.cpu_smoke else "cpu"
        self.accelerator = "gpu" if self.device == "cuda" else "cpu"
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_paper_shape_"))
        self.model_path = self.tmp / "model"
        self.start = time.perf_counter()
        self.grads: dict[str, torch.Tensor | None] = {}
        self.out: dict[str, Any] = {
            "script": "benchmarks/gpu_paper_shape.py",
            "mode": "cpu-smoke" if args.cpu_smoke else "paper-shape",
            "machine": machine(self.device),
            "shape": self.shape.__dict__ | {"prompt_lengths": list(self.shape.prompt_lengths)},
            "attn": args.attn,
            "rel_tol": REL_TOL,
            "budget_s": args.budget_s,
            "sections": {},
        }

    # ------------------------------------------------------------------ orchestration
    def run(self) -> dict[str, Any]:
        for name in SECTIONS:
            self.section(name, getattr(self, f"_{name}"))
        self.out["total_s"] = time.perf_counter() - self.start
        self.out["over_budget"] = self.out["total_s"] > self.args.budget_s
        from benchmarks.paper_shape_checks import checks

        self.out["checks"] = checks(self.out, self.grads, self.args.attn)
        self.out["all_finite"] = all(
            c["ok"] for c in self.out["checks"] if c["name"].startswith("finite/")
        )
        self.out["all_ok"] = all(c["ok"] for c in self.out["checks"])
        self.write()
        shutil.rmtree(self.tmp, ignore_errors=True)  # the saved model: 2 GB at the paper shape
        return self.out

    def section(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        """Run one section (or skip it past the budget); an error is recorded, not raised."""
        elapsed = time.perf_counter() - self.start
        if elapsed > self.args.budget_s:
            rec = {"status": "skipped", "reason": f"time budget spent ({elapsed:.0f} s)"}
        else:
            t0 = time.perf_counter()
            try:
                rec = {"status": "ok"} | fn()
            except Exception as err:  # recorded: the other sections still run
                rec = {"status": "error", "error": f"{type(err).__name__}: {err}"[:2000]}
            rec["seconds"] = time.perf_counter() - t0
            free_memory()
        self.out["sections"][name] = rec
        print(f"[gpu_paper_shape] {name}: {rec['status']} ({rec.get('seconds', 0):.1f} s)")
        self.write()

    def write(self) -> None:
        path = Path(self.args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.out, indent=2, default=str) + "\n")
        tmp.replace(path)

    def fit(self, strategy: str, precision: str, attn: str, plan: Plan) -> dict[str, Any]:
        """One Lightning ``fit`` of one probe iteration; the plan's record as the section."""
        import lightning as L
        from torch.utils.data import DataLoader

        from sfpo_lab.model.parallel import build_strategy, check_precision, lightning_precision

        run = run_config(
            self.shape,
            str(self.model_path),
            accelerator=self.accelerator,
            strategy=strategy,
            precision=precision,
            attn=attn,
        )
        check_precision(run)
        precision: Any = {"precision": lightning_precision(run)}
        if self.device == "cpu" and precision["precision"] == "16-mixed":
            # the flag becomes bf16-mixed on CPU; the plugin itself runs fp16 autocast with a
            # CPU GradScaler, so the smoke run takes the scaler path the GPU takes
            from lightning.pytorch.plugins import MixedPrecision

            precision = {"plugins": [MixedPrecision("16-mixed", "cpu")]}
        trainer = L.Trainer(
            accelerator=self.accelerator,
            devices=1,
            strategy=build_strategy(run),
            **precision,
            max_epochs=1,
            limit_train_batches=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=str(self.tmp),
        )
        module = ProbeModule(run, str(self.model_path), plan)
        trainer.fit(module, train_dataloaders=DataLoader([0], batch_size=1))
        rec = dict(plan.record)
        rec["sdpa_backends"] = getattr(run.model, "sdpa_backends", "not a setting")
        rec["update_modes"] = list(plan.update_modes)
        return rec

    # ------------------------------------------------------------------ sections
    def _setup(self) -> dict[str, Any]:
        torch.manual_seed(0)
        params = save_random_model(self.shape, self.model_path, self.device)
        ok, why = flash_status()
        return {"parameters": params, "flash_attn": why, "flash_attn_imports": ok}

    def _probe(self, key: str, strategy: str, precision: str, attn: str, **kw: Any) -> dict:
        plan = Plan(self.shape, **kw)
        rec = self.fit(strategy, precision, attn, plan)
        for mode, g in plan.grads.items():
            self.grads[f"{key}/{mode}"] = g
        rec["grads_finite"] = {
            m: bool(g is not None and torch.isfinite(g).all()) for m, g in plan.grads.items()
        }
        return rec

    def _single(self) -> dict[str, Any]:
        return self._probe("single", "auto", "bf16-mixed", self.args.attn)

    def _fsdp(self) -> dict[str, Any]:
        return self._probe("fsdp", "fsdp", "bf16-mixed", self.args.attn)

    def _fp16(self) -> dict[str, Any]:
        from sfpo_lab.config import ConfigError
        from sfpo_lab.model.parallel import check_precision

        run = run_config(
            self.shape,
            str(self.model_path),
            accelerator=self.accelerator,
            strategy="auto",
            precision="16-mixed",
            attn=self.args.attn,
        )
        try:
            check_precision(run)
        except ConfigError as err:
            return {"status": "refused", "refusal": str(err)}
        kw = {"rollout": False, "update_modes": ("packed",)}
        return {"path": "GradScaler"} | self._probe(
            "fp16", "auto", "16-mixed", self.args.attn, **kw
        )

    def _attn_alt(self) -> dict[str, Any]:
        ok, why = flash_status()
        if self.device == "cpu":
            alt = "eager"  # the smoke shape: any implementation other than the default
        elif ok:
            alt = "flash_attention_2"
        else:
            return {"status": "not_run", "reason": why}
        kw = {"rollout": False, "update_modes": ("packed",)}
        return {"requested": alt} | self._probe("attn_alt", "auto", "bf16-mixed", alt, **kw)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def machine(device: str) -> dict[str, Any]:
    """Device and library versions."""
    import lightning
    import transformers

    info = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if device == "cuda":
        info["cuda"] = torch.version.cuda
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/gpu_paper_shape.json")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shape on CPU (CI)")
    ap.add_argument("--attn", default="sdpa", help="model.attn_implementation of the main sections")
    ap.add_argument("--budget-s", type=float, default=480.0, help="skip sections past this")
    ap.add_argument(
        "--rollout-tokens", type=int, default=0, help="real generated tokens (0: the shape's)"
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no weight-loading bars in the device's output tail
    out = Runner(parse_args(argv)).run()
    for c in out["checks"]:
        print(f"{'PASS' if c['ok'] else 'FAIL'}  {c['name']}: {c['detail']}")
    print(f"[gpu_paper_shape] total {out['total_s']:.1f} s -> {parse_args(argv).out}")
    return 0 if out["all_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
