"""Drift against the two radii: R_batch from a fixed-η grid, and which constraint of the
two-constraint rule each run ran into ("stale-limited", "horizon-limited", "stable")."""

from __future__ import annotations

from typing import Any

import numpy as np

from async_grpo.scaling._core import _int_array
from async_grpo.scaling.eta_max import eta_max_per_seed
from async_grpo.scaling.two_constraint import effective_lag


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
