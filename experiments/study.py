r"""The scaling-law study's results: loaders, the six figures, and the claims table.

Everything here reads finished results directories (written by `experiments.exact_sweep`,
`experiments.exact_bias` and `experiments.sweep`); nothing trains. `experiments.reproduce` runs the
experiments and calls `draw_all`; `notebooks/study.ipynb` and `experiments.report` (KIND `study`,
the tables of docs/results.md) call the same functions, so a figure, a notebook and a doc table of
one results directory cannot disagree.

A study directory holds one subdirectory per stage (see `experiments.reproduce.STAGES`):

  exact_sweep/  the exact testbed's (S, η, seed) grid, GRPO and the no-ratio control (population
                mode: no sampling noise), with per-step traces
  exact_sampled/ the same testbed in sampled mode (G responses per prompt, diffusive noise)
  exact_bias/   ‖δ‖ = ‖H(θ,φ) − H(θ,θ)‖ along stale trajectories and controlled perturbations
  lm_sweep/     the LM testbed (a small transformer on addition after SFT), (S, η, seed) grid
  lm_bias/      the LM testbed's ‖δ‖ with the sampling-noise floor removed (`experiments.lm_bias`)

Any missing stage is skipped by the figures (a panel says so) and reported as "not measured" by
the claims table.

Figures (each PNG at 300 dpi and PDF, `async_grpo.figures` style):
  1. phase     — the (S, η) collapse map with each seed's η_max and the fitted boundary;
  2. eta_max   — η_max against S on log–log axes with the S^−α fit, 1/S and the S = 0 level;
  3. t_collapse — collapse step against 1/η per S, with the t·η = const line;
  4. delta     — ‖δ‖ against s·η and against the within-cycle drift ‖θ − φ‖ (exact testbed), and
                 the LM's noise-corrected ‖δ‖ against s·η;
  5. cosine    — consecutive-update cosine traces of stable and of collapsing runs, the latter
                 aligned on their collapse step;
  6. reward    — objective / reward curves at one S across η: improvement, then collapse.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from typing import Any, Callable

import matplotlib
import numpy as np

from async_grpo import figures, results
from async_grpo import metric_names as mn
from async_grpo import learning, scaling
from experiments import claims
from experiments.grids import alpha_of, cos_trace, finite, grid, grids_of, null_of, warmup
from experiments import learn_control
from experiments.claims import claim5_cosine, claim6_learning

FIGURES = ("phase", "eta_max", "t_collapse", "delta", "cosine", "reward", "learning_curves",
           "eta_star", "ceiling", "learning_time", "learning_control")

# The claims' verdict thresholds live in their modules (experiments/claims); these two describe
# the grids the figures and the claims share.


# ----------------------------------------------------------------------------------------------
# Loading.
# ----------------------------------------------------------------------------------------------


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _run_of(gr: results.GridResult) -> dict[str, Any]:
    """A grid as the figures and claims use it: {"result" (the GridResult), "cells" (axes and
    summaries as columns, in cell order), "traces" {canonical name: [C, T / stride]}, "stride"
    (steps per trace point: block means when > 1), "meta", "fits", "dir"}."""
    return {"result": gr, "cells": gr.cells(), "traces": gr.curves, "stride": gr.trace_every,
            "meta": gr.meta, "fits": gr.fits, "dir": gr.dir}


def load_exact_variant(vdir: str) -> dict[str, Any]:
    """One variant of an exact sweep (its GridResult, `_run_of`)."""
    return _run_of(results.read(vdir))


def load_exact(d: str) -> dict[str, dict]:
    """{variant: run} of an exact-sweep directory (empty if missing)."""
    return {v: _run_of(gr) for v, gr in results.read_sweep(d).items()}


def load_lm(d: str) -> dict[str, Any] | None:
    """An LM sweep directory's run (`_run_of`), or None if it has no result."""
    return _run_of(results.read(d)) if results.exists(d) else None


def load_bias(d: str) -> dict[str, Any] | None:
    if not os.path.exists(os.path.join(d, "bias.json")):
        return None
    canon = lambda t: {mn.canonical(k): v for k, v in t.items()}  # noqa: E731
    return {"summary": _read_json(os.path.join(d, "bias.json")),
            "trajectory": canon(results.csv_columns(os.path.join(d, "trajectory.csv"))),
            "controlled": canon(results.csv_columns(os.path.join(d, "controlled.csv"))), "dir": d}


def load_lm_bias(d: str) -> dict[str, Any] | None:
    """experiments.lm_bias's results (bias.json: rows and fits), or None."""
    path = os.path.join(d, "bias.json")
    if not os.path.exists(path):
        return None
    return dict(_read_json(path), dir=d)


def load_learn(d: str) -> dict[str, Any] | None:
    """A learning-regime LM grid (`sweep_lm.py:learn`) as claim 6 and Figure 7 read it:
    {"lags", "lrs", "seeds", "eval_steps", "heldout" [lags, lrs, seeds, evals] (what each
    evaluation measured, after a collapse too), "collapse_step" [lags, lrs, seeds] (−1: none),
    "run"}; None without a result or without in-program evaluations."""
    if not results.exists(d):
        return None
    gr = results.read(d)
    if mn.HELDOUT_ACC not in gr.evals or gr.eval_steps is None:
        return None
    g = results.cube(gr)
    idx = g["index"]
    return {"lags": g["lags"], "lrs": g["lrs"], "seeds": g["seeds"],
            "eval_steps": np.asarray(gr.eval_steps),
            "heldout": np.asarray(gr.evals[mn.HELDOUT_ACC], float)[idx],
            "collapse_step": np.asarray(gr.summaries[mn.COLLAPSE_STEP])[idx],
            "run": _run_of(gr)}


# The bench's row names (bench/async_pipeline.py) of the parts of a step.
_T_GEN, _T_LEARN = "sampling + reward (alone)", "learner step (alone)"
_T_SUM, _T_S0, _T_S1 = "sum of parts", "pipeline S=0", "pipeline S=1"


def load_learn_time(d: str) -> dict[str, Any] | None:
    """`python -m bench.async_pipeline --config=bench/async_pipeline_config.py:learn --workdir=d`'s
    medians over blocks: {"t_gen", "t_learn", "overhead" (the pipeline's own cost per step at
    S = 0: its step minus the parts run alone, ≥ 0), "pipeline_s0", "pipeline_s1", "device",
    "machine", "blocks"}; None without it."""
    path = os.path.join(d, "async_pipeline.json")
    if not os.path.exists(path):
        return None
    r = _read_json(path)
    med = {k: float(np.median(v)) for k, v in r["seconds_or_fraction"].items()}
    return {"t_gen": med[_T_GEN], "t_learn": med[_T_LEARN],
            "overhead": max(0.0, med[_T_S0] - med[_T_SUM]), "pipeline_s0": med[_T_S0],
            "pipeline_s1": med[_T_S1], "device": r.get("device", "?"),
            "machine": r.get("machine", {}), "blocks": r.get("blocks")}


CEILING_FRAC = 0.9   # "time to 90 % of the S = 0 ceiling"


def learning_time_rows(learn: dict[str, Any], tm: dict[str, Any]) -> list[dict[str, Any]]:
    """Per S, at its best grid η (by area, seed mean): seconds per step of the time model
    (`learning.step_seconds`, separate devices), the steps and the seconds until the seed-mean
    held-out accuracy first reaches CEILING_FRAC × the S = 0 ceiling (the seed-mean final
    accuracy at S = 0's best η; interpolated between evaluations), and where a step's time goes."""
    lags, lrs, steps = list(learn["lags"]), np.asarray(learn["lrs"]), learn["eval_steps"]
    area = learn["heldout"].mean(-1).mean(-1)                  # [lags, lrs], seed mean
    best = area.argmax(1)
    if 0 not in lags:
        raise ValueError("the time to the S = 0 ceiling needs S = 0 in the learning grid")
    i0 = lags.index(0)
    ceiling = float(learn["heldout"][i0, best[i0], :, -1].mean())
    target = CEILING_FRAC * ceiling
    rows = []
    for i, s in enumerate(lags):
        curve = learn["heldout"][i, best[i]].mean(0)
        sec = learning.step_seconds(int(s), tm["t_gen"], tm["t_learn"], tm["overhead"])
        hit = learning.first_crossing(steps, curve, target)
        bound = "gen" if tm["t_gen"] >= tm["t_learn"] else "learn"
        rows.append({"S": int(s), "lr": float(lrs[best[i]]), "step_s": sec,
                     "steps_to_target": hit, "seconds_to_target": None if hit is None
                     else hit * sec, "target": target, "ceiling": ceiling,
                     "bound_by": "gen + learn" if s == 0 else bound, "curve": curve})
    return rows


def load_study(d: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    """Every stage of a study directory that has results, plus `extra` grid directories
    ({label: path}, e.g. more grids of the same testbed) shown and tabulated after them: a
    learning grid (one with in-program held-out evaluations, `load_learn`) joins claim 6's rows
    ("learn_extra"), any other grid the rows of claims 2–5 ("extra")."""
    learn_time = load_learn_time(os.path.join(d, "lm_learn_time"))
    learn_extra = {label: g for label, g in ((label, load_learn(path))
                                             for label, path in (extra or {}).items()) if g}
    return {"exact": load_exact(os.path.join(d, "exact_sweep")),
            "sampled": load_exact(os.path.join(d, "exact_sampled")),
            "bias": load_bias(os.path.join(d, "exact_bias")),
            "lm": load_lm(os.path.join(d, "lm_sweep")),
            "lm_bias": load_lm_bias(os.path.join(d, "lm_bias")),
            "learn": load_learn(os.path.join(d, "lm_learn")),
            "learn_time": learn_time,
            "learn_control": learn_control.compare(os.path.join(d, "lm_learn_control"),
                                                   timing=learn_time),
            "dir": d, "learn_extra": learn_extra,
            "extra": {label: _load_grid_dir(path) for label, path in (extra or {}).items()
                      if label not in learn_extra}}


def _load_grid_dir(path: str) -> dict[str, dict]:
    """{variant: run} of an exact sweep, or {"grpo": run} of a directory that is one grid."""
    return {v: _run_of(gr) for v, gr in results.read_sweep(path).items()}


# ----------------------------------------------------------------------------------------------
# Grids as arrays.
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Figures.
# ----------------------------------------------------------------------------------------------


def _empty(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def _edges(x):
    lx = np.log(x)
    mid = (lx[1:] + lx[:-1]) / 2
    step = lx[1] - lx[0] if len(lx) > 1 else 1.0
    return np.exp(np.concatenate([[lx[0] - step / 2], mid, [lx[-1] + step / 2]]))


def _grid_axes(n):
    """Two panels per row (legends sit below each panel), full width."""
    nrows = max(1, -(-n // 2))
    fig, axes = figures.figure("full", ncols=2, nrows=nrows, aspect=1.15, squeeze=False)
    return fig, axes.ravel()


def fig_phase(study, stem: str) -> None:
    """Figure 1: collapse fraction over (η, S) per grid, each seed's η_max, the fitted boundary."""
    panels = grids_of(study)
    with figures.style():
        fig, axes = _grid_axes(max(1, len(panels)))
        if not panels:
            _empty(axes[0], "no grid results")
        im = None
        for ax, (title, run) in zip(axes, panels):
            g = grid(run)
            frac = g["collapsed"].mean(2)
            y = np.arange(len(g["lags"]) + 1) - 0.5
            im = ax.pcolormesh(_edges(g["lrs"]), y, frac, cmap=figures.SEQUENTIAL, vmin=0, vmax=1)
            ax.set_xscale("log")
            # labels at the decades only: on a narrow range matplotlib also labels the minor
            # ticks, and they overlap into an unreadable run
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_yticks(range(len(g["lags"])), [str(s) for s in g["lags"]])
            eta, _ = scaling.eta_max_per_seed(g["lrs"], g["collapsed"])
            for i in range(len(g["lags"])):
                ax.plot(eta[i], np.full(eta.shape[1], i), "|", color="white", ms=6, mew=1.0,
                        label="η_max of one seed" if i == 0 else None)
            fit = alpha_of(run)
            if fit.get("alpha") is not None and fit.get("log_c") is not None:
                pos = [(i, s) for i, s in enumerate(g["lags"]) if s >= 1]
                ax.plot([np.exp(fit["log_c"]) * s ** (-fit["alpha"]) for _, s in pos],
                        [i for i, _ in pos], "--", color=figures.OKABE_ITO[3],
                        label=f"fit S^−α, α = {fit['alpha']:.2f}")
            ax.set_xlabel("learning rate η")
            ax.set_ylabel("staleness S")
            ax.set_title(title, loc="left")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), facecolor="0.5",
                      frameon=True, edgecolor="none", labelcolor="white")
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        if im is not None:
            fig.colorbar(im, ax=list(axes[:max(1, len(panels))]), location="right",
                         shrink=0.8).set_label("fraction of seeds collapsed")
        fig.suptitle("Figure 1. Phase diagram: where runs collapse", fontsize=8)
        figures.save(fig, stem)


def fig_eta_max(study, stem: str) -> None:
    """Figure 2: η_max(S) per grid, log–log: each seed's bracket on the grid (last stable η to
    the first collapsed one; censored seeds as bounds), the geometric mean of the brackets'
    middles, the α fit, the null model, 1/S, S = 0."""
    panels = grids_of(study)
    with figures.style():
        fig, axes = _grid_axes(max(1, len(panels)))
        if not panels:
            _empty(axes[0], "no grid results")
        for ax, (title, run) in zip(axes, panels):
            g = grid(run)
            eta, cens = scaling.eta_max_per_seed(g["lrs"], g["collapsed"])
            pos = g["lags"] >= 1
            s_pos = g["lags"][pos]
            # Each seed's η_max is a bracket on the grid: from its last stable η to the next grid
            # η, which collapsed (what the censored fit uses); seeds side by side in S.
            lrs = np.asarray(g["lrs"], float)
            upper = lrs[np.minimum(np.searchsorted(lrs, eta) + 1, len(lrs) - 1)]
            mid = np.where(cens == 0, np.sqrt(eta * upper), eta)
            n_seeds = eta.shape[1]
            jitter = 2.0 ** (0.06 * (np.arange(n_seeds) - (n_seeds - 1) / 2))
            xs = s_pos[:, None] * jitter[None, :]
            br = cens[pos] == 0
            if br.any():
                ax.vlines(xs[br], eta[pos][br], upper[pos][br], color="0.6", lw=1.0,
                          label="seed: stable → collapsed")
            for code, marker, label in ((1, "^", "seed ≥ (none collapsed)"),
                                        (-1, "v", "seed ≤ (all collapsed)")):
                sel = cens[pos] == code
                if sel.any():
                    ax.plot(xs[sel], eta[pos][sel], marker, ls="none", color="0.6", ms=3,
                            mfc="none", label=label)
            gm = np.exp(np.log(mid[pos]).mean(1))
            ax.plot(s_pos, gm, "o-", color="k", ms=3,
                    label="geo. mean of middles")
            fit = alpha_of(run)
            if fit.get("alpha") is not None and (fit.get("ci") or [None])[0] is not None:
                ax.plot(s_pos, np.exp(fit["log_c"]) * s_pos ** (-fit["alpha"]), "--",
                        color=figures.OKABE_ITO[3],
                        label=f"S^−α, α = {fit['alpha']:.2f}\n[{fit['ci'][0]:.2f}, {fit['ci'][1]:.2f}]")
            elif len(s_pos):
                ax.plot([], [], " ", label="α: n/a (censored)")
            null = null_of(run)
            if finite(null.get("c")) and len(s_pos):
                ax.plot(s_pos, null["eta0"] / (s_pos + null["c"]), "-", lw=0.9,
                        color=figures.OKABE_ITO[4],
                        label=f"null η0/(S+c), c = {null['c']:.2g}")
            if len(s_pos):
                ax.plot(s_pos, gm[0] * s_pos[0] / s_pos, ":", color=figures.OKABE_ITO[0],
                        label="1/S via S = 1")
            if 0 in g["lags"]:
                ax.axhline(np.exp(np.log(mid[list(g["lags"]).index(0)]).mean()), ls="-.",
                           color=figures.OKABE_ITO[2], label="S = 0")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("staleness S")
            ax.set_ylabel("η_max (largest stable η)")
            ax.set_title(title, loc="left")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2,
                      columnspacing=0.8, handlelength=1.5)
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        fig.suptitle("Figure 2. Largest stable learning rate against staleness", fontsize=8)
        figures.save(fig, stem)


def fig_t_collapse(study, stem: str) -> None:
    """Figure 3: collapse step + 1 against 1/η, one colour per S; t·η = const is a line of slope 1."""
    panels = grids_of(study)
    with figures.style():
        fig, axes = _grid_axes(max(1, len(panels)))
        if not panels:
            _empty(axes[0], "no grid results")
        for ax, (title, run) in zip(axes, panels):
            g = grid(run)
            warm = warmup(run)
            colors = figures.palette(min(7, len(g["lags"])))
            allx, ally = [], []
            for i, s in enumerate(g["lags"]):
                col = g["collapsed"][i]
                x = np.broadcast_to(1 / g["lrs"][:, None], col.shape)[col]
                y = g["t_collapse"][i][col] + 1.0
                late = y > warm + 1
                c = colors[i % len(colors)]
                ax.plot(x[late], y[late], "o", ms=3, color=c, label=f"S = {s}")
                ax.plot(x[~late], y[~late], "o", ms=3, mfc="none", color=c)
                allx += list(x[late])
                ally += list(y[late])
            if allx:
                k = float(np.median(np.array(ally) / np.array(allx)))
                xx = np.array([min(allx), max(allx)])
                ax.plot(xx, k * xx, ":", color="k", label=f"t·η = {k:.3g}")
                ax.set_xscale("log")
                ax.set_yscale("log")
            else:
                _empty(ax, "no collapse after the warm-up")
            ax.set_xlabel("1/η")
            ax.set_ylabel("collapse step + 1")
            ax.set_title(title, loc="left")
            figures.legend_only(ax, [("flagged at the warm-up end", dict(
                marker="o", ls="none", mfc="none", color="0.4", ms=3))], ncol=2,
                loc="upper center", bbox_to_anchor=(0.5, -0.3))
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        fig.suptitle("Figure 3. When runs collapse: collapse step against 1/η per S", fontsize=8)
        figures.save(fig, stem)


def _lm_delta_panels(ax, lmb) -> None:
    """‖δ‖ of the LM (noise floor removed, 2-SE intervals) against s·η and against the drift,
    one colour per η; unresolved cells as ▼ at their upper end; × the resolved policy-gradient
    part alone (the surrogate without its KL penalty); one batch's sampling noise dashed."""
    if lmb is None:
        for a in ax:
            _empty(a, "no lm_bias results")
        return
    rows = [r for r in lmb["rows"] if r["lag"] >= 1]
    lrs = sorted({r["lr"] for r in rows})
    colors = figures.palette(max(2, len(lrs)))
    noise = np.median([r["noise_single"] for r in lmb["rows"]])
    for a, xk, xlabel, tag in ((ax[0], "s_eta", "s·η (lag × learning rate)", "(c)"),
                               (ax[1], "drift", "drift ‖θ_t − θ_(t−s)‖", "(d)")):
        for j, lr in enumerate(lrs):
            sel = [r for r in rows if r["lr"] == lr]
            x = np.asarray([r[xk] for r in sel])
            y, lo, hi = (np.asarray([r[k] for r in sel]) for k in ("delta_norm", "delta_lo",
                                                                   "delta_hi"))
            ok = np.asarray([r["resolved"] for r in sel], bool)
            a.errorbar(x[ok], y[ok], yerr=[y[ok] - lo[ok], hi[ok] - y[ok]], fmt="o", ms=2.5,
                       lw=0.7, color=colors[j], label=f"η = {lr:g}")
            a.plot(x[~ok], hi[~ok], "v", ms=2.5, color=colors[j], alpha=0.6)
            pg = np.asarray([r.get("pg_resolved", False) for r in sel], bool)
            a.plot(x[pg], [r["pg_norm"] for r, k in zip(sel, pg) if k], "x", ms=3, mew=0.8,
                   color=colors[j])
        a.axhline(noise, color="0.5", ls="--", lw=0.8, label="one batch's sampling noise")
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel(xlabel)
        a.set_ylabel("‖δ‖, noise floor removed")
        a.set_title(f"{tag} LM testbed", loc="left")
    ax[0].plot([], [], "v", color="0.4", ms=2.5,
               label="unresolved: upper end of the 2-SE interval")
    ax[0].plot([], [], "x", color="0.4", ms=3, label="policy-gradient part alone (no KL term)")
    # A figure legend below both panels: an axes legend that reaches past its panel makes the
    # layout widen that panel's column, which left a wide empty gap between the columns.
    ax[0].figure.legend(*ax[0].get_legend_handles_labels(), loc="outside lower center", ncol=3)


def fig_delta(study, stem: str) -> None:
    """Figure 4: ‖δ‖ along stale exact-testbed trajectories against s·η and against the drift
    ‖θ − φ‖, and the LM's ‖δ‖ (noise floor removed) against s·η."""
    bias = study.get("bias")
    with figures.style():
        fig, axes = figures.figure("full", ncols=2, nrows=2, aspect=0.8)
        _lm_delta_panels(axes[1], study.get("lm_bias"))
        ax = axes[0]
        if bias is None:
            for a in ax:
                _empty(a, "no exact_bias results")
        else:
            tr = bias["trajectory"]
            stale = (tr["lag"] > 0) & (tr["delta_norm"] > 0)
            lrs = np.unique(tr["lr"][stale])
            colors = figures.palette(min(7, len(lrs)))
            for j, lr in enumerate(lrs):
                sel = stale & (tr["lr"] == lr)
                c = colors[j % len(colors)]
                ax[0].plot(tr["lag"][sel] * lr, tr["delta_norm"][sel], ".", ms=1.5, color=c,
                           alpha=0.4, label=f"η = {lr:g}")
                ax[1].plot(tr[mn.DRIFT_CYCLE][sel], tr["delta_norm"][sel], ".", ms=1.5, color=c,
                           alpha=0.4)
            onset = bias["summary"]["traj"].get("clip_onset_drift_p05")
            if onset:
                ax[1].axvline(onset, color="k", ls="--", lw=0.8,
                              label=f"clip onset (5th pct drift) {onset:.2g}")
            slope = bias["summary"]["traj"]["vs_drift_small"]["slope"]
            x = np.geomspace(max(tr[mn.DRIFT_CYCLE][stale].min(), 1e-6),
                             tr[mn.DRIFT_CYCLE][stale].max(), 20)
            ax[1].plot(x, slope * x, ":", color="k", label=f"‖δ‖ = {slope:.2g}·drift")
            for a in ax:
                a.set_xscale("log")
                a.set_yscale("log")
                a.set_ylabel("‖δ‖ = ‖H(θ,φ) − H(θ,θ)‖")
            ax[0].set_xlabel("s·η (lag × learning rate)")
            ax[1].set_xlabel("within-cycle drift ‖θ − φ‖")
            ax[0].set_title("(a) exact testbed", loc="left")
            ax[1].set_title("(b) exact testbed", loc="left")
            ax[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3, markerscale=4)
            ax[1].legend(loc="upper center", bbox_to_anchor=(0.5, -0.25))
        fig.suptitle("Figure 4. Staleness bias of the surrogate gradient", fontsize=8)
        figures.save(fig, stem)


def aligned_traces(trace: np.ndarray, t_collapse: np.ndarray, before: int) -> np.ndarray:
    """[runs, before] slices of `trace` ending at each run's collapse step (NaN where short)."""
    out = np.full((len(trace), before), np.nan)
    for i, t in enumerate(t_collapse):
        lo = max(0, t - before + 1)
        seg = trace[i, lo:t + 1]
        out[i, before - len(seg):] = seg
    return out


def _nanpct(x, q, axis):
    """np.nanpercentile without the warning for all-NaN columns (a running mean's first
    window − 1 steps are NaN in every run); those columns stay NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(x, q, axis=axis)


def fig_cosine(study, stem: str, window: int = claim5_cosine.COS_WINDOW) -> None:
    """Figure 5: running mean of the consecutive-update (exact) / consecutive-gradient (LM) cosine:
    stable runs against the step, collapsing runs against steps before their collapse."""
    runs = [(t, r) for t, r in grids_of(study) if cos_trace(r)[0] is not None]
    with figures.style():
        fig, axes = _grid_axes(max(1, len(runs)))
        if not runs:
            _empty(axes[0], "no cosine traces (run the sweeps with traces kept)")
        for ax, (title, run) in zip(axes, runs):
            name, tr = cos_trace(run)
            rm = scaling.running_mean(tr, max(1, window // run.get("stride", 1)))
            g = grid(run)
            col = run["cells"]["collapsed"].astype(bool)
            tc = run["cells"]["collapse_step"].astype(int)
            warm = warmup(run)
            stride = run.get("stride", 1)
            late = col & (tc > warm)
            stable = ~col
            steps = np.arange(tr.shape[1]) * stride
            tc = tc // stride             # the trace point holding the collapse step
            if stable.any():
                q = _nanpct(rm[stable], [25, 50, 75], axis=0)
                ax.plot(steps, q[1], color=figures.OKABE_ITO[0],
                        label=f"stable runs (n={stable.sum()}), median")
                ax.fill_between(steps, q[0], q[2], color=figures.OKABE_ITO[0], alpha=0.25,
                                lw=0, label="interquartile range")
            if late.any():
                before = int(min(tr.shape[1], max(20, np.median(tc[late]))))
                al = aligned_traces(rm[late], tc[late], before)
                x = np.arange(-before + 1, 1) * stride
                q = _nanpct(al, [25, 50, 75], axis=0)
                ax2 = ax.twiny()
                ax2.plot(x, q[1], color=figures.OKABE_ITO[3],
                         label=f"collapsing runs (n={late.sum()}), median")
                ax2.fill_between(x, q[0], q[2], color=figures.OKABE_ITO[3], alpha=0.25, lw=0)
                ax2.set_xlabel("steps relative to collapse (collapsing runs)",
                               color=figures.OKABE_ITO[3])
                h2, l2 = ax2.get_legend_handles_labels()
            else:
                h2, l2 = [], []
            ax.axhline(0, color="0.5", lw=0.6)
            ax.set_xlabel("step (stable runs)")
            ax.set_ylabel(f"cosine, mean of last {max(1, window // stride) * stride} steps")
            ax.set_title(title, loc="left", pad=18)
            h, l = ax.get_legend_handles_labels()
            ax.legend(h + h2, l + l2, loc="upper center", bbox_to_anchor=(0.5, -0.22))
            del g
        for ax in axes[len(runs):]:
            ax.set_visible(False)
        fig.suptitle("Figure 5. Consecutive-gradient cosine: stable against collapsing runs",
                     fontsize=8)
        figures.save(fig, stem)


def _reward_trace(run):
    for k in (mn.OBJECTIVE, mn.REWARD):
        if k in run["traces"]:
            return k, run["traces"][k]
    return None, None


def pick_lag(g) -> int:
    """The S shown in the reward figure: the largest S whose η row has both outcomes."""
    frac = g["collapsed"].mean((1, 2))
    mixed = [i for i in range(len(g["lags"])) if 0 < frac[i] < 1]
    return mixed[-1] if mixed else len(g["lags"]) - 1


def fig_reward(study, stem: str) -> None:
    """Figure 6: objective J (exact) or rollout reward (LM) of seed 0 at one S, across η."""
    runs = [(t, r) for t, r in grids_of(study) if _reward_trace(r)[0] is not None]
    with figures.style():
        fig, axes = _grid_axes(max(1, len(runs)))
        if not runs:
            _empty(axes[0], "no reward traces")
        for ax, (title, run) in zip(axes, runs):
            name, tr = _reward_trace(run)
            g = grid(run)
            i = pick_lag(g)
            lrs = g["lrs"]
            pick = np.unique(np.linspace(0, len(lrs) - 1, min(6, len(lrs))).round().astype(int))
            colors = figures.palette(len(pick))
            for c, j in zip(colors, pick):
                row = g["index"][i, j, 0]
                y = tr[row]
                stride = run.get("stride", 1)
                ax.plot(np.arange(len(y)) * stride, y, color=c, lw=0.9,
                        label=f"η = {lrs[j]:.3g}" + (" (collapsed)" if g["collapsed"][i, j, 0]
                                                       else ""))
                if g["collapsed"][i, j, 0]:
                    t = g["t_collapse"][i, j, 0]
                    ax.plot([t], [y[min(t // stride, len(y) - 1)]], "x", color=c, ms=5)
            ax.set_xlabel("learner step")
            ax.set_ylabel("J(θ)" if name == "J" else "mean rollout reward")
            ax.set_title(f"{title}, S = {g['lags'][i]}, seed {g['seeds'][0]}", loc="left")
            figures.legend_only(ax, [("collapse flagged", dict(marker="x", ls="none",
                                                               color="0.3", ms=5))],
                                loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
        for ax in axes[len(runs):]:
            ax.set_visible(False)
        fig.suptitle("Figure 6. Improvement, then collapse: reward curves across η", fontsize=8)
        figures.save(fig, stem)


def _learning_figure(title: str, ncols: int = 2, aspect: float = 1.1, need_time: bool = False):
    """Decorates `draw(study, g, res, fig, axes, title)`, a figure of the learning grid, into
    `fig_*(study, stem)`: the figure style and size, claim 6's analysis of the grid (`res`), the
    save, and, when the results it needs are missing, a figure that says which."""
    def wrap(draw):
        @functools.wraps(draw)
        def fig_fn(study, stem: str) -> None:
            g = study.get("learn")
            ok = g is not None and len(g["lrs"]) >= 3 and (not need_time or (
                study.get("learn_time") is not None and 0 in list(g["lags"])))
            with figures.style():
                fig, axes = figures.figure("full", ncols=ncols, aspect=aspect, squeeze=False)
                axes = axes.ravel()
                fig.suptitle(title, fontsize=8)
                if not ok:
                    for ax in axes:
                        _empty(ax, "needs the learning grid (lm_learn, ≥ 3 η)" +
                               (",\nS = 0 and its timing (lm_learn_time)" if need_time else ""))
                else:
                    res = claim6_learning.analyse(g["lags"], g["lrs"], g["seeds"],
                                                  g["eval_steps"], g["heldout"],
                                                  g["collapse_step"])
                    draw(study, g, res, fig, axes, title)
                figures.save(fig, stem)
        return fig_fn
    return wrap


def _best_lr_index(g, r) -> int:
    return int(np.argmin(np.abs(np.asarray(g["lrs"]) - r["best_lr"])))


@_learning_figure("Figure 7. Learning under staleness: held-out accuracy")
def fig_learning_curves(study, g, res, fig, axes, title) -> None:
    """Figure 7: (a) held-out accuracy against steps at each S's best η (seed mean, the seeds'
    range shaded, the ScaleRL fit of the seed mean dashed), S = 0 included; (b) each η's area
    (mean accuracy over the run, seed mean) per S, η* (median over seeds) dotted."""
    lags, lrs, steps = list(g["lags"]), np.asarray(g["lrs"]), g["eval_steps"]
    show = lags[:7]
    colors = dict(zip(show, figures.palette(len(show))))
    area = g["heldout"].mean(-1)
    for s in show:
        i, r = lags.index(s), res["per_S"][int(s)]
        acc = g["heldout"][i, _best_lr_index(g, r)]
        axes[0].plot(steps, acc.mean(0), "o-", ms=2, color=colors[s],
                     label=f"S = {s}, η = {r['best_lr']:.2g}")
        axes[0].fill_between(steps, acc.min(0), acc.max(0), color=colors[s], alpha=0.15,
                             lw=0)
        if r["fit"] is not None:
            f, tt = r["fit"], np.linspace(0, steps[-1], 200)
            axes[0].plot(tt, learning.saturating_curve(tt, f["R0"], f["A"], f["t_mid"],
                                                       f["B"]), "--", lw=0.7,
                         color=colors[s])
        axes[1].plot(lrs, area[i].mean(1), "o-", ms=2, color=colors[s], label=f"S = {s}")
        axes[1].axvline(r["eta_star_median"], color=colors[s], lw=0.6, ls=":")
    axes[0].set(xlabel="learner step", ylabel="held-out greedy accuracy")
    axes[0].set_title("(a) at each S's best η; band: seeds", loc="left")
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    axes[1].set(xscale="log", xlabel="learning rate η",
                ylabel="area (mean held-out accuracy)")
    axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[1].set_title("(b) area against η; η* dotted", loc="left")
    axes[1].legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3)
    fig.suptitle(f"{title} ({len(g['seeds'])} seeds, evaluations every "
                 f"{int(steps[1] - steps[0])} steps, T = {int(steps[-1])})", fontsize=8)


@_learning_figure("Figure 8. The best learning rate η* and the largest stable one against staleness",
                  ncols=1, aspect=0.75)
def fig_eta_star(study, g, res, fig, axes, title) -> None:
    """Figure 8: η*(S) per seed (open: censored at the grid's edge) and its median, η_max(S) of
    the same grid (geometric mean over seeds), claim 6's fit η* ∝ S^−γ with its interval, and
    1/S through the S = 1 median. S = 0 is drawn at S = ½."""
    ax, lags, lrs = axes[0], list(g["lags"]), np.asarray(g["lrs"])
    eta_max, emax_cens = scaling.eta_max_per_seed(lrs, g["collapse_step"] >= 0)
    x = np.where(np.asarray(lags) == 0, 0.5, np.asarray(lags, float))
    for code, marker, label in ((0, "o", "η*, one seed"), (-1, "v", "η*, one seed, ≤"),
                                (1, "^", "η*, one seed, ≥")):
        sel = res["censor"] == code
        xs = np.repeat(x[:, None], sel.shape[1], 1)
        if sel.any():
            ax.plot(xs[sel], res["eta_star"][sel], marker, ls="none", ms=3, color="0.6",
                    mfc="none" if code else "0.6", label=label)
    med = np.median(res["eta_star"], 1)
    ax.plot(x, med, "o-", color="k", label="η* (median over seeds)")
    gm = np.exp(np.log(eta_max).mean(1))
    bound = np.all(emax_cens == 1, axis=1)       # nothing collapsed: η_max ≥ the grid's top
    ax.plot(x, gm, "-", color=figures.OKABE_ITO[3], lw=0.8)
    for sel, marker, label in ((~bound, "s", "η_max (geometric mean over seeds)"),
                               (bound, "^", "η_max ≥ (no collapse up to the grid's top)")):
        if sel.any():
            ax.plot(x[sel], gm[sel], marker, ls="none", color=figures.OKABE_ITO[3],
                    label=label)
    pos = x >= 1
    law = res["law"]
    if law.get("gamma") is not None:
        c = np.exp(np.mean(np.log(med[pos]) + law["gamma"] * np.log(x[pos])))
        ci = (f" [{law['lo']:.2f}, {law['hi']:.2f}]" if law["lo"] is not None else "")
        ax.plot(x[pos], c * x[pos] ** -law["gamma"], "--", color=figures.OKABE_ITO[0],
                label=f"fit S^−γ, γ = {law['gamma']:.2f}{ci}")
    if pos.any():
        ax.plot(x[pos], med[pos][0] * x[pos][0] / x[pos], ":", color=figures.OKABE_ITO[2],
                label="1/S through S = 1")
    ax.set(xscale="log", yscale="log", xlabel="staleness S (S = 0 drawn at ½)",
           ylabel="learning rate")
    ax.minorticks_off()
    ax.set_xticks(x, [str(s) for s in lags])
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title, fontsize=8)


@_learning_figure("Figure 9. Ceiling A, steepness B and area against staleness", ncols=3,
                  aspect=1.2)
def fig_ceiling(study, g, res, fig, axes, title) -> None:
    """Figure 9: the ScaleRL ceiling A and steepness B at each S's best η (mean and 95 %
    t-interval over the seeds whose fit is identified), beside the area: does staleness lower
    the ceiling, or only slow the climb?"""
    lags = [int(s) for s in g["lags"]]
    xs = np.arange(len(lags))
    for ax, key, label in ((axes[0], "A", "ceiling A"), (axes[1], "B", "steepness B"),
                           (axes[2], "area", "area (mean accuracy)")):
        for x, s in zip(xs, lags):
            t = res["per_S"][s][key]
            if t["mean"] is None:
                continue
            err = (None if t["lo"] is None else
                   [[t["mean"] - t["lo"]], [t["hi"] - t["mean"]]])
            ax.errorbar([x], [t["mean"]], yerr=err, fmt="o", color="k", ms=3, capsize=2)
        ax.set_xticks(xs, [str(s) for s in lags])
        ax.set(xlabel="staleness S", ylabel=label)
        ax.set_title(f"({'abc'['A B area'.split().index(key)]}) {label}", loc="left")
    fig.suptitle(f"{title} (best η per S; 95 % t over seeds)", fontsize=8)


@_learning_figure("Figure 10. The learning regime against wall-clock", need_time=True)
def fig_learning_time(study, g, res, fig, axes, title) -> None:
    """Figure 10: held-out accuracy against modeled wall-clock at each S's best η (seed mean;
    seconds per step from `learning.step_seconds` with t_gen and t_learn measured alone), the
    target CEILING_FRAC × the S = 0 ceiling; and the seconds to reach it per S."""
    del res
    tm = study["learn_time"]
    rows = learning_time_rows(g, tm)
    shown = rows[:7]
    colors = figures.palette(len(shown))
    for c, r in zip(colors, shown):
        axes[0].plot(g["eval_steps"] * r["step_s"], r["curve"], "o-", ms=2, color=c,
                     label=f"S = {r['S']} ({1e3 * r['step_s']:.0f} ms/step)")
    axes[0].axhline(rows[0]["target"], ls=":", color="0.4", lw=0.8,
                    label=f"{CEILING_FRAC:.0%} of the S = 0 ceiling")
    axes[0].set(xlabel="modeled wall-clock (s), separate devices",
                ylabel="held-out greedy accuracy")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=4)
    axes[0].set_title("(a) accuracy against time at each S's best η", loc="left")
    xs = np.arange(len(rows))
    secs = [r["seconds_to_target"] if r["seconds_to_target"] is not None else np.nan
            for r in rows]
    axes[1].bar(xs, secs, color="0.5")
    for x, r in zip(xs, rows):
        if r["seconds_to_target"] is None:
            axes[1].text(x, 0, "not\nreached", ha="center", va="bottom")
    axes[1].set_xticks(xs, [str(r["S"]) for r in rows])
    axes[1].set(xlabel="staleness S", ylabel="seconds to the target")
    axes[1].set_title("(b) seconds to the target", loc="left")
    fig.suptitle(f"Figure 10. Learning against wall-clock: time model with t_gen = "
                 f"{1e3 * tm['t_gen']:.0f} ms, t_learn = {1e3 * tm['t_learn']:.0f} ms "
                 f"({tm['device']})", fontsize=8)


def fig_learning_control(study, stem: str) -> None:
    """Figure 11: (a) held-out accuracy against steps at the largest S of the LR-schedule
    comparison (`experiments.learn_control`): the best fixed η there, the drift controller and
    the VCPO baseline, against the best fixed η at S = 0 (seed means, the seeds' range shaded);
    (b) each schedule's area as a fraction of S = 0's per S (filled), and, with the step timing,
    per second (hollow: S = 0's mean accuracy over the same wall-clock window), with 95 %
    t-intervals over seeds (paired by seed) and the target."""
    cmp = study.get("learn_control")
    timed = cmp is not None and cmp.get("timing") is not None
    with figures.style():
        fig, axes = figures.figure("full", ncols=2, aspect=1.1, squeeze=False)
        axes = axes.ravel()
        title = "Figure 11. Three learning-rate schedules under staleness"
        fig.suptitle(title, fontsize=8)
        if cmp is None:
            for ax in axes:
                _empty(ax, "needs the schedule comparison (lm_learn_control)")
            figures.save(fig, stem)
            return
        arms = [a for a in learn_control.ARMS if a in cmp["grids"]]
        colors = dict(zip(arms, figures.palette(len(arms))))
        s_top = cmp["S_top"]
        ref = next(r for r in cmp["rows"] if r["S"] == 0)
        curves = [("fixed", 0, ref["lr"], "0.2", f"S = 0, best fixed η = {ref['lr']:.2g}")]
        for r in cmp["rows"]:
            if r["S"] == s_top:
                curves.append((r["arm"], s_top, r["lr"], colors[r["arm"]],
                               f"S = {s_top}, {r['arm']}"
                               + (f" η = {r['lr']:.2g}" if r["arm"] == "fixed" else
                                  f" (base η {r['lr']:.2g})")))
        for arm, s, lr, color, label in curves:
            g = cmp["grids"][arm]
            acc = g["acc"][g["lags"].index(s), int(np.argmin(np.abs(g["lrs"] - lr)))]
            axes[0].plot(g["eval_steps"], acc.mean(0), "o-", ms=2, color=color, label=label)
            axes[0].fill_between(g["eval_steps"], acc.min(0), acc.max(0), color=color,
                                 alpha=0.15, lw=0)
        axes[0].set(xlabel="learner step", ylabel="held-out greedy accuracy")
        axes[0].set_title(f"(a) S = {s_top} against S = 0; band: seeds", loc="left")
        axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
        lags = sorted({r["S"] for r in cmp["rows"] if r["S"] >= 1})
        keys = [("ratio", "o", "per step")] + ([("per_second", "s", "per second")] if timed
                                               else [])
        slots = len(arms) * len(keys)
        width = 0.8 / slots
        for k, arm in enumerate(arms):
            rows = {r["S"]: r for r in cmp["rows"] if r["arm"] == arm and r["S"] >= 1}
            for q, (key, marker, _) in enumerate(keys):
                slot = k * len(keys) + q
                xs = [i + (slot - (slots - 1) / 2) * width for i, s in enumerate(lags)
                      if s in rows]
                rs = [rows[s][key] for s in lags if s in rows]
                mean = np.asarray([r["mean"] for r in rs])
                lo = np.asarray([r["lo"] if r["lo"] is not None else r["mean"] for r in rs])
                hi = np.asarray([r["hi"] if r["hi"] is not None else r["mean"] for r in rs])
                axes[1].errorbar(xs, mean, yerr=[mean - lo, hi - mean], fmt=marker, ms=3,
                                 capsize=2, color=colors[arm],
                                 mfc=colors[arm] if q == 0 else "white",
                                 label=arm if q == 0 else None)
        axes[1].axhline(1.0, color="0.6", lw=0.6)
        axes[1].axhline(cmp["target"], ls=":", color="0.3", lw=0.8)
        axes[1].set_xticks(range(len(lags)), [str(s) for s in lags])
        axes[1].set(xlabel="staleness S", ylabel="area / S = 0's best fixed η")
        axes[1].set_title("(b) relative to S = 0; 95 % t-intervals", loc="left")
        extra = [(f"target {cmp['target']:.0%}", dict(ls=":", color="0.3", lw=0.8))]
        if timed:
            extra += [("per step", dict(marker="o", ls="", color="0.3")),
                      ("per second", dict(marker="s", ls="", color="0.3", mfc="white"))]
        figures.legend_only(axes[1], extra, loc="upper center", bbox_to_anchor=(0.5, -0.22),
                            ncol=3)
        sub = (f"{len(cmp['seeds'])} held-out seeds, T = {cmp['T']}")
        if timed:
            sub += (f"; per second: separate devices, t_gen = "
                    f"{1e3 * cmp['timing']['t_gen']:.0f} ms, t_learn = "
                    f"{1e3 * cmp['timing']['t_learn']:.0f} ms")
        fig.suptitle(f"{title}\n({sub})", fontsize=8)
        figures.save(fig, stem)


DRAW: dict[str, Callable] = {"phase": fig_phase, "eta_max": fig_eta_max,
                             "t_collapse": fig_t_collapse, "delta": fig_delta,
                             "cosine": fig_cosine, "reward": fig_reward,
                             "learning_curves": fig_learning_curves, "eta_star": fig_eta_star,
                             "ceiling": fig_ceiling, "learning_time": fig_learning_time,
                             "learning_control": fig_learning_control}


def draw(study, names, outdir: str) -> list[str]:
    """Draws figures `names` of a loaded study into `outdir`; -> the PNG paths."""
    os.makedirs(outdir, exist_ok=True)
    paths = []
    for i, name in enumerate(FIGURES):
        if name in names:
            stem = os.path.join(outdir, f"fig{i + 1}_{name}")
            DRAW[name](study, stem)
            paths.append(stem + ".png")
    return paths


# ----------------------------------------------------------------------------------------------
# The claims table (docs/results.md and <workdir>/results.md).
# ----------------------------------------------------------------------------------------------



# The claims: one module each in experiments/claims (statement, verdict rule and thresholds,
# stages, rows); the study's table is theirs.
claim_rows = claims.claim_rows
claims_markdown = claims.claims_markdown
