"""η_max per (S, seed), its S-dependence η_max ∝ S^−α with an interval, and the
delayed-gradient null η_max = η0/(S + c)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats

from async_grpo.scaling._core import (
    _mle, _censored_fit, _log_intervals, _seed_resample, _quantile_ci, _collapse_map, _fmt)


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


def bootstrap_alpha(lags: Sequence[int], lrs: Sequence[float], collapsed: np.ndarray, *,
                    n_boot: int = 0, seed: int = 0, level: float = 0.95,
                    min_bracketed_frac: float = 0.5) -> dict[str, Any]:
    """α of η_max ∝ S^−α over S ≥ 1, from a collapse map, treating censoring honestly, with an
    interval that covers at 3 seeds. (The name is historical: the interval is no longer a
    bootstrap; see below.)

    Each (S, seed) contributes the interval [lo, hi) the grid brackets its η_max in
    (`eta_max_intervals`): a bracketed cell is known only to grid resolution, a cell where nothing
    collapsed is a lower bound, one where everything collapsed an upper bound. The fit is the
    maximum-likelihood line log η_max = log c − α log S + σ·ε, ε ~ N(0, 1), over those intervals
    (interval-censored regression), with σ floored at a quarter of the median log grid step (so a
    family of lines that all pass through every interval gives the central one, not an
    arbitrary one).

    No number is returned unless two or more S ≥ 1 have at least one bracketed seed (bounds
    alone do not fix a slope) and at least `min_bracketed_frac` of the cells at S ≥ 1 are
    bracketed (a fit made mostly of bounds says more about the grid than about η_max).

    The interval (`alpha_interval`): the same censored line fitted to each seed alone gives one
    slope α_k per seed; the seeds are the independent units (a seed's cells at several S may
    share its randomness), so α̂ ± t_{n−1}·se with se² = max(s²_α, q²)/n, s²_α the variance of
    the n identified per-seed slopes and q² = w²/(12·Σ(log S − mean)²) the variance a single
    seed's slope has from grid resolution alone (w the median log grid step): the floor keeps a
    coarse grid, on which every seed lands in the same brackets, from printing a zero-width
    interval. Fewer than two identified seeds: ``ci`` is [None, None] with ``ci_reason`` (the
    interval is undetermined, not zero). Measured coverage of the nominal 95 % interval
    (tests/test_coverage.py, σ ∈ {0.10, 0.25}, √2 and ×2 grids, α ∈ {0.4, 1}, 3 and 5 seeds):
    ≥ 0.90 everywhere. The percentile bootstrap over seeds this function used to print covered
    0.52–0.76 at 3 seeds (10 distinct resamples); `n_boot` > 0 still computes it, as
    ``ci_bootstrap``, for comparison only.

    Args:
      lags: S values, length nS. lrs: the increasing η grid, length E.
      collapsed: bool [nS, E, nseed].

    Returns a dict: alpha (None when not identified, with `reason`), ci, sigma (the fitted
    scatter of log η_max), log_c, level, alpha_per_seed, n_seeds_identified, se, and the counts
    of bracketed, lower-bound and upper-bound cells at S ≥ 1.
    """
    lags, lrs, collapsed = _collapse_map(lags, lrs, collapsed)
    lo, hi = eta_max_intervals(lrs, collapsed)
    use = lags >= 1
    lo, hi, s = lo[use], hi[use], lags[use].astype(float)
    bracketed = (lo > 0) & np.isfinite(hi)
    out = {"alpha": None, "ci": [None, None], "sigma": None, "log_c": None, "level": level,
           "n_boot": 0, "n_boot_identified": 0, "n_bracketed": int(bracketed.sum()),
           "n_lower_bound": int(np.isinf(hi).sum()), "n_upper_bound": int((lo == 0).sum()),
           "method": "interval-censored MLE over S >= 1; t-interval over per-seed slopes "
                     "(se floored at the grid's resolution)"}
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
    out.update(alpha=float(point.x[1]), sigma=float(np.exp(point.x[2])),
               log_c=float(point.x[0]))
    per_seed = []
    for k in range(n_seed):
        r = fit(np.array([k]), starts=[point.x])
        per_seed.append(float(r.x[1]) if r is not None else None)
    step = float(np.median(steps)) if steps.size else math.nan
    out.update(alpha_interval(out["alpha"], per_seed, np.log(s), step, level))
    if n_boot:
        rng = np.random.default_rng(seed)
        alphas = []
        for _ in range(n_boot):
            r = fit(rng.integers(0, n_seed, n_seed), starts=[point.x])
            if r is not None:
                alphas.append(r.x[1])
        out.update(n_boot=n_boot, n_boot_identified=len(alphas),
                   ci_bootstrap=_quantile_ci(alphas, level) if alphas else [None, None])
    return out


def alpha_interval(alpha: float, per_seed: Sequence[float | None], log_s: Sequence[float],
                   grid_step: float, level: float = 0.95) -> dict[str, Any]:
    """The t-interval of `bootstrap_alpha`: α ± t_{n−1}·se over the n identified per-seed
    slopes (None: that seed's slope is not identified), se² = max(s², q²)/n with q² =
    grid_step²/(12·Σ(log S − mean)²) over the distinct S. Returns {ci, se, alpha_per_seed,
    n_seeds_identified} and ``ci_reason`` when fewer than two seeds are identified (ci
    [None, None]: undetermined)."""
    a = np.array([x for x in per_seed if x is not None and math.isfinite(x)], float)
    out: dict[str, Any] = {"alpha_per_seed": list(per_seed), "n_seeds_identified": int(a.size),
                           "se": None, "ci": [None, None]}
    if a.size < 2:
        out["ci_reason"] = (f"{a.size} seed(s) identify a slope alone (needs two or more for an "
                            f"interval over seeds)")
        return out
    xs = np.unique(np.asarray(log_s, float))
    sxx = float(((xs - xs.mean()) ** 2).sum())
    q2 = grid_step ** 2 / (12 * sxx) if sxx > 0 and math.isfinite(grid_step) else 0.0
    se = math.sqrt(max(float(np.var(a, ddof=1)), q2) / a.size)
    if not se > 0:
        out["ci_reason"] = "the per-seed slopes agree exactly and the grid gives no resolution"
        return out
    half = float(stats.t.ppf((1 + level) / 2, a.size - 1)) * se
    out.update(se=se, ci=[alpha - half, alpha + half])
    return out


def format_alpha(fit: dict[str, Any]) -> str:
    """One line for a fit from `bootstrap_alpha`, or why there is none."""
    if fit.get("alpha") is None:
        return f"n/a ({fit.get('reason', 'not identified')})"
    lo, hi = fit["ci"]
    ci = f"[{lo:.3f}, {hi:.3f}]" if lo is not None else "[n/a]"
    return (f"alpha = {fit['alpha']:.3f}, {fit['level']:.0%} t-interval over seeds {ci}, "
            f"sigma(log eta_max) = {fit['sigma']:.3f}; cells at S>=1: {fit['n_bracketed']} "
            f"bracketed, {fit['n_lower_bound']} lower and {fit['n_upper_bound']} upper bounds")


def _lag_rows(lags, lrs, collapsed):
    """Flat (S, seed, lo, hi) rows of a collapse map [nS, E, nseed] (`eta_max_intervals`)."""
    lags, lrs, collapsed = _collapse_map(lags, lrs, collapsed)
    lo, hi = eta_max_intervals(lrs, collapsed)
    n_seed = collapsed.shape[2]
    return (np.repeat(lags.astype(float), n_seed), np.tile(np.arange(n_seed), len(lags)),
            lo.ravel(), hi.ravel())


_LOG_C_BOUNDS = (math.log(1e-4), math.log(1e4))


def _null_model(s):
    def model(th):
        c = np.exp(th[1])
        return th[0] - np.log(s + c), np.stack([np.ones_like(s), -c / (s + c)], 1)
    return model


def _fit_null_rows(s, y_lo, y_hi, sigma_min, starts=None):
    if starts is None:
        mid = np.where(np.isfinite(y_lo) & np.isfinite(y_hi), (y_lo + y_hi) / 2,
                       np.where(np.isfinite(y_lo), y_lo, y_hi))
        s0 = math.log(max(float(np.std(mid)), 2 * sigma_min))
        starts = []
        for c0 in (0.1, 1.0, 10.0):
            starts.append((float(np.median(mid + np.log(s + c0))), math.log(c0), s0))
    return _mle(_null_model(s), starts, y_lo, y_hi, sigma_min,
                bounds=[(None, None), _LOG_C_BOUNDS])


def _fit_power_rows(s, y_lo, y_hi, sigma_min, starts=None):
    return _censored_fit(np.log(s), y_lo, y_hi, sigma_min, starts)


def fit_null_model(lags: Sequence[int], lrs: Sequence[float], collapsed: np.ndarray, *,
                   min_lag: int = 0, n_boot: int = 0, seed: int = 0, level: float = 0.95,
                   min_bracketed_frac: float = 0.5) -> dict[str, Any]:
    """The delayed-gradient null η_max = η0/(S + c), against the power law η_max ∝ S^−α.

    Gradient descent with a fixed delay S on a quadratic of curvature λ, x_{t+1} = x_t −
    ηλ·x_{t−S}, is stable iff ηλ < 2·sin(π/(2(2S + 1))) ≈ (π/2)/(S + ½) for S ≥ 1 (exact 2 at
    S = 0, 1 at S = 1): η_max = η0/(S + c) (least squares over S = 1…32: η0 = 1.58/λ,
    c = 0.57; c → ½ as S → ∞) is the null a staleness law must beat. It bends away from a
    power law at small S and is ∝ 1/S for S ≫ c. The fit is the interval-censored maximum
    likelihood of `bootstrap_alpha` with mean model μ(S) = log η0 − log(S + c) for log η_max,
    scatter σ (floored at a quarter of the median log grid step), over the cells with
    S ≥ `min_lag` (S = 0 is allowed: η_max(0) = η0/c). c is searched in [1e−4, 1e4]; when the
    optimum sits at either end (the data do not bend, or bend everywhere) c is not identified
    and is reported as NaN with a reason. With `n_boot` > 0 a percentile bootstrap over seeds
    gives ci_eta0 and ci_c; like the one α used to have it under-covers at 3 seeds (10 distinct
    resamples), so nothing the project prints uses it (the claims table reports the null by its
    log-likelihood against the power law, `compare`, which needs no resampling).

    Comparison: both models have 3 parameters, so their log-likelihoods compare directly (AIC
    difference = 2·Δ). The power law needs S ≥ 1, so both are (re)fitted on the same cells,
    S ≥ max(1, min_lag), and ``compare`` holds loglik_null, loglik_power and delta_loglik =
    loglik_null − loglik_power (> 0: the null explains the intervals better), with the null's
    η0 and c on those cells (c_at_bound: c ran to 1e−4 or 1e4, the null degenerating into a
    power law with α = 1 or a constant).

    Returns a dict: eta0, c (NaN with `reason` when not identified), ci_eta0, ci_c, sigma,
    loglik (of the null on its own cells), n_cells, n_bracketed, n_boot_identified, level,
    compare {cells, n_cells, loglik_null, loglik_power, delta_loglik, alpha, eta0, c,
    c_at_bound}.
    """
    s, seed_ids, lo, hi = _lag_rows(lags, lrs, collapsed)
    if int(min_lag) != min_lag or min_lag < 0:
        raise ValueError(f"min_lag must be an integer >= 0; got {min_lag!r}")
    y_lo_all, y_hi_all = _log_intervals(lo, hi)
    steps = np.diff(np.log(np.asarray(lrs, float)))
    sigma_min = float(np.median(steps)) / 4 if steps.size else 0.05
    use = s >= min_lag
    s_u, sid, y_lo, y_hi = s[use], seed_ids[use], y_lo_all[use], y_hi_all[use]
    bracketed = np.isfinite(y_lo) & np.isfinite(y_hi)
    nan = math.nan
    out = {"eta0": nan, "c": nan, "ci_eta0": [nan, nan], "ci_c": [nan, nan], "sigma": nan,
           "loglik": nan, "n_cells": int(s_u.size), "n_bracketed": int(bracketed.sum()),
           "n_boot": n_boot, "n_boot_identified": 0, "level": level,
           "method": f"interval-censored MLE of log eta_max = log eta0 - log(S + c) over "
                     f"S >= {min_lag}; bootstrap over seeds",
           "compare": {}}

    def enough(b, ss):
        return np.unique(ss[b]).size >= 2 and b.mean() >= min_bracketed_frac

    def at_bound(r):
        return min(abs(r.x[1] - _LOG_C_BOUNDS[0]), abs(r.x[1] - _LOG_C_BOUNDS[1])) < 1e-3

    if not enough(bracketed, s_u):
        out["reason"] = (f"needs bracketed eta_max at two or more S >= {min_lag} (has "
                         f"{np.unique(s_u[bracketed]).size}) and at least "
                         f"{min_bracketed_frac:.0%} of the cells bracketed (has "
                         f"{bracketed.sum()} of {bracketed.size})")
        return out
    point = _fit_null_rows(s_u, y_lo, y_hi, sigma_min)
    if point is None:
        out["reason"] = "the likelihood was not finite at any start"
        return out
    out.update(sigma=float(np.exp(point.x[2])), loglik=float(-point.fun))
    if at_bound(point):
        out["reason"] = (f"c at the end of its search range ({np.exp(point.x[1]):.3g}): the "
                         f"intervals do not fix the bend of eta0/(S + c)")
    else:
        out.update(eta0=float(np.exp(point.x[0])), c=float(np.exp(point.x[1])))
        rng = np.random.default_rng(seed)
        eta0s, cs = [], []
        for _ in range(n_boot):
            idx = _seed_resample(sid, rng)
            b = bracketed[idx]
            if not enough(b, s_u[idx]):
                continue
            r = _fit_null_rows(s_u[idx], y_lo[idx], y_hi[idx], sigma_min, starts=[point.x])
            if r is not None and not at_bound(r):
                eta0s.append(np.exp(r.x[0]))
                cs.append(np.exp(r.x[1]))
        out.update(n_boot_identified=len(cs), ci_eta0=_quantile_ci(eta0s, level),
                   ci_c=_quantile_ci(cs, level))
    # both models on the same cells, S >= max(1, min_lag)
    cmp_ = s >= max(1, min_lag)
    b = np.isfinite(y_lo_all[cmp_]) & np.isfinite(y_hi_all[cmp_])
    if np.unique(s[cmp_][b]).size >= 2:
        args = (s[cmp_], y_lo_all[cmp_], y_hi_all[cmp_], sigma_min)
        rn, rp = _fit_null_rows(*args), _fit_power_rows(*args)
        out["compare"] = {"cells": f"S >= {max(1, min_lag)}", "n_cells": int(cmp_.sum()),
                          "loglik_null": float(-rn.fun), "loglik_power": float(-rp.fun),
                          "delta_loglik": float(rp.fun - rn.fun), "alpha": float(rp.x[1]),
                          "eta0": float(np.exp(rn.x[0])), "c": float(np.exp(rn.x[1])),
                          "c_at_bound": bool(at_bound(rn))}
    else:
        out["compare"] = {"reason": "fewer than two S >= 1 with a bracketed eta_max"}
    return out


def format_null_model(fit: dict[str, Any]) -> str:
    """One line for a `fit_null_model` result, or why there is none."""
    cmp_ = fit.get("compare", {})
    versus = (f"; vs power law on {cmp_['cells']}: loglik {cmp_['loglik_null']:.2f} (null) vs "
              f"{cmp_['loglik_power']:.2f} (power, alpha = {cmp_['alpha']:.3f})"
              if "loglik_null" in cmp_ else "")
    if not np.isfinite(fit["c"]):
        return f"eta0/(S + c): n/a ({fit.get('reason', 'not identified')}){versus}"
    lo, hi = fit["ci_c"]
    ci = (f", c {fit['level']:.0%} percentile bootstrap [{_fmt(lo)}, {_fmt(hi)}]"
          if np.isfinite(lo) and np.isfinite(hi) else "")
    return (f"eta_max = {_fmt(fit['eta0'])}/(S + {_fmt(fit['c'])}){ci}, "
            f"sigma(log eta_max) = {fit['sigma']:.3f}{versus}")
