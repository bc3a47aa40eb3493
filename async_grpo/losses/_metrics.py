"""Metric helpers shared by the surrogate and total-derivative losses (all stop-gradient)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

Array = chex.Array


def _log_ess_frac(log_w: Array, valid: Array) -> Array:
    """Kish ESS / n of weights exp(log_w) over `valid` rows, in log space: (Σw)²/(n Σw²)."""
    very_negative = jnp.asarray(-1e30, log_w.dtype)
    lw = jnp.where(valid, log_w, very_negative)
    n = jnp.sum(valid)
    log_ess = (2.0 * jax.nn.logsumexp(lw) - jax.nn.logsumexp(2.0 * lw)
               - jnp.log(jnp.maximum(n, 1).astype(log_w.dtype)))
    return jnp.where(n > 0, jnp.clip(jnp.exp(log_ess), 0.0, 1.0), jnp.ones((), log_w.dtype))


def _masked_means(values: dict[str, tuple[Array, float]], m: Array, out: dict) -> None:
    """out[k] = masked mean of values[k][0] over m (values[k][1] if m is empty), in one pass."""
    if not values:
        return
    stacked = jnp.stack([v for v, _ in values.values()])
    n = jnp.sum(m)
    means = jnp.sum(jnp.where(m, stacked, 0.0), axis=(1, 2)) / jnp.maximum(n, 1)
    empty = jnp.asarray([e for _, e in values.values()], stacked.dtype)
    means = jnp.where(n > 0, means, empty)
    for i, k in enumerate(values):
        out[k] = means[i]


def _behavior_token_metrics(lp: Array, blp: Array, log_ratio_clip: float) -> dict:
    """Per-token k1 and k3 estimates of KL(π_b‖π_θ) on the behavior samples (r = π_θ/π_b)."""
    d = lp - blp  # log π_θ/π_b per token, 0 on masked tokens.
    dc = jnp.clip(d, -log_ratio_clip, log_ratio_clip)
    return {"kl_behavior_k1": (-d, 0.0), "kl_behavior_k3": (jnp.exp(dc) - 1.0 - d, 0.0)}


def _ess_metric(lp: Array, blp: Array, m: Array, out: dict) -> None:
    """Kish ESS/B of the sequence weights π_θ(y_i)/π_b(y_i) over rows with a real token."""
    out["ess_frac"] = _log_ess_frac(jnp.sum(lp - blp, axis=-1), jnp.any(m, axis=-1))
