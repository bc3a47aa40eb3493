"""Synthetic data with known answers for the coverage and power tests (tests/test_coverage.py,
tests/test_claims.py)."""

import numpy as np


def alpha_map(rng, alpha, sigma, ratio, n_seed, lags=(1, 2, 4, 8, 16)):
    """A collapse map whose η_max(S, seed) = c·S^−α·exp(σ·ε), ε ~ N(0, 1) per (S, seed), on a
    geometric η grid of step `ratio`, with c placed at a random point inside a grid step (nature
    does not align with the grid). -> (lags, lrs, collapsed [nS, E, nseed])."""
    lrs = ratio ** np.arange(-30, 31) * 1e-3
    c = 1e-3 * ratio ** rng.uniform(0, 1)
    lags = np.asarray(lags)
    thr = (np.log(c) - alpha * np.log(lags)[:, None]
           + sigma * rng.standard_normal((len(lags), n_seed)))
    return lags, lrs, np.log(lrs)[None, :, None] > thr[:, None, :]
