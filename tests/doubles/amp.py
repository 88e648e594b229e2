"""``trainer.precision=16-mixed`` on CPU: Lightning's own AMP plugin with a CPU gradient scaler.

On a GPU, ``Trainer(precision="16-mixed")`` builds
``lightning.pytorch.plugins.precision.MixedPrecision("16-mixed", "cuda")`` with a
``torch.amp.GradScaler`` (initial scale 2^16). On CPU Lightning's accelerator connector swaps
``16-mixed`` for ``bf16-mixed`` (with a warning), so the loss scaling never runs in a CPU test.

:class:`CPUFloat16Amp` *is* that plugin (a subclass that overrides nothing of the scaling):
``pre_backward`` multiplies the loss by the scale inside ``manual_backward``; ``optimizer_step``
calls ``scaler.unscale_`` (gradients divided by the scale, non-finite ones recorded), runs the
``on_before_optimizer_step`` hooks, then ``scaler.step`` (which skips ``optimizer.step`` when
any gradient was non-finite) and ``scaler.update`` (scale x 0.5 after a skipped step). Only the
autocast differs: fp16 kernels on CPU are not the GPU's, so by default the forward runs in
fp32 and a test can compare with a ``32-true`` run exactly (scaling by a power of two is exact
in floating point); pass ``autocast_dtype`` to compute in bf16 or fp16 instead.

Pass it as ``L.Trainer(accelerator="cpu", plugins=[CPUFloat16Amp()])``.
"""

from __future__ import annotations

import torch
from lightning.pytorch.plugins.precision import MixedPrecision

INIT_SCALE = 2.0**16  # torch.amp.GradScaler's default, the scale Lightning starts from


class CPUFloat16Amp(MixedPrecision):
    """Lightning's ``MixedPrecision("16-mixed")`` with ``GradScaler("cpu")``.

    Args:
        init_scale: the scaler's first loss scale (torch's default 2^16).
        autocast_dtype: the forward's autocast dtype; None = no autocast (fp32 compute).
    """

    def __init__(
        self, init_scale: float = INIT_SCALE, autocast_dtype: torch.dtype | None = None
    ) -> None:
        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
        super().__init__("16-mixed", "cpu", scaler=scaler)
        self.autocast_dtype = autocast_dtype

    def autocast_context_manager(self) -> torch.autocast:
        """The forward's autocast: disabled (fp32) unless ``autocast_dtype`` was given."""
        if self.autocast_dtype is None:
            return torch.autocast("cpu", enabled=False)
        return torch.autocast("cpu", dtype=self.autocast_dtype, cache_enabled=False)
