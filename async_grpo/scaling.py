"""Scaling-law analysis of staleness grids, for both testbeds (pure numpy/scipy; no JAX).

* `eta_max_per_seed`, `eta_max_intervals`: η_max of each (S, seed) on a sorted η grid, as a
  point with its censoring and as the interval the grid brackets it in.
* `bootstrap_alpha`: η_max ∝ S^−α over S ≥ 1 by censored (interval) maximum likelihood, with a
  bootstrap over seeds; `fit_power_law`: plain least squares on log–log points.
* `collapse_time_law`: does t_collapse·η stay constant (log t vs log η slope ≈ −1)?
* `fit_through_origin`, `linearity_break`: ‖δ‖ ≈ c·x in the small-drift regime and where it fails.
* `estimate_r_batch`: the batch radius R_batch as the peak within-cycle drift at the stability
  edge of a fixed-η grid (the learning-rate controller's calibration).
* `mean_norm_sq`, `norm_interval`, `loglog_slope_ci`: ‖E x‖ from noisy paired draws (the LM
  staleness bias with the sampling-noise floor removed), and its log–log slope with an interval.

The scaling-law study (η_max over S and the horizon T, which constraint binds, early warning):

* `collapsed_at_horizon`, `horizon_table`: η_max at horizon T from one sweep of length T_max
  (the collapse rule is causal), as (S, T, seed) rows of intervals.
* `fit_null_model`: the delayed-gradient null η_max = η0/(S + c), with the power law's
  log-likelihood on the same cells.
* `fit_two_constraint`, `predict_two_constraint`, `heldout_error`, `g_upd_per_cell`, `radii`:
  η_max(S, T) = min{a/S_eff, b/T} (a = R_batch/G_upd, b = R_crit/G_upd), fitted, predicted on
  held-out cells, scored; R_batch, R_crit in parameter-norm units from a measured G_upd.
* `collapse_time_per_lag`, `classify_regimes`, `drift_bound_traces`: t_c·η per S, and whether
  each run ran into the batch radius ("stale-limited"), the critical radius
  ("horizon-limited") or neither ("stable").
* `cosine_scores`, `cosine_auc`, `auc_mann_whitney`, `running_mean`, `cosine_alarm`: does the
  consecutive-update cosine separate collapsing from stable runs, and how many steps ahead.

Every fit is the interval-censored likelihood `_censored_nll` with its own mean model; a fit
without enough bracketed η_max returns NaN (or None in `bootstrap_alpha`) and a `reason`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
from scipy import optimize, special, stats


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
    lags, lrs, collapsed = _collapse_map(lags, lrs, collapsed)
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


def estimate_r_batch(lags, lrs, seeds, collapsed, collapse_step, drift) -> dict:
    """R_batch from a fixed-η grid: for every S ≥ 1 and seed whose η_max is bracketed (a
    collapse one grid step above a stable η), the peak within-cycle drift of the stable run at
    η_max; R_batch is their median (experiments/lr_controller.py, stage 1; the LM sweep's
    `lr_control.r_batch_from`).

    collapsed, collapse_step: [nS, E, nseed]; drift: [nS, E, nseed, T] within-cycle drift.
    """
    eta, censor = eta_max_per_seed(lrs, collapsed)
    edges = []
    for i, s in enumerate(lags):
        if s < 1:
            continue
        for k, seed in enumerate(seeds):
            if censor[i, k] != 0:
                continue
            j = int(np.searchsorted(lrs, eta[i, k]))
            t_fail = int(collapse_step[i, j + 1, k])
            edges.append({"S": int(s), "seed": int(seed), "eta_max": float(lrs[j]),
                          "peak_drift_stable": float(np.max(drift[i, j, k])),
                          "eta_collapsed": float(lrs[j + 1]), "collapse_step": t_fail,
                          "peak_drift_collapsed_before_collapse": float(
                              np.max(drift[i, j + 1, k, :max(t_fail, 1)]))})
    if not edges:
        raise ValueError("No (S >= 1, seed) has a bracketed eta_max: R_batch cannot be measured "
                         "from this grid; widen the eta grid or set R_batch by hand.")
    ok = np.array([e["peak_drift_stable"] for e in edges])
    fail = np.array([e["peak_drift_collapsed_before_collapse"] for e in edges])
    return {"r_batch": float(np.median(ok)), "n_edges": len(edges),
            "peak_drift_stable_quantiles": np.quantile(ok, [0, .25, .5, .75, 1]).tolist(),
            "peak_drift_collapsed_quantiles": np.quantile(fail, [0, .25, .5, .75, 1]).tolist(),
            "edges": edges}


# ---------------------------------------------------------------------------------------------
# η_max at a horizon T, from one long sweep
# ---------------------------------------------------------------------------------------------

def _int_array(x, name):
    a = np.asarray(x)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ValueError(f"{name} must hold integers; got {a.ravel()[:5]}...")
        a = a.astype(np.int64)
    return a.astype(np.int64)


def collapsed_at_horizon(collapse_step, horizon: int, *, patience: int = 1) -> np.ndarray:
    """Whether each run counts as collapsed within its first `horizon` learner steps.

    The horizon T counts learner steps: a run of horizon T performs steps t = 0 … T−1
    (`collapse_step` is 0-based, −1 = never collapsed). The collapse rules
    (`async_grpo.collapse`) are causal: the rule that fires at step c uses steps ≤ c only, so a
    shorter run with the same seed would have flagged the same step, and one sweep of length
    T_max gives the collapse map at every horizon T ≤ T_max:

        collapsed(T) = (c ≥ 0) and (c + patience − 1 ≤ T − 1),   i.e.  0 ≤ c ≤ T − patience.

    With `patience` p > 1 the collapse step is the *first* step of a p-step streak, which a run
    of T steps confirms only if the streak ends by step T − 1; p = 1 gives 0 ≤ c < T. (A collapse
    flagged at the end of a warm-up happened no later than that; horizons inside the warm-up
    cannot see any drop-rule collapse, so use horizons longer than warm-up + patience.)

    Args:
      collapse_step: int array of any shape, −1 for runs that never collapsed.
      horizon: T ≥ 1. patience: the collapse rule's patience, ≥ 1.
    Returns bool array, the shape of `collapse_step`.
    """
    c = _int_array(collapse_step, "collapse_step")
    if np.any(c < -1):
        raise ValueError(f"collapse_step must be >= 0 or -1 (never); got min {c.min()}")
    if int(horizon) != horizon or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1; got {horizon!r}")
    if int(patience) != patience or patience < 1:
        raise ValueError(f"patience must be an integer >= 1; got {patience!r}")
    return (c >= 0) & (c <= int(horizon) - int(patience))


def horizon_table(lags: Sequence[int], lrs: Sequence[float], collapse_step,
                  horizons: Sequence[int], *, num_steps: int, patience: int = 1
                  ) -> dict[str, np.ndarray]:
    """The collapse table at every horizon and the η_max interval of each (S, T, seed).

    η_max at horizon T, for one (S, seed): the largest grid η below the smallest grid η whose run
    collapsed within T steps (`collapsed_at_horizon`), known as the interval [lo, hi) the grid
    brackets it in (`eta_max_intervals`: hi = inf when no η collapsed by T, lo = 0 when all did).

    Args:
      lags: S values, length nS. lrs: strictly increasing η grid, length E.
      collapse_step: int [nS, E, nseed], −1 = never, from one sweep of `num_steps` steps.
      horizons: horizons T, each 1 ≤ T ≤ num_steps.
      num_steps: the sweep's length T_max (a horizon beyond it is refused: runs were not observed
        that long).

    Returns a dict:
      collapsed: bool [nS, nT, E, nseed], the collapse map at each horizon;
      S, T, seed, lo, hi: flat rows, one per (S, T, seed) (seed = the seed's index), in the order
        of ``np.ndindex(nS, nT, nseed)``, ready for `fit_two_constraint`.
    """
    lags = _int_array(lags, "lags")
    lrs = np.asarray(lrs, float)
    c = _int_array(collapse_step, "collapse_step")
    horizons = _int_array(horizons, "horizons")
    if c.ndim != 3 or c.shape[:2] != (len(lags), len(lrs)):
        raise ValueError(f"collapse_step has shape {c.shape}; expected [nS={len(lags)}, "
                         f"E={len(lrs)}, nseed]")
    if horizons.ndim != 1 or horizons.size == 0:
        raise ValueError("horizons must be a non-empty 1-d list of integers")
    if np.any(horizons < 1) or np.any(horizons > num_steps):
        raise ValueError(f"horizons must lie in [1, num_steps={num_steps}]; got "
                         f"{horizons.tolist()}")
    if np.any(c >= num_steps):
        raise ValueError(f"collapse_step has {c.max()} >= num_steps={num_steps}: wrong num_steps?")
    coll = np.stack([collapsed_at_horizon(c, h, patience=patience) for h in horizons], 1)
    n_s, n_t, n_seed = len(lags), len(horizons), c.shape[2]
    lo = np.empty((n_s, n_t, n_seed))
    hi = np.empty((n_s, n_t, n_seed))
    for j in range(n_t):
        lo[:, j], hi[:, j] = eta_max_intervals(lrs, coll[:, j])
    ii, jj, kk = np.meshgrid(np.arange(n_s), np.arange(n_t), np.arange(n_seed), indexing="ij")
    return {"collapsed": coll, "S": lags[ii].ravel(), "T": horizons[jj].ravel(),
            "seed": kk.ravel(), "lo": lo.ravel(), "hi": hi.ravel()}


# ---------------------------------------------------------------------------------------------
# shared pieces of the interval-censored fits below
# ---------------------------------------------------------------------------------------------

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


def _lag_rows(lags, lrs, collapsed):
    """Flat (S, seed, lo, hi) rows of a collapse map [nS, E, nseed] (`eta_max_intervals`)."""
    lags, lrs, collapsed = _collapse_map(lags, lrs, collapsed)
    lo, hi = eta_max_intervals(lrs, collapsed)
    n_seed = collapsed.shape[2]
    return (np.repeat(lags.astype(float), n_seed), np.tile(np.arange(n_seed), len(lags)),
            lo.ravel(), hi.ravel())


# ---------------------------------------------------------------------------------------------
# the delayed-gradient null  η_max = η0 / (S + c)
# ---------------------------------------------------------------------------------------------

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
                   min_lag: int = 0, n_boot: int = 500, seed: int = 0, level: float = 0.95,
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
    and is reported as NaN with a reason. The interval is a percentile bootstrap over seeds.

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


# ---------------------------------------------------------------------------------------------
# the two-constraint rule  η_max(S, T) = min{ a / S_eff, b / T }
# ---------------------------------------------------------------------------------------------

def effective_lag(lags, s_offset: int = 1) -> np.ndarray:
    """S_eff = S + s_offset, the number of updates the learner's parameters move away from the
    behavior policy by the end of a step (see `fit_two_constraint`)."""
    if s_offset not in (0, 1):
        raise ValueError(f"s_offset must be 0 or 1; got {s_offset!r}")
    s = np.asarray(lags, float)
    if np.any(s < 0) or np.any(~np.isfinite(s)):
        raise ValueError(f"lags must be finite and >= 0; got min {np.min(s)}")
    return s + s_offset


def _two_constraint_model(s_eff, t, log_g):
    """μ = min(log a − log S_eff, log b − log T) − log G; S_eff = 0 leaves only the horizon."""
    with np.errstate(divide="ignore"):
        log_s, log_t = np.log(s_eff), np.log(t)

    def model(th):
        mu_s = th[0] - log_s - log_g                   # +inf where S_eff = 0
        mu_h = th[1] - log_t - log_g
        stale = mu_s <= mu_h
        return np.where(stale, mu_s, mu_h), np.stack([stale, ~stale], 1).astype(float)
    return model


def fit_two_constraint(s, t, lo, hi, seed, *, g_upd=None, s_offset: int = 1,
                       sigma_min: float | None = None, n_boot: int = 300, boot_seed: int = 0,
                       level: float = 0.95, min_bracketed_frac: float = 0.3,
                       min_per_constraint: int = 2) -> dict[str, Any]:
    """Fit the paper's two-constraint rule to η_max intervals of (S, T) cells.

    The rule (arXiv 2607.01083): η ≪ min{R_batch/(S·G_upd), R_crit/(T·G_upd)}. The within-cycle
    drift ‖θ_t − φ_t‖ ≤ S·η·G_upd must stay inside the batch-level clipping radius R_batch, and
    the cumulative drift ‖θ_T − θ_0‖ ≤ T·η·G_upd inside the critical radius R_crit. As a model
    of the stability edge:

        log η_max(S, T) = min{ log a − log S_eff,  log b − log T } − log G + σ·ε,   ε ~ N(0, 1),

    with a = R_batch/G_upd, b = R_crit/G_upd (η units) when `g_upd` is None (G = 1), or, when a
    G_upd is given per row (the measured update norm per unit η, `g_upd_per_cell`), a = R_batch
    and b = R_crit directly in parameter-norm units. Fitted by the interval-censored maximum
    likelihood of `bootstrap_alpha` (each row's η_max known only as [lo, hi), bounds included),
    over (log a, log b, log σ); σ is floored at `sigma_min` (default: a quarter of the median log
    width of the bracketed intervals).

    S_eff. With `s_offset` = 1 (default) S_eff = S + 1: the step at lag S is computed on a batch
    from φ = θ_{t−S}, and the update it produces moves the parameters to θ_{t+1}, S + 1 updates
    away from φ: that is the distance over which the clipped surrogate built on φ's samples must
    stay faithful, and it is the number of updates per behavior version under a sync interval of
    S + 1. It keeps S = 0 (on-policy) under the one-step safety constraint η·G_upd ≲ R_batch (one
    step can still leave the clip band): η_max at S = 0 stays finite as T → 0. With `s_offset` = 0
    S_eff = S as printed in the paper, and S = 0 rows are constrained by the horizon alone. The two
    choices differ only at small S; fit both and compare ``loglik``.

    Identification: a is fitted only from cells where the stale constraint is the smaller one at
    the fit, b only from cells where the horizon one is. Each needs `min_per_constraint`
    bracketed rows on its side, and `min_bracketed_frac` of all rows must be bracketed; an
    unidentified constant is NaN with a `reason` (the other stays, if identified: e.g. a grid
    whose cells are all horizon-limited fixes b and says a is not identified).

    Args:
      s, t, lo, hi, seed: equal-length rows (e.g. `horizon_table`'s S, T, lo, hi, seed).
      g_upd: None or per-row G_upd > 0.
      n_boot: bootstrap resamples of the seeds (jointly over cells), percentile CI at `level`.

    Rows of one seed at several horizons come from the same runs and are not independent: the
    bootstrap resamples each seed with all its rows, so the CI allows for that; ``loglik``
    treats rows as independent, so use it only to compare models fitted to the same rows.

    Returns a dict: a, b (or R_batch, R_crit when g_upd is given: the same numbers, in
    parameter-norm units; `names` lists the two keys), log_a, log_b, sigma, ci_a, ci_b (ci_R_batch,
    ci_R_crit), loglik, n_rows, n_bracketed, n_stale_bracketed, n_horizon_bracketed, identified
    {name: bool}, s_offset, units ("eta" or "parameter norm"), crossover (b/a: the constraints meet
    at T = (b/a)·S_eff), n_boot_identified, reason (when anything is not identified).
    """
    r = _check_rows(s=s, t=t, lo=lo, hi=hi, seed=seed,
                    g=np.ones(np.size(s)) if g_upd is None else g_upd)
    if np.any(r["t"] < 1) or np.any(~np.isfinite(r["t"])):
        raise ValueError(f"horizons t must be finite and >= 1; got min {r['t'].min()}")
    if np.any(~(r["g"] > 0)) or np.any(~np.isfinite(r["g"])):
        raise ValueError("g_upd must be finite and > 0 in every row")
    s_eff = effective_lag(r["s"], s_offset)
    y_lo, y_hi = _log_intervals(r["lo"], r["hi"])
    if sigma_min is None:
        sigma_min = _sigma_floor(y_lo, y_hi)
    if not sigma_min > 0:
        raise ValueError(f"sigma_min must be > 0; got {sigma_min!r}")
    log_g, sid = np.log(r["g"]), r["seed"]
    bracketed = np.isfinite(y_lo) & np.isfinite(y_hi)
    units = "eta" if g_upd is None else "parameter norm"
    names = ("a", "b") if g_upd is None else ("R_batch", "R_crit")
    nan = math.nan
    out = {names[0]: nan, names[1]: nan, "log_a": nan, "log_b": nan, "sigma": nan,
           "ci_" + names[0]: [nan, nan], "ci_" + names[1]: [nan, nan], "loglik": nan,
           "n_rows": int(y_lo.size), "n_bracketed": int(bracketed.sum()),
           "n_stale_bracketed": 0, "n_horizon_bracketed": 0,
           "identified": {names[0]: False, names[1]: False}, "s_offset": s_offset,
           "units": units, "names": list(names), "crossover": nan, "level": level,
           "n_boot": n_boot, "n_boot_identified": 0,
           "method": "interval-censored MLE of log eta_max = min(log a - log S_eff, "
                     "log b - log T) - log G; bootstrap over seeds"}
    if bracketed.sum() < 2 * min_per_constraint or bracketed.mean() < min_bracketed_frac:
        out["reason"] = (f"needs at least {2 * min_per_constraint} bracketed rows and "
                         f"{min_bracketed_frac:.0%} of the rows bracketed (has "
                         f"{bracketed.sum()} of {bracketed.size})")
        return out
    mid = np.where(bracketed, (y_lo + y_hi) / 2, np.where(np.isfinite(y_lo), y_lo, y_hi))
    with np.errstate(divide="ignore"):
        ka = (mid + np.log(s_eff) + log_g)[bracketed & (s_eff > 0)]
    kb = (mid + np.log(r["t"]) + log_g)[bracketed]
    s0 = math.log(max(float(np.std(mid[bracketed])) / 2, 2 * sigma_min))
    qa = np.quantile(ka, [0.5, 0.9, 1.0]) if ka.size else np.array([0.0, 5.0, 10.0])
    starts = [(la, lb, s0) for la in qa for lb in np.quantile(kb, [0.5, 0.9, 1.0])]
    span = float(np.ptp(np.concatenate([ka, kb]))) + 20.0
    centre = float(np.median(kb))
    bounds = [(centre - span, centre + span)] * 2

    def fit(idx, st):
        m = _two_constraint_model(s_eff[idx], r["t"][idx], log_g[idx])
        res = _mle(m, st, y_lo[idx], y_hi[idx], sigma_min, bounds=bounds)
        if res is None:
            return None, 0, 0
        _, d = m(res.x[:2])
        b = bracketed[idx]
        return res, int((d[:, 0].astype(bool) & b).sum()), int((d[:, 1].astype(bool) & b).sum())

    point, n_a, n_b = fit(np.arange(y_lo.size), starts)
    if point is None:
        out["reason"] = "the likelihood was not finite at any start"
        return out
    ok = {names[0]: n_a >= min_per_constraint, names[1]: n_b >= min_per_constraint}
    out.update(loglik=float(-point.fun), sigma=float(np.exp(point.x[2])), n_stale_bracketed=n_a,
               n_horizon_bracketed=n_b, identified=ok)
    why = []
    for k, (name, n_side, side) in enumerate(zip(names, (n_a, n_b), ("stale", "horizon"))):
        if ok[name]:
            out[name] = float(np.exp(point.x[k]))
            out["log_" + "ab"[k]] = float(point.x[k])
        else:
            why.append(f"{name} not identified: the {side} constraint binds at {n_side} "
                       f"bracketed rows (needs {min_per_constraint})")
    if why:
        out["reason"] = "; ".join(why)
    if all(ok.values()):
        out["crossover"] = float(np.exp(point.x[1] - point.x[0]))
    rng = np.random.default_rng(boot_seed)
    boots = []
    for _ in range(n_boot):
        idx = _seed_resample(sid, rng)
        if bracketed[idx].sum() < 2 * min_per_constraint:
            continue
        res, nb_a, nb_b = fit(idx, [point.x])
        if res is None:
            continue
        boots.append((np.exp(res.x[0]) if nb_a >= min_per_constraint else nan,
                      np.exp(res.x[1]) if nb_b >= min_per_constraint else nan))
    if boots:
        boots = np.array(boots)
        out["n_boot_identified"] = int(np.isfinite(boots).all(1).sum())
        for k, name in enumerate(names):
            if ok[name]:
                out["ci_" + name] = _quantile_ci(boots[:, k], level)
    return out


def predict_two_constraint(fit: dict[str, Any], s, t, *, g_upd=None) -> np.ndarray:
    """η_max = min{a/S_eff, b/T}/G of a `fit_two_constraint` result at cells (s, t) (broadcast).

    A fit made with per-cell G_upd (units "parameter norm") needs `g_upd` here too: η_max =
    min{R_batch/(S_eff·G), R_crit/(T·G)}. An unidentified constant makes the prediction NaN."""
    s_eff = effective_lag(s, fit["s_offset"])
    t = np.asarray(t, float)
    if np.any(t < 1):
        raise ValueError(f"horizons t must be >= 1; got min {t.min()}")
    if fit["units"] == "parameter norm":
        if g_upd is None:
            raise ValueError("this fit was made with per-cell g_upd (R_batch, R_crit in "
                             "parameter-norm units): pass g_upd")
        g = np.asarray(g_upd, float)
    elif g_upd is not None:
        raise ValueError("this fit was made without g_upd (a, b in eta units); do not pass one")
    else:
        g = 1.0
    with np.errstate(divide="ignore"):
        stale = np.where(s_eff > 0, np.exp(fit["log_a"]) / s_eff, np.inf)
    return np.minimum(stale, np.exp(fit["log_b"]) / t) / g


def heldout_error(pred, lo, hi) -> dict[str, Any]:
    """How well predicted η_max values match held-out intervals [lo, hi).

    Over bracketed rows (0 < lo, hi < inf): median_abs_log_ratio = median |log(pred/√(lo·hi))|
    (the geometric midpoint stands for the unknown η_max; a grid of step r can do no better than
    about log(r)/4 on average), frac_in_interval = fraction with lo ≤ pred < hi. Over bounds:
    frac_bounds_consistent = fraction with pred ≥ lo (nothing collapsed) or pred < hi
    (everything collapsed). NaN predictions are refused."""
    r = _check_rows(pred=pred, lo=lo, hi=hi)
    if np.any(~np.isfinite(r["pred"])) or np.any(r["pred"] <= 0):
        raise ValueError("pred must be finite and > 0 (an unidentified fit predicts NaN)")
    _log_intervals(r["lo"], r["hi"])
    p, lo, hi = r["pred"], r["lo"], r["hi"]
    br = (lo > 0) & np.isfinite(hi)
    nb = ~br
    out = {"n_bracketed": int(br.sum()), "n_bounds": int(nb.sum()),
           "median_abs_log_ratio": math.nan, "frac_in_interval": math.nan,
           "frac_bounds_consistent": math.nan}
    if br.any():
        out["median_abs_log_ratio"] = float(np.median(np.abs(np.log(p[br] / np.sqrt(
            lo[br] * hi[br])))))
        out["frac_in_interval"] = float(np.mean((p[br] >= lo[br]) & (p[br] < hi[br])))
    if nb.any():
        ok = np.where(np.isinf(hi[nb]), p[nb] >= lo[nb], p[nb] < hi[nb])
        out["frac_bounds_consistent"] = float(ok.mean())
    return out


def g_upd_per_cell(update_norm, lrs, collapse_step) -> np.ndarray:
    """G_upd of each run: the median over its pre-collapse steps of ‖θ_{t+1} − θ_t‖/η.

    update_norm [runs, T] (‖θ_{t+1} − θ_t‖ = η‖u_t‖, the simulator's ``update_norm``), lrs
    [runs] (each run's η), collapse_step [runs] (−1 = never). Steps t < c of a run collapsed at
    c ≥ 1 (step 0 alone if c = 0), every step otherwise; non-finite values are skipped. For
    Adam-like updates ‖u‖ hardly depends on η, so G_upd is comparable across cells."""
    u = np.asarray(update_norm, float)
    lrs = np.asarray(lrs, float)
    c = _int_array(collapse_step, "collapse_step")
    if u.ndim != 2 or lrs.shape != (u.shape[0],) or c.shape != (u.shape[0],):
        raise ValueError(f"update_norm must be [runs, T] with lrs and collapse_step [runs]; got "
                         f"{u.shape}, {lrs.shape}, {c.shape}")
    if np.any(~(lrs > 0)):
        raise ValueError("lrs must be > 0")
    steps = np.arange(u.shape[1])[None, :]
    end = np.where(c < 0, u.shape[1], np.maximum(c, 1))[:, None]
    v = np.where((steps < end) & np.isfinite(u), u, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # all-NaN rows give NaN, silently
        return np.nanmedian(v, axis=1) / lrs


def radii(fit: dict[str, Any], g_upd: float) -> dict[str, float]:
    """R_batch = a·G_upd, R_crit = b·G_upd from an η-unit `fit_two_constraint` result and one
    G_upd (e.g. the median of `g_upd_per_cell` over the grid)."""
    if fit["units"] != "eta":
        raise ValueError("this fit already gives R_batch and R_crit (it was made with g_upd)")
    if not g_upd > 0 or not np.isfinite(g_upd):
        raise ValueError(f"g_upd must be finite and > 0; got {g_upd!r}")
    return {"R_batch": fit["a"] * g_upd, "R_crit": fit["b"] * g_upd, "g_upd": float(g_upd)}


# ---------------------------------------------------------------------------------------------
# collapse time per S, and which constraint each cell ran into
# ---------------------------------------------------------------------------------------------

def collapse_time_per_lag(lags, lrs, collapse_step, *, min_step: int = -1,
                          quantiles: Sequence[float] = (0.16, 0.84)) -> dict[str, Any]:
    """The collapse-time law t_c·η ≈ R_crit/G_upd, per S.

    Rows are runs: lags [n] (S), lrs [n] (η), collapse_step [n] (−1 = never; those are left
    out). t_c = collapse_step + 1, the number of learner steps up to and including the one the
    rule fired at (as `collapse_time_law`). Runs with collapse_step ≤ `min_step` (flagged at
    the end of a warm-up: their real time is unknown) are left out and counted.

    Returns {"per_lag": {S: {n, n_censored, median_t_eta, q16_t_eta, q84_t_eta (the
    `quantiles` of t_c·η), slope (of log t_c on log η; −1 means t_c·η constant), r2,
    gcv_t_eta}}, "all": the same over every S}. Entries with no collapsed run hold NaN.
    """
    r = _check_rows(s=lags, eta=lrs, c=collapse_step)
    c = _int_array(r["c"], "collapse_step")
    if np.any(c < -1):
        raise ValueError(f"collapse_step must be >= 0 or -1 (never); got min {c.min()}")
    if np.any(~(r["eta"] > 0)):
        raise ValueError("lrs must be > 0")
    q = np.asarray(quantiles, float)
    if q.shape != (2,) or not 0 <= q[0] < q[1] <= 1:
        raise ValueError(f"quantiles must be two increasing numbers in [0, 1]; got {quantiles}")

    def one(sel):
        col = sel & (c >= 0)
        law = collapse_time_law(r["eta"][col], c[col], min_step=min_step)
        ok = col & (c > min_step)
        prod = (c[ok] + 1.0) * r["eta"][ok]
        qs = np.quantile(prod, q) if prod.size else [math.nan, math.nan]
        return {**law, "q16_t_eta": float(qs[0]), "q84_t_eta": float(qs[1])}

    return {"per_lag": {int(s) if float(s).is_integer() else float(s): one(r["s"] == s)
                        for s in np.unique(r["s"])},
            "all": one(np.ones_like(c, bool)), "quantiles": q.tolist()}


REGIMES = ("stale-limited", "horizon-limited", "stable")


def drift_bound_traces(lags, lrs, g_upd, num_steps: int, *, s_offset: int = 1
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The drift bounds of the two-constraint rule as traces [runs, num_steps], for
    `classify_regimes` when the real drifts were not recorded: within-cycle S_eff·η·G_upd at
    every step, cumulative (t + 1)·η·G_upd after the update of step t (so that it reaches
    R_crit within a horizon of T steps iff T·η·G_upd ≥ R_crit, as in `fit_two_constraint`).
    g_upd: scalar or [runs]; use g_upd = 1 with a, b from an η-unit fit."""
    s_eff = effective_lag(lags, s_offset)
    eta = np.asarray(lrs, float)
    g = np.broadcast_to(np.asarray(g_upd, float), s_eff.shape)
    if eta.shape != s_eff.shape or s_eff.ndim != 1:
        raise ValueError(f"lags and lrs must be 1-d of one length; got {s_eff.shape}, "
                         f"{eta.shape}")
    step = (eta * g)[:, None]
    steps = np.arange(1, int(num_steps) + 1, dtype=float)[None, :]
    return np.broadcast_to(s_eff[:, None] * step, (s_eff.size, int(num_steps))).copy(), \
        steps * step


def classify_regimes(lags, drift_cycle, drift_cum, collapse_step, r_batch: float,
                     r_crit: float) -> dict[str, Any]:
    """Which constraint of the two-constraint rule each run ran into, and first.

    For run i with collapse step c (−1 = never: all its steps count), over steps t ≤ c (the
    drift at step c is measured on θ_c, the parameters the collapsing update started from):
    t_b = first t with within-cycle drift ‖θ_t − φ_t‖ ≥ R_batch, t_r = first t with cumulative
    drift ‖θ_t − θ_0‖ ≥ R_crit (non-finite values never count).

    * "stale-limited": t_b exists and comes no later than t_r (or t_r does not exist): the
      batch's clipped surrogate stopped being a faithful model before the horizon constraint
      bit;
    * "horizon-limited": t_r exists and comes strictly before t_b (or t_b does not exist);
    * "stable": neither radius was reached.

    `drift_cycle`, `drift_cum` [runs, T] are the recorded traces (the simulator's
    ``drift_cycle``, ``drift_cum``) in the units of r_batch, r_crit (parameter norm with a
    `fit_two_constraint` made with g_upd), or the bounds of `drift_bound_traces`.

    Which to pass: the radii `fit_two_constraint` returns are where the drift *bounds* S_eff·η·G_upd
    and T·η·G_upd sit at the stability edge, so `drift_bound_traces` classifies consistently with
    the fit: with them a run is "stale-limited" iff S_eff·η ≥ a (its bound is over the radius from
    step 0), else "horizon-limited" iff (t + 1)·η reaches b by its last counted step, else "stable"
    (η-unit fit, G = 1). The recorded drifts are at most the bounds (equal only when consecutive
    updates are aligned: ballistic drift) and the recorded ``drift_cycle`` ‖θ_t − φ_t‖ spans S
    updates, not S + 1; against the same radii they call fewer runs limited. Comparing both
    classifications (and `vs_collapse`) shows whether the radii are reached by the real drift or
    only by its bound.

    Returns {"regime": [runs] str, "t_batch", "t_crit": [runs] first crossing steps (−1: none),
    "counts": {S: {regime: n}}, "vs_collapse": {S: {regime: {"collapsed": n,
    "not_collapsed": n}}}} — the second table checks the rule: a "stable" run that collapsed, or
    a limited one that did not, is a miss.
    """
    dc, dk = np.asarray(drift_cycle, float), np.asarray(drift_cum, float)
    c = _int_array(collapse_step, "collapse_step")
    s = np.asarray(lags)
    if dc.ndim != 2 or dk.shape != dc.shape or c.shape != (dc.shape[0],) or \
            s.shape != c.shape:
        raise ValueError(f"drift traces must be [runs, T] of one shape with lags and "
                         f"collapse_step [runs]; got {dc.shape}, {dk.shape}, {s.shape}, "
                         f"{c.shape}")
    for name, v in (("r_batch", r_batch), ("r_crit", r_crit)):
        if not v > 0 or not np.isfinite(v):
            raise ValueError(f"{name} must be finite and > 0; got {v!r} (an unidentified fit?)")
    if np.any(c < -1) or np.any(c >= dc.shape[1]):
        raise ValueError(f"collapse_step must be -1 or in [0, T={dc.shape[1]}); got "
                         f"[{c.min()}, {c.max()}]")
    steps = np.arange(dc.shape[1])[None, :]
    live = steps <= np.where(c < 0, dc.shape[1], c)[:, None]

    def first(hit):
        hit = hit & live
        return np.where(hit.any(1), hit.argmax(1), -1)

    with np.errstate(invalid="ignore"):
        t_b, t_r = first(dc >= r_batch), first(dk >= r_crit)
    stale = (t_b >= 0) & ((t_r < 0) | (t_b <= t_r))
    horizon = (t_r >= 0) & ~stale
    regime = np.where(stale, REGIMES[0], np.where(horizon, REGIMES[1], REGIMES[2]))
    counts, vs = {}, {}
    for sv in np.unique(s):
        key = int(sv) if float(sv).is_integer() else float(sv)
        m = s == sv
        counts[key] = {g: int((regime[m] == g).sum()) for g in REGIMES}
        vs[key] = {g: {"collapsed": int(((regime == g) & m & (c >= 0)).sum()),
                       "not_collapsed": int(((regime == g) & m & (c < 0)).sum())}
                   for g in REGIMES}
    return {"regime": regime, "t_batch": t_b, "t_crit": t_r, "counts": counts,
            "vs_collapse": vs, "r_batch": float(r_batch), "r_crit": float(r_crit)}


# ---------------------------------------------------------------------------------------------
# the consecutive-update cosine as an early warning
# ---------------------------------------------------------------------------------------------

def auc_mann_whitney(pos, neg) -> float:
    """ROC AUC = P(score of a positive > score of a negative) + ½·P(tie), the Mann–Whitney U
    statistic over n_pos·n_neg (equal to the area under the empirical ROC curve). NaN if
    either sample is empty."""
    pos, neg = np.asarray(pos, float).ravel(), np.asarray(neg, float).ravel()
    if np.any(~np.isfinite(pos)) or np.any(~np.isfinite(neg)):
        raise ValueError("scores must be finite")
    if pos.size == 0 or neg.size == 0:
        return math.nan
    ranks = stats.rankdata(np.concatenate([pos, neg]))     # ties get their mean rank
    u = ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def _check_traces(cos, collapse_step):
    x = np.asarray(cos, float)
    c = _int_array(collapse_step, "collapse_step")
    if x.ndim != 2 or c.shape != (x.shape[0],):
        raise ValueError(f"cos must be [runs, T] and collapse_step [runs]; got {x.shape}, "
                         f"{c.shape}")
    if np.any(c < -1) or np.any(c >= x.shape[1]):
        raise ValueError(f"collapse_step must be -1 or in [0, T={x.shape[1]}); got "
                         f"[{c.min()}, {c.max()}]")
    return x, c


def _check_window(window, first_step):
    if int(window) != window or window < 1:
        raise ValueError(f"window must be an integer >= 1; got {window!r}")
    if int(first_step) != first_step or first_step < 0:
        raise ValueError(f"first_step must be an integer >= 0; got {first_step!r}")


def cosine_scores(cos, collapse_step, window: int, lead: int, *, stable_end: str = "matched",
                  first_step: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-run score: the mean consecutive-update cosine over a window before collapse.

    A run that collapsed at step c scores mean(cos[e − w + 1 … e]) with e = c − k: the w =
    `window` steps ending k = `lead` steps before the collapse step. A stable run (c = −1) has no
    collapse to align to; its window ends at e = c* − k with c* a *matched* time:
    ``stable_end="matched"`` (default) draws c* for each stable run from the collapse steps of
    the collapsing runs (seeded by `seed`), so that both classes are scored at the same
    distribution of training times and a cosine that merely drifts with t cannot separate them;
    ``"end"`` takes c* = the run's last step (the whole run was stable; biased when the cosine
    trends with t). Steps before `first_step` are never used (the simulator records cos = 0 at
    t = 0). A run whose window does not fit (e − w + 1 < first_step) or holds a non-finite value
    scores NaN and is left out by `cosine_auc`.

    Returns {"score": [runs], "collapsing": [runs] bool, "end": [runs] window end (−1 when it
    does not fit)}.
    """
    x, c = _check_traces(cos, collapse_step)
    _check_window(window, first_step)
    if int(lead) != lead or lead < 0:
        raise ValueError(f"lead must be an integer >= 0; got {lead!r}")
    if stable_end not in ("matched", "end"):
        raise ValueError(f"stable_end must be 'matched' or 'end'; got {stable_end!r}")
    collapsing = c >= 0
    anchor = c.copy()
    stable = ~collapsing
    if stable_end == "end":
        anchor[stable] = x.shape[1] - 1
    elif stable.any():
        if not collapsing.any():
            raise ValueError("stable_end='matched' needs at least one collapsing run")
        anchor[stable] = np.random.default_rng(seed).choice(c[collapsing], stable.sum())
    end = anchor - int(lead)
    fits = end - window + 1 >= first_step
    score = np.full(x.shape[0], math.nan)
    i = np.nonzero(fits)[0]
    cols = end[i, None] - window + 1 + np.arange(window)[None, :]
    score[i] = x[i[:, None], cols].mean(1)               # NaN iff the window holds a NaN
    return {"score": score, "collapsing": collapsing, "end": np.where(fits, end, -1)}


def cosine_auc(cos, collapse_step, window: int, leads: Sequence[int], *,
               stable_end: str = "matched", first_step: int = 1, n_boot: int = 1000,
               level: float = 0.95, auc_threshold: float = 0.8, seed: int = 0
               ) -> dict[str, Any]:
    """How well, and how far ahead, the consecutive-update cosine separates collapsing runs.

    For each lead k in `leads`: the ROC AUC (`auc_mann_whitney`) of the `cosine_scores` of
    collapsing (positive) against stable runs, with a percentile bootstrap CI at `level`
    (collapsing and stable runs resampled separately, with replacement; resamples with one
    class empty are skipped). Runs whose window does not fit at that k are left out and
    counted. The stable runs' matched times are drawn once (same `seed`) for every k.

    Lead time: the largest k such that AUC ≥ `auc_threshold` at every listed lead ≤ k
    (``lead_time``), and the same with the CI's lower end ≥ auc_threshold
    (``lead_time_conservative``); NaN, with a `reason`, when even the smallest lead fails.

    Returns {"leads", "auc", "ci" ([lo, hi] per lead), "n_collapsing", "n_stable" (per lead),
    "lead_time", "lead_time_conservative", "window", "stable_end", "auc_threshold", "level"}.
    """
    leads = _int_array(leads, "leads")
    if leads.ndim != 1 or leads.size == 0 or np.any(leads < 0) or np.any(np.diff(leads) <= 0):
        raise ValueError(f"leads must be a non-empty increasing list of integers >= 0; got "
                         f"{leads.tolist()}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level!r}")
    rng = np.random.default_rng(seed + 1)
    out = {"leads": leads.tolist(), "auc": [], "ci": [], "n_collapsing": [], "n_stable": [],
           "window": int(window), "stable_end": stable_end, "auc_threshold": auc_threshold,
           "level": level, "n_boot": n_boot}
    for k in leads:
        sc = cosine_scores(cos, collapse_step, window, int(k), stable_end=stable_end,
                           first_step=first_step, seed=seed)
        ok = np.isfinite(sc["score"])
        pos, neg = sc["score"][ok & sc["collapsing"]], sc["score"][ok & ~sc["collapsing"]]
        out["n_collapsing"].append(int(pos.size))
        out["n_stable"].append(int(neg.size))
        out["auc"].append(auc_mann_whitney(pos, neg))
        boots = [auc_mann_whitney(rng.choice(pos, pos.size), rng.choice(neg, neg.size))
                 for _ in range(n_boot if pos.size and neg.size else 0)]
        out["ci"].append(_quantile_ci(boots, level))

    def lead_time(vals):
        good = np.asarray(vals, float) >= auc_threshold         # NaN counts as failing
        if not good[0]:
            return math.nan
        return int(leads[len(good) - 1 if good.all() else int(np.argmin(good)) - 1])

    out["lead_time"] = lead_time(out["auc"])
    out["lead_time_conservative"] = lead_time([lo for lo, _ in out["ci"]])
    if not math.isfinite(out["lead_time"]):
        out["reason"] = (f"AUC at the smallest lead ({int(leads[0])}) is {out['auc'][0]:.3f} < "
                         f"{auc_threshold} (n = {out['n_collapsing'][0]} collapsing, "
                         f"{out['n_stable'][0]} stable)")
    return out


def running_mean(x, window: int, *, first_step: int = 1) -> np.ndarray:
    """Trailing mean over `window` steps of each row of x [runs, T]; NaN where the window
    starts before `first_step`."""
    x = np.asarray(x, float)
    _check_window(window, first_step)
    if x.ndim != 2:
        raise ValueError(f"x must be [runs, T]; got shape {x.shape}")
    out = np.full(x.shape, math.nan)
    if x.shape[1] - first_step >= window:          # a NaN spoils only the windows holding it
        view = np.lib.stride_tricks.sliding_window_view(x[:, first_step:], window, axis=1)
        out[:, first_step + window - 1:] = view.mean(-1)
    return out


def _alarm_steps(rm, c, thr):
    """First step each run's running mean ≥ thr, before its collapse step (−1: none)."""
    steps = np.arange(rm.shape[1])[None, :]
    limit = np.where(c < 0, rm.shape[1], c)[:, None]
    with np.errstate(invalid="ignore"):
        hit = (rm >= thr) & (steps < limit)
    return np.where(hit.any(1), hit.argmax(1), -1)


def cosine_alarm(cos, collapse_step, window: int, train, *, first_step: int = 1,
                 quantiles: Sequence[float] = (0.16, 0.84)) -> dict[str, Any]:
    """An alarm on the running mean of the consecutive-update cosine, and how early it rings.

    The alarm of run i rings at the first step t with running_mean(cos, window)[i, t] ≥ θ,
    counted only strictly before the collapse step (t < c; for stable runs any step). The
    threshold θ is chosen on the training runs (`train`, bool [runs]) to maximise Youden's J =
    (fraction of collapsing runs alarmed before collapse) − (fraction of stable runs alarmed at
    all), over the candidate values the training runs' running means take (ties: the larger θ).
    It is then applied, unchanged, to the other runs (the test runs): a threshold chosen and
    scored on the same runs flatters itself. Stable runs are watched over their whole length,
    as a monitor would be.

    Returns {"threshold", "train": {tpr, fpr, n_collapsing, n_stable}, "test": {tpr, fpr,
    n_collapsing, n_stable, median_lead, q16_lead, q84_lead (steps c − t_alarm over alarmed
    collapsing test runs)}, "alarm_step": [runs] (−1: none)}; NaNs and a `reason` when either
    class is missing from the training runs.
    """
    x, c = _check_traces(cos, collapse_step)
    train = np.asarray(train)
    if train.dtype != bool or train.shape != c.shape:
        raise ValueError(f"train must be a bool mask [runs={c.size}]; got {train.dtype} "
                         f"{train.shape}")
    q = np.asarray(quantiles, float)
    rm = running_mean(x, window, first_step=first_step)
    coll = c >= 0
    nan = math.nan
    out = {"threshold": nan, "window": int(window),
           "train": {"tpr": nan, "fpr": nan, "n_collapsing": int((train & coll).sum()),
                     "n_stable": int((train & ~coll).sum())},
           "test": {"tpr": nan, "fpr": nan, "n_collapsing": int((~train & coll).sum()),
                    "n_stable": int((~train & ~coll).sum()), "median_lead": nan,
                    "q16_lead": nan, "q84_lead": nan},
           "alarm_step": np.full(c.size, -1)}
    if not (train & coll).any() or not (train & ~coll).any():
        out["reason"] = "the training runs need both collapsing and stable runs"
        return out
    cand = np.unique(rm[train][np.isfinite(rm[train])])
    if cand.size > 512:
        cand = np.unique(np.quantile(cand, np.linspace(0, 1, 512)))
    best = None
    for thr in cand:
        a = _alarm_steps(rm[train], c[train], thr) >= 0
        j = a[coll[train]].mean() - a[~coll[train]].mean()
        if best is None or j >= best[0]:
            best = (j, thr)
    thr = float(best[1])
    alarm = _alarm_steps(rm, c, thr)
    out["threshold"], out["alarm_step"] = thr, alarm

    def rates(m):
        a = alarm[m] >= 0
        cm = coll[m]
        return (float(a[cm].mean()) if cm.any() else nan,
                float(a[~cm].mean()) if (~cm).any() else nan)

    out["train"]["tpr"], out["train"]["fpr"] = rates(train)
    out["test"]["tpr"], out["test"]["fpr"] = rates(~train)
    hit = ~train & coll & (alarm >= 0)
    if hit.any():
        lead = (c[hit] - alarm[hit]).astype(float)
        out["test"]["median_lead"] = float(np.median(lead))
        out["test"]["q16_lead"], out["test"]["q84_lead"] = map(float, np.quantile(lead, q))
    return out


def _fmt(x, spec=".3g"):
    return "n/a" if x is None or not np.isfinite(x) else format(x, spec)


def format_null_model(fit: dict[str, Any]) -> str:
    """One line for a `fit_null_model` result, or why there is none."""
    cmp_ = fit.get("compare", {})
    versus = (f"; vs power law on {cmp_['cells']}: loglik {cmp_['loglik_null']:.2f} (null) vs "
              f"{cmp_['loglik_power']:.2f} (power, alpha = {cmp_['alpha']:.3f})"
              if "loglik_null" in cmp_ else "")
    if not np.isfinite(fit["c"]):
        return f"eta0/(S + c): n/a ({fit.get('reason', 'not identified')}){versus}"
    lo, hi = fit["ci_c"]
    return (f"eta_max = {_fmt(fit['eta0'])}/(S + {_fmt(fit['c'])}), c {fit['level']:.0%} CI "
            f"[{_fmt(lo)}, {_fmt(hi)}], sigma(log eta_max) = {fit['sigma']:.3f}{versus}")


def format_two_constraint(fit: dict[str, Any]) -> str:
    """One line for a `fit_two_constraint` result; unidentified constants print as n/a."""
    na, nb = fit["names"]
    parts = []
    for name in (na, nb):
        lo, hi = fit["ci_" + name]
        parts.append(f"{name} = {_fmt(fit[name])} [{_fmt(lo)}, {_fmt(hi)}]")
    line = (f"eta_max = min{{{na}/(S+{fit['s_offset']}), {nb}/T}}"
            f"{'' if fit['units'] == 'eta' else '/G_upd'}: " + ", ".join(parts) +
            f" ({fit['level']:.0%} CI over seeds), sigma = {_fmt(fit['sigma'])}, crossover "
            f"T = {_fmt(fit['crossover'])}*(S+{fit['s_offset']}); bracketed rows: "
            f"{fit['n_stale_bracketed']} stale-, {fit['n_horizon_bracketed']} horizon-limited "
            f"of {fit['n_rows']}")
    return line + (f" -- {fit['reason']}" if "reason" in fit else "")
