"""Run diagnostics shared by the pipeline and the simulator: realized-lag statistics (host) and
the cosine of two pytrees (jittable).

The gradient-level diagnostics (norms, cosines, staleness bias) are computed inside jitted
functions in `async_grpo.rl.learner` and `async_grpo.simulate`; the collapse definition is
`async_grpo.collapse`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def tree_cosine(a, b) -> jax.Array:
    """cos(a, b) of two pytrees as flattened vectors; 0 when either is zero."""
    den = optax.tree.norm(a) * optax.tree.norm(b)
    return jnp.where(den > 0, optax.tree.vdot(a, b) / jnp.where(den > 0, den, 1.0), 0.0)


def lag_stats(step: int, versions, max_lag: int) -> dict[str, float]:
    """Realized lag of the samples trained on at learner step `step`.

    `versions` holds the generating version of every sample (lag = step − version). Returns
    "lag/min", "lag/mean", "lag/max" and the histogram "lag/frac_<k>" (fraction of samples with
    lag k) for k = 0 … max_lag, plus "lag/frac_over" for anything beyond max_lag (always 0 unless
    a policy is broken; logged so a violation cannot go unnoticed).
    """
    lags = step - np.asarray(versions, dtype=np.int64).reshape(-1)
    if lags.size == 0:
        raise ValueError("lag_stats needs at least one sample version.")
    if (lags < 0).any():
        raise ValueError(f"A sample of step {step} has a version newer than the step: "
                         f"{sorted(set(np.asarray(versions).tolist()))}.")
    out = {"lag/min": int(lags.min()), "lag/mean": float(lags.mean()), "lag/max": int(lags.max())}
    counts = np.bincount(np.minimum(lags, max_lag + 1), minlength=max_lag + 2) / lags.size
    for k in range(max_lag + 1):
        out[f"lag/frac_{k}"] = float(counts[k])
    out["lag/frac_over"] = float(counts[max_lag + 1])
    return out
