"""The staleness bias ‖δ‖: linear fits through the origin, ‖E x‖ from noisy paired draws with
the noise floor removed, and log–log slopes with intervals."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from async_grpo.scaling._core import _quantile_ci


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


def mean_norm_sq(gram) -> dict[str, float]:
    """‖E x‖² from R i.i.d. vector draws x_1..x_R, given only their Gram matrix G_ij = ⟨x_i, x_j⟩.

    The U-statistic U = Σ_{i≠j} G_ij / (R(R−1)) has E U = ‖E x‖² exactly, whatever the noise
    (the cross terms of independent draws carry no variance), while ‖x̄‖² overstates it by
    tr Cov(x)/R. Returns {"est": U (may be < 0 when the mean is below the noise), "se": its
    delete-one jackknife standard error, "noise": tr Cov(x) (one draw's variance, the sampling
    noise of a single x), "R"}. Used for the LM staleness bias: x_r = Ĥ(θ, φ) − Ĥ(θ, θ)
    estimated on the r-th pair of batches of the same prompts (the two batches of a pair may be
    coupled; the pairs are independent), so U estimates ‖δ‖² with the noise floor removed.

    The jackknife SE is calibrated where the mean dominates the noise and errs high (up to ≈ √2
    at a zero mean, where U is a degenerate U-statistic), so a test at the noise floor is
    conservative (tests/test_scaling.py measures both).
    """
    g = np.asarray(gram, float)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"gram must be a square [R, R] matrix, got shape {g.shape}")
    r = g.shape[0]
    if r < 3:
        raise ValueError(f"mean_norm_sq needs R >= 3 draws (a jackknife over R - 1 >= 2), got {r}")
    if not np.all(np.isfinite(g)):
        raise ValueError("gram has non-finite entries")
    diag = np.diag(g)
    off = g.sum() - diag.sum()
    est = off / (r * (r - 1))
    row_off = g.sum(1) - diag                       # Σ_{j≠k} G_kj
    loo = (off - 2.0 * row_off) / ((r - 1) * (r - 2))
    se = math.sqrt((r - 1) / r * float(((loo - loo.mean()) ** 2).sum()))
    noise = (diag.sum() - g.sum() / r) / (r - 1)    # Σ‖x_i − x̄‖² / (R − 1)
    return {"est": float(est), "se": se, "noise": float(noise), "R": int(r)}


def norm_interval(est: float, se: float, z: float = 2.0) -> dict[str, Any]:
    """‖μ‖ from an estimate of ‖μ‖² and its standard error: the point sqrt(max(est, 0)), the
    interval [sqrt(max(est − z·se, 0)), sqrt(max(est + z·se, 0))], and `resolved` = the lower end
    is above 0 (the norm is distinguishable from the noise floor at z standard errors)."""
    if not (math.isfinite(est) and math.isfinite(se) and se >= 0):
        raise ValueError(f"est={est!r}, se={se!r}: finite, se >= 0")
    root = lambda v: math.sqrt(max(v, 0.0))  # noqa: E731
    return {"norm": root(est), "lo": root(est - z * se), "hi": root(est + z * se),
            "resolved": bool(est - z * se > 0)}


def loglog_slope_ci(x, est, se, *, n_boot: int = 1000, level: float = 0.95,
                    seed: int = 0) -> dict[str, Any]:
    """Slope of log ‖μ‖ on log x, where ‖μ‖² is measured as `est` ± `se` (`mean_norm_sq`).

    Fitted on the points whose norm is resolved (`norm_interval`, z = 2); the interval is a
    parametric bootstrap (each est redrawn from N(est, se²), non-positive draws dropped from that
    replicate). Fewer than 3 resolved points, or under 2 distinct x among them, give slope NaN
    with a `reason`."""
    x, est, se = (np.asarray(a, float).reshape(-1) for a in (x, est, se))
    if not (x.shape == est.shape == se.shape):
        raise ValueError(f"x, est, se must have one shape, got {x.shape}, {est.shape}, {se.shape}")
    ok = (x > 0) & (est - 2.0 * se > 0)
    out: dict[str, Any] = {"n": int(ok.sum()), "n_total": int(x.size)}
    if ok.sum() < 3 or np.unique(x[ok]).size < 2:
        return dict(out, slope=math.nan, ci=(math.nan, math.nan), r2=math.nan,
                    reason=f"{int(ok.sum())} resolved point(s) over "
                           f"{np.unique(x[ok]).size} distinct x (need >= 3 and >= 2)")
    lx = np.log(x[ok])
    ly = 0.5 * np.log(est[ok])
    slope, icpt = np.polyfit(lx, ly, 1)
    resid = ly - (slope * lx + icpt)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        e = est[ok] + se[ok] * rng.standard_normal(ok.sum())
        k = e > 0
        if k.sum() >= 3 and np.unique(lx[k]).size >= 2:
            boots.append(np.polyfit(lx[k], 0.5 * np.log(e[k]), 1)[0])
    lo, hi = _quantile_ci(np.asarray(boots), level) if boots else (math.nan, math.nan)
    return dict(out, slope=float(slope), ci=(lo, hi), intercept=float(icpt),
                r2=1.0 - float((resid ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0)


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
