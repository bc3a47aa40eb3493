"""Claim 6: the learning rate that learns best under staleness follows η*(S) ∝ 1/S.

The paper's η_max ∝ 1/S is about where GRPO breaks; a user of asynchronous RL chooses η for the
reward it reaches. This claim asks the same law of η*(S), the η with the best held-out accuracy
at each S, measured on a testbed where GRPO learns (docs/learning_regime.md).

Measurement (`async_grpo.learning`): per seed and S, the score of every η (the area under the
held-out accuracy curve, i.e. its mean over the run, which needs no model; the final accuracy is
reported beside it) and η* per seed as the peak of a parabola in log η through the best grid
point and its neighbours, censored at the grid's edges; then γ of η* ∝ S^−γ over S ≥ 1 per
seed, with a Student-t interval over seeds (`eta_star_law`). Beside it, per S at η*, the
ScaleRL fit R(t) = R0 + (A − R0)/(1 + (t_mid/t)^B) of the seed-mean curve: the ceiling A and
the steepness B, to tell whether staleness lowers the ceiling or only slows the climb.

Verdict (`verdict`, `learning.claim6_verdict`): supported when γ's interval lies inside
`learning.GAMMA_BAND` = [0.75, 1.25]; not supported when it lies outside it; inconclusive
otherwise. tests/test_learning.py holds its power (≥ 80 % "supported" at γ = 1, ≤ 10 % at
γ = 0.4, never at γ = 0) and its interval's coverage.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from async_grpo import learning
from experiments.claims.base import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED

NUMBER = 6
KEY = "learning"
STATEMENT = ("The learning rate with the best held-out accuracy under staleness follows "
             "η*(S) ∝ 1/S (the η_max law, asked of learning rather than of collapse).")
STAGES = ("lm_learn",)
GRIDS = ("an LM grid in the learning regime (GRPO gains ≥ 25 points at S = 0): S ∈ {0, 1, 2, "
         "4, 8, 16} × a half-octave η grid bracketing η* at every S × ≥ 5 seeds, held-out "
         "accuracy every k steps")
GPU_CHANGE = ("η*(S) on a model that learns a real task (e.g. GSM8K) at S ∈ {1, 4, 16, 32}, "
              "with a seed interval on γ inside or outside [0.75, 1.25]")

_WORDS = {SUPPORTED: "γ's interval lies inside", NOT_SUPPORTED: "γ's interval lies outside",
          INCONCLUSIVE: "γ's interval overlaps, or is missing:"}


def verdict(law: dict[str, Any]) -> tuple[str, str]:
    """(verdict, reason) from `learning.eta_star_law`'s result."""
    v = learning.claim6_verdict(law)
    band = learning.GAMMA_BAND
    if law.get("lo") is None:
        return v, law.get("why") or "no interval"
    return v, (f"{_WORDS[v]} [{band[0]}, {band[1]}] (γ = {law['gamma']:.2f} "
               f"[{law['lo']:.2f}, {law['hi']:.2f}])")


def analyse(lags, lrs, seeds, steps, acc, collapse_step=None) -> dict[str, Any]:
    """Claim 6's numbers from a learning grid: `acc` [n_lags, n_lrs, n_seeds, n_evals] held-out
    accuracy at eval `steps`, `collapse_step` [n_lags, n_lrs, n_seeds] (−1 or None: none).

    The score of a cell is its area (mean accuracy over the evaluations, after a collapse too:
    a collapsed run is scored by what it ends with, never by its best part). The ScaleRL fit at
    each S's best η is of the seed-mean curve up to the first collapse among those seeds (the
    pre-collapse curve; no fit with fewer than 4 points), and says how many seeds collapsed.
    At each S's best η, per seed (`learning.fit_cells`, each seed's pre-collapse curve), the
    ceiling A and the steepness B, with t-intervals over the seeds whose fit is identified.
    -> {"eta_star", "censor", "law", "per_S": {S:
    {"eta_star_median", "n_censored", "area", "final", "best_lr", "fit", "n_collapsed", "A",
    "B", "n_identified"}}}."""
    acc = np.asarray(acc, float)
    lags, lrs, steps = np.asarray(lags), np.asarray(lrs, float), np.asarray(steps, float)
    if acc.shape[:3] != (len(lags), len(lrs), len(seeds)) or acc.shape[3] != len(steps):
        want = (len(lags), len(lrs), len(seeds), len(steps))
        raise ValueError(f"acc must be [lags, lrs, seeds, evals] = {want}, got {acc.shape}")
    cstep = (np.full(acc.shape[:3], -1) if collapse_step is None
             else np.asarray(collapse_step).reshape(acc.shape[:3]))
    area = np.mean(acc, axis=-1)                        # mean accuracy over the evals
    eta, cen = np.empty((len(lags), len(seeds))), np.zeros((len(lags), len(seeds)), int)
    per_s = {}
    for i, s in enumerate(lags):
        eta[i], cen[i] = learning.eta_star_per_seed(lrs, area[i])
        best = int(np.argmax(np.mean(area[i], axis=1)))
        cs = cstep[i, best]
        first = cs[cs >= 0].min() if (cs >= 0).any() else np.inf
        keep = steps <= first
        curve = np.mean(acc[i, best], axis=0)[keep]
        fit = (learning.fit_saturating(steps[keep], curve)
               if keep.sum() >= 4 and np.all(np.isfinite(curve)) else None)
        per_s[int(s)] = {"eta_star_median": float(np.median(eta[i])),
                         "n_censored": int((cen[i] != 0).sum()),
                         "area": learning.t_interval(area[i, best]),
                         "final": learning.t_interval(acc[i, best, :, -1]),
                         "best_lr": float(lrs[best]), "fit": fit,
                         "n_collapsed": int((cs >= 0).sum())}
        seeds_fit = learning.fit_cells(steps, acc[i, best], cs)     # this η's seeds
        ok = seeds_fit["identified"]
        per_s[int(s)].update(A=learning.t_interval(seeds_fit["A"][ok]),
                             B=learning.t_interval(seeds_fit["B"][ok]),
                             n_identified=int(ok.sum()))
    return {"eta_star": eta, "censor": cen, "law": learning.eta_star_law(lags, eta, cen),
            "per_S": per_s}


def rows(study) -> list[dict]:
    """Claim 6's rows: the study's learning grid (``study["learn"]``: {"lags", "lrs", "seeds",
    "eval_steps", "heldout" [lags, lrs, seeds, evals]}) and each extra learning grid
    (``study["learn_extra"]``: {label: grid}); none without one."""
    out = []
    if study.get("learn"):
        out.append(_row(study["learn"], "LM, learning regime (held-out accuracy area)"))
    for label, g in (study.get("learn_extra") or {}).items():
        out.append(_row(g, f"LM, learning regime: {label} (held-out accuracy area)"))
    return out


def _row(g: dict, testbed: str) -> dict:
    if len(g["lrs"]) < 3:
        raise ValueError(f"claim 6 needs a learning grid with ≥ 3 learning rates (η* is a peak "
                         f"over η); got {list(g['lrs'])}")
    res = analyse(g["lags"], g["lrs"], g["seeds"], g["eval_steps"], g["heldout"],
                  g.get("collapse_step"))
    law = res["law"]
    v, why = verdict(law)
    stars = ", ".join(f"S={s}: {r['eta_star_median']:.2g}" for s, r in res["per_S"].items())
    return dict(
        testbed=testbed,
        measured=(f"γ = {law['gamma']:.2f}" if law["gamma"] is not None else "γ n/a")
                 + f"; median η* per S: {stars}",
        interval=(f"[{law['lo']:.2f}, {law['hi']:.2f}], 95% t-interval over "
                  f"{law['n_seeds']} seeds ({law['n_censored_seeds']} censored seeds left out)"
                  if law["lo"] is not None else "undetermined"),
        grid=(f"S ∈ {{{','.join(str(int(s)) for s in g['lags'])}}}, {len(g['lrs'])} η in "
              f"[{min(g['lrs']):.2g}, {max(g['lrs']):.2g}], {len(g['seeds'])} seeds, "
              f"T = {int(g['eval_steps'][-1])}"),
        verdict=f"{v}: {why}")
