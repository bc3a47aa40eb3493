"""Analysis helpers for the exact-testbed binaries (pure numpy; no JAX).

* `eta_max_per_seed`: the largest stable η of each (S, seed) on a sorted η grid.
* `fit_power_law`, `bootstrap_alpha`: η_max ∝ S^−α over S ≥ 1, with a bootstrap over seeds.
* `collapse_time_law`: does t_collapse·η stay constant (log t vs log η slope ≈ −1)?
* `fit_through_origin`, `linearity_break`: ‖δ‖ ≈ c·x in the small-drift regime and where it fails.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def eta_max_per_seed(lrs: Sequence[float], collapsed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """η_max for every (S, seed): the largest grid η below the smallest collapsed η.

    Args:
      lrs: increasing η grid, length E.
      collapsed: bool [nS, E, nseed].

    Returns:
      (eta_max [nS, nseed], censor [nS, nseed]) with censor = +1 when nothing collapsed (η_max is
      only a lower bound: the largest grid η), −1 when even the smallest η collapsed (η_max is set
      to half the smallest grid η, an upper bound), 0 otherwise.
    """
    lrs = np.asarray(lrs, float)
    if np.any(np.diff(lrs) <= 0):
        raise ValueError("lrs must be strictly increasing.")
    collapsed = np.asarray(collapsed, bool)
    n_s, n_e, n_seed = collapsed.shape
    if n_e != len(lrs):
        raise ValueError(f"collapsed has {n_e} learning rates, lrs has {len(lrs)}.")
    eta = np.empty((n_s, n_seed))
    censor = np.zeros((n_s, n_seed), int)
    for i in range(n_s):
        for k in range(n_seed):
            bad = np.nonzero(collapsed[i, :, k])[0]
            if bad.size == 0:
                eta[i, k], censor[i, k] = lrs[-1], 1
            elif bad[0] == 0:
                eta[i, k], censor[i, k] = lrs[0] / 2, -1
            else:
                eta[i, k] = lrs[bad[0] - 1]
    return eta, censor


def fit_power_law(s: Sequence[float], eta: Sequence[float]) -> dict[str, float]:
    """Least squares log η = log c − α log S. Returns alpha, log_c, r2 (nan if < 2 points)."""
    x, y = np.log(np.asarray(s, float)), np.log(np.asarray(eta, float))
    if x.size < 2 or np.ptp(x) == 0:
        return {"alpha": math.nan, "log_c": math.nan, "r2": math.nan}
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return {"alpha": float(-slope), "log_c": float(intercept), "r2": r2}


def bootstrap_alpha(lags: Sequence[int], eta_max: np.ndarray, *, n_boot: int = 2000,
                    seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """α of η_max ∝ S^−α over S ≥ 1, from the per-S geometric mean over seeds.

    The interval resamples seeds with replacement (jointly across S: a seed is one initialization
    used at every S) and refits; it is a percentile interval at `level`. It reflects seed-to-seed
    spread only, not the η-grid resolution (the grid step bounds how finely α can be resolved).
    """
    lags = np.asarray(lags)
    use = lags >= 1
    if use.sum() < 2:
        return {"alpha": math.nan, "ci": [math.nan, math.nan], "r2": math.nan, "n_boot": 0}
    log_eta = np.log(np.asarray(eta_max, float)[use])  # [nS', nseed]
    s = lags[use]
    point = fit_power_law(s, np.exp(log_eta.mean(1)))
    rng = np.random.default_rng(seed)
    n_seed = log_eta.shape[1]
    alphas = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n_seed, n_seed)
        alphas[b] = fit_power_law(s, np.exp(log_eta[:, idx].mean(1)))["alpha"]
    lo, hi = np.quantile(alphas, [(1 - level) / 2, (1 + level) / 2])
    return {"alpha": point["alpha"], "ci": [float(lo), float(hi)], "r2": point["r2"],
            "level": level, "n_boot": n_boot, "log_c": point["log_c"]}


def collapse_time_law(lrs: np.ndarray, t_collapse: np.ndarray, *,
                      min_step: int = -1) -> dict[str, float]:
    """Fit log t_collapse = a + b log η over collapsed cells; t·η = const means b = −1.

    Cells with t_collapse <= `min_step` (e.g. flagged at the end of the collapse warm-up, so their
    real collapse time is unknown) are left out and counted in ``n_censored``. Returns slope b,
    r2, the median and the geometric coefficient of variation of t·η, n. Cells with
    t_collapse = 0 are shifted by one step (t + 1) to keep logs finite.
    """
    lrs, t_raw = np.asarray(lrs, float), np.asarray(t_collapse, float)
    censored = t_raw <= min_step
    t = t_raw + 1.0
    ok = np.isfinite(t) & (t > 0) & ~censored
    lrs, t = lrs[ok], t[ok]
    out = {"n": int(t.size), "n_censored": int(censored.sum()), "slope": math.nan, "r2": math.nan,
           "median_t_eta": math.nan, "gcv_t_eta": math.nan}
    if t.size == 0:
        return out
    prod = t * lrs
    out["median_t_eta"] = float(np.median(prod))
    out["gcv_t_eta"] = float(np.exp(np.std(np.log(prod))) - 1.0)
    if t.size >= 2 and np.ptp(np.log(lrs)) > 0:
        fit = fit_power_law(lrs, t)
        out["slope"], out["r2"] = -fit["alpha"], fit["r2"]
    return out


def fit_through_origin(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """y ≈ c·x by least squares through the origin; R² = 1 − SS_res/SS_tot (centered)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size == 0 or not np.any(x):
        return {"slope": math.nan, "r2": math.nan, "n": int(x.size)}
    c = float((x * y).sum() / (x * x).sum())
    ss_res = float(((y - c * x) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {"slope": c, "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0, "n": int(x.size)}


def loglog_slope(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = (x > 0) & (y > 0)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def linearity_break(x: np.ndarray, y: np.ndarray, slope: float, *, tol: float = 0.1) -> float:
    """Smallest x (sorted) from which y/(slope·x) leaves [1 − tol, 1 + tol] for good; nan if never."""
    order = np.argsort(x)
    x, y = np.asarray(x, float)[order], np.asarray(y, float)[order]
    ratio = y / (slope * x)
    bad = np.abs(ratio - 1.0) > tol
    if not bad.any():
        return math.nan
    # the first index after which every later point is also "bad" is too strict for noisy data;
    # report the first bad point beyond the last run of good ones at small x.
    first_bad = int(np.argmax(bad))
    return float(x[first_bad])
