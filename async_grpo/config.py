"""The typed run config: the only copy of every default, and every value checked up front.

An experiment's `ml_collections` config (experiments/configs/*.py, overridden on the command
line with ``--config.x=y``) is parsed ONCE into a frozen `RunConfig` by `RunConfig.from_config`.
Everything downstream (components, the learner, the pipeline, SFT) reads the typed config, never
the ConfigDict. `ml_collections` is imported only where a ConfigDict is built
(`default_config_dict`): parsing a plain dict and everything downstream run without it (the GPU
machine's image has no ml_collections). Parsing refuses unknown keys and checks every value
before anything heavy starts; each error names the key, the value and what is allowed, e.g.
``rl.optimizer.lr=-1.0: must be a finite number > 0``.

The config files start from `default_config_dict()`, which is built from the dataclasses below,
so a default is written in exactly one place. `describe(RunConfig())` prints every key with its
default and a one-line help.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from typing import Any, Mapping, Optional

from async_grpo import collapse as collapse_lib
from async_grpo import losses
from async_grpo import models
from async_grpo import sharding as sharding_lib
from async_grpo import staleness as staleness_lib
from async_grpo import tasks as tasks_lib

GRAD_MODES = ("surrogate", "total_derivative", "corrected")
LR_SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adamw", "sgd")


class ConfigError(ValueError):
    """A bad config value; the message names the full key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r}: {allowed}")

    def under(self, prefix: str) -> "ConfigError":
        return ConfigError(f"{prefix}.{self.key}" if prefix else self.key, self.value, self.allowed)


def field(default, help: str, **kw):  # pylint: disable=redefined-builtin
    """A dataclass field with a one-line help (shown by `describe`)."""
    if isinstance(default, (dict, list)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: _copy(default), metadata={"help": help},
                                 **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def _copy(x):
    return dict(x) if isinstance(x, dict) else list(x) if isinstance(x, list) else x


def _need(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int_at_least(obj, key: str, low: int) -> None:
    v = getattr(obj, key)
    _need(_is_int(v) and v >= low, key, v, f"must be an integer >= {low}")


def _num_in(obj, key: str, low: float, high: float = math.inf, *, low_open=False,
            high_open=False) -> None:
    v = getattr(obj, key)
    ok = _is_num(v) and (v > low if low_open else v >= low) and (v < high if high_open else
                                                                v <= high)
    lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
    _need(ok, key, v, f"must be a finite number in {lo}, {hi}" if high != math.inf else
          f"must be a finite number {'>' if low_open else '>='} {low:g}")


def _one_of(obj, key: str, choices) -> None:
    v = getattr(obj, key)
    _need(v in choices, key, v, f"must be one of {list(choices)}")


# ------------------------------------------------------------------------------------------------
# Sections.
# ------------------------------------------------------------------------------------------------


_FILE_TASKS = ("gsm8k",)   # tasks that read their problems from `path`


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    name: str = field("addition", "task name (async_grpo.tasks.TASKS)")
    kwargs: dict = field({"num_digits": 3}, "keyword arguments of the task's constructor")
    path: str = field("", "data file of a file-based task (gsm8k: a GSM8K-format JSONL); "
                          "passed as kwargs['path']")
    prompt_format: str = field("plain", "'plain' (the task's prompt text) or 'chat' (one user "
                                        "message through the tokenizer's chat template)")

    def __post_init__(self):
        _one_of(self, "name", sorted(tasks_lib.TASKS))
        _one_of(self, "prompt_format", tasks_lib.PROMPT_FORMATS)
        _need(isinstance(self.path, str), "path", self.path, "must be a path (a string)")
        if self.path:
            _need(self.name in _FILE_TASKS, "path", self.path,
                  f"only file-based tasks {list(_FILE_TASKS)} read a path, not {self.name!r}")
            _need("path" not in self.kwargs, "path", self.path,
                  f"given twice: also kwargs['path']={self.kwargs.get('path')!r}")
            _need(os.path.isfile(self.path), "path", self.path, "no such file")
        elif self.name in _FILE_TASKS:
            _need("path" in self.kwargs, "path", self.path,
                  f"task {self.name!r} needs a data file: set task.path=/path/to/train.jsonl")

    def task_kwargs(self) -> dict:
        """The task constructor's keyword arguments (`kwargs`, plus `path` when set)."""
        return {**self.kwargs, "path": self.path} if self.path else dict(self.kwargs)


HF_OVERRIDES = ("attention_impl", "remat")   # what hf_path models may change
_PRECISION_KEYS = ("dtype", "param_dtype")    # LlamaConfig fields set by the `precision` section
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    preset: str = field("small", "model size preset (async_grpo.models.PRESETS)")
    max_seq_len: int = field(32, "context length in tokens (0: the preset's / checkpoint's)")
    overrides: dict = field({}, "any LlamaConfig field, e.g. n_layers=2 (with hf_path only "
                                f"{list(HF_OVERRIDES)})")
    hf_path: str = field("", "a Hugging Face Llama-3.x/Qwen2 directory (config.json + "
                             "*.safetensors): its architecture replaces the preset and its "
                             "weights are θ_0 (SFT start, or GRPO start without init_from)")
    tokenizer_path: str = field("", "a Hugging Face tokenizer directory (tokenizer.json); empty: "
                                    "hf_path's tokenizer if it has one, else the character "
                                    "tokenizer")

    def __post_init__(self):
        _one_of(self, "preset", list(models.PRESETS))
        _int_at_least(self, "max_seq_len", 0)
        moved = sorted(set(self.overrides) & set(_PRECISION_KEYS))
        _need(not moved, "overrides", self.overrides,
              f"{moved} belong to the precision policy: set precision.compute_dtype / "
              "precision.param_dtype instead")
        for key in ("hf_path", "tokenizer_path"):
            v = getattr(self, key)
            _need(isinstance(v, str), key, v, "must be a path (a string)")
        if self.hf_path:
            _need(os.path.isfile(os.path.join(self.hf_path, "config.json")), "hf_path",
                  self.hf_path, "must be a directory with a config.json (a Hugging Face model)")
            bad = sorted(set(self.overrides) - set(HF_OVERRIDES))
            _need(not bad, "overrides", self.overrides,
                  f"with hf_path the architecture is the checkpoint's; only {list(HF_OVERRIDES)} "
                  f"may be overridden, not {bad}")
        if self.tokenizer_path:
            _need(os.path.isfile(os.path.join(self.tokenizer_path, "tokenizer.json")),
                  "tokenizer_path", self.tokenizer_path, "must be a directory with a "
                  "tokenizer.json (a Hugging Face fast tokenizer)")

    def resolved_tokenizer_path(self) -> str:
        """tokenizer_path, else hf_path when it holds a tokenizer.json, else "" (characters)."""
        if self.tokenizer_path:
            return self.tokenizer_path
        if self.hf_path and os.path.isfile(os.path.join(self.hf_path, "tokenizer.json")):
            return self.hf_path
        return ""


SNAPSHOT_DTYPES = ("param", "compute")
SNAPSHOT_MEMORY = ("device", "host")


@dataclasses.dataclass(frozen=True)
class PrecisionConfig:
    """The mixed-precision policy: θ stored in `param_dtype` (the master copy the optimizer
    updates), matmuls and activations in `compute_dtype` (norms, RoPE, attention softmax, logits
    and log-probs always float32), Adam's first moment in `opt_state_dtype`."""

    compute_dtype: str = field("float32", "activations and matmul inputs: float32 | bfloat16")
    param_dtype: str = field("float32", "stored parameters θ (master copy): float32 | bfloat16")
    opt_state_dtype: str = field("", "Adam's first moment μ (optax mu_dtype): float32 | bfloat16 "
                                     "| '' (= param_dtype); the second moment stays param_dtype")
    snapshot_dtype: str = field("param", "held behavior snapshots φ: 'param' (exact copies) or "
                                         "'compute' (cast to compute_dtype: samples identically, "
                                         "drift/within_cycle then includes the rounding)")
    snapshot_memory: str = field("device", "where held snapshots live: 'device' or 'host' "
                                           "(pinned host memory, fetched when a batch samples)")

    def __post_init__(self):
        for key in ("compute_dtype", "param_dtype", "opt_state_dtype"):   # jnp dtypes by name
            v = getattr(self, key)
            if not (key == "opt_state_dtype" and v == ""):
                try:
                    object.__setattr__(self, key, models.dtype_name(v, key, DTYPES))
                except ValueError:
                    pass   # refused by _one_of below, with the config's message
        _one_of(self, "compute_dtype", DTYPES)
        _one_of(self, "param_dtype", DTYPES)
        _one_of(self, "opt_state_dtype", ("",) + DTYPES)
        _one_of(self, "snapshot_dtype", SNAPSHOT_DTYPES)
        _one_of(self, "snapshot_memory", SNAPSHOT_MEMORY)


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    micro_batches: int = field(1, "exact gradient accumulation over k micro-batches of the "
                                  "learner batch (k must divide it; k > 1 adds one forward pass)")
    logits_chunk: int = field(0, "log-probs and entropy `logits_chunk` positions at a time, "
                                 "rematerialised (0: the full [B, T, V] logits at once)")

    def __post_init__(self):
        _int_at_least(self, "micro_batches", 1)
        _int_at_least(self, "logits_chunk", 0)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    num_problems: int = field(500, "size of the fixed held-out set (disjoint from train by hash)")
    seed: int = field(1234, "seed of the held-out set and of sampled evaluation")
    batch_size: int = field(500, "problems decoded per evaluation batch")
    greedy: bool = field(True, "heldout/accuracy with greedy decoding (else one sample)")
    sampled: bool = field(True, "also heldout_sampled/*: one sample at rl.temperature")

    def __post_init__(self):
        _int_at_least(self, "num_problems", 1)
        _int_at_least(self, "seed", 0)
        _int_at_least(self, "batch_size", 1)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = field("adamw", "'adamw' (β1, β2, weight decay) or 'sgd' (β1 = heavy-ball momentum)")
    lr: float = field(1e-4, "peak learning rate η")
    warmup_steps: int = field(10, "linear warm-up steps from 0 to lr")
    schedule: str = field("constant", "after warm-up: 'constant' or 'cosine' decay")
    end_lr_frac: float = field(0.1, "cosine: final lr as a fraction of lr")
    b1: float = field(0.9, "Adam β1 (sgd: momentum)")
    b2: float = field(0.99, "Adam β2")
    weight_decay: float = field(0.0, "AdamW decoupled weight decay")
    grad_clip: float = field(1.0, "global-norm gradient clip (0: off)")

    def __post_init__(self):
        _one_of(self, "name", OPTIMIZERS)
        _num_in(self, "lr", 0, low_open=True)
        _int_at_least(self, "warmup_steps", 0)
        _one_of(self, "schedule", LR_SCHEDULES)
        _num_in(self, "end_lr_frac", 0, 1)
        _num_in(self, "b1", 0, 1, high_open=True)
        _num_in(self, "b2", 0, 1, high_open=True)
        _num_in(self, "weight_decay", 0)
        _num_in(self, "grad_clip", 0)


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    steps: int = field(300, "supervised warm-start steps")
    batch_size: int = field(64, "problems per SFT step")
    num_examples: int = field(0, "size of the fixed SFT set (0: fresh problems every step)")
    data_seed: int = field(7, "seed of the SFT data")
    eval_every: int = field(100, "held-out evaluation every n steps (0: only at the end)")
    checkpoint_every: int = field(100, "checkpoint every n steps (0: only at the end)")
    optimizer: OptimizerConfig = field(OptimizerConfig(
        lr=1e-3, warmup_steps=50, schedule="cosine", weight_decay=0.01), "SFT optimizer")

    def __post_init__(self):
        _int_at_least(self, "steps", 1)
        _int_at_least(self, "batch_size", 1)
        _int_at_least(self, "num_examples", 0)
        _int_at_least(self, "data_seed", 0)
        _int_at_least(self, "eval_every", 0)
        _int_at_least(self, "checkpoint_every", 0)


@dataclasses.dataclass(frozen=True)
class RLConfig:
    steps: int = field(200, "learner steps (GRPO updates)")
    prompts_per_step: int = field(16, "prompts per learner step")
    group_size: int = field(8, "responses per prompt (G >= 2)")
    temperature: float = field(1.0, "sampling temperature (> 0)")
    top_k: int = field(0, "top-k sampling (0: off)")
    top_p: float = field(0.0, "nucleus sampling (0: off)")
    loss: str = field("grpo", "a registered loss variant (async_grpo.losses.list_losses())")
    loss_kwargs: dict = field({"kl_coef": 0.04}, "overrides of the loss variant's settings")
    log_ref_kl: bool = field(True, "log KL(current || initial policy) every step")
    eval_every: int = field(25, "held-out evaluation every n steps (0: off)")
    checkpoint_every: int = field(50, "checkpoint every n steps and at the end (0: never)")
    optimizer: OptimizerConfig = field(OptimizerConfig(), "RL optimizer")
    grad_mode: str = field("surrogate", "surrogate | total_derivative | corrected")
    td_coef: float = field(1.0, "corrected: gradient of (1 − c) L_sur + c L_td")
    td_loss_kwargs: dict = field({}, "the total-derivative objective J, e.g. kl_coef=0.04 for "
                                     "J − 0.04·KL(π_θ‖π_ref) (default: J without KL)")

    def __post_init__(self):
        _int_at_least(self, "steps", 1)
        _int_at_least(self, "prompts_per_step", 1)
        _int_at_least(self, "group_size", 2)
        _num_in(self, "temperature", 0, low_open=True)
        _int_at_least(self, "top_k", 0)
        _num_in(self, "top_p", 0, 1)
        _int_at_least(self, "eval_every", 0)
        _int_at_least(self, "checkpoint_every", 0)
        _one_of(self, "grad_mode", GRAD_MODES)
        _num_in(self, "td_coef", 0, 1)
        try:
            losses.loss_config(self.loss, **self.loss_kwargs)
        except ValueError as e:
            raise ConfigError("loss", self.loss, f"with loss_kwargs={self.loss_kwargs}: {e}")
        try:
            losses.loss_config("total_derivative", **self.td_loss_kwargs)
        except ValueError as e:
            raise ConfigError("td_loss_kwargs", self.td_loss_kwargs, str(e))

    @property
    def td_weight(self) -> float:
        """c in (1 − c)·L_sur + c·L_td: 0 (surrogate), 1 (total_derivative) or td_coef."""
        return {"surrogate": 0.0, "total_derivative": 1.0, "corrected": self.td_coef}[
            self.grad_mode]


@dataclasses.dataclass(frozen=True)
class StalenessConfig:
    policy: str = field("sync", "async_grpo.staleness policy: sync | fixed | sync_interval | "
                                "random_uniform | random_geometric | bounded_async")
    max_lag: int = field(0, "S, the largest lag in learner steps")
    publish_every: int = field(1, "the learner publishes θ every k updates")
    queue_size: int = field(1, "finished batches that may wait for the learner")
    geometric_p: float = field(0.5, "random_geometric: P(lag = k) ∝ (1 − p)^k")

    def __post_init__(self):
        _int_at_least(self, "max_lag", 0)
        _int_at_least(self, "queue_size", 1)
        _int_at_least(self, "publish_every", 1)
        try:
            policy = staleness_lib.StalenessPolicy(self.policy, self.max_lag,
                                                   geometric_p=self.geometric_p)
            staleness_lib.check_publish_every(policy, self.publish_every)
        except ValueError as e:
            raise ConfigError("policy", self.policy, f"with max_lag={self.max_lag}: {e}")

    def make_policy(self, seed: int) -> staleness_lib.StalenessPolicy:
        return staleness_lib.StalenessPolicy(self.policy, self.max_lag,
                                             geometric_p=self.geometric_p, seed=seed)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    axes: str = field("data=-1,fsdp=1,tensor=1", "learner mesh: axis=size, one size may be -1")
    num_devices: int = field(0, "use the first n devices (0: all)")
    generator_devices: int = field(0, "the last m devices form the generator's own mesh "
                                      "(0: shared)")

    def __post_init__(self):
        try:
            sharding_lib.parse_mesh_spec(self.axes)
        except ValueError as e:
            raise ConfigError("axes", self.axes, str(e).split(": ", 1)[-1])
        _int_at_least(self, "num_devices", 0)
        _int_at_least(self, "generator_devices", 0)


@dataclasses.dataclass(frozen=True)
class DiagnosticsConfig:
    cosines: bool = field(True, "cosines of consecutive gradients and updates (2 param copies)")
    tensorboard: bool = field(True, "also write TensorBoard events to <workdir>/tb (needs "
                                    "tensorboardX; metrics.jsonl is written either way)")
    exact_drift: bool = field(True, "‖θ_t − φ_t‖ from the held behavior snapshot")
    reshard_drift: bool = field(False, "with a separate generator mesh, copy φ back to the "
                                       "learner mesh every step for the exact drift")
    bias_every: int = field(0, "every n steps measure the staleness bias on a fresh on-policy "
                               "batch (0: off)")
    parity_every: int = field(10, "every n steps the generator re-scores its batch teacher-forced "
                                  "with the snapshot that sampled it: parity/{mean_abs, max_abs, "
                                  "ratio_out_frac, behavior_gap} (0: off)")

    def __post_init__(self):
        _int_at_least(self, "bias_every", 0)
        _int_at_least(self, "parity_every", 0)


def _collapse_default() -> collapse_lib.CollapseRules:
    return collapse_lib.CollapseRules(metric="reward", ema=0.9, warmup=10)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One experiment: task, model, SFT, RL, staleness, mesh, diagnostics, collapse."""

    seed: int = field(0, "seed of θ_0 (SFT), prompts and sampling keys")
    log_every: int = field(1, "write metrics every n steps (the host fetches them only then)")
    keep_checkpoints: int = field(3, "checkpoints kept (newest)")
    init_from: str = field("", "the SFT workdir GRPO starts from")
    max_new_tokens: int = field(0, "response budget (0: the task's longest answer + 2)")
    task: TaskConfig = field(TaskConfig(), "the task")
    model: ModelConfig = field(ModelConfig(), "the policy model")
    precision: PrecisionConfig = field(PrecisionConfig(), "mixed-precision policy")
    learner: LearnerConfig = field(LearnerConfig(), "learner memory: accumulation, chunking")
    eval: EvalConfig = field(EvalConfig(), "held-out evaluation")
    sft: SFTConfig = field(SFTConfig(), "supervised warm start")
    rl: RLConfig = field(RLConfig(), "GRPO")
    staleness: StalenessConfig = field(StalenessConfig(), "which version generates each batch")
    mesh: MeshConfig = field(MeshConfig(), "devices")
    diagnostics: DiagnosticsConfig = field(DiagnosticsConfig(), "per-step diagnostics")
    collapse: collapse_lib.CollapseRules = field(_collapse_default(), "async_grpo.collapse rules "
                                                 "on the learner's per-step metrics")

    def __post_init__(self):
        _int_at_least(self, "seed", 0)
        _int_at_least(self, "log_every", 1)
        _int_at_least(self, "keep_checkpoints", 1)
        _int_at_least(self, "max_new_tokens", 0)
        _need(isinstance(self.init_from, str), "init_from", self.init_from, "must be a path")

    @classmethod
    def from_config(cls, cfg) -> "RunConfig":
        """Parses an ml_collections ConfigDict (or a plain dict); see the module docstring."""
        return _parse(cls, cfg, "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def record(self, kind: str) -> dict:
        """The keys a run of `kind` ("sft" or "grpo") depends on: what its workdir records and
        checks on resume (`async_grpo.workdir.claim`). SFT ignores the RL sections (but its
        sampled evaluation uses rl.temperature); GRPO ignores `sft`."""
        d = self.to_dict()
        if kind == "sft":
            keep = ("seed", "max_new_tokens", "log_every", "keep_checkpoints", "task", "model",
                    "precision", "learner", "eval", "sft", "mesh")
            return {**{k: d[k] for k in keep}, "rl": {"temperature": self.rl.temperature}}
        if kind == "grpo":
            return {k: v for k, v in d.items() if k != "sft"}
        raise ValueError(f"kind={kind!r}: must be 'sft' or 'grpo'")


# ------------------------------------------------------------------------------------------------
# Parsing, defaults as a ConfigDict, description.
# ------------------------------------------------------------------------------------------------


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_config_dict(x) -> bool:
    """An ml_collections ConfigDict (or FrozenConfigDict), recognised without importing it."""
    return any(c.__module__.startswith("ml_collections") and c.__name__.endswith("ConfigDict")
               for c in type(x).__mro__)


def _coerce(key: str, value: Any, typ) -> Any:
    if _is_config_dict(value):
        value = value.to_dict()
    if typ is bool:
        _need(isinstance(value, bool), key, value, "must be true or false")
    elif typ is int:
        _need(_is_int(value), key, value, "must be an integer")
    elif typ is float:
        _need(isinstance(value, (int, float)) and not isinstance(value, bool), key, value,
              "must be a number")
        value = float(value)
    elif typ is str:
        _need(isinstance(value, str), key, value, "must be a string")
    elif typ is dict:
        _need(isinstance(value, Mapping), key, value, "must be a mapping")
        value = dict(value)
    return value


def _parse(cls, cfg, prefix: str):
    data = cfg.to_dict() if _is_config_dict(cfg) else dict(cfg or {})
    types = _field_types(cls)
    unknown = sorted(set(data) - set(types))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(key, data[unknown[0]], f"unknown key; valid keys{' of ' + prefix if prefix else ''}: "
                                                 f"{sorted(types)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        typ = types[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = _parse(typ, value, key)
        else:
            kwargs[name] = _coerce(key, value, typ)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise e.under(prefix) from None
    except ValueError as e:   # CollapseRules' own messages already name collapse.<key>
        raise ValueError(str(e)) from None


def default_config_dict():
    """The defaults of `RunConfig` as an `ml_collections.ConfigDict` (what experiments/configs/
    start from)."""
    import ml_collections  # pylint: disable=import-outside-toplevel
    return ml_collections.ConfigDict(RunConfig().to_dict())


def describe(config: Optional[RunConfig] = None) -> str:
    """Every key with its value and one-line help, one per line."""
    config = RunConfig() if config is None else config
    lines: list[str] = []

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(v) and not isinstance(v, collapse_lib.CollapseRules):
                walk(v, key + ".")
            elif isinstance(v, collapse_lib.CollapseRules):
                for g in dataclasses.fields(v):
                    lines.append(f"{key}.{g.name} = {getattr(v, g.name)!r}")
            else:
                lines.append(f"{key} = {v!r}  # {f.metadata.get('help', '')}")

    walk(config, "")
    return "\n".join(lines)
