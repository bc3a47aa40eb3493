"""The collapse-time law: does t_collapse·η stay constant (log t_c on log η slope ≈ −1), per S?"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from async_grpo.scaling._core import _int_array, _check_rows
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
