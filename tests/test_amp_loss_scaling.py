"""``trainer.precision=16-mixed``: the update pass under Lightning's loss scaling.

Lightning's AMP plugin scales the loss by the GradScaler's scale (2^16 at first) inside
``manual_backward`` and unscales only inside ``optimizer.step``. The update pass clips (and
logs the norm of) the gradients between the two, so it must account for the scale, and a step
it skips as non-finite must still lower the scale. The plugin runs on CPU through
:class:`tests.doubles.amp.CPUFloat16Amp` (Lightning's own ``MixedPrecision("16-mixed")`` with a
CPU GradScaler and fp32 compute), so every number here is comparable with a ``32-true`` run.
"""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader

from sfpo_lab.config import RunConfig, UpdateConfig
from sfpo_lab.model.build import build_causal_lm, tiny_qwen2_config
from sfpo_lab.training.experience import response_logprobs
from sfpo_lab.training.stages import UpdatePass
from tests.doubles.amp import INIT_SCALE, CPUFloat16Amp
from tests.test_packing import VOCAB, make_experience

LR = 0.5
CLIP = 1e-3  # well under the toy gradient's norm: every step here is clipped


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = tiny_qwen2_config(VOCAB, hidden_size=32, num_layers=2, intermediate_size=64)
    return build_causal_lm(cfg)


def make_run(grad_clip: float = CLIP) -> RunConfig:
    run = RunConfig()
    run.update = UpdateConfig(micro_batch_size=2)  # 3 micro-batches: accumulation under scale
    run.optim.grad_clip = grad_clip
    return run


def experience():
    exp = make_experience([2, 5, 1, 3, 4, 2], [6, 1, 3, 2, 5, 4], p=6, r=7, seed=4)
    lp, _ = response_logprobs(make_model(), exp)
    exp.old_logprobs = lp - 0.1 * torch.rand(lp.shape, generator=torch.Generator().manual_seed(5))
    return exp


class UpdateHost(L.LightningModule):
    """What UpdatePass reads from ``SFPOModule``, inside a real Trainer: ``manual_backward`` and
    ``opt.step()`` go through the trainer's precision plugin. One update pass per batch; the
    batches listed in ``poison`` get an inf in one parameter's gradient (an fp16 overflow)."""

    def __init__(self, run: RunConfig, steps: int, poison: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.policy, self.run_cfg, self.steps = make_model(), run, steps
        self.exp, self.poison, self._poisoned = experience(), set(poison), False
        self.consecutive_skips = 0
        self.stats: list[dict[str, float]] = []
        self.scales: list[float] = []  # the loss scale each pass's backward ran at
        self.theta0 = [p.detach().clone() for p in self.policy.parameters()]
        first = next(self.policy.parameters())
        first.register_hook(lambda g: g * float("inf") if self._poisoned else g)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.policy.parameters(), lr=LR)  # the update is lr x gradient

    def train_dataloader(self) -> DataLoader:
        return DataLoader(list(range(self.steps)), batch_size=1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        self.scales.append(scaler.get_scale() if scaler is not None else 1.0)
        self._poisoned = batch_idx in self.poison
        self.stats.append(UpdatePass(self)(self.exp))

    def delta(self) -> list[torch.Tensor]:
        """Parameters now minus at the start."""
        return [
            p.detach() - p0 for p, p0 in zip(self.policy.parameters(), self.theta0, strict=True)
        ]


def fit(host: L.LightningModule, plugin: object | None = None) -> L.Trainer:
    """``Trainer.fit`` on CPU with ``plugin`` (None = ``32-true``)."""
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        plugins=[plugin] if plugin is not None else None,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's notices about workers / logging
        trainer.fit(host)
    return trainer


def assert_same_update(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-9)


class Toy(L.LightningModule):
    """One linear layer, manual optimization as in ``SFPOModule``; records what the plugin did.

    Forward and backward run in fp32 whatever the plugin's autocast (Lightning's own plugin
    would autocast to fp16 on CPU), so only the loss scaling differs between plugins."""

    def __init__(self, poison: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.automatic_optimization = False
        torch.manual_seed(0)
        self.lin, self.poison = torch.nn.Linear(4, 1), set(poison)
        self.rec: dict[str, list] = {"scale": [], "backward": [], "before_step": [], "w": []}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(list(range(3)), batch_size=1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        opt = self.optimizers()
        x = torch.arange(8.0).view(2, 4) / 8
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        self.rec["scale"].append(scaler.get_scale() if scaler is not None else 1.0)
        with torch.autocast("cpu", enabled=False):  # the backward too: it runs in this thread
            loss = (self.lin(x) ** 2).mean()
            if batch_idx in self.poison:
                loss = loss * float("inf")
            self.manual_backward(loss)
        self.rec["backward"].append(self.lin.weight.grad.clone())
        opt.step()
        opt.zero_grad()
        self.rec["w"].append(self.lin.weight.detach().clone())

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.rec["before_step"].append(self.lin.weight.grad.clone())


def test_the_double_scales_like_lightnings_own_16_mixed_plugin():
    """Lightning's ``MixedPrecision("16-mixed")`` (its own CPU GradScaler) and the double do
    the same thing, and that thing is: gradients 2^16 x the true ones after
    ``manual_backward``, the true ones by ``on_before_optimizer_step``, an inf step skipped
    with the scale halved (Lightning still counts it in ``global_step``)."""
    runs = {}
    for name, plugin in [
        ("32-true", None),
        ("lightning", MixedPrecision("16-mixed", "cpu")),
        ("double", CPUFloat16Amp()),
    ]:
        toy = Toy(poison=(1,) if name != "32-true" else ())
        trainer = fit(toy, plugin)
        runs[name] = (toy.rec, trainer.global_step, getattr(plugin, "scaler", None))
    ref = runs["32-true"][0]
    for name in ("lightning", "double"):
        rec, global_step, scaler = runs[name]
        assert rec["scale"] == [INIT_SCALE, INIT_SCALE, INIT_SCALE / 2]
        torch.testing.assert_close(rec["backward"][0], INIT_SCALE * ref["backward"][0])
        torch.testing.assert_close(rec["before_step"][0], ref["backward"][0])
        assert not torch.isfinite(rec["backward"][1]).all()
        torch.testing.assert_close(rec["w"][1], rec["w"][0])  # the inf step changed nothing
        torch.testing.assert_close(rec["w"][2], ref["w"][1])  # then a plain SGD step
        assert global_step == 3 and scaler.get_scale() == INIT_SCALE / 2
    lightning, double = runs["lightning"][0], runs["double"][0]
    for key in ("backward", "before_step", "w"):
        for a, b in zip(lightning[key], double[key], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_16_mixed_clips_and_logs_the_true_gradient_like_32_true():
    """Before the fix the clip saw gradients 2^16 too large: the logged norm was 2^16 x the
    true one and the clipped update 2^16 x too small."""
    ref = UpdateHost(make_run(), steps=1)
    fit(ref)
    amp = UpdateHost(make_run(), steps=1)
    fit(amp, CPUFloat16Amp())
    assert amp.scales == [INIT_SCALE]  # the loss really was scaled by 2^16
    true_norm = ref.stats[0]["grad_norm"]
    assert true_norm > 10 * CLIP  # the clip is active
    assert amp.stats[0]["grad_norm"] == pytest.approx(true_norm, rel=1e-5)
    assert_same_update(amp.delta(), ref.delta())


def test_16_mixed_without_clipping_still_logs_the_true_norm():
    ref, amp = UpdateHost(make_run(0.0), steps=1), UpdateHost(make_run(0.0), steps=1)
    fit(ref)
    fit(amp, CPUFloat16Amp())
    assert amp.stats[0]["grad_norm"] == pytest.approx(ref.stats[0]["grad_norm"], rel=1e-5)
    assert_same_update(amp.delta(), ref.delta())


def test_an_overflowing_step_is_skipped_lowers_the_scale_and_the_run_continues():
    """An inf gradient at the first pass: no update, the scale halves, the next pass is an
    ordinary (unpoisoned) update from the same weights at the halved scale. Lightning's
    global_step and the skip counters count the real step only."""
    ref = UpdateHost(make_run(), steps=1)
    fit(ref)
    amp = UpdateHost(make_run(), steps=2, poison=(0,))
    trainer = fit(amp, CPUFloat16Amp())
    scaler = trainer.precision_plugin.scaler
    assert amp.stats[0]["skipped_steps"] == 1.0 and "skipped_steps" not in amp.stats[1]
    assert amp.scales == [INIT_SCALE, INIT_SCALE / 2]
    assert scaler.get_scale() == INIT_SCALE / 2  # the good step does not grow it back yet
    assert amp.consecutive_skips == 0
    assert trainer.global_step == 1
    assert amp.stats[1]["grad_norm"] == pytest.approx(ref.stats[0]["grad_norm"], rel=1e-5)
    assert_same_update(amp.delta(), ref.delta())


def test_consecutive_overflows_keep_halving_the_scale_until_the_limit():
    run = make_run()
    run.update.max_skipped_steps = 3
    amp = UpdateHost(run, steps=3, poison=(0, 1, 2))
    with pytest.raises(RuntimeError, match="update.max_skipped_steps=3"):
        fit(amp, CPUFloat16Amp())
    assert amp.scales == [INIT_SCALE, INIT_SCALE / 2, INIT_SCALE / 4]


class AdamHost(UpdateHost):
    """``UpdateHost`` with the AdamW that ``optim.impl`` picks (training/runtime.py). eps = 1
    makes Adam's step depend on the gradient's scale (g / (sqrt(v) + 1)): a fused kernel that
    stepped on the loss-scaled gradients would move the weights ~1e4x further."""

    def __init__(self, impl: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.impl = impl

    def configure_optimizers(self) -> torch.optim.Optimizer:
        from sfpo_lab.training.runtime import optimizer_flags

        params = list(self.policy.parameters())
        flags = optimizer_flags(self.impl, "adamw", params, "16-mixed")
        return torch.optim.AdamW(params, lr=1e-3, eps=1.0, **flags)


def test_16_mixed_with_the_fused_adamw_kernel_unscales_and_skips_like_32_true():
    """``optim.impl=fused`` under 16-mixed (``auto`` never picks it there; a user may):
    GradScaler hands the fused kernel its scale and found-inf flag instead of unscaling, and
    Lightning's plugin leaves the unscale to the kernel. Read against torch 2.13
    ``amp/grad_scaler.py`` (``_step_supports_amp_scaling``) and Lightning 2.6.6
    ``plugins/precision/amp.py``. The update equals a 32-true per-tensor AdamW's; an
    overflowing pass first is skipped (weights and Adam state untouched)."""
    ref = AdamHost("for_loop", make_run(), steps=1)
    fit(ref)
    amp = AdamHost("fused", make_run(), steps=2, poison=(0,))
    fit(amp, CPUFloat16Amp())
    assert amp.optimizers().optimizer.defaults["fused"] is True
    assert amp.scales == [INIT_SCALE, INIT_SCALE / 2]
    assert amp.stats[0]["skipped_steps"] == 1.0
    assert amp.stats[1]["grad_norm"] == pytest.approx(ref.stats[0]["grad_norm"], rel=1e-5)
    assert_same_update(amp.delta(), ref.delta())
