"""Full-weight gathering (plain and FSDP2) and sync into an engine's own inference copy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist

from sfpo_lab.model.build import decoder_layer_classes
from sfpo_lab.rollout import (
    HFEngine,
    SamplingParams,
    iter_full_tensors,
    load_named_tensors_,
    push_full_weights,
)

PAD, EOS = 0, 1
PROMPTS = [[5, 6, 7], [2, 3, 4, 5, 9, 8], [11]]
GREEDY = SamplingParams(max_new_tokens=8, greedy=True)


def test_iter_full_tensors_uses_state_dict_names_with_tied_weights(model) -> None:
    assert model.lm_head.weight is model.model.embed_tokens.weight
    buckets = list(iter_full_tensors(model))
    assert len(buckets) == 1
    pairs = dict(buckets[0])
    assert set(pairs) == set(model.state_dict()) and "lm_head.weight" in pairs
    for name, value in model.state_dict().items():
        assert pairs[name].data_ptr() == value.data_ptr()  # plain tensors pass through, no copy


def test_buckets_respect_size_and_keep_aliases_together(model) -> None:
    buckets = list(iter_full_tensors(model, bucket_bytes=1))
    assert len(buckets) == len({id(p) for p in model.state_dict(keep_vars=True).values()})
    tied = next(b for b in buckets if len(b) == 2)
    assert {name for name, _ in tied} == {"model.embed_tokens.weight", "lm_head.weight"}
    embed_bytes = model.model.embed_tokens.weight.numel() * 4
    buckets = list(iter_full_tensors(model, bucket_bytes=embed_bytes))
    sizes = [sum({t.data_ptr(): t.numel() * 4 for _, t in b}.values()) for b in buckets]
    assert len(buckets) > 1 and all(size >= embed_bytes for size in sizes[:-1])
    for size, bucket in zip(sizes, buckets, strict=True):  # closed as soon as it was full
        assert size - bucket[-1][1].numel() * 4 < embed_bytes
    casted = next(iter_full_tensors(model, dtype=torch.bfloat16))
    assert all(t.dtype == torch.bfloat16 for _, t in casted)


def test_sync_into_owned_copy_reproduces_source_outputs(model_factory) -> None:
    for tie in (True, False):
        source = model_factory(seed=0, tie=tie)
        engine = HFEngine.from_config(source.config, PAD, EOS)
        expected = HFEngine(source, PAD, EOS).generate(PROMPTS, GREEDY).input_ids
        assert not torch.equal(engine.generate(PROMPTS, GREEDY).input_ids, expected)
        seconds = push_full_weights(source, engine, bucket_bytes=4096)
        assert seconds > 0.0  # a real push was timed (values checked below)
        assert torch.equal(engine.generate(PROMPTS, GREEDY).input_ids, expected)
        for name, value in source.state_dict().items():
            assert torch.equal(engine.model.state_dict()[name], value), name
            assert engine.model.state_dict()[name].data_ptr() != value.data_ptr()  # a copy


def test_sync_casts_dtype(model) -> None:
    engine = HFEngine.from_config(model.config, PAD, EOS, dtype="bfloat16")
    push_full_weights(model, engine)
    weight = engine.model.model.embed_tokens.weight
    assert weight.dtype == torch.bfloat16
    assert torch.equal(weight, model.model.embed_tokens.weight.to(torch.bfloat16))


def test_sync_errors_name_the_weight(model) -> None:
    engine = HFEngine.from_config(model.config, PAD, EOS)
    state = list(model.state_dict().items())
    with pytest.raises(KeyError, match="unknown weight name 'model.nope'"):
        engine.sync_weights([("model.nope", torch.zeros(1))])
    with pytest.raises(ValueError, match="model.norm.weight.*shape"):
        engine.sync_weights([("model.norm.weight", torch.zeros(3))])
    with pytest.raises(ValueError, match="not provided.*model.norm.weight"):
        engine.sync_weights([(k, v) for k, v in state if k != "model.norm.weight"])
    # tied: either name fills the shared tensor
    engine.sync_weights([(k, v) for k, v in state if k != "lm_head.weight"])
    assert load_named_tensors_(engine.model, state[:1], strict=False) == 1


def test_borrowed_module_sync_is_a_noop_that_gathers_nothing(model) -> None:
    def never() -> Iterator[tuple[str, torch.Tensor]]:
        raise AssertionError("a borrowing engine must not consume the weights")
        yield  # pragma: no cover

    HFEngine(model, PAD, EOS).sync_weights(never())
    assert push_full_weights(model, HFEngine(model, PAD, EOS)) < 1.0


@pytest.fixture
def single_process_group(tmp_path) -> Iterator[None]:
    """A world-size-1 gloo group, so FSDP2 can shard on CPU inside the test process."""
    if dist.is_initialized():  # e.g. vLLM's world-size-1 group from an earlier test
        assert dist.get_world_size() == 1, "a multi-rank group leaked into the test process"
        yield
        return
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_fsdp2_shards_are_gathered_to_full_tensors(model_factory, single_process_group) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    reference = model_factory(seed=0)
    sharded = model_factory(seed=0)
    layer_types = tuple(decoder_layer_classes(sharded))
    for module in sharded.modules():
        if isinstance(module, layer_types):
            fully_shard(module)
    fully_shard(sharded)
    assert isinstance(sharded.model.embed_tokens.weight, DTensor)

    pairs = [pair for bucket in iter_full_tensors(sharded, bucket_bytes=8192) for pair in bucket]
    assert [name for name, _ in pairs if name == "lm_head.weight"] == ["lm_head.weight"]
    assert set(dict(pairs)) == set(reference.state_dict())
    for name, value in pairs:
        assert not isinstance(value, DTensor)
        assert torch.equal(value, reference.state_dict()[name]), name
    # cast before the gather (half the traffic for a bf16 engine), same values as after it
    for name, value in (p for b in iter_full_tensors(sharded, dtype=torch.bfloat16) for p in b):
        assert not isinstance(value, DTensor) and value.dtype == torch.bfloat16
        assert torch.equal(value, reference.state_dict()[name].to(torch.bfloat16)), name

    engine = HFEngine.from_config(reference.config, PAD, EOS)
    push_full_weights(sharded, engine)
    expected = HFEngine(reference, PAD, EOS).generate(PROMPTS, GREEDY).input_ids
    assert torch.equal(engine.generate(PROMPTS, GREEDY).input_ids, expected)
