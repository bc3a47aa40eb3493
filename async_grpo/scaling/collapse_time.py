"""The collapse-time law: does t_collapse·η stay constant (log t_c on log η slope ≈ −1), per S?"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import optimize, stats

from async_grpo.scaling._core import _int_array, _check_rows, _mle
from async_grpo.scaling.eta_max import fit_power_law


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


def detection_lag(ema: float, drop_frac: float) -> int:
    """Steps between an abrupt collapse and the drop rule firing (`async_grpo.collapse`, baseline
    "zero"): the metric falls from its best b to ≈ 0 at step τ; its EMA with coefficient `ema`
    is ema^k·b k steps later and fires at the first k ≥ 1 with ema^k < drop_frac, so the rule
    flags step τ + k − 1. 0 without smoothing. A gradual decline is flagged later still; this is
    the lag of the sharpest collapse."""
    if not 0 <= ema < 1 or not 0 < drop_frac < 1:
        raise ValueError(f"ema must be in [0, 1) and drop_frac in (0, 1); got {ema}, {drop_frac}")
    if ema == 0:
        return 0
    return int(math.floor(math.log(drop_frac) / math.log(ema)))


def collapse_time_censored(lrs, collapse_step, *, num_steps: int, warmup: int = -1,
                           lag: int = 0, group=None, level: float = 0.95,
                           sigma_min: float = 0.01) -> dict[str, Any]:
    """The slope b of log t_c = a − b·log η, with the timing window and detection lag modelled.

    A least-squares line through the collapses timed inside the window (warm-up < c < T) is
    biased towards 0: at large η only the runs that happened to collapse late survive the
    warm-up cut, at small η only the early ones beat the horizon (with t_c·η exactly constant
    and a lognormal spread, the slope comes out −0.77 at T = 100, −0.87 at T = 200; a detection
    lag d flattens it further, since t_c + d is not ∝ 1/η). Here every run is a row of an
    interval-censored likelihood for the onset τ = t_c − d:

    * collapsed at step c > warmup: τ ∈ (c − d, c + 1 − d] (t_c = c + 1 steps, less the lag);
    * flagged at or before the end of the warm-up (c ≤ warmup): τ ≤ warmup + 1 − d;
    * never collapsed within T = num_steps: τ > T − d (a collapse would have been flagged);

    log τ ~ N(a_g − b·log η, σ²) (a level per `group`, e.g. per S, when given; σ ≥ sigma_min).
    The interval on the slope −b is the profile likelihood at `level` (2·Δ log L ≤
    χ²₁(level)). The claim t_c·η = const is slope −1.

    Args:
      lrs, collapse_step: per run (−1 = never). group: optional per-run labels.
      num_steps: T, the runs' length. warmup: the collapse rule's warm-up (−1: none).
      lag: the detection lag d in steps (`detection_lag`).

    Returns {slope (= −b), ci, a (per group), sigma, n, n_timed, n_left, n_right, loglik,
    method}; slope NaN with a `reason` when fewer than 3 timed collapses over 2 distinct η.
    """
    r = _check_rows(eta=lrs, c=collapse_step)
    c = _int_array(r["c"], "collapse_step")
    eta = r["eta"]
    if np.any(~(eta > 0)):
        raise ValueError("lrs must be > 0")
    if np.any(c >= num_steps) or np.any(c < -1):
        raise ValueError(f"collapse_step must be -1 or in [0, num_steps={num_steps})")
    if not 0 <= lag < num_steps:
        raise ValueError(f"lag must be in [0, num_steps); got {lag}")
    g = np.zeros(c.size, int) if group is None else np.unique(np.asarray(group),
                                                              return_inverse=True)[1]
    n_g = int(g.max()) + 1
    timed = (c > warmup)
    left = (c >= 0) & ~timed
    right = c < 0
    tiny = 0.5
    with np.errstate(divide="ignore"):
        y_lo = np.where(timed, np.log(np.maximum(c - lag, tiny)),
                        np.where(right, np.log(max(num_steps - lag, tiny)), -np.inf))
        y_hi = np.where(timed, np.log(np.maximum(c + 1 - lag, 2 * tiny)),
                        np.where(left, np.log(max(warmup + 1 - lag, tiny)), np.inf))
    nan = math.nan
    out: dict[str, Any] = {"slope": nan, "ci": [nan, nan], "sigma": nan, "loglik": nan,
                           "n": int(c.size), "n_timed": int(timed.sum()),
                           "n_left": int(left.sum()), "n_right": int(right.sum()),
                           "lag": int(lag), "level": level,
                           "method": "interval-censored MLE of log(t_c - lag) on log eta "
                                     "(warm-up and horizon as censoring); profile-likelihood "
                                     "interval"}
    if timed.sum() < 3 or np.unique(eta[timed]).size < 2:
        out["reason"] = (f"{int(timed.sum())} timed collapse(s) over "
                         f"{np.unique(eta[timed]).size} distinct eta (need >= 3 over >= 2)")
        return out
    x = np.log(eta)
    onehot = np.eye(n_g)[g]

    def model_free(th):          # th = (b, a_1..a_G)
        return onehot @ th[1:] - th[0] * x, np.column_stack([-x, onehot])

    mid = np.where(timed, (y_lo + y_hi) / 2, np.where(right, y_lo + 0.5, y_hi - 0.5))
    b0 = -float(np.polyfit(x[timed], mid[timed], 1)[0]) if np.unique(x[timed]).size > 1 else 1.0
    starts = []
    for b in (b0, 0.5, 1.0, 2.0):
        a0 = [float(np.mean(mid[g == k] + b * x[g == k])) for k in range(n_g)]
        for s0 in (float(np.std(mid[timed])), 0.1):
            starts.append((b, *a0, math.log(max(s0, 2 * sigma_min))))
    best = _mle(model_free, starts, y_lo, y_hi, sigma_min)
    if best is None:
        out["reason"] = "the likelihood was not finite at any start"
        return out
    for _ in range(3):      # TNC stops at its evaluation budget: restart from the optimum
        again = _mle(model_free, [best.x], y_lo, y_hi, sigma_min)
        if again is None or again.fun >= best.fun - 1e-6:
            break
        best = again
    b_hat = float(best.x[0])

    def profile(b):
        def model(th):
            return onehot @ th - b * x, onehot
        st = [tuple(best.x[1:-1] + (b - b_hat) * float(np.mean(x))) + (best.x[-1],),
              tuple(best.x[1:])]
        res = _mle(model, st, y_lo, y_hi, sigma_min)
        if res is not None:
            again = _mle(model, [res.x], y_lo, y_hi, sigma_min)
            res = again if again is not None and again.fun < res.fun else res
        return -res.fun if res is not None else -np.inf

    ll_max = -float(best.fun)
    cut = float(stats.chi2.ppf(level, 1)) / 2

    def gap(b):
        return ll_max - profile(b) - cut

    ends = []
    for direction in (-1.0, 1.0):
        step, far = 0.05, b_hat
        for _ in range(60):
            far = b_hat + direction * step
            if gap(far) > 0:
                break
            step *= 1.6
        else:
            ends.append(math.nan)
            continue
        ends.append(float(optimize.brentq(gap, min(b_hat, far), max(b_hat, far), xtol=1e-4)))
    out.update(slope=-b_hat, ci=sorted([-ends[0], -ends[1]]) if all(map(math.isfinite, ends))
               else [nan, nan], sigma=float(np.exp(best.x[-1])), loglik=ll_max,
               a=[float(v) for v in best.x[1:-1]])
    return out
