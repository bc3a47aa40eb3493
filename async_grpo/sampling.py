"""Batched autoregressive sampling with a KV cache, and teacher-forced scoring of responses.

Both functions take split model state `(graphdef, params)`, so the sampler can run on any
parameter snapshot (e.g. a stale one in an asynchronous actor) and report which one it used.

Layout. Prompts arrive right-padded, `prompt_tokens` [B, P] with true lengths `prompt_lengths`.
Internally every prompt is *left-aligned* so that all prompts end in column P-1; row b then has
`s_b = P - len_b` pad slots in front, RoPE positions `0..len_b-1` for its prompt and
`len_b + t` for its t-th response token, and all rows write the t-th response token into the same
cache slot `P + t`. Pad slots are masked out of attention as keys. `score_responses` builds the same
`[left-aligned prompt | response]` sequence of length `P + N`, so sampler and learner compute the
same function of the same inputs (float32 agreement ~1e-6).

Log-probabilities. With logits `z` at temperature τ, the model distribution is
`π_τ(a) = softmax(z/τ)_a`. Top-k/top-p keep a set `K` of tokens and sample from the truncated,
renormalised distribution

    μ(a) = π_τ(a) / Σ_{a'∈K} π_τ(a')   for a ∈ K,   0 otherwise,

so `log μ(a) = log π_τ(a) - log π_τ(K) ≥ log π_τ(a)`. `SampleBatch.behavior_logp` is `log μ` (the
exact sampling distribution) and `SampleBatch.model_logp` is `log π_τ`, which is what
`score_responses` recomputes. Under truncation an importance ratio `π_θ(a)/μ(a)` built from the
learner's `log π_τ` and `behavior_logp` is biased by the factor `π_τ(K)` ≤ 1 on every token even
fully on-policy; use `model_logp` for the on-policy reference, or treat the gap as part of the
behaviour/target mismatch. Without truncation the two are equal.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from async_grpo.models import llama as llama_lib
from async_grpo.models.llama import KVCache, Llama

Array = jax.Array


@flax.struct.dataclass
class SampleBatch:
    """A batch of sampled responses (a pytree; all fields are arrays).

    Attributes:
      prompt_tokens: [B, P] int32, right-padded prompts as given (repeated `num_samples` times).
      prompt_lengths: [B] int32.
      response_tokens: [B, N] int32, `pad_id` after EOS / after the row finished.
      response_mask: [B, N] float32, 1 for generated tokens up to and including EOS.
      response_lengths: [B] int32, `response_mask.sum(-1)`.
      behavior_logp: [B, N] float32, log-prob of each sampled token under the exact distribution it
        was drawn from (after temperature and top-k/top-p truncation); 0 where masked.
      model_logp: [B, N] float32, log-prob under the untruncated `softmax(logits/τ)`; 0 where masked.
        Differs from `behavior_logp` only under top-k/top-p, where it is smaller by the log of the
        kept probability mass: that difference biases an importance ratio built from
        `behavior_logp` (see the module docstring).
      eos_reached: [B] bool, the row emitted `eos_id` (False: truncated at `max_new_tokens`).
      params_version: int32 scalar, the version of the parameters that sampled (caller-given).
    """

    prompt_tokens: Array
    prompt_lengths: Array
    response_tokens: Array
    response_mask: Array
    response_lengths: Array
    behavior_logp: Array
    model_logp: Array
    eos_reached: Array
    params_version: Array


# ----------------------------------------------------------------------------------------------
# Token distributions.
# ----------------------------------------------------------------------------------------------


def truncate_logits(logits: Array, top_k: int | None = None, top_p: float | None = None) -> Array:
    """Sets logits outside the top-k / top-p (nucleus) set to -inf (top-k first, as in HF).

    Top-p keeps the smallest prefix of tokens sorted by probability whose mass reaches `top_p`
    (the most likely token is always kept). Ties at a threshold are all kept, so the kept set can be
    slightly larger than k. `log_softmax` of the result is the truncated, renormalised distribution.
    `top_k` must be a Python int; `top_p` may be a traced scalar.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None and not (isinstance(top_p, (int, float)) and top_p >= 1.0):
        sorted_logits = -jnp.sort(-logits, axis=-1)  # descending
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < top_p
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def _sample_token(key, logits, temperature, top_k, top_p, *, greedy: bool):
    """Draws one token per row. Returns (token [B], behavior_logp [B], model_logp [B]).

    `greedy` and `top_k` are static; `temperature` and `top_p` (None: off) may be traced.
    """
    if greedy:  # a point mass: log μ = 0; model_logp is at τ = 1.
        token = jnp.argmax(logits, axis=-1)
        model_lp = jax.nn.log_softmax(logits, axis=-1)
        return token, jnp.zeros(token.shape, jnp.float32), _take(model_lp, token)
    scaled = logits / temperature
    model_lp = jax.nn.log_softmax(scaled, axis=-1)
    if (top_k is not None and top_k < logits.shape[-1]) or top_p is not None:
        behavior_lp = jax.nn.log_softmax(truncate_logits(scaled, top_k, top_p), axis=-1)
    else:
        behavior_lp = model_lp
    token = jax.random.categorical(key, behavior_lp, axis=-1)
    return token, _take(behavior_lp, token), _take(model_lp, token)


def _take(logp, token):
    return jnp.take_along_axis(logp, token[..., None], axis=-1)[..., 0]


# ----------------------------------------------------------------------------------------------
# Layout helpers.
# ----------------------------------------------------------------------------------------------


def left_align(prompt_tokens: Array, prompt_lengths: Array, pad_id: int = 0):
    """Right-padded [B, P] prompts → (left-aligned tokens, RoPE positions, valid mask), all [B, P]."""
    _, p = prompt_tokens.shape
    src = jnp.arange(p)[None, :] - (p - prompt_lengths)[:, None]  # source column, < 0 for pads
    valid = src >= 0
    tokens = jnp.take_along_axis(prompt_tokens, jnp.maximum(src, 0), axis=1)
    tokens = jnp.where(valid, tokens, pad_id).astype(jnp.int32)
    return tokens, jnp.maximum(src, 0).astype(jnp.int32), valid


def _config(graphdef, params):
    try:
        return _config_cached(graphdef, params)
    except TypeError:  # an unhashable graphdef (should not happen): merge without caching
        return nnx.merge(graphdef, params).config


_config_cache: dict[Any, Any] = {}


def _config_cached(graphdef, params):
    if graphdef not in _config_cache:
        if len(_config_cache) > 64:
            _config_cache.clear()
        _config_cache[graphdef] = nnx.merge(graphdef, params).config
    return _config_cache[graphdef]


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_prompts(cfg, prompt_tokens, prompt_lengths, max_new_tokens: int):
    if prompt_tokens.ndim != 2:
        raise ValueError(f"prompt_tokens must be [B, P], got shape {prompt_tokens.shape}")
    b, p = prompt_tokens.shape
    if prompt_lengths.shape != (b,):
        raise ValueError(f"prompt_lengths must have shape ({b},), got {prompt_lengths.shape}")
    if p < 1:
        raise ValueError(f"prompt width P must be >= 1, got {p}")
    if p + max_new_tokens > cfg.max_seq_len:
        raise ValueError(
            f"prompt width P={p} + max_new_tokens={max_new_tokens} = {p + max_new_tokens} exceeds the "
            f"model context max_seq_len={cfg.max_seq_len}; P + max_new_tokens must be in "
            f"[2, {cfg.max_seq_len}]")
    if _is_concrete(prompt_lengths):
        lengths = np.asarray(prompt_lengths)
        bad = (lengths < 1) | (lengths > p)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"prompt_lengths[{i}]={int(lengths[i])} is outside [1, P={p}]")


def _check_token_id(name, value, vocab_size, allow_none=False):
    if value is None and allow_none:
        return
    if not isinstance(value, (int, np.integer)) or not 0 <= value < vocab_size:
        raise ValueError(f"{name}={value!r} must be an int in [0, {vocab_size - 1}] (vocab_size="
                         f"{vocab_size})")


# ----------------------------------------------------------------------------------------------
# Sampling.
# ----------------------------------------------------------------------------------------------


def sample(graphdef: nnx.GraphDef, params: Any, prompt_tokens: Array, prompt_lengths: Array,
           key: Array, *, max_new_tokens: int, eos_id: int | None, pad_id: int,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           params_version: int | Array = 0, num_samples: int = 1,
           return_logits: bool = False) -> SampleBatch | tuple[SampleBatch, Array]:
    """Samples up to `max_new_tokens` tokens per prompt with a KV cache (jitted).

    One prefill pass over the left-aligned prompts fills the cache; a `lax.while_loop` then decodes
    one token per step for all rows, writing slot `P + t`, until every row has emitted `eos_id` or
    `max_new_tokens` tokens were drawn. After EOS a row keeps running (batch shapes are static) but
    its outputs are `pad_id` / masked.

    Memory traffic of a decode step: the weights are cast to the compute dtype once before the
    loop (bf16 under bf16 compute), and the KV cache [B, K, S, Dh] per layer, in the compute dtype,
    is a loop carry updated in place by `dynamic_update_slice` (no copy per step: checked on the
    compiled program by tests/test_decode.py). The one-token attention over the cache is
    `LlamaConfig.decode_attention`.

    Args:
      graphdef, params: split `Llama` state (any parameter snapshot).
      prompt_tokens: [B, P] int, right-padded prompts.
      prompt_lengths: [B] int, true lengths in [1, P] (checked when concrete).
      key: PRNG key.
      max_new_tokens: N (static). P + N must not exceed `max_seq_len`.
      eos_id: end-of-sequence id, or None to always draw N tokens (benchmarks).
      pad_id: written after EOS (also the filler of the internal left padding).
      temperature: τ ≥ 0, a concrete scalar (traced inside: changing it does not recompile); 0 is
        greedy decoding (compiled separately), with `behavior_logp = 0` (point mass) and `model_logp` at
        τ = 1.
      top_k: keep the k most likely tokens (static), or None.
      top_p: nucleus mass in (0, 1] (traced; None or 1.0 switch it off), or None.
      params_version: recorded in the batch (may be traced; no recompilation per version).
      num_samples: samples per prompt (static); the prompts are prefilled once and the cache is
        repeated, so the output has `B * num_samples` rows, samples of prompt i in rows
        `i*num_samples ... (i+1)*num_samples - 1`.
      return_logits: also return the untempered float32 model logits [B', N, V] that each token was
        drawn from (for tests and diagnostics; costs B'·N·V floats).

    Returns:
      A `SampleBatch` (and the logits if `return_logits`).
    """
    cfg = _config(graphdef, params)
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    _check_prompts(cfg, _as_array(prompt_tokens), _as_array(prompt_lengths), int(max_new_tokens))
    _check_token_id("eos_id", eos_id, cfg.vocab_size, allow_none=True)
    _check_token_id("pad_id", pad_id, cfg.vocab_size)
    if not (np.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    if top_k is not None and not (isinstance(top_k, (int, np.integer)) and
                                  1 <= top_k <= cfg.vocab_size):
        raise ValueError(f"top_k={top_k!r} must be None or an int in [1, {cfg.vocab_size}]")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p!r} must be None or in (0, 1]")
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    batch, logits = _sample_jit(
        graphdef, params, jnp.asarray(prompt_tokens, jnp.int32),
        jnp.asarray(prompt_lengths, jnp.int32), key, jnp.asarray(params_version, jnp.int32),
        max_new_tokens=int(max_new_tokens), eos_id=None if eos_id is None else int(eos_id),
        pad_id=int(pad_id), temperature=jnp.float32(temperature if temperature > 0 else 1.0),
        greedy=bool(temperature == 0), top_k=None if top_k in (None, cfg.vocab_size) else int(top_k),
        top_p=None if top_p is None or top_p >= 1.0 else jnp.float32(top_p),
        num_samples=int(num_samples), return_logits=bool(return_logits))
    return (batch, logits) if return_logits else batch


def _as_array(x):
    return x if isinstance(x, (jax.Array, np.ndarray)) else np.asarray(x)


@functools.partial(jax.jit, static_argnames=("max_new_tokens", "eos_id", "pad_id", "greedy",
                                             "top_k", "num_samples", "return_logits"))
def _sample_jit(graphdef, params, prompt_tokens, prompt_lengths, key, params_version, *,
                max_new_tokens, eos_id, pad_id, temperature, greedy, top_k, top_p, num_samples,
                return_logits):
    # Weights in the compute dtype once, before the loop: every use casts to it anyway (so the
    # result is bit-identical), and each decode step then reads bf16, not float32, weights.
    cfg = _config(graphdef, params)
    params = jax.tree.map(
        lambda x: x.astype(cfg.compute_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        params)
    model: Llama = nnx.merge(graphdef, params)
    b, p = prompt_tokens.shape
    n = max_new_tokens

    # Prefill the left-aligned prompts; only the last column's logits are needed.
    tokens, positions, valid = left_align(prompt_tokens, prompt_lengths, pad_id)
    # (pallas decode: slots rounded up to the kernel's block; the extra ones are never valid)
    cache = KVCache.init(cfg, b, llama_lib.decode_cache_slots(cfg, p + n))
    hidden, cache = model.hidden_states(tokens, positions, input_mask=valid, cache=cache)
    logits = model.logits(hidden[:, -1])  # [B, V] float32

    if num_samples > 1:
        rep = lambda x: jnp.repeat(x, num_samples, axis=0)  # noqa: E731
        cache = KVCache(k=tuple(map(rep, cache.k)), v=tuple(map(rep, cache.v)),
                        valid=rep(cache.valid), index=cache.index)
        logits, prompt_tokens, prompt_lengths = rep(logits), rep(prompt_tokens), rep(prompt_lengths)
        b = b * num_samples

    def draw(t, logits, done, out):
        """Samples token t from `logits` and records it; returns (token, done, out)."""
        token, blp, mlp = _sample_token(jax.random.fold_in(key, t), logits, temperature, top_k, top_p,
                                        greedy=greedy)
        live = ~done
        token = jnp.where(live, token, pad_id).astype(jnp.int32)
        cols = dict(tokens=token, mask=live.astype(jnp.float32),
                    blogp=jnp.where(live, blp, 0.0), mlogp=jnp.where(live, mlp, 0.0))
        if return_logits:
            cols["logits"] = logits
        out = {name: jax.lax.dynamic_update_index_in_dim(out[name], col, t, axis=1)
               for name, col in cols.items()}
        if eos_id is not None:
            done = done | (live & (token == eos_id))
        return token, done, out

    out = dict(tokens=jnp.full((b, n), pad_id, jnp.int32), mask=jnp.zeros((b, n), jnp.float32),
               blogp=jnp.zeros((b, n), jnp.float32), mlogp=jnp.zeros((b, n), jnp.float32))
    if return_logits:
        out["logits"] = jnp.zeros((b, n, cfg.vocab_size), jnp.float32)
    token, done, out = draw(0, logits, jnp.zeros((b,), jnp.bool_), out)

    def cond(carry):
        t, _, _, done, _ = carry
        return (t < n) & ~jnp.all(done)

    def body(carry):
        t, token, cache, done, out = carry
        # Token t-1 sits at RoPE position len + t - 1 and cache slot P + t - 1 (= cache.index).
        pos = (prompt_lengths + t - 1)[:, None]
        hidden, cache = model.hidden_states(token[:, None], pos, cache=cache)
        token, done, out = draw(t, model.logits(hidden[:, 0]), done, out)
        return t + 1, token, cache, done, out

    _, _, _, done, out = jax.lax.while_loop(cond, body, (jnp.int32(1), token, cache, done, out))

    batch = SampleBatch(
        prompt_tokens=prompt_tokens, prompt_lengths=prompt_lengths,
        response_tokens=out["tokens"], response_mask=out["mask"],
        response_lengths=out["mask"].sum(axis=1).astype(jnp.int32),
        behavior_logp=out["blogp"], model_logp=out["mlogp"],
        eos_reached=done, params_version=params_version)
    return batch, out.get("logits")


# ----------------------------------------------------------------------------------------------
# Sampler-vs-learner log-prob parity.
# ----------------------------------------------------------------------------------------------

PARITY_RATIO_BAND = (0.8, 1.25)


def logprob_parity(sampler_logp: Array, learner_logp: Array, mask: Array,
                   band: tuple[float, float] = PARITY_RATIO_BAND) -> dict[str, Array]:
    """How far the sampler's log-probs are from the learner's on the same tokens (pure, jittable).

    With Δ_t = log π_learner(y_t) − log π_sampler(y_t) over the M tokens with `mask` = 1, both
    scored by the SAME parameters (zero lag), so that any Δ ≠ 0 is numerics (dtype, KV-cache vs
    full-sequence reduction order, kernels), never staleness:

        mean_abs       = (1/M) Σ_t |Δ_t|
        max_abs        = max_t |Δ_t|
        ratio_out_frac = (1/M) #{t : exp(Δ_t) ∉ [lo, hi]}   (default band [0.8, 1.25], i.e. a
                         token an ε = 0.2 PPO clip would treat as off-policy at zero lag)
        tokens         = M

    Pass `SampleBatch.model_logp` (untruncated) as `sampler_logp`: that is the function the
    learner's `score_responses` recomputes, also under top-k/top-p. All 0 when M = 0.
    """
    lo, hi = band
    if not 0 < lo <= 1 <= hi:
        raise ValueError(f"band={band!r} must satisfy 0 < lo <= 1 <= hi")
    mask = jnp.asarray(mask, jnp.float32)
    delta = jnp.asarray(learner_logp, jnp.float32) - jnp.asarray(sampler_logp, jnp.float32)
    delta = jnp.where(mask > 0, delta, 0.0)   # a NaN on a kept token stays NaN (never passes)
    m = jnp.sum(mask)
    denom = jnp.maximum(m, 1.0)
    out = ~((delta >= jnp.log(jnp.float32(lo))) & (delta <= jnp.log(jnp.float32(hi))))
    return {"mean_abs": jnp.sum(jnp.abs(delta)) / denom,
            "max_abs": jnp.max(jnp.abs(delta), initial=0.0),
            "ratio_out_frac": jnp.sum(out * mask) / denom,
            "tokens": m}


# ----------------------------------------------------------------------------------------------
# Teacher-forced scoring (learner side).
# ----------------------------------------------------------------------------------------------


def token_logprobs(model: Llama, hidden: Array, targets: Array, *, temperature=1.0,
                   chunk_size: int = 0, return_entropy: bool = False):
    """`log π_τ(targets | hidden)` [B, N] float32 (and the entropy [B, N]) without full logits.

    With logits `z = W h / τ` (float32, `Llama.logits`) and `lse = log Σ_a exp z_a`::

        log π_τ(y) = z_y − lse,        H = −Σ_a π_τ(a) log π_τ(a) = lse − Σ_a π_τ(a) z_a.

    `chunk_size = 0` (or ≥ N) computes all positions at once (peak: the [B, N, V] logits). A
    positive `chunk_size` C splits the N positions into ⌈N/C⌉ chunks evaluated one after another
    (`lax.map`), each under `jax.checkpoint`, so the forward keeps only the [B, C] results and the
    backward recomputes one chunk's logits at a time: the peak is one [B, C, V] block instead of
    [B, N, V] (at Llama-3.2-1B, B=8, N=1024, C=128: 0.5 GB instead of 4.2 GB, each plus its
    gradient). Values and gradients equal the unchunked ones up to float rounding.
    """
    def one(h, y):
        z = model.logits(h) / temperature                       # [B, C, V] float32
        lse = jax.nn.logsumexp(z, axis=-1)
        logp = _take(z, y) - lse
        if not return_entropy:
            return logp, jnp.zeros_like(logp)
        p = jnp.exp(z - lse[..., None])
        return logp, lse - jnp.sum(p * z, axis=-1)

    b, n = targets.shape
    if hidden.shape[:2] != (b, n):
        raise ValueError(f"hidden {hidden.shape} and targets {targets.shape} must share [B, N]")
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 0:
        raise ValueError(f"chunk_size must be an int >= 0 (0: no chunking), got {chunk_size!r}")
    if chunk_size == 0 or chunk_size >= n:
        logp, ent = one(hidden, targets)
    else:
        k = -(-n // chunk_size)
        pad = k * chunk_size - n
        h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        y = jnp.pad(targets, ((0, 0), (0, pad)))
        h = h.reshape(b, k, chunk_size, -1).swapaxes(0, 1)      # [k, B, C, D]
        y = y.reshape(b, k, chunk_size).swapaxes(0, 1)
        logp, ent = jax.lax.map(lambda a: jax.checkpoint(one)(*a), (h, y))
        logp = logp.swapaxes(0, 1).reshape(b, k * chunk_size)[:, :n]
        ent = ent.swapaxes(0, 1).reshape(b, k * chunk_size)[:, :n]
    return (logp, ent) if return_entropy else logp


def score_responses(graphdef: nnx.GraphDef, params: Any, prompt_tokens: Array,
                    prompt_lengths: Array, response_tokens: Array, response_mask: Array, *,
                    temperature: float = 1.0, return_entropy: bool = False,
                    chunk_size: int = 0, packed: bool | None = None):
    """Teacher-forced `log π_τ(y_t | x, y_<t)` of response tokens: [B, N] float32, 0 where masked.

    One forward pass over `[left-aligned prompt | response]` (length P + N, the sampler's layout);
    only the N response-predicting positions are projected to the vocabulary, `chunk_size`
    positions at a time when it is > 0 (`token_logprobs`: the full [B, N, V] logits are never
    held). Pure, jittable and differentiable in `params`: this is the learner's log-prob. At
    temperature τ it is `log_softmax(logits / τ)`, equal to `SampleBatch.model_logp` (and to
    `behavior_logp` without top-k/top-p).

    With `return_entropy=True` also returns the entropy `H_t = -Σ_a π_τ(a) log π_τ(a)` of each
    position's full distribution ([B, N] float32, 0 where masked).

    `packed` (default: when the model's `attention_impl` is "cudnn") runs the same forward pass
    on each row packed as `[prompt | response | pads]` instead (the pads trail, positions are
    0, 1, …), so the attention is plainly causal (`hidden_states(causal_only=True)`: no dense
    [B, T, T] mask, cuDNN's `is_causal`); equal to the unpacked pass up to float rounding.
    """
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"score_responses needs temperature > 0, got {temperature}")
    model: Llama = nnx.merge(graphdef, params)
    p = prompt_tokens.shape[1]
    n = response_tokens.shape[1]
    if p + n > model.config.max_seq_len:
        raise ValueError(f"prompt width P={p} + response width N={n} = {p + n} exceeds the model "
                         f"context max_seq_len={model.config.max_seq_len}")
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    if packed is None:
        packed = model.config.attention_impl == "cudnn"
    if packed:
        out = _score_packed(model, jnp.asarray(prompt_tokens, jnp.int32), prompt_lengths,
                            jnp.asarray(response_tokens, jnp.int32), temperature=temperature,
                            chunk_size=chunk_size, return_entropy=return_entropy)
        mask = jnp.asarray(response_mask, jnp.float32)
        if not return_entropy:
            return out * mask
        return out[0] * mask, out[1] * mask
    tokens, positions, valid = left_align(jnp.asarray(prompt_tokens), prompt_lengths)
    response_tokens = jnp.asarray(response_tokens, jnp.int32)
    tokens = jnp.concatenate([tokens, response_tokens], axis=1)
    positions = jnp.concatenate(
        [positions, prompt_lengths[:, None] + jnp.arange(n, dtype=jnp.int32)[None]], axis=1)
    input_mask = jnp.concatenate([valid, jnp.ones(response_tokens.shape, jnp.bool_)], axis=1)
    hidden, _ = model.hidden_states(tokens, positions, input_mask=input_mask)
    mask = jnp.asarray(response_mask, jnp.float32)
    out = token_logprobs(model, hidden[:, p - 1:p + n - 1], response_tokens,
                         temperature=temperature, chunk_size=chunk_size,
                         return_entropy=return_entropy)
    if not return_entropy:
        return out * mask
    return out[0] * mask, out[1] * mask


def _score_packed(model: Llama, prompt_tokens, prompt_lengths, response_tokens, *, temperature,
                  chunk_size, return_entropy):
    """`score_responses` on rows packed as `[prompt (L_b) | response (N) | pads (P − L_b)]`:
    a plainly causal pass (trailing pads are attended by nothing that is read), then the N
    hidden states that predict the response, `L_b − 1 + i`, gathered per row."""
    b, p = prompt_tokens.shape
    n = response_tokens.shape[1]
    j = jnp.arange(p + n)[None, :]
    lengths = prompt_lengths[:, None]
    src = jnp.where(j < lengths, j, jnp.where(j < lengths + n, p + j - lengths, 0))
    tokens = jnp.take_along_axis(jnp.concatenate([prompt_tokens, response_tokens], axis=1), src,
                                 axis=1)
    tokens = jnp.where(j < lengths + n, tokens, 0)
    positions = jnp.broadcast_to(j, (b, p + n)).astype(jnp.int32)
    hidden, _ = model.hidden_states(tokens, positions, causal_only=True)
    at = jnp.maximum(lengths - 1 + jnp.arange(n)[None, :], 0)
    hidden = jnp.take_along_axis(hidden, at[:, :, None], axis=1)
    return token_logprobs(model, hidden, response_tokens, temperature=temperature,
                          chunk_size=chunk_size, return_entropy=return_entropy)
