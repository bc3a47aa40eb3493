"""Claim 1: the per-step staleness bias of the surrogate gradient is O(S·η).

Measurements:
* exact testbed (`experiments.exact_bias`): ‖δ‖ = ‖H(θ, φ) − H(θ, θ)‖ at controlled (θ, φ)
  pairs below the clip onset, log–log slope against ‖θ − φ‖ per anchor × direction (no noise:
  the slopes are exact, so the rule asks every one of them to lie in `LINEAR_SLOPE`);
* LM testbed (`experiments.lm_bias`): ‖δ‖² estimated with the noise floor removed per (η,
  anchor t, lag s); the slope of ‖δ‖ on s·η is `async_grpo.scaling.anchored_slope`: every
  small-drift cell (resolved or not: no selection on the outcome) on the estimate scale, a level
  per anchor (η, t) so that only the lag moves the slope, and a delete-one-anchor jackknife
  t-interval (the lags of an anchor share one fresh batch, so anchors are the independent
  units). Its coverage is measured in tests/test_coverage.py.

Verdict (LM, `verdict`): the equivalence rule of `claims.base.interval_verdict` around slope 1
with margin `SLOPE_MARGIN` (supported: the interval holds 1 and excludes ≤ 0.5 and ≥ 1.5;
not supported: it excludes 1; otherwise inconclusive). The per-η agreement the old rule also
required is dropped: at one η the slope rests on one or two anchors, and asking every one of
four intervals to hold 1 has a false-"not supported" rate of its own.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from experiments.claims.base import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, finite,
                                     interval_verdict)

NUMBER = 1
KEY = "bias"
STATEMENT = "The per-step staleness bias of the surrogate gradient is O(Sη)."
STAGES = ("exact_bias", "lm_bias")
GRIDS = ("exact: controlled (θ, φ) pairs below the clip onset; LM: ≥ 3 anchors (η, t) × ≥ 2 "
         "lags with the noise floor removed")
GPU_CHANGE = ("exact: a bias that grows faster than linearly in s·η at drifts far below the "
              "clip radius; LM: an anchored slope interval inside [0.5, 1.5] holding 1, with "
              "this coupled-pair estimator on a larger model")

LINEAR_SLOPE = (0.9, 1.1)   # exact testbed: a noiseless log-log slope counts as linear
TARGET = 1.0
SLOPE_MARGIN = 0.5          # LM: "supported" must rule out ‖δ‖ ∝ √(s·η) and ∝ (s·η)^1.5


def verdict(fit: dict[str, Any]) -> tuple[str, str]:
    """(verdict, reason) from an `anchored_slope` fit of ‖δ‖ on s·η."""
    ci = fit.get("ci") or (math.nan, math.nan)
    if not finite(fit.get("slope")):
        return INCONCLUSIVE, f"no slope: {fit.get('reason', 'not identified')}"
    v = interval_verdict(ci, TARGET, SLOPE_MARGIN)
    txt = f"slope {fit['slope']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if finite(ci[0]) else \
        f"slope {fit['slope']:.2f}, interval undetermined"
    if v == SUPPORTED:
        return v, f"{txt} holds 1 and lies inside [{TARGET - SLOPE_MARGIN}, " \
                  f"{TARGET + SLOPE_MARGIN}]"
    if v == NOT_SUPPORTED:
        return v, f"{txt} excludes 1 (" + ("grows more slowly than s·η" if ci[1] < 1 else
                                          "grows faster than s·η") + ")"
    return v, f"{txt}: too wide to tell slope 1 from {TARGET - SLOPE_MARGIN} or " \
              f"{TARGET + SLOPE_MARGIN}"


def exact_verdict(slopes) -> tuple[str, str]:
    """Exact testbed: every noiseless controlled-pair slope inside `LINEAR_SLOPE`."""
    slopes = [s for s in slopes if finite(s)]
    if not slopes:
        return INCONCLUSIVE, "no controlled-pair slope"
    if LINEAR_SLOPE[0] <= min(slopes) and max(slopes) <= LINEAR_SLOPE[1]:
        return SUPPORTED, "δ is first order in the drift below the clip onset"
    return NOT_SUPPORTED, (f"slopes {min(slopes):.2f}…{max(slopes):.2f} leave "
                           f"[{LINEAR_SLOPE[0]}, {LINEAR_SLOPE[1]}]")


def anchored_fit(rows: list[dict], est: str = "delta_est", se: str = "delta_se", *,
                 clip_max: float, x: str = "s_eta") -> dict[str, Any]:
    """`anchored_slope` of ‖δ‖ (or, with est/se = pg_est/pg_se, ‖δ_PG‖) on `x` (s·η, or
    "drift": ‖θ_t − θ_{t−s}‖) over the stale rows of an `experiments.lm_bias` result whose
    clip fraction is below `clip_max` (math.inf: every stale row), each anchor (η, t) with its
    own level. The one fit of claim 1 on the LM: the binary prints it and the report and the
    claims table recompute it from the saved rows."""
    from async_grpo import scaling   # pylint: disable=import-outside-toplevel
    rows = [r for r in rows if r["lag"] >= 1 and r.get(est) is not None and
            np.nan_to_num(r.get("clip_frac", math.nan), nan=1.0) < clip_max]
    col = lambda k: np.asarray([r[k] for r in rows], float)  # noqa: E731
    anchor = np.asarray([f"{r['lr']:g}@{r['anchor']}" for r in rows])
    return scaling.anchored_slope(col(x), col(est), col(se), anchor)


def lm_fit(lmb: dict, est: str = "delta_est", se: str = "delta_se", *,
           clip_max: float | None = None) -> dict[str, Any]:
    """`anchored_fit` of an `experiments.lm_bias` result on s·η, by default over its
    small-drift rows (clip fraction below the result's threshold)."""
    return anchored_fit(lmb["rows"], est, se,
                        clip_max=lmb["fits"]["clip_small"] if clip_max is None else clip_max)


def rows(study) -> list[dict]:
    """Claim 1's rows: the exact testbed's controlled pairs, the LM's ‖δ‖ and ‖δ_PG‖."""
    out = []
    bias = study.get("bias")
    if bias is not None:
        ctrl = bias["summary"]["controlled"]
        slopes = [c["loglog_slope_small"] for c in ctrl if finite(c.get("loglog_slope_small"))]
        v, why = exact_verdict(slopes)
        out.append(dict(
            testbed="exact, controlled (θ, φ) pairs below the clip onset",
            measured=f"log–log slope of ‖δ‖ vs ‖θ − φ‖ = "
                     f"{np.median(slopes) if slopes else math.nan:.3f}",
            interval=(f"[{min(slopes):.3f}, {max(slopes):.3f}] over {len(slopes)} anchors × "
                      f"directions (noiseless)" if slopes else "—"),
            grid=f"{bias['summary']['config']['num_radii']} radii, anchors at steps "
                 f"{bias['summary']['config']['anchor_steps']}",
            verdict=f"{v}: {why}"))
    lmb = study.get("lm_bias")
    if lmb is not None:
        cfg = lmb["config"]
        grid_txt = (f"η ∈ {{{cfg['lrs']}}}, s ∈ {{{cfg['lags']}}}, anchors t ∈ "
                    f"{{{cfg['anchor_steps']}}}, {cfg['replicates']} coupled batch pairs per cell")
        for name, est, se, label in (("‖δ‖", "delta_est", "delta_se", "LM"),
                                     ("‖δ_PG‖", "pg_est", "pg_se",
                                      "LM, policy-gradient part alone (no KL penalty)")):
            if not any(est in r for r in lmb["rows"]):
                continue
            fit = lm_fit(lmb, est, se)
            v, why = verdict(fit)
            out.append(dict(
                testbed=f"{label}, stale cells with clip fraction < "
                        f"{lmb['fits']['clip_small']:.0%}",
                measured=f"slope of {name} on s·η, a level per (η, t): " + (
                    f"{fit['slope']:.2f}" if finite(fit["slope"]) else "n/a"),
                interval=(f"[{fit['ci'][0]:.2f}, {fit['ci'][1]:.2f}], {fit['level']:.0%} "
                          f"jackknife over {fit['n_anchors']} anchors, all {fit['n']} cells "
                          f"on the estimate scale" if finite(fit["ci"][0]) else "undetermined"),
                grid=grid_txt, verdict=f"{v}: {why}"))
    return out
