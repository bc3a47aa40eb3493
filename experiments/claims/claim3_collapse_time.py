"""Claim 3: in the horizon-limited regime t_collapse·η ≈ const, independent of S.

Measurement (`async_grpo.scaling.collapse_time_censored`): log(t_c − d) on log η by interval-
censored maximum likelihood, every run a row: timed collapses as one-step intervals, runs
flagged at the warm-up end as left-censored, runs that never collapsed within T as
right-censored, d the drop rule's detection lag (`scaling.detection_lag` of the run's EMA and
drop fraction), a level per S; the interval on the slope is the profile likelihood. A
least-squares line through the collapses timed inside the window (the old measurement) is
biased to −0.77 (T = 100) … −0.87 (T = 200) by the window alone even when t_c·η is exactly
constant; tests/test_coverage.py measures both.

Verdict (`verdict`): the slope by the equivalence rule around −1 with margin `SLOPE_MARGIN`
(supported: the interval holds −1 and lies inside [−1.5, −0.5], so t_c ∝ η^−½ and ∝ η^−2 —
the ballistic and the diffusive drift laws — are both excluded); and S-independence: the
per-S levels of t_c·η may differ by at most `T_ETA_SPREAD` (a supported slope with levels
further apart is not supported).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from experiments.claims.base import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, finite,
                                     interval_verdict)

NUMBER = 3
KEY = "collapse_time"
STATEMENT = ("Horizon-limited regime: t_collapse·η ≈ const, independent of S (paper: "
             "≈ 3.2e-5).")
STAGES = ("exact_sweep", "exact_sampled", "lm_sweep")
GRIDS = "grids with collapses timed after the warm-up at ≥ 2 values of η, traces kept"
GPU_CHANGE = ("a censored-fit slope interval inside [−1.5, −0.5] holding −1, with per-S levels "
              "of t_c·η within a factor 2, and timed collapses at every S")

TARGET = -1.0
SLOPE_MARGIN = 0.5     # "supported" must exclude t_c ∝ η^-0.5 and ∝ η^-2 (slopes -0.5, -2)
T_ETA_SPREAD = 2.0     # max/min over S of the level of t_c·η that counts as S-independent


def verdict(fit: dict[str, Any], spread: Optional[float] = None) -> tuple[str, str]:
    """(verdict, reason) from a `collapse_time_censored` fit and the spread of its per-S
    levels (exp of their range; None: one S)."""
    if not finite(fit.get("slope")):
        return INCONCLUSIVE, f"no slope: {fit.get('reason', 'not identified')}"
    ci = fit["ci"]
    v = interval_verdict(ci, TARGET, SLOPE_MARGIN)
    txt = (f"t_c ∝ η^{fit['slope']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if finite(ci[0]) else
           f"t_c ∝ η^{fit['slope']:.2f}, interval undetermined")
    if v == SUPPORTED and spread is not None and spread > T_ETA_SPREAD:
        return NOT_SUPPORTED, f"{txt}, but t_c·η varies {spread:.1f}× across S"
    if v == SUPPORTED:
        return v, txt + (f"; t_c·η within {spread:.1f}× across S" if spread is not None else
                         "; one S")
    if v == NOT_SUPPORTED:
        return v, f"{txt} excludes −1"
    return v, f"{txt}: too wide to tell −1 from −{1 + SLOPE_MARGIN} or −{1 - SLOPE_MARGIN}"


def lag_of(run) -> int:
    """The detection lag of a run's drop rule (0 without an EMA)."""
    from async_grpo import scaling   # pylint: disable=import-outside-toplevel
    from experiments import grids as st   # pylint: disable=import-outside-toplevel
    cfg = st.collapse_rules(run)
    ema, frac = float(cfg.get("ema", 0) or 0), float(cfg.get("drop_frac", 0) or 0)
    return scaling.detection_lag(ema, frac) if ema > 0 and 0 < frac < 1 else 0


def fit_run(run) -> tuple[dict[str, Any], Optional[float], str]:
    """(fit, spread, subset text) of one grid: horizon-limited collapses only when the
    two-constraint rule identifies both constants (stale-limited ones left out, not censored)."""
    from async_grpo import scaling   # pylint: disable=import-outside-toplevel
    from experiments import grids as st   # pylint: disable=import-outside-toplevel
    lags, lrs, cs = st.rows_of(run)       
    g = st.grid(run)
    keep = np.ones(cs.size, bool)
    subset = "all runs"
    tc = st.two_constraint_fit(run)
    if tc is not None and finite(tc["a"]) and finite(tc["b"]):
        stale = (cs >= 0) & ((cs + 1) <= tc["crossover"] * (lags + tc["s_offset"]))
        keep = ~stale
        subset = (f"stale-limited collapses (t_c ≤ {tc['crossover']:.3g}·(S+1)) left out: "
                  f"{int(stale.sum())}")
    warm = st.warmup(run)
    fit = scaling.collapse_time_censored(lrs[keep], cs[keep], num_steps=g["num_steps"],
                                         warmup=warm, lag=lag_of(run), group=lags[keep])
    spread = None
    if finite(fit.get("slope")) and len(fit.get("a", [])) >= 2:
        timed_s = np.unique(lags[keep][cs[keep] > warm])
        levels = [a for s_, a in zip(np.unique(lags[keep]), fit["a"]) if s_ in timed_s]
        spread = float(math.exp(np.ptp(levels))) if len(levels) >= 2 else None
    return fit, spread, subset


def rows(study) -> list[dict]:
    from experiments import grids as st   # pylint: disable=import-outside-toplevel
    out = []
    for title, run in st.grids_of(study):
        base = dict(testbed=title, grid=st.grid_line(run))
        if not st.grid(run)["num_steps"]:
            out.append(dict(base, measured="—", interval="—",
                            verdict=f"{INCONCLUSIVE}: no traces (unknown horizon)"))
            continue
        fit, spread, subset = fit_run(run)
        v, why = verdict(fit, spread)
        tc = st.two_constraint_fit(run)
        if tc is not None and finite(tc["a"]) and not finite(tc["b"]):
            v, why = INCONCLUSIVE, ("not applicable: no cell of this grid is horizon-limited "
                                    "(the two-constraint fit identifies only the stale "
                                    f"constant); shown for contrast ({why})")
        out.append(dict(
            base,
            measured=(f"slope of log(t_c − {fit['lag']}) on log η {fit['slope']:.2f}, a level "
                      f"per S" + (f"; t_c·η levels within {spread:.2f}× across S"
                                  if spread is not None else "")
                      if finite(fit.get("slope")) else f"{fit['n_timed']} timed collapses"),
            interval=((f"[{fit['ci'][0]:.2f}, {fit['ci'][1]:.2f}], {fit['level']:.0%} profile "
                       f"likelihood; " if finite(fit["ci"][0]) else "") +
                      f"{fit['n_timed']} timed, {fit['n_left']} flagged at the warm-up end, "
                      f"{fit['n_right']} never collapsed (censored); {subset}"),
            verdict=f"{v}: {why}"))
    return out
