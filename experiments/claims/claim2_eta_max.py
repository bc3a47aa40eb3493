"""Claim 2: η_max ∝ 1/S when the stale-rollout constraint binds.

The measurement is α of η_max ∝ S^−α over S ≥ 1 (`async_grpo.scaling.bootstrap_alpha`: the
interval-censored maximum-likelihood line over each (S, seed)'s grid bracket, with a t-interval
over per-seed slopes whose coverage tests/test_coverage.py measures). The verdict
(`verdict`) is the equivalence rule of `claims.base.interval_verdict` around α = 1 with margin
`ALPHA_MARGIN`: "supported" needs the interval to contain 1 and to exclude α ≤ 0.6 and α ≥ 1.4
(so 1/√S, the nearest law anyone proposes, cannot pass); "not supported" needs it to exclude 1.
Grids with fewer than `MIN_LAGS` values of S ≥ 1 or fewer than `MIN_SEEDS` seeds are not
measured. Beside α, the delayed-gradient null η0/(S + c) is compared with the power law by
log-likelihood (`null_comparison`): one is "better" only beyond `NULL_MARGIN` nats, otherwise
the row says a tie; the comparison is descriptive and does not enter the verdict.
tests/test_claims.py states the rule's power and the comparison's error rates.
"""

from __future__ import annotations

from typing import Any, Optional

from experiments.claims.base import INCONCLUSIVE, finite, interval_verdict

NUMBER = 2
KEY = "eta_max"
STATEMENT = ("η_max ∝ 1/S when the stale-rollout constraint binds (paper: S·η ≈ 1.6e-6, "
             "Llama-3.2 1B/3B).")
STAGES = ("exact_sweep", "exact_sampled", "lm_sweep")
GRIDS = "every (S, η, seed) grid with ≥ 3 values of S ≥ 1 and ≥ 3 seeds"
GPU_CHANGE = ("η_max(S) at S ∈ {8, 16, 32} with an interval on α that excludes this scale's "
              "value, in a regime where clipping does not bind")

TARGET = 1.0
ALPHA_MARGIN = 0.4     # "supported" must rule out α ≤ 0.6 (≈ 1/√S) and α ≥ 1.4
MIN_SEEDS = 3          # an interval over fewer seeds has too few degrees of freedom
MIN_LAGS = 3           # a slope through two grid-resolution intervals is not a measurement
NULL_MARGIN = 2.0      # nats: the null or the power law is "better" only beyond this (AIC 4)


def null_comparison(delta_loglik: float) -> str:
    """Which of the delayed-gradient null η0/(S + c) and the power law S^−α explains a grid's
    η_max intervals better, from Δ = loglik(null) − loglik(power) (`scaling.fit_null_model`'s
    ``compare``; both have 3 parameters, so Δ is also half the AIC difference). |Δ| ≤
    `NULL_MARGIN` is a tie. tests/test_claims.py states its rates on grids made by each model."""
    if not finite(delta_loglik):
        return "not compared"
    if delta_loglik > NULL_MARGIN:
        return "null better"
    if delta_loglik < -NULL_MARGIN:
        return "power law better"
    return f"a tie: |Δ log-likelihood| ≤ {NULL_MARGIN:g}"


def verdict(fit: dict[str, Any], *, n_lags: Optional[int] = None,
            n_seeds: Optional[int] = None) -> tuple[str, str]:
    """(verdict, reason) from a `bootstrap_alpha` result (and the grid's counts)."""
    if fit.get("alpha") is None:
        return INCONCLUSIVE, f"α not identified: {fit.get('reason', 'not identified')}"
    if n_lags is not None and n_lags < MIN_LAGS:
        return INCONCLUSIVE, f"fewer than {MIN_LAGS} values of S ≥ 1"
    if n_seeds is not None and n_seeds < MIN_SEEDS:
        return INCONCLUSIVE, f"{n_seeds} seeds (fewer than {MIN_SEEDS})"
    ci = fit.get("ci") or [None, None]
    v = interval_verdict(ci, TARGET, ALPHA_MARGIN)
    if ci[0] is None:
        return v, f"the interval is undetermined ({fit.get('ci_reason', 'no interval')})"
    if v == INCONCLUSIVE:
        return v, (f"α = 1 inside [{ci[0]:.2f}, {ci[1]:.2f}], but so is a value "
                   f"{ALPHA_MARGIN} away")
    if v == "supported":
        return v, f"α = 1 inside [{ci[0]:.2f}, {ci[1]:.2f}] ⊂ [{TARGET - ALPHA_MARGIN}, " \
                  f"{TARGET + ALPHA_MARGIN}]"
    return v, f"α {'<' if ci[1] < TARGET else '>'} 1: [{ci[0]:.2f}, {ci[1]:.2f}] excludes 1"


def rows(study) -> list[dict]:
    """One row per grid: α recomputed from the grid with this module's interval (results saved
    by older sweeps carry the old percentile bootstrap, so their saved CI is not read)."""
    from experiments import grids as st   # pylint: disable=import-outside-toplevel
    from async_grpo import scaling         # pylint: disable=import-outside-toplevel
    out = []
    for title, run in st.grids_of(study):
        g = st.grid(run)
        fit = scaling.bootstrap_alpha(g["lags"], g["lrs"], g["collapsed"])
        n_lags, n_seeds = int((g["lags"] >= 1).sum()), len(g["seeds"])
        v, why = verdict(fit, n_lags=n_lags, n_seeds=n_seeds)
        if fit.get("alpha") is None:
            measured, interval = "α n/a", "—"
        else:
            ci = fit["ci"]
            measured = f"α = {fit['alpha']:.2f}"
            interval = ((f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci[0] is not None else "undetermined")
                        + f", {fit['level']:.0%} t-interval over {fit['n_seeds_identified']} "
                        f"per-seed slopes; {fit['n_bracketed']} bracketed, "
                        f"{fit['n_lower_bound']}+{fit['n_upper_bound']} censored (S, seed)")
        null = st.null_of(run)
        cmp_ = null.get("compare", {})
        if "loglik_null" in cmp_ and finite(cmp_.get("delta_loglik")):
            d = cmp_["delta_loglik"]
            c_txt = f"{null['c']:.2g}" if finite(null.get("c")) else "—"
            better = null_comparison(d)
            measured += (f"; delayed-gradient null η0/(S + c): c = {c_txt}, "
                         f"log-likelihood {cmp_['loglik_null']:.1f} vs "
                         f"{cmp_['loglik_power']:.1f} for S^−α ({better})")
        out.append(dict(testbed=f"{title}; {st.regime(run)['label']}", measured=measured,
                        interval=interval, grid=st.grid_line(run), verdict=f"{v}: {why}"))
    return out
