"""Scaling-law analysis of staleness grids, for both testbeds (pure numpy/scipy; no JAX).

* `eta_max_per_seed`, `eta_max_intervals`: η_max of each (S, seed) on a sorted η grid, as a
  point with its censoring and as the interval the grid brackets it in.
* `bootstrap_alpha`: η_max ∝ S^−α over S ≥ 1 by censored (interval) maximum likelihood, with a
  bootstrap over seeds; `fit_power_law`: plain least squares on log–log points.
* `collapse_time_law`: does t_collapse·η stay constant (log t vs log η slope ≈ −1)?
* `fit_through_origin`, `linearity_break`: ‖δ‖ ≈ c·x in the small-drift regime and where it fails.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import optimize, special


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


def eta_max_intervals(lrs: Sequence[float], collapsed: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The interval [lo, hi) the η grid brackets each (S, seed)'s η_max in.

    η_max is the largest η below the smallest collapsed grid η (as `eta_max_per_seed`): lo is the
    grid η just below the first collapse, hi the first collapsed η. Nothing collapsed: hi = inf
    (lo = the largest grid η, a lower bound). Everything collapsed: lo = 0 (hi = the smallest
    grid η, an upper bound). -> (lo, hi), each [nS, nseed].
    """
    lrs = np.asarray(lrs, float)
    eta, censor = eta_max_per_seed(lrs, collapsed)
    step = {float(x): float(y) for x, y in zip(lrs[:-1], lrs[1:])}
    lo = np.where(censor == -1, 0.0, eta)
    hi = np.where(censor == 1, np.inf, np.where(
        censor == -1, lrs[0], np.vectorize(lambda x: step.get(float(x), np.inf))(eta)))
    return lo, hi


def _log_interval_prob(z_lo: np.ndarray, z_hi: np.ndarray) -> np.ndarray:
    """log(Φ(z_hi) − Φ(z_lo)) for z_lo < z_hi (±inf allowed), stable in both tails."""
    flip = z_lo > 0                                   # use Φ(−z_lo) − Φ(−z_hi) in the upper tail
    a, b = np.where(flip, -z_hi, z_lo), np.where(flip, -z_lo, z_hi)
    lb, la = special.log_ndtr(b), special.log_ndtr(a)
    return lb + np.log1p(-np.exp(np.minimum(la - lb, 0.0)) + 1e-300)


def _interval_nll(p, x, y_lo, y_hi):
    """−log-likelihood of y ~ N(a − α·x, σ²) seen as intervals [y_lo, y_hi) (±inf for bounds),
    p = (a, α, log σ), and its gradient."""
    a, alpha, log_s = p
    mu, sig = a - alpha * x, np.exp(log_s)
    z_lo, z_hi = (y_lo - mu) / sig, (y_hi - mu) / sig
    log_p = _log_interval_prob(z_lo, z_hi)

    def ratio(z):             # φ(z)/P and z·φ(z)/P, both zero at z = ±inf
        fz = np.where(np.isfinite(z), z, 0.0)
        r = np.exp(-0.5 * fz ** 2 - 0.5 * np.log(2 * np.pi) - log_p) * np.isfinite(z)
        return r, fz * r

    (r_lo, zr_lo), (r_hi, zr_hi) = ratio(z_lo), ratio(z_hi)
    d_mu = (r_lo - r_hi) / sig                          # d log P / d μ
    grad = -np.array([d_mu.sum(), -(d_mu * x).sum(), (zr_lo - zr_hi).sum()])
    return -log_p.sum(), grad


def _censored_fit(x, y_lo, y_hi, sigma_min, starts=None):
    """MLE of (a, α, log σ) for `_interval_nll`: L-BFGS-B with the analytic gradient, σ ≥
    sigma_min, the best of a few starts (least squares on interval midpoints and two others)."""
    def nll(p):
        return _interval_nll(p, x, y_lo, y_hi)

    if starts is None:
        mid = np.where(np.isfinite(y_lo) & np.isfinite(y_hi), (y_lo + y_hi) / 2,
                       np.where(np.isfinite(y_lo), y_lo, y_hi))
        slope, icpt = np.polyfit(x, mid, 1)
        s0 = np.log(max(float(np.std(mid - (icpt + slope * x))), 2 * sigma_min))
        starts = [(icpt, -slope, s0), (float(np.mean(mid)), 0.0, s0), (icpt, 1.0 - slope, s0)]
    best = None
    for p0 in starts:
        r = optimize.minimize(nll, p0, jac=True, method="L-BFGS-B",
                              bounds=[(None, None), (None, None), (np.log(sigma_min), None)])
        if np.isfinite(r.fun) and (best is None or r.fun < best.fun):
            best = r
    return best


def bootstrap_alpha(lags: Sequence[int], lrs: Sequence[float], collapsed: np.ndarray, *,
                    n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                    min_bracketed_frac: float = 0.5) -> dict[str, Any]:
    """α of η_max ∝ S^−α over S ≥ 1, from a collapse map, treating censoring honestly.

    Each (S, seed) contributes the interval [lo, hi) the grid brackets its η_max in
    (`eta_max_intervals`): a bracketed cell is known only to grid resolution, a cell where nothing
    collapsed is a lower bound, one where everything collapsed an upper bound. The fit is the
    maximum-likelihood line log η_max = log c − α log S + σ·ε, ε ~ N(0, 1), over those intervals
    (interval-censored regression), with σ floored at a quarter of the median log grid step (so a
    family of lines that all pass through every interval gives the central one, not an
    arbitrary one).

    No number is returned unless two or more S ≥ 1 have at least one bracketed seed (bounds
    alone do not fix a slope) and at least `min_bracketed_frac` of the cells at S ≥ 1 are
    bracketed (a fit made mostly of bounds says more about the grid than about η_max). The interval resamples seeds with replacement (jointly across S)
    and refits; it is a percentile interval at `level` over the resamples that are identified.
    It covers seed-to-seed spread, with grid resolution and censoring in the likelihood; it does
    not cover float precision or the choice of collapse rule.

    Args:
      lags: S values, length nS. lrs: the increasing η grid, length E.
      collapsed: bool [nS, E, nseed].

    Returns a dict: alpha (None when not identified, with `reason`), ci, sigma (the fitted
    scatter of log η_max), log_c, level, n_boot, n_boot_identified, and the counts of
    bracketed, lower-bound and upper-bound cells at S ≥ 1.
    """
    lags, lrs = np.asarray(lags), np.asarray(lrs, float)
    collapsed = np.asarray(collapsed, bool)
    if collapsed.ndim != 3 or collapsed.shape[:2] != (len(lags), len(lrs)):
        raise ValueError(f"collapsed has shape {collapsed.shape}; expected [nS={len(lags)}, "
                         f"E={len(lrs)}, nseed]")
    lo, hi = eta_max_intervals(lrs, collapsed)
    use = lags >= 1
    lo, hi, s = lo[use], hi[use], lags[use].astype(float)
    bracketed = (lo > 0) & np.isfinite(hi)
    out = {"alpha": None, "ci": [None, None], "sigma": None, "log_c": None, "level": level,
           "n_boot": 0, "n_boot_identified": 0, "n_bracketed": int(bracketed.sum()),
           "n_lower_bound": int(np.isinf(hi).sum()), "n_upper_bound": int((lo == 0).sum()),
           "method": "interval-censored MLE over S >= 1; bootstrap over seeds"}
    steps = np.diff(np.log(lrs))
    sigma_min = float(np.median(steps)) / 4 if steps.size else 0.05

    def fit(cols, starts=None):
        b = bracketed[:, cols]
        if (b.any(axis=1)).sum() < 2 or b.mean() < min_bracketed_frac:
            return None
        x = np.repeat(np.log(s), len(cols))
        y_lo = np.log(np.where(lo[:, cols] > 0, lo[:, cols], 1.0)).ravel()
        y_lo = np.where((lo[:, cols] > 0).ravel(), y_lo, -np.inf)
        y_hi = np.log(hi[:, cols]).ravel()
        return _censored_fit(x, y_lo, y_hi, sigma_min, starts)

    n_seed = collapsed.shape[2]
    point = fit(np.arange(n_seed))
    if point is None:
        n_lags = int(bracketed.any(axis=1).sum())
        out["reason"] = (
            f"needs a bracketed eta_max (a collapse above a stable eta) at two or more S >= 1 "
            f"(has {n_lags}) and at least {min_bracketed_frac:.0%} of the cells at S >= 1 "
            f"bracketed (has {bracketed.sum()} of {bracketed.size}; {out['n_lower_bound']} "
            f"never collapsed, {out['n_upper_bound']} always did)")
        return out
    rng = np.random.default_rng(seed)
    alphas = []
    for _ in range(n_boot):
        r = fit(rng.integers(0, n_seed, n_seed), starts=[point.x])
        if r is not None:
            alphas.append(r.x[1])
    out.update(alpha=float(point.x[1]), sigma=float(np.exp(point.x[2])),
               log_c=float(point.x[0]), n_boot=n_boot, n_boot_identified=len(alphas))
    if alphas:
        q = np.quantile(alphas, [(1 - level) / 2, (1 + level) / 2])
        out["ci"] = [float(q[0]), float(q[1])]
    return out


def format_alpha(fit: dict[str, Any]) -> str:
    """One line for a fit from `bootstrap_alpha`, or why there is none."""
    if fit.get("alpha") is None:
        return f"n/a ({fit.get('reason', 'not identified')})"
    lo, hi = fit["ci"]
    ci = f"[{lo:.3f}, {hi:.3f}]" if lo is not None else "[n/a]"
    return (f"alpha = {fit['alpha']:.3f}, {fit['level']:.0%} bootstrap CI over seeds {ci}, "
            f"sigma(log eta_max) = {fit['sigma']:.3f}; cells at S>=1: {fit['n_bracketed']} "
            f"bracketed, {fit['n_lower_bound']} lower and {fit['n_upper_bound']} upper bounds")


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
