"""FSDP2 models without a full host copy per rank (issue 24 item 7), 2 gloo ranks.

``SFPOModule.configure_model`` under ``trainer.strategy=fsdp`` with the KL term on and
``bf16-mixed``, on a ~160 MB (fp32) random Qwen2 saved with ``save_pretrained``: the peak host
RSS each rank adds stays under one full fp32 copy of the model (the policy's half, the bf16
reference's quarter and one bucket of weights in flight; before, each rank built the whole
model, deep-copied it for the reference and again for the generation copy), and the shards
hold exactly a plain load's weights, the non-persistent RoPE buffers included.

The helpers here (a module configured on a gloo mesh with a stand-in trainer) are shared
with tests/test_fsdp_reference.py.
"""

from __future__ import annotations

import faulthandler
import os
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sfpo_lab.config import RunConfig, TrainerConfig
from sfpo_lab.model.build import build_causal_lm, tiny_qwen2_config
from sfpo_lab.run.perf import rss_bytes
from tests.dist_utils import free_port

WORLD = 2
MiB = 2**20


def fsdp_run(precision: str = "bf16-mixed", kl_coef: float = 0.01, fused: bool = False):
    """A RunConfig for 2 FSDP2 ranks with the KL term on."""
    run = RunConfig()
    return replace(
        run,
        trainer=TrainerConfig(strategy="fsdp", devices=WORLD, precision=precision),
        data=replace(run.data, batch_size=16),
        loss=replace(run.loss, kl_coef=kl_coef),
        update=replace(run.update, fused_lm_head=fused),
        rollout=replace(run.rollout, sync_bucket_mb=16),  # base weights in flight on rank 0
    )


def configured_module(path: str, run: RunConfig, mesh):
    """``SFPOModule.configure_model`` as Lightning's ModelParallelStrategy calls it (its
    device mesh, its root device), without a Trainer."""
    from sfpo_lab.training.module import SFPOModule

    module = SFPOModule(run, path, SimpleNamespace(pad_token_id=0, eos_token_id=1))
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    module._device_mesh = mesh
    module.configure_model()
    return module


def init_gloo(rank: int, port: int):
    """One rank of a 2-process gloo group and its ``data_parallel`` mesh."""
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    return init_device_mesh("cpu", (WORLD,), mesh_dim_names=("data_parallel",))


class PeakRSS:
    """The peak resident set size above the start, sampled every millisecond."""

    def __init__(self) -> None:
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def added(self) -> int:
        return self.peak - self.start


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def worker(rank: int, port: int, path: str, out_dir: str) -> None:
    faulthandler.enable()  # a native crash in a rank prints its Python stack
    mesh = init_gloo(rank, port)
    import sfpo_lab.training.module  # noqa: F401  (imported before measuring: only the build counts)

    with PeakRSS() as rss:
        module = configured_module(path, fsdp_run(), mesh)
    policy, ref = module.policy, module.ref_policy
    plain = build_causal_lm(path).eval()
    want = plain.state_dict()
    tensors = [*policy.parameters(), *policy.buffers(), *ref.parameters(), *ref.buffers()]
    out = {
        "added": rss.added,
        "meta": any(t.is_meta for t in tensors),
        "policy_dtype": {str(p.dtype) for p in policy.parameters()},
        "ref_dtype": {str(p.dtype) for p in ref.parameters()},
        "policy_equal": all(torch.equal(_full(v), want[k]) for k, v in policy.state_dict().items()),
        "ref_equal": all(
            torch.equal(_full(v), want[k].to(v.dtype)) for k, v in ref.state_dict().items()
        ),
        "buffers_equal": [
            torch.equal(b, dict(plain.named_buffers())[k])
            for m in (policy, ref)
            for k, b in m.named_buffers()
        ],
        "tied": policy.lm_head.weight is policy.model.embed_tokens.weight,
        "eos": policy.generation_config.eos_token_id,
    }
    module.sync_engine()  # the generation copy gets its weights from the policy
    gen = module.engine.model.state_dict()
    out["gen_equal"] = all(torch.equal(v, want[k].to(v.dtype)) for k, v in gen.items())
    out["gen_dtype"] = {str(p.dtype) for p in module.engine.model.parameters()}
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def base_160mb(tmp_path_factory) -> tuple[Path, int]:
    """A random Qwen2 of ~160 MB in fp32 (40M parameters, no tensor over 16 MB), saved."""
    torch.manual_seed(0)
    cfg = tiny_qwen2_config(
        8192,
        hidden_size=512,
        num_layers=12,
        num_heads=8,
        num_kv_heads=2,
        intermediate_size=1536,
        eos_token_id=[1, 7],
    )
    model = build_causal_lm(cfg)
    path = tmp_path_factory.mktemp("base160")
    model.save_pretrained(path)
    return path, sum(p.numel() * 4 for p in model.parameters())


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_configure_model_adds_under_one_host_copy_and_loads_exact_weights(
    tmp_path, base_160mb
):
    path, full_bytes = base_160mb
    assert full_bytes > 150 * MiB
    mp.spawn(worker, args=(free_port(), str(path), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        print(
            f"rank {rank}: +{r['added'] / MiB:.0f} MiB host RSS, full fp32 copy {full_bytes / MiB:.0f}"
        )
        # policy fp32 half (0.5) + reference bf16 half (0.25) + one bucket / tensor in flight
        assert r["added"] < full_bytes, (
            f"rank {rank} added {r['added'] / MiB:.0f} MiB of host RSS in configure_model, "
            f"a full fp32 copy is {full_bytes / MiB:.0f} MiB"
        )
        assert not r["meta"], "a parameter or buffer was left on the meta device"
        assert r["policy_dtype"] == {"torch.float32"}  # master weights
        assert r["ref_dtype"] == r["gen_dtype"] == {"torch.bfloat16"}  # the compute dtype
        assert r["policy_equal"] and r["ref_equal"] and r["gen_equal"]
        assert r["buffers_equal"] and all(r["buffers_equal"])  # RoPE inv_freq recomputed
        assert r["tied"] and r["eos"] == [1, 7]  # generation_config.json read
