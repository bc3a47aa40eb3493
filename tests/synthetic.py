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


def lm_bias_cells(rng, beta, *, lrs=(3e-5, 1e-4, 3e-4, 1e-3), anchors=(20, 40),
                  lags=(1, 2, 4, 8, 16), level_sd=0.5, slope_sd=0.1, rel_se=0.15,
                  floor_se=0.02, rho=0.5):
    """LM-bias-like cells: ‖δ‖ = L_j·(s·η)^β_j per anchor j = (η, t), with anchor-level
    differences (log L_j ~ N(0, level_sd²), β_j ~ N(β, slope_sd²)), and the U-statistic's
    estimate of ‖δ‖² with se = rel_se·‖δ‖² + floor_se·‖δ_max‖² (so the smallest cells sit at
    the noise floor), errors correlated within an anchor (correlation `rho`: the lags share
    one fresh batch). -> dict of arrays x (= s·η), est, se, anchor, lr, lag."""
    rows = {k: [] for k in ("x", "est", "se", "anchor", "lr", "lag")}
    j = 0
    for lr in lrs:
        for _ in anchors:
            lvl = 1e3 * np.exp(level_sd * rng.standard_normal())
            b = beta + slope_sd * rng.standard_normal()
            x = np.asarray(lags) * lr
            d2 = (lvl * x ** b) ** 2
            se = rel_se * d2 + floor_se * (lvl * (max(lags) * 1e-3) ** b) ** 2
            z = np.sqrt(rho) * rng.standard_normal() + np.sqrt(1 - rho) * rng.standard_normal(
                len(lags))
            for k in range(len(lags)):
                for key, v in (("x", x[k]), ("est", d2[k] + se[k] * z[k]), ("se", se[k]),
                               ("anchor", j), ("lr", lr), ("lag", lags[k])):
                    rows[key].append(v)
            j += 1
    return {k: np.asarray(v) for k, v in rows.items()}
