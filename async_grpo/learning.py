r"""What staleness costs in learning: saturating curve fits, the curve's area, η*(S) and its law.

A GRPO run that learns traces a held-out accuracy R(t) that rises from its start R0 and
saturates. ScaleRL (Khatri et al., arXiv 2510.13786, eq. 1) fits compute curves with

    R(t) = R0 + (A − R0) / (1 + (t_mid / t)^B),

where A is the ceiling (the asymptote), t_mid the step at which half of the gain A − R0 is made
and B the curve's steepness (its efficiency); we fit it against learner steps t (one batch per
step, so steps are compute up to a constant). `fit_saturating` fits one curve by least squares
with R0 fixed to the measured start (three free parameters, bounded: A in [0, 1], B in
[0.2, 10], t_mid within a wide band around the horizon), from several starts. A curve that has
not bent yet leaves A and t_mid unidentified (only their ratio is): the fit then says so
(``identified`` False: A at its bound, or t_mid beyond the horizon) and the caller reports the
area instead. `area` is the mean accuracy over the run, which needs no model.

Across S: `eta_star_per_seed` finds, for each seed, the learning rate η* that maximizes a score
(final accuracy or area) on a grid of η: the peak of a parabola through the best grid point and
its two neighbours in log η (so η* is not quantized to the grid), or a bound when the best point
is at the grid's edge (censored: reported, never fitted as a value). `eta_star_law` fits
log η* = c − γ log S over S ≥ 1 per seed and gives the t-interval of γ over seeds (seeds are the
independent replicates; the lags of one seed share its prompts). `claim6_verdict` is claim 6's
rule (η* ∝ 1/S, i.e. γ = 1): supported when the interval lies inside `GAMMA_BAND`, not
supported when it lies outside it, inconclusive otherwise; tests/test_learning.py measures its
power on synthetic data with a known γ.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import optimize, stats

GAMMA_BAND = (0.75, 1.25)   # claim 6: γ in this band counts as η* ∝ 1/S
LEVEL = 0.95


def saturating_curve(t, r0, a, t_mid, b):
    """R(t) = R0 + (A − R0) / (1 + (t_mid / t)^B) (ScaleRL's eq. 1 against steps); R(0) = R0."""
    t = np.asarray(t, float)
    with np.errstate(divide="ignore", over="ignore"):
        frac = 1.0 / (1.0 + (t_mid / np.maximum(t, 1e-12)) ** b)
    return r0 + (a - r0) * np.where(t > 0, frac, 0.0)


def _check_curve(steps, acc):
    steps, acc = np.asarray(steps, float), np.asarray(acc, float)
    if steps.ndim != 1 or steps.shape != acc.shape or len(steps) < 4:
        raise ValueError(f"a learning curve needs ≥ 4 (step, accuracy) points of equal length; "
                         f"got steps {steps.shape}, accuracy {acc.shape}")
    if not (np.all(np.isfinite(steps)) and np.all(np.diff(steps) > 0) and steps[0] >= 0):
        raise ValueError(f"steps must be finite, ≥ 0 and increasing; got {steps}")
    if not np.all(np.isfinite(acc)):
        raise ValueError("accuracy must be finite (cut a collapsed run at its collapse step "
                         "before fitting)")
    return steps, acc


def fit_saturating(steps: Sequence[float], acc: Sequence[float], *,
                   r0: float | None = None) -> dict[str, Any]:
    """Least-squares fit of `saturating_curve` to one run's held-out accuracy.

    `r0`: the start accuracy (default: the accuracy at the first point, which should be step 0).
    Returns {"R0", "A", "B", "t_mid", "rmse", "identified"}: `identified` is False when the fit
    sits on a bound (A = 1 with the curve still rising, or t_mid beyond twice the horizon), i.e.
    the run has not bent towards its ceiling within its horizon."""
    steps, acc = _check_curve(steps, acc)
    r0 = float(acc[0] if r0 is None else r0)
    horizon = float(steps[-1])
    lo = np.array([0.0, 0.2, np.log(max(horizon, 1.0) / 100)])
    hi = np.array([1.0, 10.0, np.log(max(horizon, 1.0) * 20)])

    def resid(p):
        a, b, log_tm = p
        return saturating_curve(steps, r0, a, np.exp(log_tm), b) - acc

    best = None
    for a0 in (min(1.0, acc.max() + 0.05), 1.0):
        for b0 in (1.0, 3.0):
            for tm0 in (horizon / 4, horizon):
                x0 = np.clip([a0, b0, np.log(max(tm0, 1e-3))], lo + 1e-9, hi - 1e-9)
                r = optimize.least_squares(resid, x0, bounds=(lo, hi))
                if best is None or r.cost < best.cost:
                    best = r
    a, b, log_tm = best.x
    t_mid = float(np.exp(log_tm))
    identified = bool(t_mid <= 2 * horizon and not (a >= 1 - 1e-6 and acc[-1] > acc[-2]))
    return {"R0": r0, "A": float(a), "B": float(b), "t_mid": t_mid,
            "rmse": float(np.sqrt(np.mean(best.fun ** 2))), "identified": identified}


FIT_KEYS = ("A", "B", "t_mid", "R0", "rmse")


def fit_cells(steps: Sequence[float], acc: np.ndarray,
              collapse_step: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """`fit_saturating` of every cell's curve: `acc` [..., n_evals] at `steps`, each cut at its
    cell's collapse step (`collapse_step` [...], −1: none; a collapsed cell keeps the fit of its
    pre-collapse curve). -> {"A", "B", "t_mid", "R0", "rmse": float [...] (NaN where fewer than
    4 evaluations precede the collapse), "identified": bool [...], "n_points": int [...]}."""
    steps = np.asarray(steps, float)
    acc = np.asarray(acc, float)
    if acc.shape[-1] != len(steps):
        raise ValueError(f"acc's last axis ({acc.shape[-1]}) must match the {len(steps)} steps")
    shape = acc.shape[:-1]
    cs = (np.full(shape, -1) if collapse_step is None
          else np.broadcast_to(np.asarray(collapse_step), shape))
    out = {k: np.full(shape, np.nan) for k in FIT_KEYS}
    out["identified"] = np.zeros(shape, bool)
    out["n_points"] = np.zeros(shape, int)
    for idx in np.ndindex(*shape):
        keep = steps <= cs[idx] if cs[idx] >= 0 else np.ones(len(steps), bool)
        out["n_points"][idx] = int(keep.sum())
        if keep.sum() < 4 or not np.all(np.isfinite(acc[idx][keep])):
            continue
        f = fit_saturating(steps[keep], acc[idx][keep])
        for k in FIT_KEYS:
            out[k][idx] = f[k]
        out["identified"][idx] = f["identified"]
    return out


def area(steps: Sequence[float], acc: Sequence[float]) -> float:
    """The curve's area: its mean accuracy over [steps[0], steps[-1]] (trapezoid rule)."""
    steps, acc = _check_curve(steps, acc)
    return float(np.trapezoid(acc, steps) / (steps[-1] - steps[0]))


def window_area(steps: Sequence[float], acc: Sequence[float], end: float) -> float:
    """The mean accuracy over [steps[0], end] of the curve linearly interpolated between its
    evaluations (`area` when end = steps[-1]); `end` must lie inside the evaluated range. Used
    to compare runs over the same wall-clock window when their steps cost different times."""
    steps, acc = _check_curve(steps, acc)
    if not (np.isfinite(end) and steps[0] < end <= steps[-1]):
        raise ValueError(f"end={end!r}: must lie in ({steps[0]}, {steps[-1]}] (the evaluated "
                         f"steps)")
    inside = steps < end
    xs = np.concatenate([steps[inside], [end]])
    ys = np.concatenate([acc[inside], [np.interp(end, steps, acc)]])
    return float(np.trapezoid(ys, xs) / (end - steps[0]))


def t_interval(values: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
    """Mean and its Student-t interval over independent replicates (seeds).

    Returns {"mean", "lo", "hi", "n"}; with fewer than 2 finite values the interval is
    undetermined (lo = hi = None), never of zero width."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    m = float(v.mean())
    if n < 2:
        return {"mean": m, "lo": None, "hi": None, "n": n}
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / np.sqrt(n))
    return {"mean": m, "lo": m - half, "hi": m + half, "n": n}


def eta_star_per_seed(lrs: Sequence[float], scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """η* per seed from scores [n_lr, n_seeds] on the grid `lrs` (increasing).

    Returns (eta_star [n_seeds], censor [n_seeds]): censor 0 when the best grid point has a
    neighbour on each side (η* = the vertex of the parabola through the three points in log η,
    kept within them), −1 when the best point is the smallest η (η* ≤ lrs[0]), +1 when it is the
    largest (η* ≥ lrs[-1]); a censored η* is the edge itself."""
    lrs = np.asarray(lrs, float)
    scores = np.asarray(scores, float)
    if lrs.ndim != 1 or len(lrs) < 3 or np.any(np.diff(lrs) <= 0) or np.any(lrs <= 0):
        raise ValueError(f"lrs must be ≥ 3 increasing positive values, got {lrs}")
    if scores.ndim != 2 or scores.shape[0] != len(lrs):
        raise ValueError(f"scores must be [n_lr = {len(lrs)}, n_seeds], got {scores.shape}")
    x = np.log(lrs)
    out, censor = np.empty(scores.shape[1]), np.zeros(scores.shape[1], int)
    for j in range(scores.shape[1]):
        s = np.where(np.isfinite(scores[:, j]), scores[:, j], -np.inf)
        i = int(np.argmax(s))
        if i == 0 or i == len(lrs) - 1:
            out[j], censor[j] = lrs[i], (-1 if i == 0 else 1)
            continue
        xs, ys = x[i - 1:i + 2], s[i - 1:i + 2]
        c2, c1, _ = np.polyfit(xs, ys, 2)
        v = -c1 / (2 * c2) if c2 < 0 else x[i]
        out[j] = float(np.exp(np.clip(v, xs[0], xs[2])))
    return out, censor


def eta_star_law(lags: Sequence[int], eta_star: np.ndarray, censor: np.ndarray | None = None,
                 level: float = LEVEL) -> dict[str, Any]:
    """The exponent γ of η*(S) ∝ S^−γ over S ≥ 1: per seed, the least-squares slope of
    log η* on log S (seeds with a censored η* at any S ≥ 1 left out, and counted), then the
    t-interval over seeds. `eta_star`, `censor`: [n_lags, n_seeds]."""
    lags = np.asarray(lags)
    eta_star = np.asarray(eta_star, float)
    censor = np.zeros(eta_star.shape, int) if censor is None else np.asarray(censor)
    sel = lags >= 1
    if sel.sum() < 3:
        return {"gamma": None, "lo": None, "hi": None, "n_seeds": 0, "n_censored_seeds": 0,
                "why": f"needs ≥ 3 values of S ≥ 1 (has {int(sel.sum())})"}
    x = np.log(lags[sel].astype(float))
    ok = ~np.any(censor[sel] != 0, axis=0)
    slopes = [-np.polyfit(x, np.log(eta_star[sel, j]), 1)[0] for j in np.where(ok)[0]]
    ci = t_interval(slopes, level)
    return {"gamma": ci["mean"], "lo": ci["lo"], "hi": ci["hi"], "n_seeds": ci["n"],
            "n_censored_seeds": int((~ok).sum()), "per_seed": [float(s) for s in slopes],
            "why": "" if ci["lo"] is not None else "fewer than 2 seeds with η* bracketed"}


def claim6_verdict(law: dict[str, Any], band: tuple[float, float] = GAMMA_BAND) -> str:
    """Claim 6 (η* ∝ 1/S): "supported" if γ's interval lies inside `band`, "not supported" if
    it lies entirely outside it, "inconclusive" otherwise (or without an interval)."""
    lo, hi = law.get("lo"), law.get("hi")
    if lo is None or hi is None:
        return "inconclusive"
    if band[0] <= lo and hi <= band[1]:
        return "supported"
    if hi < band[0] or lo > band[1]:
        return "not supported"
    return "inconclusive"


# ----------------------------------------------------------------------------------------------
# Wall-clock: steps to seconds.
# ----------------------------------------------------------------------------------------------


def step_seconds(lag: int, t_gen: float, t_learn: float, overhead: float = 0.0) -> float:
    """Seconds per learner step of an RL system whose generator and learner run on separate
    devices: synchronous (S = 0) a step waits for its batch, t_gen + t_learn; asynchronous
    (S ≥ 1) generation of batch t + 1 overlaps the update on batch t, so a step costs
    max(t_gen, t_learn). Both pay `overhead` per step (the weight hand-off, the metrics).
    This is the ideal of separate devices; on one shared device the two parts compete for the
    same cores and S ≥ 1 gains little (docs/pipeline.md)."""
    for name, v in (("t_gen", t_gen), ("t_learn", t_learn), ("overhead", overhead)):
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{name}={v!r}: must be a finite number ≥ 0")
    if int(lag) < 0:
        raise ValueError(f"lag={lag!r}: must be ≥ 0")
    return float((t_gen + t_learn if int(lag) == 0 else max(t_gen, t_learn)) + overhead)


def first_crossing(steps: Sequence[float], curve: Sequence[float], target: float):
    """The first step at which `curve` reaches `target`, linearly interpolated between the
    evaluations (so its resolution is the evaluation interval); None if it never does."""
    steps, curve = np.asarray(steps, float), np.asarray(curve, float)
    hit = np.flatnonzero(np.isfinite(curve) & (curve >= target))
    if not len(hit):
        return None
    i = int(hit[0])
    if i == 0:
        return float(steps[0])
    x0, x1, y0, y1 = steps[i - 1], steps[i], curve[i - 1], curve[i]
    return float(x0 + (target - y0) / (y1 - y0) * (x1 - x0)) if y1 > y0 else float(x1)
