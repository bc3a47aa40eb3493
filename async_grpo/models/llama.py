"""Llama-style decoder-only transformer in Flax NNX, applied through split state.

Architecture (as in Llama 2/3): token embedding → `n_layers` pre-norm blocks
`x += Attn(RMSNorm(x)); x += SwiGLU(RMSNorm(x))` → RMSNorm → (tied) output projection.
Attention is grouped-query attention with rotary position embeddings in the Hugging Face
"rotate_half" convention, optionally with Llama-3 frequency scaling.

The module is an ordinary `nnx.Module`, but every jitted entry point of the codebase takes *split
state*::

    graphdef, params = init_model(cfg, seed)     # params: nested dict of arrays (immutable pytree)
    logits = jax.jit(forward)(graphdef, params, tokens)

so a parameter snapshot is a plain pytree that can be versioned, handed to a sampler thread,
sharded (see `logical_axes`) and vmapped.

Parameter layout (HF Llama name → our path, kernel shape; HF `nn.Linear` weights are [out, in])::

    model.embed_tokens.weight             embed_tokens/embedding        [V, D]
    model.layers.i.self_attn.q_proj       layers/i/self_attn/q_proj/kernel  [D, H, Dh] (W.T reshaped)
    model.layers.i.self_attn.k_proj       layers/i/self_attn/k_proj/kernel  [D, K, Dh]
    model.layers.i.self_attn.v_proj       layers/i/self_attn/v_proj/kernel  [D, K, Dh]
    model.layers.i.self_attn.o_proj       layers/i/self_attn/o_proj/kernel  [H, Dh, D]
    model.layers.i.mlp.{gate,up}_proj     layers/i/mlp/{gate,up}_proj/kernel  [D, F]
    model.layers.i.mlp.down_proj          layers/i/mlp/down_proj/kernel  [F, D]
    model.layers.i.input_layernorm        layers/i/input_layernorm/scale  [D]
    model.layers.i.post_attention_layernorm  layers/i/post_attention_layernorm/scale  [D]
    model.norm.weight                     norm/scale  [D]
    lm_head.weight (untied only)          lm_head/kernel  [D, V]
    model.layers.i.self_attn.{q,k,v}_proj.bias (qkv_bias only)  .../{q,k,v}_proj/bias  [H|K, Dh]

HF permutes q/k rows when converting Meta checkpoints so that "rotate_half" applies; checkpoints
in HF format therefore load without any further permutation.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from async_grpo.models.config import LlamaConfig

Array = jax.Array
Params = Any  # nested dict of arrays, as returned by `init_model`

# Logical axis names of every parameter, keyed by (module name, parameter name). The single
# source of truth for both the `out_sharding` metadata on the nnx.Params and `logical_axes`.
PARAM_AXES: dict[tuple[str, str], tuple[str, ...]] = {
    ("embed_tokens", "embedding"): ("vocab", "embed"),
    ("q_proj", "kernel"): ("embed", "heads", "head_dim"),
    ("k_proj", "kernel"): ("embed", "kv_heads", "head_dim"),
    ("v_proj", "kernel"): ("embed", "kv_heads", "head_dim"),
    ("q_proj", "bias"): ("heads", "head_dim"),          # qkv_bias (Qwen2) only
    ("k_proj", "bias"): ("kv_heads", "head_dim"),
    ("v_proj", "bias"): ("kv_heads", "head_dim"),
    ("o_proj", "kernel"): ("heads", "head_dim", "embed"),
    ("gate_proj", "kernel"): ("embed", "mlp"),
    ("up_proj", "kernel"): ("embed", "mlp"),
    ("down_proj", "kernel"): ("mlp", "embed"),
    ("input_layernorm", "scale"): ("embed",),
    ("post_attention_layernorm", "scale"): ("embed",),
    ("norm", "scale"): ("embed",),
    ("lm_head", "kernel"): ("embed", "vocab"),
}

_MASK_VALUE = float(np.finfo(np.float32).min)


def _param(rngs: nnx.Rngs, init, shape, axes: tuple[str, ...], cfg: LlamaConfig) -> nnx.Param:
    # eager_sharding=False: the logical names are metadata only; the learner maps them onto a mesh
    # (e.g. `jax.jit(..., out_shardings=...)` built from `logical_axes`).
    return nnx.Param(init(rngs.params(), shape, cfg.params_dtype), out_sharding=axes,
                     eager_sharding=False)


def _precision(dtype) -> jax.lax.Precision:
    # Float32 compute means float32 matmuls (no TF32 / bf16 passes on accelerators): the sampler
    # and learner log-probs must agree to ~1e-6.
    return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else jax.lax.Precision.DEFAULT


# ----------------------------------------------------------------------------------------------
# Rotary position embeddings.
# ----------------------------------------------------------------------------------------------


def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
    """Inverse frequencies `f_i = θ^(-2i/Dh)`, i < Dh/2, with optional Llama-3 scaling (float32).

    Computed in numpy float32 exactly as HF does in torch float32, so positions map to the same
    angles as the reference implementation.
    """
    dim = cfg.head_dim
    inv_freq = 1.0 / (np.float32(cfg.rope_theta) **
                      (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)))
    inv_freq = inv_freq.astype(np.float32)
    rs = cfg.rope_scaling
    if rs is not None:
        low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
        high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / rs.factor, inv_freq)
        smooth = ((rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) /
                  (rs.high_freq_factor - rs.low_freq_factor))
        smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = np.where(is_medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def rope_sin_cos(positions: Array, inv_freq: np.ndarray) -> tuple[Array, Array]:
    """`sin, cos` of shape [B, T, Dh] for integer positions [B, T] ("rotate_half" layout)."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, Dh/2]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x: Array, sin: Array, cos: Array) -> Array:
    """Rotates x [B, T, heads, Dh]: `x·cos + rotate_half(x)·sin`, rotate_half([a, b]) = [-b, a].

    Pair (x_j, x_{j+Dh/2}) is rotated by angle `pos · f_j`. Computed in float32.
    """
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# KV cache.
# ----------------------------------------------------------------------------------------------


@flax.struct.dataclass
class KVCache:
    """Functional key/value cache with `S` slots shared by all rows of a batch.

    Calling the model with a cache writes the `T` new keys/values into slots
    `[index, index + T)` of every row and attends each new query at slot `index + i` to slots
    `j <= index + i` with `valid[b, j]`. Rows of different lengths are handled by the caller through
    `valid` (left padding) and per-row `positions`; slots are storage, positions are RoPE angles.

    Attributes:
      k: per layer, keys [B, n_kv_heads, S, head_dim] (compute dtype, RoPE already applied). Heads
        before slots is the layout the attention dots consume, so decoding never transposes the
        cache.
      v: per layer, values [B, n_kv_heads, S, head_dim].
      valid: [B, S] bool, slot holds a real (non-pad) token.
      index: int32 scalar, next slot to write.
    """

    k: tuple[Array, ...]
    v: tuple[Array, ...]
    valid: Array
    index: Array

    @classmethod
    def init(cls, cfg: LlamaConfig, batch_size: int, num_slots: int) -> "KVCache":
        shape = (batch_size, cfg.n_kv_heads, num_slots, cfg.head_dim)
        zeros = lambda: jnp.zeros(shape, cfg.compute_dtype)  # noqa: E731
        return cls(k=tuple(zeros() for _ in range(cfg.n_layers)),
                   v=tuple(zeros() for _ in range(cfg.n_layers)),
                   valid=jnp.zeros((batch_size, num_slots), jnp.bool_),
                   index=jnp.zeros((), jnp.int32))

    @property
    def num_slots(self) -> int:
        return self.valid.shape[1]


# ----------------------------------------------------------------------------------------------
# Modules.
# ----------------------------------------------------------------------------------------------


class RMSNorm(nnx.Module):
    """`y = scale · x / sqrt(mean(x²) + eps)`, normalized in float32 (HF LlamaRMSNorm)."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs, name: str):
        self.eps = cfg.norm_eps
        self.scale = _param(rngs, nnx.initializers.ones, (cfg.d_model,), PARAM_AXES[(name, "scale")],
                            cfg)

    def __call__(self, x: Array) -> Array:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return xf.astype(x.dtype) * self.scale[...].astype(x.dtype)


class Embedder(nnx.Module):
    """Token embedding table [V, D] (HF `embed_tokens.weight`)."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.embedding = _param(rngs, nnx.initializers.normal(cfg.init_std),
                                (cfg.vocab_size, cfg.d_model),
                                PARAM_AXES[("embed_tokens", "embedding")], cfg)


class Proj(nnx.Module):
    """A projection whose kernel is contracted with the input by an einsum.

    With `bias=True` (q/k/v under `qkv_bias`) it also holds a zero-initialised bias over the output
    dims `shape[1:]`, which the caller adds (it knows the output layout)."""

    def __init__(self, cfg: LlamaConfig, shape: tuple[int, ...], *, rngs: nnx.Rngs, name: str,
                 bias: bool = False):
        self.kernel = _param(rngs, nnx.initializers.normal(cfg.init_std), shape,
                             PARAM_AXES[(name, "kernel")], cfg)
        if bias:
            self.bias = _param(rngs, nnx.initializers.zeros, shape[1:], PARAM_AXES[(name, "bias")],
                               cfg)
        self.has_bias = bias
        self.dtype = cfg.compute_dtype

    def __call__(self, eq: str, x: Array) -> Array:
        return jnp.einsum(eq, x, self.kernel[...].astype(self.dtype),
                          precision=_precision(self.dtype))


class Attention(nnx.Module):
    """Grouped-query self-attention with RoPE and an optional KV cache.

    Query head `h` uses key/value head `h // G`, G = H/K (HF `repeat_kv` order); instead of
    repeating K/V, queries are reshaped to [B, K, G, T, Dh] and contracted per kv head:

        A[b,k,g,t,s] = softmax_s( q[b,k,g,t]·k[b,k,s] / sqrt(Dh)  masked to -inf where ¬mask[b,t,s] )
        out[b,t,(k,g)] = Σ_s A[b,k,g,t,s] v[b,k,s]

    Masked logits use the float32 minimum instead of -inf, so a fully masked (pad) query row yields
    a finite, ignored output instead of NaN.
    """

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        d, h, k, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = Proj(cfg, (d, h, hd), rngs=rngs, name="q_proj", bias=cfg.qkv_bias)
        self.k_proj = Proj(cfg, (d, k, hd), rngs=rngs, name="k_proj", bias=cfg.qkv_bias)
        self.v_proj = Proj(cfg, (d, k, hd), rngs=rngs, name="v_proj", bias=cfg.qkv_bias)
        self.o_proj = Proj(cfg, (h, hd, d), rngs=rngs, name="o_proj")
        self.n_kv_heads, self.q_per_kv, self.head_dim = k, cfg.q_per_kv, hd
        self.dtype = cfg.compute_dtype
        self.impl = cfg.attention_impl
        self.decode_impl = cfg.decode_attention

    def __call__(self, x, sin, cos, mask, kv: tuple[Array, Array] | None = None,
                 index: Array | None = None):
        """x [B, T, D]; mask [B, T, S] bool; kv: cached (k, v) [B, K, S, Dh] written at `index`."""
        q, k = self.q_proj("btd,dhk->bthk", x), self.k_proj("btd,dhk->bthk", x)
        v = self.v_proj("btd,dhk->bhtk", x)
        if self.q_proj.has_bias:  # added before RoPE, as in HF Qwen2
            q = q + self.q_proj.bias[...].astype(q.dtype)
            k = k + self.k_proj.bias[...].astype(k.dtype)
            v = v + self.v_proj.bias[...].astype(v.dtype)[:, None, :]
        q = apply_rope(q, sin, cos)
        k = apply_rope(k, sin, cos).transpose(0, 2, 1, 3)
        if kv is not None:
            k = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), (0, 0, index, 0))
            v = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), (0, 0, index, 0))
        out = self._attend(q, k, v, mask)
        return self.o_proj("bthk,hkd->btd", out), (k, v)

    def _attend(self, q, k, v, mask):
        """q [B, T, H, Dh], k/v [B, K, S, Dh], mask [B, T, S] -> [B, T, H, Dh].

        `mask=None` means plainly causal over S = T (`Llama.hidden_states(causal_only=True)`):
        "xla" and "cudnn" then get `is_causal=True` and no dense mask (cuDNN skips the masked
        blocks and needs no even T; no mask gradient), "einsum" builds the causal mask."""
        b, t, h, hd = q.shape
        if mask is None:
            if self.impl != "einsum":
                return jax.nn.dot_product_attention(
                    q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), is_causal=True,
                    implementation=None if self.impl == "xla" else self.impl)
            mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), jnp.bool_))[None], (b, t, t))
        decode = decode_attention_impl(self.decode_impl, self.dtype) if t == 1 else None
        if decode == "pallas":
            out = pallas_decode_attention(q, k, v, mask)
            if out is not None:
                return out
            decode = "xla"   # the cache length does not fit the kernel's blocks
        if decode == "xla" or (decode is None and self.impl != "einsum"):
            return jax.nn.dot_product_attention(
                q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask=mask[:, None],
                implementation=None if self.impl == "xla" or decode else self.impl)
        prec = _precision(self.dtype)
        q = q * jnp.asarray(hd**-0.5, q.dtype)
        q = q.reshape(b, t, self.n_kv_heads, self.q_per_kv, hd).transpose(0, 2, 3, 1, 4)
        if t == 1:
            # Decoding: B·K tiny [G, Dh] x [Dh, S] matmuls are slow as batched dots on CPU (~7x here);
            # broadcast-multiply-reduce fuses into one pass over the cache, the memory-bound optimum.
            logits = jnp.sum(q.astype(jnp.float32) * k[:, :, None].astype(jnp.float32), axis=-1)
            logits = logits[:, :, :, None]  # [B, K, G, 1, S]
        else:
            logits = jnp.einsum("bkgtd,bksd->bkgts", q, k, precision=prec,
                                preferred_element_type=jnp.float32)
        logits = jnp.where(mask[:, None, None], logits, _MASK_VALUE)
        probs = jax.nn.softmax(logits, axis=-1)
        if t == 1:
            out = jnp.sum(probs[:, :, :, 0, :, None] * v[:, :, None].astype(jnp.float32), axis=-2)
            out = out[:, :, :, None].astype(v.dtype)  # [B, K, G, 1, Dh]
        else:
            out = jnp.einsum("bkgts,bksd->bkgtd", probs.astype(v.dtype), v, precision=prec)
        return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)


def decode_attention_impl(setting: str, dtype) -> str:
    """The decode attention `LlamaConfig.decode_attention` resolves to on the current backend:
    "auto" is "reduce" on the CPU or in float32 compute (exact), else "xla"."""
    if setting != "auto":
        return setting
    return "reduce" if jax.default_backend() == "cpu" or dtype == jnp.float32 else "xla"


PALLAS_BLOCK = 128            # slots per block of the Pallas decode kernel (its block_k)
PALLAS_TARGET_PROGRAMS = 512  # enough (row, kv head, split) programs to fill a GPU (132 SMs × 4)


def _pallas_fits(num_slots: int, splits: int) -> bool:
    part = num_slots // splits
    return (num_slots % splits == 0 and part >= 16 and
            (part & (part - 1) == 0 or part % PALLAS_BLOCK == 0))


def _pallas_k_splits(num_slots: int, programs: int = 1) -> int | None:
    """The split of the cache axis for the Pallas decode kernel: the SMALLEST split (1, 2, 4, 8,
    16) that the kernel accepts (each split ≥ 16 slots and a power of two or a multiple of its
    128-slot block) and that gives `programs` (= rows × KV heads) × split ≥
    `PALLAS_TARGET_PROGRAMS` parallel programs; the largest accepted one when none does; None
    when none is accepted. (Splitting a batch that already fills the GPU only adds tiny programs
    and a reduction: 64 × 8 rows × 8 KV heads need no split.)"""
    fitting = [s for s in (1, 2, 4, 8, 16) if _pallas_fits(num_slots, s)]
    if not fitting:
        return None
    return next((s for s in fitting if programs * s >= PALLAS_TARGET_PROGRAMS), fitting[-1])


def decode_cache_slots(cfg, num_slots: int) -> int:
    """Cache slots to allocate for `num_slots` (= P + N) under `cfg.decode_attention`: rounded up
    to a multiple of `PALLAS_BLOCK` when it resolves to "pallas", so that every cache length fits
    the kernel (the extra slots are never valid, and the kernel reads only slots
    [first valid, last valid]); unchanged otherwise."""
    if decode_attention_impl(cfg.decode_attention, cfg.compute_dtype) == "pallas":
        return -(-num_slots // PALLAS_BLOCK) * PALLAS_BLOCK
    return num_slots


def _pallas_decode_kernel():
    """`(kernel, name)`: the per-(row, KV head) `decode_attention.mqa` (jax 0.10–0.11; GQA is
    done here by flattening rows × KV heads, which avoids `decode_attention.gqa`, deprecated in
    jax 0.11.2), else `gqa` where a later jax drops `mqa`, else (None, reason)."""
    from jax.experimental.pallas.ops.gpu import decode_attention  # pylint: disable=g-import-not-at-top
    for name in ("mqa", "gqa"):
        if hasattr(decode_attention, name):
            return getattr(decode_attention, name), name
    return None, f"jax {jax.__version__} has neither decode_attention.mqa nor .gqa"


def pallas_decode_attention(q: Array, k: Array, v: Array, mask: Array) -> Array | None:
    """One-token attention with the Pallas GPU decode kernel
    (`jax.experimental.pallas.ops.gpu.decode_attention.mqa` per row and KV head).

    q [B, 1, H, Dh], k/v [B, K, S, Dh], mask [B, 1, S] → [B, 1, H, Dh], or None when S does not
    fit the kernel (the sampler allocates `decode_cache_slots`, which always fit). The kernel
    attends to slots `[start_b, end_b)`; they are read off the mask as its first and last valid
    slot, so the valid slots of each row must be contiguous (true of the sampler's left-aligned
    layout: pads, then prompt and response). Off the GPU it runs in Pallas interpret mode (slow;
    for tests).
    """
    b, _, h, hd = q.shape
    kv = k.shape[1]
    splits = _pallas_k_splits(k.shape[2], b * kv)
    kernel, name = _pallas_decode_kernel()
    if q.shape[1] != 1 or splits is None or kernel is None:
        return None
    m = mask[:, 0]
    s = m.shape[-1]
    start = jnp.argmax(m, axis=-1).astype(jnp.int32)
    end = (s - jnp.argmax(m[:, ::-1], axis=-1)).astype(jnp.int32)
    interpret = jax.default_backend() != "gpu"
    if name == "gqa":   # k/v as [B, S, K, Dh]
        out = kernel(q[:, 0], k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), start, end,
                     k_splits=splits, interpret=interpret)
        return out[:, None].astype(q.dtype)
    g = h // kv
    out = kernel(q[:, 0].reshape(b * kv, g, hd), k.reshape(b * kv, s, hd),
                 v.reshape(b * kv, s, hd), jnp.repeat(start, kv), jnp.repeat(end, kv),
                 block_k=PALLAS_BLOCK, k_splits=splits, interpret=interpret)
    return out.reshape(b, 1, h, hd).astype(q.dtype)


class MLP(nnx.Module):
    """SwiGLU: `down(silu(gate(x)) · up(x))`."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.gate_proj = Proj(cfg, (cfg.d_model, cfg.mlp_dim), rngs=rngs, name="gate_proj")
        self.up_proj = Proj(cfg, (cfg.d_model, cfg.mlp_dim), rngs=rngs, name="up_proj")
        self.down_proj = Proj(cfg, (cfg.mlp_dim, cfg.d_model), rngs=rngs, name="down_proj")

    def __call__(self, x: Array) -> Array:
        h = jax.nn.silu(self.gate_proj("btd,df->btf", x)) * self.up_proj("btd,df->btf", x)
        return self.down_proj("btf,fd->btd", h)


class DecoderLayer(nnx.Module):
    """Pre-norm block: `x += Attn(RMSNorm(x)); x += MLP(RMSNorm(x))`."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg, rngs=rngs, name="input_layernorm")
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg, rngs=rngs, name="post_attention_layernorm")
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, sin, cos, mask, kv=None, index=None):
        attn, kv = self.self_attn(self.input_layernorm(x), sin, cos, mask, kv, index)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), kv


_REMAT = {"full": jax.checkpoint_policies.nothing_saveable,
          "dots": jax.checkpoint_policies.dots_saveable,
          "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _remat_block(layer: DecoderLayer, policy: str, x, sin, cos, mask):
    """`layer(x, ...)[0]` under `jax.checkpoint` with the named policy (`LlamaConfig.remat`): the
    backward pass recomputes what the policy does not save. Same values as the plain call."""
    graphdef, state = nnx.split(layer)

    def block(state, x, sin, cos, mask):
        return nnx.merge(graphdef, state)(x, sin, cos, mask)[0]

    return jax.checkpoint(block, policy=_REMAT[policy])(state, x, sin, cos, mask)


class Llama(nnx.Module):
    """Decoder-only Llama-style language model.

    Use it through split state (`init_model` / `forward`); calling the module directly is the same
    computation.
    """

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.embed_tokens = Embedder(cfg, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg, rngs=rngs, name="norm")
        if not cfg.tie_embeddings:
            self.lm_head = Proj(cfg, (cfg.d_model, cfg.vocab_size), rngs=rngs, name="lm_head")

    def hidden_states(self, tokens: Array, positions: Array | None = None, *,
                      input_mask: Array | None = None, segment_ids: Array | None = None,
                      attn_mask: Array | None = None, cache: KVCache | None = None,
                      causal_only: bool = False):
        """Final-norm hidden states [B, T, D] (compute dtype) and the updated cache (or None).

        Args:
          tokens: [B, T] int token ids.
          positions: [B, T] int RoPE positions; default `arange(T)` (offset by `cache.index` when a
            cache is given).
          input_mask: [B, T] bool, False for pad tokens: they are never attended to as keys (their
            own outputs are garbage and must be ignored by the caller).
          segment_ids: [B, T] int, attention only within equal ids (sequence packing). No cache.
          attn_mask: [B, T, S] bool, extra mask AND-ed with the causal one (S = T, or cache slots).
          cache: a `KVCache`; the new tokens go into slots `[cache.index, cache.index + T)`.
          causal_only: the attention is plainly causal (no pads before a token that matters, no
            cache, segments or extra mask): no [B, T, T] mask is built and the "xla"/"cudnn"
            attention gets `is_causal=True` (cuDNN's causal block skipping). Pads may follow
            the last real token of a row (no earlier position attends to them).
        """
        cfg = self.config
        b, t = tokens.shape
        if causal_only and (cache is not None or segment_ids is not None or
                            attn_mask is not None or input_mask is not None):
            raise ValueError("causal_only=True takes no cache, segment_ids, attn_mask or "
                             "input_mask (pads may only trail the real tokens)")
        if positions is None:
            offset = 0 if cache is None else cache.index
            positions = jnp.broadcast_to(offset + jnp.arange(t, dtype=jnp.int32), (b, t))
        if input_mask is None:
            input_mask = jnp.ones((b, t), jnp.bool_)
        if cache is None:
            q_slot = k_slot = jnp.arange(t)
            key_valid = input_mask
            index = None
        else:
            if segment_ids is not None:
                raise ValueError("segment_ids are not supported together with a KV cache")
            index = cache.index
            q_slot = index + jnp.arange(t)
            k_slot = jnp.arange(cache.num_slots)
            key_valid = jax.lax.dynamic_update_slice(cache.valid, input_mask.astype(jnp.bool_),
                                                     (0, index))
        # causal_only: None, plainly causal (the attention builds no [B, T, T] mask)
        mask = None if causal_only else (
            (k_slot[None, :] <= q_slot[:, None])[None] & key_valid[:, None, :].astype(jnp.bool_))
        if segment_ids is not None:
            mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
        if attn_mask is not None:
            mask = mask & attn_mask.astype(jnp.bool_)

        sin, cos = rope_sin_cos(positions, rope_inv_freq(cfg))
        x = jnp.take(self.embed_tokens.embedding[...], tokens, axis=0).astype(cfg.compute_dtype)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            if cache is None and cfg.remat != "none":
                x = _remat_block(layer, cfg.remat, x, sin, cos, mask)
                continue
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x, (k, v) = layer(x, sin, cos, mask, kv, index)
            new_k.append(k)
            new_v.append(v)
        x = self.norm(x)
        if cache is None:
            return x, None
        return x, KVCache(k=tuple(new_k), v=tuple(new_v), valid=key_valid, index=index + t)

    def logits(self, hidden: Array) -> Array:
        """Float32 logits [..., V] from final hidden states (f32 accumulation under bf16)."""
        cfg = self.config
        dt, prec = cfg.compute_dtype, _precision(cfg.compute_dtype)
        if cfg.tie_embeddings:
            w = self.embed_tokens.embedding[...].astype(dt)
            return jnp.einsum("...d,vd->...v", hidden, w, precision=prec,
                              preferred_element_type=jnp.float32)
        return jnp.einsum("...d,dv->...v", hidden, self.lm_head.kernel[...].astype(dt),
                          precision=prec, preferred_element_type=jnp.float32)

    def __call__(self, tokens: Array, positions: Array | None = None, *,
                 attn_mask: Array | None = None, input_mask: Array | None = None,
                 segment_ids: Array | None = None, cache: KVCache | None = None):
        """Logits [B, T, V] float32; `(logits, new_cache)` when a cache is given."""
        h, new_cache = self.hidden_states(tokens, positions, input_mask=input_mask,
                                          segment_ids=segment_ids, attn_mask=attn_mask, cache=cache)
        logits = self.logits(h)
        return logits if cache is None else (logits, new_cache)


# ----------------------------------------------------------------------------------------------
# Split-state API.
# ----------------------------------------------------------------------------------------------


def _split(cfg: LlamaConfig, key: Array):
    graphdef, state = nnx.split(Llama(cfg, rngs=nnx.Rngs(params=key)), nnx.Param)
    return graphdef, nnx.to_pure_dict(state)


def init_model(cfg: LlamaConfig, seed: int | Array) -> tuple[nnx.GraphDef, Params]:
    """Builds the model and splits it: `(graphdef, params)`.

    `params` is a nested dict of arrays (`nnx.to_pure_dict` of the `nnx.Param` state; layer indices
    are int keys); `nnx.merge(graphdef, params)` rebuilds the module, with the logical-axis metadata
    coming from the graphdef. Initialization runs under `jax.jit`.
    """
    key = seed if isinstance(seed, jax.Array) else jax.random.key(seed)
    return _init_jit(cfg, key)


@functools.partial(jax.jit, static_argnums=0)
def _init_jit(cfg: LlamaConfig, key: Array):
    return _split(cfg, key)


def abstract_model(cfg: LlamaConfig) -> tuple[nnx.GraphDef, Params]:
    """`(graphdef, params)` with `jax.ShapeDtypeStruct` leaves; allocates nothing."""
    return jax.eval_shape(lambda k: _split(cfg, k), jax.random.key(0))


def apply_model(graphdef: nnx.GraphDef, params: Params) -> Llama:
    """Merges split state back into a `Llama` (cheap; call inside the jitted function)."""
    return nnx.merge(graphdef, params)


def forward(graphdef: nnx.GraphDef, params: Params, tokens: Array, positions: Array | None = None,
            *, input_mask: Array | None = None, segment_ids: Array | None = None,
            attn_mask: Array | None = None) -> Array:
    """Teacher-forced logits [B, T, V] float32. Pure and jittable, differentiable in `params`.

    Causal attention; `input_mask` [B, T] excludes pad keys (not needed for right padding, which
    causality already hides), `segment_ids` [B, T] restricts attention to equal ids (packing),
    `attn_mask` [B, T, T] is AND-ed in. `positions` defaults to `arange(T)`.
    """
    model = nnx.merge(graphdef, params)
    return model(tokens, positions, input_mask=input_mask, segment_ids=segment_ids,
                 attn_mask=attn_mask)


def param_count(params: Params) -> int:
    """Number of scalars in a parameter pytree (arrays or `jax.ShapeDtypeStruct`s)."""
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))


def _path_names(path) -> list[str]:
    names = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                names.append(str(getattr(entry, attr)))
                break
    return names


def logical_axes(params: Params) -> Any:
    """Logical axis names of every parameter: same tree as `params`, each leaf a tuple of names.

    Names: "vocab", "embed", "heads", "kv_heads", "head_dim", "mlp". They are derived from the
    parameter path, so this works on concrete, abstract and converted parameter trees. Use with
    `jax.tree.map(fn, params, logical_axes(params))` (tuples sit where `params` has leaves), or with
    `is_leaf=lambda x: isinstance(x, tuple)` when mapping over the axes alone.
    """

    def axes(path, leaf):
        names = [n for n in _path_names(path) if n != "value"]
        key = tuple(names[-2:])
        if key not in PARAM_AXES:
            raise ValueError(f"No logical axes known for parameter {'/'.join(names)}")
        result = PARAM_AXES[key]
        if len(result) != len(leaf.shape):
            raise ValueError(f"Parameter {'/'.join(names)} has shape {leaf.shape} but logical axes "
                             f"{result}")
        return result

    return jax.tree_util.tree_map_with_path(axes, params)
