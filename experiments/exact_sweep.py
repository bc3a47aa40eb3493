r"""(S, η, seed) stability map of asynchronous GRPO on the exact testbed.

  python -m experiments.exact_sweep --workdir=runs/exact_sweep
  python -m experiments.exact_sweep --workdir=runs/exact_sweep_mlp --config.testbed.policy=mlp

(The config defaults to experiments/configs/exact_sweep.py; its docstring lists more launches.)

For each variant (a registered loss of `async_grpo.losses`, e.g. grpo, no_ratio, dapo, gspo) the
whole (S, η, seed[, b1]) grid is run by ONE compiled program (`exact.run_cells_chunked`: vmap over
cells, lax.scan over steps) in fixed-size chunks, through the grid runner
(`async_grpo.grid_runner`): every finished chunk is saved to <workdir>/<variant>/chunks/ (atomic
rename), so a killed sweep loses at most the chunk in flight; rerunning with the same workdir
and config reuses the saved chunks (`workdir.claim` refuses a different config, except the
analysis-only keys horizons and n_boot).

Writes one `async_grpo.results.GridResult` per variant into <workdir>/<variant>/: the cells'
axes (S, η, seed, b1), their summaries (J_init, J_final, J_best, collapse_step, collapsed, ...),
the per-step curves of `--config.keep_metrics` (default J only; block means over
`--config.trace_every` steps), and the fits: η_max per S and seed with its censoring, the fit
η_max ∝ S^−α over S ≥ 1 with a t-interval over per-seed slopes, the collapse-time law; η_max and
α at the shorter horizons T' of `--config.horizons` (a run counting as collapsed at T' iff its
collapse step is <= T'); with loss/clip_frac (or clip_frac_sampled), update_norm and
drift/within_cycle among the curves also the regime (`regime_summary`); and phase.png/.pdf.
Prints a summary table at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import logging
import jax
import numpy as np

from async_grpo import figures, grid_runner, results
from async_grpo import metric_names as mn
from async_grpo import simulate
from async_grpo import workdir as workdir_lib
from async_grpo.testbeds import exact as ex
from async_grpo import scaling as xa
from async_grpo.testbeds import exact_configs as xc
from experiments import _main

plan = xc.sweep_plan

# Keys that only change the analysis of the saved chunks, never their content: they may change
# when a sweep resumes.
_ANALYSIS_ONLY = ("horizons", "n_boot")
# Config keys added after results existed, with the value that reproduces the old behaviour.
_DEFAULTS = {"keep_metrics": "J", "trace_every": 1}


def _legacy_fingerprint(cfg: dict, variant: str) -> str:
    """The fingerprint the sweep wrote to <variant>/config_fingerprint.json before it used
    `workdir.claim` (to accept or refuse an old workdir)."""
    d = dict(cfg)
    for k, v in _DEFAULTS.items():
        if k in d and d[k] == v:
            del d[k]
    d.pop("horizons", None)
    d["variant"] = variant
    return json.dumps(d, sort_keys=True)


def claim(c, workdir: str, variants) -> None:
    """The workdir guard (`workdir.claim`, kind "exact_sweep"). A workdir written before it (a
    config_fingerprint.json per variant) resumes only with the config that wrote it."""
    cfg = json.loads(c.to_json())
    if not os.path.exists(os.path.join(workdir, workdir_lib.RECORD)):
        for v in variants:
            path = os.path.join(workdir, v, "config_fingerprint.json")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    if f.read() != _legacy_fingerprint(cfg, v):
                        raise workdir_lib.WorkdirError(
                            f"--workdir={workdir!r}: {path} records a different config (a sweep "
                            "written before workdir records); use a new --workdir or delete it.")
    # the kept metrics in the vocabulary's names: a config naming them either way resumes
    cfg["keep_metrics"] = ",".join(mn.canonical(n) for n in xc.parse_list(
        cfg.get("keep_metrics", "J"), str, "keep_metrics"))
    workdir_lib.claim(workdir, "exact_sweep", cfg, allow_changed=_ANALYSIS_ONLY,
                      defaults=_DEFAULTS)


def engine_names(train, cells, names, variant) -> dict[str, str]:
    """{canonical name: the engine's name} of the kept metrics; refuses a name the run does not
    record (e.g. h_used_norm outside sampled mode). Config and engine names may be either
    vocabulary's (`metric_names.canonical`). `cells`: the grid's (its first cell is traced)."""
    cell = simulate.cell_arrays({k: np.asarray(v)[0] for k, v in cells.items()})
    known = {mn.canonical(k): k for k in jax.eval_shape(train, cell)[0]}
    want = [mn.canonical(n) for n in names]
    bad = [n for n in want if n not in known]
    if bad:
        raise ValueError(f"--config.keep_metrics: variant {variant!r} records no metric "
                         f"{bad}; it records {sorted(known)}.")
    return {n: known[n] for n in dict.fromkeys(want)}


def exact_compute(tb, tc, cells, size, keep, every):
    """compute(idx) of the grid runner: the exact engine on cells idx (one compiled program)."""
    def compute(idx):
        sub = {k: v[idx] for k, v in cells.items()}
        m, s = ex.run_cells_chunked(tb, tc, sub, chunk_size=size, keep_metrics=list(keep.values()),
                                    trace_every=every)
        return {"curves": m, "summaries": s}
    return compute


def run_variant(c, p, variant: str, workdir: str) -> results.GridResult:
    """Runs (or resumes) one variant's grid into <workdir>/<variant>; -> its GridResult."""
    vdir = os.path.join(workdir, variant)
    tb = ex.make_testbed(p["testbeds"][variant])
    tc = p["train"]
    cells = ex.make_cells(p["lrs"], p["seeds"], p["lags"], p["b1s"], max_lag_cap=tc.max_lag_cap)
    n = len(cells["lr"])
    keep = engine_names(ex.make_train(tb, tc), cells, p["keep_metrics"], variant)
    size = min(c.chunk_size, n)
    run = grid_runner.run_chunks(os.path.join(vdir, "chunks"), n, size,
                                 exact_compute(tb, tc, cells, size, keep, p["trace_every"]),
                                 label=variant)
    summ = run.summaries
    lags, lrs, b1s = p["lags"], np.array(p["lrs"]), p["b1s"]
    shape = (len(lags), len(lrs), len(p["seeds"]), len(b1s))
    fits = {"stability": [_fits_at_b1(c, p, summ, shape, bi) for bi in range(len(b1s))]}
    regime = regime_summary(run.curves, summ, cells, lags, lrs, fits["stability"], tb.cfg, tc)
    if regime is not None:
        fits["regime"] = regime
    gr = results.GridResult(
        "exact", {"S": cells["max_lag"], "lr": cells["lr"], "seed": cells["seed"],
                  "b1": cells["b1"]},
        summ, run.curves, p["trace_every"], fits=fits, config=json.loads(c.to_json()),
        meta={"variant": variant, "testbed": dataclasses.asdict(p["testbeds"][variant]),
              "surrogate": p["testbeds"][variant].surrogate, "train": dataclasses.asdict(tc),
              "collapse_rules": tc.collapse.describe()},
        machine=workdir_lib.machine(), wall_s=run.wall_s, chunk_wall_s=run.chunk_wall_s,
        invocations=results.previous_invocations(vdir) + [grid_runner.invocation(run)], dir=vdir)
    gr.write(vdir)
    try:
        _plot(gr, os.path.join(vdir, "phase"))
    except Exception as e:  # pylint: disable=broad-except
        logging.warning("plotting failed: %s", e)
    return gr


def _fits_at_b1(c, p, summ, shape, bi) -> dict:
    """The stability fits of the cells at the bi-th b1: η_max and α (`results.stability`), the
    mean final and best J, the collapse-time law, and η_max and α at the shorter horizons."""
    lags, lrs = p["lags"], np.array(p["lrs"])
    col = summ["collapsed"].reshape(shape)[..., bi].astype(bool)
    t_col = summ["collapse_step"].reshape(shape)[..., bi].astype(float)
    warm = p["train"].collapse.warmup  # a collapse flagged at the warm-up's end has an unknown time
    lr_full = np.broadcast_to(lrs[None, :, None], col.shape)
    out = {"b1": p["b1s"][bi], **results.stability(lags, lrs, col, n_boot=c.n_boot)}
    for k in ("J_final", "J_best"):
        v = summ[k].reshape(shape)[..., bi]
        out[f"{k}_mean"] = {str(s): np.nanmean(v[i], 1).tolist() for i, s in enumerate(lags)}
    out["collapse_time_law"] = {
        "all": xa.collapse_time_law(lr_full[col], t_col[col], min_step=warm),
        "per_S": {str(s): xa.collapse_time_law(lr_full[i][col[i]], t_col[i][col[i]],
                                               min_step=warm) for i, s in enumerate(lags)}}
    horizons = {}
    for h in p.get("horizons", ()):
        st = results.stability(lags, lrs, col & (t_col <= h), n_boot=c.n_boot)  # causal rule
        horizons[str(h)] = {
            "eta_max_geomean": st["eta_max_geomean"],
            "n_censored": {s: int((np.array(v) != 0).sum())
                           for s, v in st["eta_max_censor"].items()},
            "collapsed_cells": {str(s): int((col & (t_col <= h))[i].sum())
                                for i, s in enumerate(lags)},
            "alpha_fit_S_ge_1": st["alpha_fit_S_ge_1"]}
    if horizons:
        out["horizons"] = horizons
    return out


CLIP_ONSET = 0.01   # the clip radius is the within-cycle drift at which 1 % of the mass clips


def _pre_collapse(trace, collapse_step, every):
    """[C, B] block traces with the blocks at or after each cell's collapse set to NaN."""
    blocks = np.arange(trace.shape[1]) * every
    cut = np.where(collapse_step >= 0, collapse_step, np.iinfo(np.int64).max)
    return np.where(blocks[None, :] + every <= cut[:, None], trace.astype(float), np.nan)


def clip_radius(drift, clip, onset=CLIP_ONSET, bins=24):
    """R_clip: the within-cycle drift ‖θ − φ‖ at which the population clip fraction reaches
    `onset`, from pooled (drift, clip fraction) pairs: the pairs are binned by log drift (equal
    counts) and R_clip is the median drift of the first bin whose median clip fraction is
    >= onset. -> (R_clip or None if no bin reaches it, the largest drift seen)."""
    ok = np.isfinite(drift) & np.isfinite(clip) & (drift > 0)
    d, cf = drift[ok], clip[ok]
    if d.size < bins:
        return None, float(d.max()) if d.size else None
    order = np.argsort(d)
    for part in np.array_split(order, bins):
        if np.median(cf[part]) >= onset:
            return float(np.median(d[part])), float(d.max())
    return None, float(d.max())


# The regime's metrics (canonical names) and the field names of its table.
_REGIME = {"clip_frac": mn.CLIP_FRAC, "update_norm": mn.UPDATE_NORM,
           "drift_cycle": mn.DRIFT_CYCLE}
CLIP_SAMPLED = "clip_frac_sampled"    # the library's clip fraction on the sample (sampled mode)


def regime_summary(traces, summ, cells, lags, lrs, per_b1, tb_cfg, tc):
    """Which regime the grid is in, from the traces (needs the exact population clip fraction
    `loss/clip_frac`, or else clip_frac_sampled (the library's, on the sample), update_norm and
    drift/within_cycle among the kept metrics; else None): the clip radius R_clip (`clip_radius`,
    pooled over every S ≥ 1 cell before its collapse) and, per S and b1, medians over the cells
    at each seed's η_max (the largest η that did not collapse) and their steps of the clip
    fraction, the update norm ‖u_t‖ and the within-cycle drift ‖θ_t − φ_t‖, the last two also in
    units of R_clip."""
    clip_key = mn.CLIP_FRAC if mn.CLIP_FRAC in traces else CLIP_SAMPLED
    if not all(k in traces for k in (clip_key, mn.UPDATE_NORM, mn.DRIFT_CYCLE)):
        return None
    every = tc.num_steps // traces[mn.OBJECTIVE].shape[1]
    cs = summ["collapse_step"].astype(np.int64)
    tr = {f: _pre_collapse(traces[clip_key if f == "clip_frac" else k], cs, every)
          for f, k in _REGIME.items()}
    stale = cells["max_lag"] >= 1
    r_clip, d_max = clip_radius(tr["drift_cycle"][stale].ravel(), tr["clip_frac"][stale].ravel())
    out = {"clip_metric": "clip_frac" if clip_key == mn.CLIP_FRAC else CLIP_SAMPLED,
           "clip_onset": CLIP_ONSET, "R_clip": r_clip, "max_drift_cycle": d_max,
           "clip_eps": tb_cfg.surrogate.get("clip_eps"), "trace_every": every, "per_b1": []}
    for r in per_b1:
        rows = {}
        for s in lags:
            sel = np.zeros(len(cs), bool)
            for seed, (e, cen) in enumerate(zip(r["eta_max"][str(s)],
                                                r["eta_max_censor"][str(s)])):
                if cen == -1:     # every η collapsed: no stable cell
                    continue
                sel |= ((cells["max_lag"] == s) & np.isclose(cells["lr"], e) &
                        (cells["seed"] == seed) & np.isclose(cells["b1"], r["b1"]))
            row = {"n_cells": int(sel.sum())}
            for k in _REGIME:
                v = tr[k][sel]
                row[f"{k}_median"] = float(np.nanmedian(v)) if np.isfinite(v).any() else None
                row[f"{k}_p90"] = float(np.nanpercentile(v, 90)) if np.isfinite(v).any() else None
            for k in ("update_norm", "drift_cycle"):
                m = row[f"{k}_median"]
                row[f"{k}_over_R_clip"] = (m / r_clip if (m is not None and r_clip) else None)
            rows[str(s)] = row
        out["per_b1"].append({"b1": r["b1"], "at_eta_max": rows})
    return out


def _plot(gr: results.GridResult, stem):
    """Full-width figure, three panels: (a) collapsed fraction over (η, S) with each seed's
    η_max, (b) η_max(S) with the power-law fit, (c) collapse step against η (first b1)."""
    r = gr.stability()
    g = results.cube(gr, r.get("b1"))
    lags, lrs, seeds = [int(s) for s in g["lags"]], g["lrs"], g["seeds"]
    collapsed = gr.summaries["collapsed"][g["index"]].astype(bool)[..., None]
    t_col = gr.summaries["collapse_step"][g["index"]].astype(float)[..., None]
    colors = dict(zip(lags, figures.palette(len(lags)))) if len(lags) <= 7 else {}
    with figures.style():
        fig, ax = figures.figure("full", ncols=3, aspect=1.45)
        frac = collapsed[..., 0].mean(2)  # [nS, E]
        im = ax[0].pcolormesh(np.arange(len(lrs) + 1) - 0.5, np.arange(len(lags) + 1) - 0.5,
                              frac, cmap=figures.SEQUENTIAL, vmin=0, vmax=1, shading="flat")
        step = max(1, len(lrs) // 5)
        ax[0].set_xticks(range(len(lrs))[::step], [f"{x:.3g}" for x in lrs[::step]])
        ax[0].set_yticks(range(len(lags)), [str(s) for s in lags])
        for i, s in enumerate(lags):
            e = np.array(r["eta_max"][str(s)])
            ax[0].plot(np.interp(np.log(e), np.log(lrs), np.arange(len(lrs))),
                       np.full(e.shape, i), "|", color="white", ms=7, mew=1.2,
                       label="η_max of one seed" if i == 0 else None)
        ax[0].set_xlabel("learning rate η")
        ax[0].set_ylabel("staleness S")
        below = dict(loc="upper center", bbox_to_anchor=(0.5, -0.27))
        ax[0].legend(**below, facecolor="0.5", frameon=True, edgecolor="none",
                     labelcolor="white")
        cb = fig.colorbar(im, ax=ax[0], location="top", shrink=0.9)
        cb.set_label("fraction of seeds collapsed")
        ax[0].set_title("(a) collapse map", loc="left")

        s_pos = np.array([s for s in lags if s >= 1])
        cens = np.array([r["eta_max_censor"][str(s)] for s in s_pos])
        seeds = np.array([r["eta_max"][str(s)] for s in s_pos])
        xs = np.repeat(s_pos[:, None], seeds.shape[1], 1)
        for code, marker, label in ((0, "o", "one seed"), (1, "^", "one seed, ≥ (none collapsed)"),
                                    (-1, "v", "one seed, ≤ (all collapsed)")):
            sel = cens == code
            if sel.any():
                ax[1].plot(xs[sel], seeds[sel], marker, ls="none", color="0.6", ms=3,
                           mfc="none" if code else "0.6", label=label)
        gm = np.array([r["eta_max_geomean"][str(s)] for s in s_pos])
        ax[1].plot(s_pos, gm, "o-", color="k", label="geometric mean")
        fit = r["alpha_fit_S_ge_1"]
        if fit["alpha"] is not None and fit["ci"][0] is not None:
            ax[1].plot(s_pos, np.exp(fit["log_c"]) * s_pos ** (-fit["alpha"]), "--",
                       color=figures.OKABE_ITO[3],
                       label=f"fit S^−α, α = {fit['alpha']:.2f} [{fit['ci'][0]:.2f}, "
                             f"{fit['ci'][1]:.2f}]")
            ax[1].plot(s_pos, gm[0] * s_pos[0] / s_pos, ":", color=figures.OKABE_ITO[0],
                       label="1/S through S = 1")
        if "0" in r["eta_max_geomean"]:
            ax[1].axhline(r["eta_max_geomean"]["0"], color=figures.OKABE_ITO[2], ls="-.",
                          label="S = 0")
        ax[1].set_xscale("log", base=2)
        ax[1].set_yscale("log")
        ax[1].set_xlabel("staleness S")
        ax[1].set_ylabel("η_max")
        ax[1].legend(**below)
        ax[1].set_title("(b) largest stable η", loc="left")

        warm = gr.meta["train"]["collapse"]["warmup"]
        late_x, late_y = [], []
        for i, s in enumerate(lags):
            col = collapsed[i, :, :, 0]
            lr_full = np.broadcast_to(lrs[:, None], col.shape)
            x, y = lr_full[col], t_col[i, :, :, 0][col]
            late = y > warm
            color = colors.get(s, f"C{i % 7}")
            ax[2].plot(x[late], y[late] + 1, "o", ms=3, color=color, label=f"S = {s}")
            ax[2].plot(x[~late], y[~late] + 1, "o", ms=3, mfc="none", color=color)
            late_x += list(x[late])
            late_y += list(y[late] + 1)
        extra = []
        if late_x:
            k = np.exp(np.mean(np.log(np.array(late_x) * np.array(late_y))))
            ax[2].plot(lrs, k / lrs, ":", color="k", label="t·η = const")
        if collapsed[..., 0].any():
            ax[2].axhline(warm + 1, color="0.5", lw=0.8, ls="--", label="warm-up end")
            extra = [("at the warm-up end", dict(marker="o", ls="none", mfc="none", color="0.4",
                                                 ms=3))]
            ax[2].set_xscale("log")
            ax[2].set_yscale("log")
            ax[2].set_ylim(bottom=max(1, warm / 2))
        else:
            ax[2].text(0.5, 0.5, "no collapsed cell", ha="center", transform=ax[2].transAxes)
        ax[2].set_xlabel("learning rate η")
        ax[2].set_ylabel("collapse step + 1")
        figures.legend_only(ax[2], extra, ncol=2, **below)
        ax[2].set_title("(c) when runs collapse", loc="left")
        fig.suptitle(f"Exact testbed, surrogate {gr.meta['variant']}: stability over (S, η), "
                     f"{len(seeds)} seeds, T = {gr.meta['train']['num_steps']} steps",
                     fontsize=8)
        figures.save(fig, stem)


SUMMARY_LEGEND = """\
Columns: S = staleness (fixed lag); eta_max(geo) = geometric mean over seeds of the largest grid
eta that did not collapse; [min, max] = its range over seeds; censored = seeds whose eta_max is
only a bound (nothing collapsed on the grid, or even the smallest eta did); collapsed = fraction
of all (eta, seed) cells that collapsed; late = collapses after the warm-up (their step is
known); med t*eta = median over late collapses of collapse step x eta; t~eta^b = slope b of
log t_collapse vs log eta over late collapses (b = -1 means t_collapse*eta is constant).
Collapse rules: {rules}"""


def summary_table(grids: list[results.GridResult]) -> str:
    """The sweep's table, from its variants' results."""
    lines = [SUMMARY_LEGEND.format(rules=grids[0].meta["collapse_rules"])] if grids else []
    for gr in grids:
        lags = [int(s) for s in dict.fromkeys(gr.axes["S"].tolist())]
        for r in gr.fits["stability"]:
            fit = r["alpha_fit_S_ge_1"]
            lines.append(f"variant={gr.meta['variant']} b1={r['b1']} cells={gr.num_cells} "
                         f"wall={gr.wall_s:.1f}s")
            lines.append(f"  {'S':>3} {'eta_max(geo)':>12} {'[min, max] over seeds':>24} "
                         f"{'censored':>8} {'collapsed':>9} {'late':>5} {'med t*eta':>10} "
                         f"{'t~eta^b':>8}")
            for s in lags:
                e = np.array(r["eta_max"][str(s)])
                cens = np.array(r["eta_max_censor"][str(s)])
                law = r["collapse_time_law"]["per_S"][str(s)]
                frac = float(np.mean(r["collapse_frac"][str(s)]))
                lines.append(f"  {s:>3} {r['eta_max_geomean'][str(s)]:>12.4g} "
                             f"{f'[{e.min():.3g}, {e.max():.3g}]':>24} {int((cens != 0).sum()):>8d} "
                             f"{frac:>9.2f} {law['n']:>5d} {law['median_t_eta']:>10.4g} "
                             f"{law['slope']:>8.2f}")
            law = r["collapse_time_law"]["all"]
            lines.append(f"  collapse-time law over {law['n']} late collapses (after the warm-up): "
                         f"t ~ eta^{law['slope']:.2f} (R^2 {law['r2']:.2f}; t*eta=const means -1)")
            lines.append(f"  fit eta_max ∝ S^-alpha (S>=1, censored MLE): {xa.format_alpha(fit)}")
            if r.get("horizons"):
                lines += _horizon_lines(r["horizons"], lags)
            if gr.fits.get("regime"):
                lines += _regime_lines(gr.fits["regime"], r["b1"])
    return "\n".join(lines)


def _horizon_lines(horizons, lags):
    lines = ["  eta_max(geo) at shorter horizons T' (collapsed at T' iff collapse_step <= T'; "
             "* = some seeds censored), and alpha:",
             "  " + f"{'T':>7} " + " ".join(f"{f'S={s}':>9}" for s in lags) + "  alpha [CI]"]
    for h, row in horizons.items():
        cells = " ".join(f"{row['eta_max_geomean'][str(s)]:>8.3g}"
                         f"{'*' if row['n_censored'][str(s)] else ' '}" for s in lags)
        lines.append(f"  {h:>7} {cells}  {xa.format_alpha(row['alpha_fit_S_ge_1']).split(',')[0]}"
                     f" {_ci(row['alpha_fit_S_ge_1'])}")
    return lines


def _ci(fit):
    if fit.get("alpha") is None or fit["ci"][0] is None:
        return ""
    return f"[{fit['ci'][0]:.2f}, {fit['ci'][1]:.2f}]"


def _regime_lines(reg, b1):
    rc = reg["R_clip"]
    lines = [f"  regime: clip radius R_clip (drift where {reg['clip_onset']:.0%} of the mass "
             f"clips) = {'never reached' if rc is None else f'{rc:.3g}'}; largest within-cycle "
             f"drift {reg['max_drift_cycle'] or 0:.3g}. At each seed's eta_max (medians over "
             "steps before collapse):",
             f"  {'S':>3} {'cells':>5} {'clip_frac':>9} {'clip p90':>8} {'|u|':>9} "
             f"{'|u|/R':>7} {'drift_cyc':>9} {'drift/R':>7}"]
    f = lambda x, spec: "—" if x is None else format(x, spec)
    for blk in reg["per_b1"]:
        if blk["b1"] != b1:
            continue
        for s, row in blk["at_eta_max"].items():
            lines.append(f"  {s:>3} {row['n_cells']:>5d} {f(row['clip_frac_median'], '9.3g')} "
                         f"{f(row['clip_frac_p90'], '8.3g')} {f(row['update_norm_median'], '9.3g')} "
                         f"{f(row['update_norm_over_R_clip'], '7.3g')} "
                         f"{f(row['drift_cycle_median'], '9.3g')} "
                         f"{f(row['drift_cycle_over_R_clip'], '7.3g')}")
    return lines


def run_sweep(c, workdir: str, p=None) -> str:
    """Runs (or resumes) the sweep of config `c` (its `plan`, if already made) into `workdir`
    (one GridResult per variant, in <workdir>/<variant>); -> the summary table."""
    p = plan(c) if p is None else p
    claim(c, workdir, p["variants"])
    t0 = time.time()
    # float64 for this sweep only (a caller's process keeps its own precision; the binary is
    # the same either way)
    with jax.enable_x64(bool(c.x64)):
        grids = [run_variant(c, p, v, workdir) for v in p["variants"]]
    return (summary_table(grids) +
            f"\ntotal wall time {time.time() - t0:.1f}s; results in {workdir}")


if __name__ == "__main__":
    _main.run(lambda c, workdir, _: run_sweep(c, workdir), default_config="exact_sweep.py")
