"""The interval-censored likelihood every η_max fit of `async_grpo.scaling` shares, and small
array helpers (row checks, quantile intervals, the seed bootstrap's resample)."""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special


def _log_interval_prob(z_lo: np.ndarray, z_hi: np.ndarray) -> np.ndarray:
    """log(Φ(z_hi) − Φ(z_lo)) for z_lo < z_hi (±inf allowed), stable in both tails."""
    flip = z_lo > 0                                   # use Φ(−z_lo) − Φ(−z_hi) in the upper tail
    a, b = np.where(flip, -z_hi, z_lo), np.where(flip, -z_lo, z_hi)
    lb, la = special.log_ndtr(b), special.log_ndtr(a)
    return lb + np.log1p(-np.exp(np.minimum(la - lb, 0.0)) + 1e-300)


def _censored_nll(mu, dmu, log_s, y_lo, y_hi):
    """−log-likelihood of y_i ~ N(μ_i, σ²) seen as intervals [y_lo, y_hi) (±inf for bounds), and
    its gradient with respect to (θ, log σ), given μ [n] and its Jacobian ∂μ/∂θ [n, k].

    Every interval-censored fit of this module is this likelihood with its own mean model μ(θ):
    a line in log S (`_interval_nll`), the delayed-gradient null, the two-constraint rule."""
    sig = np.exp(log_s)
    with np.errstate(invalid="ignore"):
        z_lo, z_hi = (y_lo - mu) / sig, (y_hi - mu) / sig
    log_p = _log_interval_prob(z_lo, z_hi)

    def ratio(z):             # φ(z)/P and z·φ(z)/P, both zero at z = ±inf
        fz = np.where(np.isfinite(z), z, 0.0)
        r = np.exp(-0.5 * fz ** 2 - 0.5 * np.log(2 * np.pi) - log_p) * np.isfinite(z)
        return r, fz * r

    (r_lo, zr_lo), (r_hi, zr_hi) = ratio(z_lo), ratio(z_hi)
    d_mu = (r_lo - r_hi) / sig                          # d log P / d μ
    grad = -np.concatenate([np.asarray(dmu).T @ d_mu, [(zr_lo - zr_hi).sum()]])
    return -log_p.sum(), grad


def _interval_nll(p, x, y_lo, y_hi):
    """−log-likelihood of y ~ N(a − α·x, σ²) seen as intervals [y_lo, y_hi) (±inf for bounds),
    p = (a, α, log σ), and its gradient."""
    a, alpha, log_s = p
    return _censored_nll(a - alpha * x, np.stack([np.ones_like(x), -x], 1), log_s, y_lo, y_hi)


def _mle(model, starts, y_lo, y_hi, sigma_min, bounds=None):
    """Maximum likelihood of `_censored_nll` with mean model ``model(θ) -> (μ, ∂μ/∂θ)``:
    a bounded quasi-Newton method with the analytic gradient from each start
    p0 = (*θ0, log σ0), σ ≥ sigma_min, the best finite optimum. `bounds` boxes θ (None: free).

    TNC: scipy's L-BFGS-B calls OpenBLAS on its 3-vectors and, on a loaded machine, spends
    ~7 ms per iteration in thread hand-offs (20–30× TNC on the shared 2-core VM), and every
    bootstrap refits hundreds of times. (Moving `bootstrap_alpha` from L-BFGS-B to TNC changed
    its α and CI ends by < 1e−6 on the synthetic maps of tests/test_scaling.py.)"""
    def nll(p):
        mu, dmu = model(p[:-1])
        return _censored_nll(mu, dmu, p[-1], y_lo, y_hi)

    best = None
    for p0 in starts:
        k = len(p0) - 1
        box = list(bounds) if bounds is not None else [(None, None)] * k
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            r = optimize.minimize(nll, np.asarray(p0, float), jac=True, method="TNC",
                                  bounds=box + [(np.log(sigma_min), None)])
        if np.isfinite(r.fun) and (best is None or r.fun < best.fun):
            best = r
    return best


def _censored_fit(x, y_lo, y_hi, sigma_min, starts=None):
    """MLE of (a, α, log σ) for `_interval_nll` (`_mle`, analytic gradient), σ ≥
    sigma_min, the best of a few starts (least squares on interval midpoints and two others)."""
    if starts is None:
        mid = np.where(np.isfinite(y_lo) & np.isfinite(y_hi), (y_lo + y_hi) / 2,
                       np.where(np.isfinite(y_lo), y_lo, y_hi))
        slope, icpt = np.polyfit(x, mid, 1)
        s0 = np.log(max(float(np.std(mid - (icpt + slope * x))), 2 * sigma_min))
        starts = [(icpt, -slope, s0), (float(np.mean(mid)), 0.0, s0), (icpt, 1.0 - slope, s0)]
    ones = np.ones_like(x)
    return _mle(lambda th: (th[0] - th[1] * x, np.stack([ones, -x], 1)), starts, y_lo, y_hi,
                sigma_min)


def _int_array(x, name):
    a = np.asarray(x)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ValueError(f"{name} must hold integers; got {a.ravel()[:5]}...")
        a = a.astype(np.int64)
    return a.astype(np.int64)


def _check_rows(**cols):
    """Equal-length 1-d float arrays; the names go into the error."""
    out = {k: np.asarray(v, float).ravel() for k, v in cols.items()}
    n = {k: v.size for k, v in out.items()}
    if len(set(n.values())) != 1:
        raise ValueError(f"row arrays differ in length: {n}")
    if next(iter(n.values())) == 0:
        raise ValueError("no rows")
    return out


def _log_intervals(lo, hi):
    """log η intervals; checks 0 ≤ lo < hi ≤ inf."""
    if np.any(~np.isfinite(lo)) or np.any(lo < 0) or np.any(np.isnan(hi)) or np.any(hi <= lo):
        bad = np.nonzero(~((lo >= 0) & np.isfinite(lo) & (hi > lo)))[0][:3]
        raise ValueError(f"intervals need 0 <= lo < hi <= inf; rows {bad.tolist()} have lo="
                         f"{lo[bad].tolist()}, hi={hi[bad].tolist()}")
    with np.errstate(divide="ignore"):
        return np.log(lo), np.log(hi)


def _sigma_floor(y_lo, y_hi):
    """A quarter of the median log width of the bracketed intervals (as `bootstrap_alpha`)."""
    w = (y_hi - y_lo)[np.isfinite(y_lo) & np.isfinite(y_hi)]
    return float(np.median(w)) / 4 if w.size else 0.05


def _seed_resample(seed_ids, rng):
    """Row indices of a bootstrap resample of the seeds (with replacement, jointly over cells)."""
    uniq = np.unique(seed_ids)
    pick = rng.choice(uniq, uniq.size, replace=True)
    return np.concatenate([np.nonzero(seed_ids == u)[0] for u in pick])


def _quantile_ci(samples, level):
    samples = np.asarray(samples, float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return [math.nan, math.nan]
    q = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return [float(q[0]), float(q[1])]


def _collapse_map(lags, lrs, collapsed):
    """(lags, lrs, collapsed) as arrays, the map checked to be bool [nS, E, nseed]."""
    lags, lrs = np.asarray(lags), np.asarray(lrs, float)
    collapsed = np.asarray(collapsed, bool)
    if collapsed.ndim != 3 or collapsed.shape[:2] != (len(lags), len(lrs)):
        raise ValueError(f"collapsed has shape {collapsed.shape}; expected [nS={len(lags)}, "
                         f"E={len(lrs)}, nseed]")
    return lags, lrs, collapsed


def _fmt(x, spec=".3g"):
    return "n/a" if x is None or not np.isfinite(x) else format(x, spec)
