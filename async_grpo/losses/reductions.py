"""Masked reductions, the loss-aggregation modes and a jit-friendly masked quantile."""

from __future__ import annotations

import chex
import jax.numpy as jnp

from async_grpo.losses._checks import _check_choice, _check_number

Array = chex.Array
Numeric = chex.Numeric

AGGREGATIONS = (
    "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def _masked_sum(x: Array, m: Array, axis=None) -> Array:
    return jnp.sum(jnp.where(m, x, jnp.zeros((), x.dtype)), axis=axis)


def _masked_mean(x: Array, m: Array, axis=None, empty_value: float = 0.0) -> Array:
    n = jnp.sum(m, axis=axis)
    s = _masked_sum(x, m, axis=axis)
    return jnp.where(n > 0, s / jnp.maximum(n, 1), jnp.asarray(empty_value, x.dtype))


def _masked_max(x: Array, m: Array, empty_value: float = 0.0) -> Array:
    lowest = jnp.finfo(x.dtype).min
    empty = jnp.asarray(empty_value, x.dtype)
    return jnp.where(jnp.any(m), jnp.max(jnp.where(m, x, lowest)), empty)


def _masked_min(x: Array, m: Array, empty_value: float = 0.0) -> Array:
    highest = jnp.finfo(x.dtype).max
    empty = jnp.asarray(empty_value, x.dtype)
    return jnp.where(jnp.any(m), jnp.min(jnp.where(m, x, highest)), empty)


def masked_quantiles(x: Array, mask: Array, quantiles, empty_value: float = 0.0) -> Array:
    """Quantiles of the masked entries of `x`, jit-friendly (static shapes, one sort).

    Uses linear interpolation between order statistics, like `numpy.quantile`'s default
    ("linear", position q·(n−1) among the n masked values). Masked-out entries are sorted to the end
    and never indexed. If no entry is selected every quantile is `empty_value`.

    Args:
        x: array of any shape.
        mask: boolean or 0/1 array of the same shape; nonzero selects an entry.
        quantiles: a sequence of Python floats in [0, 1].
        empty_value: value returned when the mask selects nothing.

    Returns:
        Array of shape [len(quantiles)].
    """
    x = jnp.asarray(x)
    m = jnp.asarray(mask) != 0
    flat, mflat = x.reshape(-1), m.reshape(-1)
    n = jnp.sum(mflat)
    highest = jnp.finfo(x.dtype).max
    s = jnp.sort(jnp.where(mflat, flat, highest))
    q = jnp.asarray(quantiles, x.dtype)
    pos = jnp.clip(q * (n - 1).astype(x.dtype), 0.0, None)
    lo = jnp.floor(pos).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, jnp.maximum(n - 1, 0))
    frac = pos - lo.astype(x.dtype)
    s_lo, s_hi = s[lo], s[hi]
    val = s_lo + frac * (s_hi - s_lo)
    return jnp.where(n > 0, val, jnp.asarray(empty_value, x.dtype))


def aggregate(per_token: Array, mask: Array, aggregation: str = "seq-mean-token-mean",
              normalizer: Numeric | None = None) -> Array:
    """Reduces a per-token [B, T] quantity to a scalar; masked tokens count nowhere.

    With m the (boolean) mask, n_i = Σ_t m_{i,t} and V = {i : n_i > 0} the rows with a real token:

    * ``"token-mean"`` (DAPO, https://arxiv.org/abs/2503.14476): Σ_{i,t} m x / Σ_{i,t} m.
    * ``"seq-mean-token-mean"`` (GRPO, https://arxiv.org/abs/2402.03300):
      (1/|V|) Σ_{i∈V} (1/n_i) Σ_t m x.
    * ``"seq-mean-token-sum"``: (1/|V|) Σ_{i∈V} Σ_t m x.
    * ``"seq-mean-token-sum-norm"`` (Dr. GRPO, https://arxiv.org/abs/2503.20783):
      (1/|V|) Σ_{i∈V} (1/normalizer) Σ_t m x, a constant normalizer (the generation budget; the
      padded length T when `normalizer` is None, which is only right if the arrays are padded
      exactly to the budget: pass it explicitly otherwise, or the loss scales with the padding).

    All-masked rows contribute to neither the numerator nor the denominator (they are outside V),
    exactly like masked tokens; this is what makes sequence-level rejection (MIS) drop a sequence
    from the mean instead of counting it as a zero (slime PR 657). If nothing is unmasked the result
    is 0.

    Args:
        per_token: [B, T] values.
        mask: [B, T] boolean or 0/1 mask (nonzero = counts).
        aggregation: one of `AGGREGATIONS`.
        normalizer: positive constant for "seq-mean-token-sum-norm" (default T).

    Returns:
        A scalar.
    """
    _check_choice(aggregation, AGGREGATIONS, "aggregation")
    x = jnp.asarray(per_token)
    m = jnp.asarray(mask) != 0
    if aggregation == "token-mean":
        return _masked_mean(x, m)
    row_n = jnp.sum(m, axis=-1)
    row_sum = _masked_sum(x, m, axis=-1)
    if aggregation == "seq-mean-token-mean":
        row = row_sum / jnp.maximum(row_n, 1).astype(x.dtype)
    elif aggregation == "seq-mean-token-sum":
        row = row_sum
    else:
        if normalizer is None:
            normalizer = x.shape[-1]
        _check_number(normalizer, "normalizer", low=0, low_inclusive=False)
        row = row_sum / jnp.asarray(normalizer, x.dtype)
    return _masked_mean(row, row_n > 0)
