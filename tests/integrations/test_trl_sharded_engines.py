"""SFPOGRPOTrainer refuses DeepSpeed and accelerate FSDP (issue 24 item 10).

Under DeepSpeed the optimizer's fp32 master copy overwrites the repositioned parameters at its
next step, and ZeRO-3 / FSDP parameters are empty outside a gather: SFPO's reposition would be
lost without an error. No DeepSpeed is installed here, so the accelerator's answer is faked
where transformers 5.19 computes it: ``Trainer.create_accelerator_and_postprocess`` sets
``is_deepspeed_enabled`` / ``is_fsdp_enabled`` from the accelerator state (args or an
``accelerate launch`` config alike).
"""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

import transformers  # noqa: E402
from trl import GRPOTrainer  # noqa: E402

from sfpo_lab.integrations.trl import SFPOGRPOTrainer  # noqa: E402

from . import _tiny_trl as T  # noqa: E402


def _build(cls, tmp_path, args=None):
    tok = T.tokenizer(tmp_path)
    return cls(
        model=T.model(tok),
        reward_funcs=T.reward,
        args=args if args is not None else T.args(tmp_path / "out"),
        train_dataset=T.dataset(),
        processing_class=tok,
    )


@pytest.fixture(params=["is_deepspeed_enabled", "is_fsdp_enabled"])
def sharded_accelerator(request, monkeypatch) -> str:
    """The accelerator reports DeepSpeed / FSDP, as under ``accelerate launch`` with one."""
    flag = request.param
    real = transformers.Trainer.create_accelerator_and_postprocess

    def create(self) -> None:
        real(self)
        setattr(self, flag, True)

    monkeypatch.setattr(transformers.Trainer, "create_accelerator_and_postprocess", create)
    return flag


def test_refuses_a_deepspeed_or_fsdp_accelerator(tmp_path, sharded_accelerator):
    engine = "DeepSpeed" if "deepspeed" in sharded_accelerator else "accelerate FSDP"
    with pytest.raises(ValueError, match=f"^SFPOGRPOTrainer: {engine} is not supported") as err:
        _build(SFPOGRPOTrainer, tmp_path)
    assert "\n" not in str(err.value) and "reposition" in str(err.value)
    assert isinstance(_build(GRPOTrainer, tmp_path), GRPOTrainer)  # TRL's own is untouched


@pytest.mark.parametrize(
    "setting",
    [("deepspeed", {"zero_optimization": {"stage": 3}}), ("fsdp", "full_shard"), "env"],
    ids=["args.deepspeed", "args.fsdp", "ACCELERATE_USE_DEEPSPEED"],
)
def test_refuses_before_the_model_is_built_when_the_args_say_so(tmp_path, monkeypatch, setting):
    args = T.args(tmp_path / "out")
    if setting == "env":
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    else:
        setattr(args, *setting)  # set after __post_init__: no DeepSpeed install is needed
    with pytest.raises(ValueError, match="is not supported yet"):
        SFPOGRPOTrainer(model="no/such-model", reward_funcs=T.reward, args=args)
