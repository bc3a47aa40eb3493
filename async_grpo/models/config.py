"""Configuration and presets of the Llama-style policy model.

`LlamaConfig` is a frozen (hashable) dataclass, so it can live as static data in an NNX graphdef and
be used as a `jax.jit` static argument. Presets run from `tiny` (unit tests) through CPU sizes up to
the exact Llama-3.2-1B/3B shapes. Field names map onto Hugging Face `LlamaConfig` as follows::

    vocab_size       <- vocab_size              n_kv_heads   <- num_key_value_heads
    d_model          <- hidden_size             head_dim     <- head_dim (hidden_size / heads)
    n_layers         <- num_hidden_layers       mlp_dim      <- intermediate_size
    n_heads          <- num_attention_heads     max_seq_len  <- max_position_embeddings
    rope_theta       <- rope_theta              norm_eps     <- rms_norm_eps
    tie_embeddings   <- tie_word_embeddings     rope_scaling <- rope_scaling (rope_type "llama3")
    qkv_bias         <- True for Qwen2 (q/k/v projections with biases)

`async_grpo.models.hf` reads and writes Hugging Face checkpoints with this mapping.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

_DTYPES = ("float32", "bfloat16")
_ATTENTION_IMPLS = ("einsum", "xla", "cudnn")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DECODE_ATTENTION_IMPLS = ("auto", "reduce", "xla", "pallas")


def dtype_name(value: Any, key: str = "dtype", allowed: tuple[str, ...] = _DTYPES) -> str:
    """The name ("float32", "bfloat16", ...) of a dtype given as a string or as a JAX/NumPy
    dtype (`jnp.bfloat16`, `jnp.dtype("float32")`, `np.float32`); ValueError naming `key`, the
    value and the allowed names otherwise. Configs store the name (hashable, JSON-able)."""
    if isinstance(value, str):
        name = value
    else:
        try:
            name = jnp.dtype(value).name
        except (TypeError, ValueError):
            name = None
        if value is None or isinstance(value, bool):
            name = None
    if name not in allowed:
        raise ValueError(f"{key} must be one of {allowed} (a string or a jnp dtype), "
                         f"got {value!r}")
    return name


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 frequency-dependent RoPE scaling (HF `rope_scaling={"rope_type": "llama3", ...}`).

    With base inverse frequencies `f_i = θ^(-2i/d)` and wavelengths `λ_i = 2π / f_i`, and
    `λ_lo = L_orig / low_freq_factor`, `λ_hi = L_orig / high_freq_factor`::

        f_i' = f_i                                    if λ_i < λ_hi   (high frequencies kept)
        f_i' = f_i / factor                           if λ_i > λ_lo   (low frequencies stretched)
        f_i' = (1 - s_i) f_i / factor + s_i f_i       otherwise,
                                                      s_i = (L_orig/λ_i - low) / (high - low)

    Attributes:
      factor: stretch of the low frequencies (32 for Llama-3.2).
      low_freq_factor: 1 for Llama-3.2.
      high_freq_factor: 4 for Llama-3.2.
      original_max_position_embeddings: `L_orig`, 8192 for Llama-3.2.
    """

    factor: float = 32.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if not self.factor > 0:
            raise ValueError(f"RopeScaling.factor must be > 0, got {self.factor}")
        if not self.high_freq_factor > self.low_freq_factor > 0:
            raise ValueError(
                "RopeScaling needs high_freq_factor > low_freq_factor > 0, got "
                f"high_freq_factor={self.high_freq_factor}, low_freq_factor={self.low_freq_factor}")
        if self.original_max_position_embeddings < 1:
            raise ValueError("RopeScaling.original_max_position_embeddings must be >= 1, got "
                             f"{self.original_max_position_embeddings}")


LLAMA3_ROPE_SCALING = RopeScaling()


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shape and numerics of a decoder-only Llama-style transformer.

    Attributes:
      vocab_size: number of token ids.
      d_model: residual stream width.
      n_layers: number of decoder blocks.
      n_heads: query heads.
      n_kv_heads: key/value heads (grouped-query attention); must divide `n_heads`.
      head_dim: width of one attention head (need not equal d_model / n_heads); must be even (RoPE).
      mlp_dim: hidden width of the SwiGLU MLP.
      max_seq_len: longest sequence (prompt + response) the model accepts.
      rope_theta: RoPE base θ.
      norm_eps: RMSNorm epsilon.
      tie_embeddings: if True the output projection is the transposed token embedding.
      dtype: compute dtype, "float32" or "bfloat16" (or a jnp dtype, stored by name). Norms, RoPE, attention softmax and the output
        logits are always computed in float32.
      param_dtype: storage dtype of the parameters (float32 by default, also under bf16 compute).
      rope_scaling: optional Llama-3 RoPE frequency scaling (set for the Llama-3.2 presets).
      init_std: standard deviation of the normal initializer of all matrices (HF initializer_range).
      qkv_bias: if True the q/k/v projections have biases (Qwen2); False (Llama) by default.
      attention_impl: "einsum" (explicit grouped einsum, exact float32 on CPU; the default), or
        "xla"/"cudnn" to route through `jax.nn.dot_product_attention` (cudnn = fused flash attention
        on NVIDIA GPUs, bf16 only).
      remat: rematerialisation of each decoder block in the backward pass (no cache only):
        "none" (keep every activation), "full" (keep only the block's input, recompute the rest;
        `jax.checkpoint_policies.nothing_saveable`), "dots" (keep every matmul output,
        `dots_saveable`) or "dots_no_batch" (keep matmuls without batch dims, i.e. the
        projections but not attention scores, `dots_with_no_batch_dims_saveable`). Values are
        identical; only memory and recomputation change.
      decode_attention: attention of a one-token query over the KV cache (sampler decode steps):
        "reduce" (broadcast-multiply-reduce over the cache, exact float32; fastest on the CPU),
        "xla" (`jax.nn.dot_product_attention`), "pallas" (the Pallas GPU decode kernel
        `jax.experimental.pallas.ops.gpu.decode_attention.mqa` per row and KV head, interpreted
        off GPU; needs each row's valid cache slots to be contiguous, as in the sampler's layout;
        the sampler rounds its cache up to the kernel's 128-slot blocks, so every length fits),
        or "auto": "reduce" on the CPU and in float32 compute (exact), "xla" for bf16 on
        accelerators.
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_dim: int
    max_seq_len: int
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dtype: str = "float32"         # also accepts a jnp dtype (stored by name)
    param_dtype: str = "float32"
    rope_scaling: RopeScaling | None = None
    init_std: float = 0.02
    attention_impl: str = "einsum"
    qkv_bias: bool = False
    remat: str = "none"
    decode_attention: str = "auto"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                     "mlp_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LlamaConfig.{name} must be a positive int, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"LlamaConfig.n_kv_heads={self.n_kv_heads} must divide "
                             f"n_heads={self.n_heads} (grouped-query attention)")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig.head_dim must be even for RoPE, got {self.head_dim}")
        for name in ("dtype", "param_dtype"):   # jnp dtypes are stored by name
            object.__setattr__(self, name, dtype_name(getattr(self, name), f"LlamaConfig.{name}"))
        if not isinstance(self.qkv_bias, bool):
            raise ValueError(f"LlamaConfig.qkv_bias must be a bool, got {self.qkv_bias!r}")
        if self.attention_impl not in _ATTENTION_IMPLS:
            raise ValueError(f"LlamaConfig.attention_impl must be one of {_ATTENTION_IMPLS}, "
                             f"got {self.attention_impl!r}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"LlamaConfig.remat must be one of {REMAT_POLICIES}, "
                             f"got {self.remat!r}")
        if self.decode_attention not in DECODE_ATTENTION_IMPLS:
            raise ValueError(f"LlamaConfig.decode_attention must be one of "
                             f"{DECODE_ATTENTION_IMPLS}, got {self.decode_attention!r}")
        if not (self.rope_theta > 0 and self.norm_eps > 0 and self.init_std > 0):
            raise ValueError("LlamaConfig.rope_theta, norm_eps and init_std must be > 0, got "
                             f"{self.rope_theta}, {self.norm_eps}, {self.init_std}")
        if isinstance(self.rope_scaling, dict):  # accept HF-style dicts
            fields = {f.name for f in dataclasses.fields(RopeScaling)}
            object.__setattr__(self, "rope_scaling", RopeScaling(
                **{k: v for k, v in self.rope_scaling.items() if k in fields}))
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ValueError(f"LlamaConfig.rope_scaling must be None, a RopeScaling or a dict, "
                             f"got {self.rope_scaling!r}")

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @property
    def q_per_kv(self) -> int:
        """Query heads sharing one key/value head."""
        return self.n_heads // self.n_kv_heads

    def num_params(self) -> int:
        """Closed-form parameter count (equals `param_count(init_model(cfg, 0)[1])`)."""
        d, h, k, hd, m, v = (self.d_model, self.n_heads, self.n_kv_heads, self.head_dim, self.mlp_dim,
                             self.vocab_size)
        per_layer = d * hd * (2 * h + 2 * k) + 3 * d * m + 2 * d
        if self.qkv_bias:
            per_layer += hd * (h + 2 * k)
        return v * d * (1 if self.tie_embeddings else 2) + self.n_layers * per_layer + d

    def matmul_params(self) -> int:
        """Parameters that take part in a matmul per token (excludes an untied input embedding table).

        This is the `N` in the usual `6·N·tokens` training-FLOPs estimate.
        """
        return self.num_params() - (0 if self.tie_embeddings else self.vocab_size * self.d_model)


PRESETS: dict[str, LlamaConfig] = {
    # ~0.11M params: unit tests.
    "tiny": LlamaConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=16, mlp_dim=192, max_seq_len=256),
    # ~2.8M params: CPU experiments.
    "small": LlamaConfig(vocab_size=256, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2,
                         head_dim=64, mlp_dim=640, max_seq_len=512),
    # ~9.5M params.
    "medium": LlamaConfig(vocab_size=256, d_model=384, n_layers=6, n_heads=6, n_kv_heads=2,
                          head_dim=64, mlp_dim=1024, max_seq_len=1024),
    # meta-llama/Llama-3.2-1B: 1,235,814,400 params (tied embeddings).
    "llama3.2-1b": LlamaConfig(vocab_size=128_256, d_model=2048, n_layers=16, n_heads=32,
                               n_kv_heads=8, head_dim=64, mlp_dim=8192, max_seq_len=131_072,
                               rope_theta=500_000.0, norm_eps=1e-5, tie_embeddings=True,
                               rope_scaling=LLAMA3_ROPE_SCALING),
    # meta-llama/Llama-3.2-3B: 3,212,749,824 params (tied embeddings).
    "llama3.2-3b": LlamaConfig(vocab_size=128_256, d_model=3072, n_layers=28, n_heads=24,
                               n_kv_heads=8, head_dim=128, mlp_dim=8192, max_seq_len=131_072,
                               rope_theta=500_000.0, norm_eps=1e-5, tie_embeddings=True,
                               rope_scaling=LLAMA3_ROPE_SCALING),
}


def get_config(preset: str, **overrides: Any) -> LlamaConfig:
    """Returns preset `preset` with fields replaced by `overrides`.

    Raises:
      ValueError: unknown preset or override field (the message lists the valid ones), or an invalid
        resulting configuration.
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown model preset {preset!r}; valid presets: {list(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(LlamaConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"Unknown LlamaConfig field(s) {unknown}; valid fields: {sorted(fields)}")
    return dataclasses.replace(PRESETS[preset], **overrides)
