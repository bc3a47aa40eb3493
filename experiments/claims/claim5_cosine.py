"""Claim 5: the consecutive-gradient cosine is ≈ 0 in stable runs and > 0 before collapse.

Measurement (`async_grpo.scaling.cosine_auc_stratified`): the ROC AUC of the cosine's mean
over the `COS_WINDOW` steps ending k steps before collapse (k in `COS_LEADS`), collapsing
against stable runs, compared only within the same η (stable and collapsing runs sit at
different η, and the cosine moves with η), stable runs scored at matched times; a lead counts
with ≥ `MIN_PER_CLASS` runs of each class; the counted leads are tested together by a
max-statistic permutation test, so trying several leads does not buy a false warning.

Verdict (`verdict`): supported when some counted lead has a significant AUC > ½ (adjusted
p < `ALPHA`) and the stable runs' median cosine is within `COS_ZERO` of 0; not supported when a
lead is significant the other way, when the stable runs' cosine is not ≈ 0, or when every
counted lead's AUC interval stays below `AUC_USEFUL` (the cosine cannot be a useful warning);
inconclusive otherwise (no lead with enough runs, or intervals too wide).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from experiments.claims.base import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, finite

NUMBER = 5
KEY = "cosine"
STATEMENT = "The consecutive-gradient cosine is ≈ 0 in stable runs and > 0 before collapse."
STAGES = ("exact_sampled", "lm_sweep")
GRIDS = "grids with cosine traces and ≥ 10 stable and ≥ 10 collapsing runs sharing values of η"
GPU_CHANGE = ("a within-η AUC significantly above ½ after correcting for the leads tried, with "
              "≥ 10 runs of each class, and the stable runs' cosine within 0.1 of 0")

COS_WINDOW = 20                # the cosine is averaged over 20 steps ...
COS_LEADS = (0, 20, 50, 100)   # ... ending this many steps before the collapse
COS_ZERO = 0.1                 # |median cosine of stable runs| ≤ 0.1 counts as ≈ 0
MIN_PER_CLASS = 10             # runs of each class for a lead to count
ALPHA = 0.05                   # family-wise, over the counted leads
AUC_USEFUL = 0.75              # an AUC interval entirely below this rules out a useful warning


def verdict(res: dict[str, Any], stable_median: float) -> tuple[str, str]:
    """(verdict, reason) from a `cosine_auc_stratified` result and the stable runs' median
    cosine."""
    counted = [i for i, k in enumerate(res["counted"]) if k]
    if not counted:
        return INCONCLUSIVE, (f"no lead has {res['min_per_class']} runs of each class in "
                              f"strata holding both (collapsing {max(res['n_collapsing'])}, "
                              f"stable {max(res['n_stable'])})")
    up = [i for i in counted if res["significant"][i] and res["auc"][i] > 0.5]
    down = [i for i in counted if res["significant"][i] and res["auc"][i] < 0.5]
    leads = lambda ix: ", ".join(  # noqa: E731
        f"{res['leads'][i]} (AUC {res['auc'][i]:.2f}, p = {res['p_adjusted'][i]:.3f})"
        for i in ix)
    zero = finite(stable_median) and abs(stable_median) <= COS_ZERO
    if down:
        return NOT_SUPPORTED, f"the cosine is LOWER before collapse at lead(s) {leads(down)}"
    if up and zero:
        return SUPPORTED, f"higher before collapse at lead(s) {leads(up)}; stable ≈ 0"
    if up:
        return NOT_SUPPORTED, (f"higher before collapse at lead(s) {leads(up)}, but the stable "
                               f"runs' median cosine is {stable_median:.2f}, not ≈ 0")
    his = [res["ci"][i][1] for i in counted]
    if all(finite(h) and h < AUC_USEFUL for h in his):
        return NOT_SUPPORTED, (f"no lead separates the classes within η; every AUC interval "
                               f"ends below {AUC_USEFUL}")
    return INCONCLUSIVE, "no significant lead, and the intervals do not rule out a useful AUC"


def rows(study) -> list[dict]:
    from async_grpo import scaling   # pylint: disable=import-outside-toplevel
    from experiments import grids as st   # pylint: disable=import-outside-toplevel
    out = []
    for title, run in st.grids_of(study):
        name, tr = st.cos_trace(run)
        base = dict(testbed=title, grid=st.grid_line(run))
        if name is None:
            out.append(dict(base, measured="—", interval="—",
                            verdict=f"{INCONCLUSIVE}: no cosine traces"))
            continue
        stride = run.get("stride", 1)
        _, lrs, cs = st.rows_of(run)
        keep = (cs < 0) | (cs > st.warmup(run))
        c_pts = np.where(cs >= 0, cs // stride, -1)[keep]
        w = max(1, COS_WINDOW // stride)
        leads = sorted({k // stride for k in COS_LEADS})
        res = scaling.cosine_auc_stratified(tr[keep], c_pts, lrs[keep], w, leads)
        stable = tr[keep][c_pts < 0]
        st_med = (float(np.nanmedian(scaling.running_mean(stable, w)[:, -1]))
                  if stable.size else float("nan"))
        v, why = verdict(res, st_med)
        if (run["meta"].get("train") or {}).get("mode") == "population":
            v, why = INCONCLUSIVE, ("not applicable: population mode has no sampling noise, "
                                    "so no run is diffusive; shown for contrast (" + why + ")")
        out.append(dict(
            base,
            measured=(f"stable runs' cosine (last {w * stride} steps) median {st_med:.3f}; "
                      f"within-η AUC by lead (steps): " + ", ".join(
                          f"{k * stride}: " + (f"{a:.2f}" if finite(a) else "—")
                          for k, a in zip(res["leads"], res["auc"]))),
            interval=("; ".join(
                f"lead {k * stride}: " + (f"[{ci[0]:.2f}, {ci[1]:.2f}], " if finite(ci[0])
                                          else "") + f"{nc}+{ns} runs"
                + ("" if ok else " (too few)") for k, ci, nc, ns, ok in zip(
                    res["leads"], res["ci"], res["n_collapsing"], res["n_stable"],
                    res["counted"])) +
                f" ({res['level']:.0%} bootstrap within η; p adjusted over leads by "
                f"permutation)"),
            verdict=f"{v}: {why}"))
    return out
