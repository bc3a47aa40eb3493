"""η_max at a horizon T from one long sweep, and the two-constraint rule
η_max(S, T) = min{a/S_eff, b/T}: fitted, predicted on held-out cells, scored."""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
from scipy import stats

from async_grpo.scaling._core import (
    _mle, _int_array, _check_rows, _log_intervals, _sigma_floor, _seed_resample, _quantile_ci,
    _fmt, _log_interval_prob)
from async_grpo.scaling.eta_max import eta_max_intervals


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
                       sigma_min: float | None = None, n_boot: int = 0, boot_seed: int = 0,
                       level: float = 0.95, min_bracketed_frac: float = 0.3,
                       min_per_constraint: int = 2, interval: bool = True) -> dict[str, Any]:
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
      interval: False skips the per-seed fits (no ci_*; `heldout_by_seed`'s folds need only
        the point fit).
      n_boot: > 0 also computes the percentile bootstrap over seeds this function used to print
        (``ci_bootstrap_a``, ``ci_bootstrap_b``), for comparison only: like α's, it under-covers
        at 3 seeds (few distinct resamples).

    The interval (`level`, on a and on b): the seeds are the independent units (rows of one seed
    at several horizons come from the same runs). The rule is fitted to each seed's rows alone
    (started at the pooled fit); a seed identifies a constant when that constant binds at
    `min_per_constraint` or more of its bracketed rows. Over the n identifying seeds, log â ±
    t_{n−1}·se with se² = max(s², w²/12)/n, s² the variance of the per-seed log constants and w
    the median log width of the bracketed rows (a single seed's level is known only to the grid's
    resolution: the floor keeps a coarse grid, on which every seed lands in the same brackets,
    from printing a zero-width interval), exponentiated. Fewer than two identifying seeds: the
    interval is [NaN, NaN] with ``ci_reason``. Measured coverage of the nominal 95 % interval
    (tests/test_coverage.py: sweeps made by the rule, 3 and 5 seeds, √2 and ×2 grids, σ 0.2 and
    0.5): 0.96–1.00; the percentile bootstrap over seeds it replaces covered 0.70 at 3 seeds.
    ``loglik`` treats rows as independent, so use it only to compare models fitted to the same
    rows.

    Returns a dict: a, b (or R_batch, R_crit when g_upd is given: the same numbers, in
    parameter-norm units; `names` lists the two keys), log_a, log_b, sigma, ci_a, ci_b (ci_R_batch,
    ci_R_crit), per_seed {name: [per-seed constant or None]}, se_log {name: se of the log
    constant}, loglik, n_rows, n_bracketed, n_stale_bracketed, n_horizon_bracketed, identified
    {name: bool}, s_offset, units ("eta" or "parameter norm"), crossover (b/a: the constraints meet
    at T = (b/a)·S_eff), n_boot_identified, reason (when anything is not identified), ci_reason
    (when an identified constant has no interval).
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
           "n_boot": n_boot, "n_boot_identified": 0, "per_seed": {}, "se_log": {},
           "method": "interval-censored MLE of log eta_max = min(log a - log S_eff, "
                     "log b - log T) - log G; t-interval over per-seed fits (se floored at "
                     "the grid's resolution)"}
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
    # the interval: one fit per seed, a t-interval over the seeds that identify each constant
    seeds = np.unique(sid)
    per = np.full((seeds.size, 2), nan)
    for j, k in enumerate(seeds if interval else []):
        res, nk_a, nk_b = fit(np.nonzero(sid == k)[0], [point.x])
        if res is not None:
            per[j] = [res.x[0] if nk_a >= min_per_constraint else nan,
                      res.x[1] if nk_b >= min_per_constraint else nan]
    width = (y_hi - y_lo)[bracketed]
    floor2 = float(np.median(width)) ** 2 / 12 if width.size else 0.0
    reasons = []
    for k, name in enumerate(names):
        col = per[:, k]
        out["per_seed"][name] = [float(np.exp(x)) if np.isfinite(x) else None for x in col]
        if not (ok[name] and interval):
            continue
        good = col[np.isfinite(col)]
        if good.size < 2:
            reasons.append(f"{name}: {good.size} seed(s) identify it alone (needs two or more "
                           f"for an interval over seeds)")
            continue
        se = math.sqrt(max(float(np.var(good, ddof=1)), floor2) / good.size)
        q = float(stats.t.ppf((1 + level) / 2, good.size - 1))
        out["se_log"][name] = se
        out["ci_" + name] = [float(np.exp(point.x[k] - q * se)),
                             float(np.exp(point.x[k] + q * se))]
    if reasons:
        out["ci_reason"] = "; ".join(reasons)
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
                out["ci_bootstrap_" + "ab"[k]] = _quantile_ci(boots[:, k], level)
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


def format_two_constraint(fit: dict[str, Any]) -> str:
    """One line for a `fit_two_constraint` result; unidentified constants print as n/a."""
    na, nb = fit["names"]
    parts = []
    for name in (na, nb):
        lo, hi = fit["ci_" + name]
        parts.append(f"{name} = {_fmt(fit[name])} [{_fmt(lo)}, {_fmt(hi)}]")
    line = (f"eta_max = min{{{na}/(S+{fit['s_offset']}), {nb}/T}}"
            f"{'' if fit['units'] == 'eta' else '/G_upd'}: " + ", ".join(parts) +
            f" ({fit['level']:.0%} t-interval over per-seed fits), sigma = "
            f"{_fmt(fit['sigma'])}, crossover T = {_fmt(fit['crossover'])}*(S+{fit['s_offset']}); "
            f"bracketed rows: "
            f"{fit['n_stale_bracketed']} stale-, {fit['n_horizon_bracketed']} horizon-limited "
            f"of {fit['n_rows']}")
    return (line + (f" -- {fit['reason']}" if "reason" in fit else "")
            + (f" -- no interval for {fit['ci_reason']}" if "ci_reason" in fit else ""))


def _power_model(s_eff, t):
    """μ = c − α·log S_eff − γ·log T (S_eff = 0 rows: S_eff taken as ½)."""
    x1, x2 = np.log(np.where(s_eff > 0, s_eff, 0.5)), np.log(t)

    def model(th):
        return th[0] - th[1] * x1 - th[2] * x2, np.stack([np.ones_like(x1), -x1, -x2], 1)
    return model


def heldout_by_seed(s, t, lo, hi, seed, *, s_offset: int = 1, level: float = 0.95,
                    sigma_min: float | None = None) -> dict[str, Any]:
    """Leave-one-seed-out check of the two-constraint rule against a power law.

    Rows of one seed at several horizons come from the same runs (the collapse rule is causal),
    so a held-out row at a longer horizon of a training seed is not held out. Here each seed in
    turn is held out whole: the rule (`fit_two_constraint`; a horizon constant that never binds
    is taken as not binding) and the baseline, the separable power law log η_max = c −
    α·log S_eff − γ·log T + σ·ε (interval-censored MLE, one parameter more than the rule), are
    fitted to the other seeds and score the held-out seed's rows by their log predictive
    probability (the probability each fit gives the row's bracket, bounds included).

    Returns:
      loglik_rule, loglik_power: summed over every held-out row; delta_loglik = rule − power
        (> 0: the rule predicts unseen seeds better);
      coverage: over held-out bracketed rows, the fraction whose bracket meets the rule's central
        `level` prediction interval μ ± z·σ (with censored rows, a bracket that meets the interval
        is the most a row can show; a calibrated rule gives ≥ `level`);
      n_bound, bound_consistent: held-out bound rows (nothing, or everything, collapsed) and how
        many the rule's prediction interval agrees with (a lower bound lo: μ + z·σ ≥ log lo);
      n_rows, n_folds, folds (per held-out seed: its numbers).
    A constant the training seeds do not identify is taken as not binding (as the rule's
    prediction in `experiments.study` does); a fold that identifies neither is skipped.
    """
    r = _check_rows(s=s, t=t, lo=lo, hi=hi, seed=seed)
    y_lo, y_hi = _log_intervals(r["lo"], r["hi"])
    s_eff = effective_lag(r["s"], s_offset)
    if sigma_min is None:
        sigma_min = _sigma_floor(y_lo, y_hi)
    z = float(stats.norm.ppf((1 + level) / 2))
    nan = math.nan
    out: dict[str, Any] = {"loglik_rule": 0.0, "loglik_power": 0.0, "delta_loglik": nan,
                           "coverage": nan, "n_rows": 0, "n_bracketed": 0, "n_bound": 0,
                           "bound_consistent": 0, "n_folds": 0, "folds": [], "level": level,
                           "method": "leave-one-seed-out; log predictive probability of the "
                                     "held-out rows against a separable power law"}
    covered = 0
    for k in np.unique(r["seed"]):
        test = r["seed"] == k
        train = ~test
        fit = fit_two_constraint(r["s"][train], r["t"][train], r["lo"][train], r["hi"][train],
                                 r["seed"][train], s_offset=s_offset, sigma_min=sigma_min,
                                 interval=False)
        if not (math.isfinite(fit["a"]) or math.isfinite(fit["b"])):
            out["folds"].append({"seed": float(k), "skipped": fit.get("reason", "neither "
                                                                      "constant identified")})
            continue
        # a constant that never binds on the training seeds is taken as not binding
        log_a = fit["log_a"] if math.isfinite(fit["log_a"]) else 1e3
        log_b = fit["log_b"] if math.isfinite(fit["log_b"]) else 1e3
        mu_r, _ = _two_constraint_model(s_eff[test], r["t"][test], 0.0)(
            np.array([log_a, log_b]))
        sig_r = fit["sigma"]
        pm = _power_model(s_eff[train], r["t"][train])
        mid = np.where(np.isfinite(y_lo[train]) & np.isfinite(y_hi[train]),
                       (y_lo[train] + y_hi[train]) / 2,
                       np.where(np.isfinite(y_lo[train]), y_lo[train], y_hi[train]))
        x = np.stack([np.ones(mid.size), -np.log(np.where(s_eff[train] > 0, s_eff[train],
                                                           0.5)), -np.log(r["t"][train])], 1)
        th0 = np.linalg.lstsq(x, mid, rcond=None)[0]
        res = _mle(pm, [(*th0, math.log(max(float(np.std(mid - x @ th0)), 2 * sigma_min))),
                        (float(np.mean(mid)), 1.0, 0.0, math.log(max(float(np.std(mid)),
                                                                     2 * sigma_min)))],
                   y_lo[train], y_hi[train], sigma_min)
        mu_p, _ = _power_model(s_eff[test], r["t"][test])(res.x[:3])
        sig_p = float(np.exp(res.x[3]))

        def logp(mu, sig):
            with np.errstate(invalid="ignore"):
                return _log_interval_prob((y_lo[test] - mu) / sig, (y_hi[test] - mu) / sig)
        lr_, lp_ = float(logp(mu_r, sig_r).sum()), float(logp(mu_p, sig_p).sum())
        br = np.isfinite(y_lo[test]) & np.isfinite(y_hi[test])
        meets = (y_hi[test] > mu_r - z * sig_r) & (y_lo[test] < mu_r + z * sig_r)
        out["loglik_rule"] += lr_
        out["loglik_power"] += lp_
        out["n_rows"] += int(test.sum())
        out["n_bracketed"] += int(br.sum())
        out["n_bound"] += int((~br).sum())
        out["bound_consistent"] += int((meets & ~br).sum())
        covered += int((meets & br).sum())
        out["n_folds"] += 1
        out["folds"].append({"seed": float(k), "loglik_rule": lr_, "loglik_power": lp_,
                             "alpha_power": float(res.x[1]), "a": fit["a"], "b": fit["b"]})
    if out["n_folds"]:
        out["delta_loglik"] = out["loglik_rule"] - out["loglik_power"]
        out["coverage"] = covered / out["n_bracketed"] if out["n_bracketed"] else nan
    else:
        out["loglik_rule"] = out["loglik_power"] = nan
    return out
