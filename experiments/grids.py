"""A grid's reading for the figures and the claims: its (S, η, seed) cube, collapse times,
regime, fits and one-line description, from a run as `experiments.study` loads it (a
`GridResult` with its columns and traces). The study's figures and every claim module
(`experiments/claims`) read grids through these functions, so the claims need not import the
study, and the study's claims table is the claims' own."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from async_grpo import metric_names as mn
from async_grpo import results, scaling

CLIP_BINDING = 0.05            # regime: mean clip fraction ≥ 5 % just below η_max = clip binds
HORIZON_FRACS = (0.125, 0.25, 0.5, 1.0)   # claims 3, 4: horizons T' = frac·T of one sweep


def grid(run: dict[str, Any]) -> dict[str, Any]:
    """The (S, η, seed) grid of an exact-variant or LM result as arrays.

    Returns lags [nS], lrs [nE], seeds [nR], collapsed [nS, nE, nR] bool, t_collapse [nS, nE, nR]
    (−1 = never), `index` [nS, nE, nR] into the cell rows (and traces), num_steps."""
    g = results.cube(run["result"])
    c = run["cells"]
    return dict(g, collapsed=c["collapsed"][g["index"]].astype(bool),
                t_collapse=c["collapse_step"][g["index"]].astype(int),
                num_steps=run["result"].num_steps)


def null_of(run: dict[str, Any]) -> dict[str, Any]:
    """The delayed-gradient null η_max = η0/(S + c) of a grid (`scaling.fit_null_model` over
    S ≥ 1, with its log-likelihood against the power law on the same cells); cached on the run."""
    if "_null" not in run:
        g = grid(run)
        run["_null"] = scaling.fit_null_model(g["lags"], g["lrs"], g["collapsed"], min_lag=1)
    return run["_null"]


def alpha_of(run: dict[str, Any]) -> dict[str, Any]:
    """The censored η_max ∝ S^−α fit saved by the sweep (the first b1's)."""
    return run["result"].stability()["alpha_fit_S_ge_1"]


def grids_of(study) -> list[tuple[str, dict]]:
    """(title, run) of every grid in the study, in a fixed order."""
    out = []
    for name, label in (("exact", "exact, population"), ("sampled", "exact, sampled G")):
        for v, run in (study.get(name) or {}).items():
            out.append((f"{label}: {v}", run))
    if study.get("lm"):
        out.append(("LM (addition): grpo", study["lm"]))
    for label, runs in (study.get("extra") or {}).items():
        for v, run in runs.items():
            out.append((f"{label}: {v}", run))
    return out


def collapse_rules(run) -> dict:
    """The grid's collapse rules (exact: its train config; LM: its run config)."""
    meta = run["meta"]
    return ((meta.get("train") or {}).get("collapse")
            or ((meta.get("run") or {}).get("rl") or {}).get("collapse") or {})


def warmup(run) -> int:
    return int(collapse_rules(run).get("warmup", 0) or 0)


def cos_trace(run):
    """The consecutive-gradient cosine `cos/consecutive_grads` (update directions h_t before
    the optimizer, the right one under Adam, whose momentum makes the update cosine ≈ β1), else
    `cos/consecutive_updates` (not with momentum)."""
    momentum = (run["meta"].get("train") or {}).get("optimizer") == "adam" or bool(
        np.any(run["cells"].get("b1", np.zeros(1)) > 0))
    if mn.COS_GRADS in run["traces"]:
        return mn.COS_GRADS, run["traces"][mn.COS_GRADS]
    if mn.COS_UPDATES in run["traces"] and not momentum:   # momentum alone correlates updates
        return mn.COS_UPDATES, run["traces"][mn.COS_UPDATES]
    return None, None


def finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def fmt(x, digits=3):
    return "—" if not finite(x) else f"{x:.{digits}g}"


def grid_line(run) -> str:
    g = grid(run)
    lr = g["lrs"]
    steps = g["num_steps"] or "?"
    return (f"S ∈ {{{','.join(map(str, g['lags']))}}}, {len(lr)} η in [{lr[0]:.3g}, {lr[-1]:.3g}], "
            f"{len(g['seeds'])} seeds, T = {steps}")


def regime(run) -> dict[str, Any]:
    """The drift regime just below η_max.

    Exact grids: from the sweep's regime summary (`experiments.exact_sweep.regime_summary`): the
    median within-cycle drift ‖θ − φ‖ at each seed's η_max over S ≥ 1, in units of the clip
    radius R_clip (the drift where clipping starts); ≥ 1 is the large-drift regime, where stale
    updates are clipped. LM grids: the mean clip fraction over the steps of each S's largest
    stable η (≥ `CLIP_BINDING`: clipping binds)."""
    if run["meta"].get("variant") == "no_ratio":
        return {"label": "ratio-free control: no clip radius", "clip_frac": None}
    reg = run["fits"].get("regime")
    if reg:
        ratios = {int(s): row["drift_cycle_over_R_clip"] for s, row in
                  reg["per_b1"][0]["at_eta_max"].items()
                  if int(s) >= 1 and row.get("drift_cycle_over_R_clip") is not None}
        if ratios:
            r = float(np.median(list(ratios.values())))
            lo, hi = min(ratios.values()), max(ratios.values())
            label = ("large drift" if r >= 1 else "small drift") + (
                f": within-cycle drift at η_max {lo:.2g}–{hi:.2g}× the clip radius over "
                f"S = {min(ratios)}…{max(ratios)} (median {r:.2g}×)")
            return {"label": label, "drift_over_R_clip": r}
    tr = run["traces"]
    if mn.CLIP_FRAC not in tr:
        return {"label": "regime not measured (no traces)", "clip_frac": None}
    clip = tr[mn.CLIP_FRAC]
    g = grid(run)
    vals = []
    for i in range(len(g["lags"])):
        ok = np.where(~g["collapsed"][i].any(1))[0]
        if ok.size and g["lags"][i] >= 1:
            vals.append(np.nanmean(clip[g["index"][i, ok[-1]]]))
    if not vals:
        return {"label": "regime not measured (nothing stable at S ≥ 1)", "clip_frac": None}
    c = float(np.max(vals))
    label = ("large drift: clipping binds" if c >= CLIP_BINDING else
             "small drift: clipping does not bind") + f" (clip fraction at η_max ≤ {c:.1%})"
    return {"label": label, "clip_frac": c}


def rows_of(run):
    """Per-run arrays (S, η, collapse step) in cell order."""
    c = run["cells"]
    return c["S"].astype(int), c["lr"], c["collapse_step"].astype(int)


def horizon_rows(run):
    g = grid(run)
    steps = g["num_steps"]
    horizons = sorted({max(1, int(round(f * steps))) for f in HORIZON_FRACS})
    patience = int(collapse_rules(run).get("patience", 1) or 1)
    tab = scaling.horizon_table(g["lags"], g["lrs"], g["t_collapse"], horizons, num_steps=steps,
                                patience=min(patience, horizons[0]))
    return g, horizons, tab


def two_constraint_fit(run):
    """`scaling.fit_two_constraint` on every (S, T' = HORIZON_FRACS·T, seed) row of one sweep
    (None without traces)."""
    if not grid(run)["num_steps"]:
        return None
    _, _, tab = horizon_rows(run)
    return scaling.fit_two_constraint(tab["S"], tab["T"], tab["lo"], tab["hi"], tab["seed"],
                                      n_boot=0)
