r"""(S, η, seed) stability map of asynchronous GRPO on the exact testbed.

  python -m experiments.exact_sweep --workdir=runs/exact_sweep
  python -m experiments.exact_sweep --workdir=runs/exact_sweep_mlp --config.testbed.policy=mlp

(The config defaults to experiments/configs/exact_sweep.py; its docstring lists more launches.)

For each variant (a registered loss of `async_grpo.losses`, e.g. grpo, no_ratio, dapo, gspo) the
whole (S, η, seed[, b1]) grid is run by ONE compiled program (`exact.run_cells_chunked`: vmap over
cells, lax.scan over steps),
in fixed-size chunks. Every finished chunk is saved to <workdir>/<variant>/chunks/ (atomic
rename), so a killed sweep loses at most the chunk in flight; rerunning with the same workdir
and config reuses the saved chunks (a different config in the same workdir is refused).

Writes, per variant: chunks/chunk_*.npz (per cell: the summary, s_*, and the per-step traces
m_* of `--config.keep_metrics`, default J only, as block means over `--config.trace_every`
steps), cells.csv (S, η, seed, b1, J_init, J_final, J_best, collapse_step, collapsed),
summary.json (η_max per S and seed, the fit η_max ∝ S^−α over S ≥ 1 with a bootstrap interval
over seeds, the collapse-time law; η_max and α at the shorter horizons T' of `--config.horizons`,
a run counting as collapsed at T' iff its collapse step is <= T'; with clip_frac (or
clip_frac_sampled), update_norm and drift_cycle among the traces also the regime: the clip radius
and the clip fraction, update norm and within-cycle drift at each seed's η_max,
`regime_summary`), phase.png/.pdf; and <workdir>/summary.json with all variants, the config, the
machine and the wall times. Prints a summary table at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import app, flags, logging
import jax
from ml_collections import config_flags
import numpy as np

from async_grpo import figures, files
from async_grpo import metric_names
from async_grpo import metrics as metrics_lib
from async_grpo import workdir as workdir_lib
from async_grpo.testbeds import exact as ex
from async_grpo import scaling as xa
from async_grpo.testbeds import exact_configs as xc

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                               "exact_sweep.py")

plan = xc.sweep_plan

# Config keys added after results existed, with the value that reproduces the old behaviour: left
# out of the fingerprint at that value, so older workdirs still resume (their chunks hold J only).
_FINGERPRINT_DEFAULTS = {"keep_metrics": "J", "trace_every": 1}
# Keys that only change the analysis of the saved chunks, never their content.
_ANALYSIS_ONLY = ("horizons",)


def _fingerprint(c, variant) -> str:
    d = json.loads(c.to_json())
    for k, v in _FINGERPRINT_DEFAULTS.items():
        if k in d and d[k] == v:
            del d[k]
    for k in _ANALYSIS_ONLY:
        d.pop(k, None)
    d["variant"] = variant
    return json.dumps(d, sort_keys=True)


def _check_trace_names(train, names, variant):
    """Refuses a trace name the run does not record (e.g. h_used_norm outside sampled mode)."""
    cell = {"lr": np.float64(1.0), "seed": np.uint32(0), "max_lag": np.int32(0),
            "b1": np.float64(0.0)}
    known = set(jax.eval_shape(train, cell)[0])
    bad = [n for n in names if n not in known]
    if bad:
        raise app.UsageError(f"--config.keep_metrics: variant {variant!r} records no metric "
                             f"{bad}; it records {sorted(known)}.")


def run_variant(c, p, variant: str, workdir: str) -> dict:
    vdir = os.path.join(workdir, variant)
    cdir = os.path.join(vdir, "chunks")
    os.makedirs(cdir, exist_ok=True)
    fp_path = os.path.join(vdir, "config_fingerprint.json")
    fp = _fingerprint(c, variant)
    if os.path.exists(fp_path):
        with open(fp_path) as f:
            if f.read() != fp:
                raise app.UsageError(f"{vdir} holds results of a different config; use a new "
                                     "--workdir or delete it.")
    else:
        files.write_text_atomic(fp_path, fp)

    tb = ex.make_testbed(p["testbeds"][variant])
    tc = p["train"]
    cells = ex.make_cells(p["lrs"], p["seeds"], p["lags"], p["b1s"], max_lag_cap=tc.max_lag_cap)
    n = len(cells["lr"])
    chunk_times = []

    def chunk_path(i):
        return os.path.join(cdir, f"chunk_{i:05d}.npz")

    def skip_chunk(i):
        if not os.path.exists(chunk_path(i)):
            return None
        z = np.load(chunk_path(i))
        return ({metric_names.canonical(k[2:]): z[k] for k in z.files if k.startswith("m_")},
                {metric_names.canonical(k[2:]): z[k] for k in z.files if k.startswith("s_")})

    t_last = [time.time()]

    def on_chunk(i, m, s):
        files.save_npz_atomic(chunk_path(i),
                              **{f"m_{metric_names.file_key(k)}": v for k, v in m.items()},
                              **{f"s_{metric_names.file_key(k)}": v for k, v in s.items()})
        now = time.time()
        chunk_times.append(now - t_last[0])
        t_last[0] = now
        n_chunks = -(-n // min(c.chunk_size, n))
        left = (n_chunks - i - 1) * float(np.median(chunk_times))
        logging.info("%s: chunk %d/%d (%d cells) done in %.1fs; ETA %s for this variant",
                     variant, i + 1, n_chunks, len(s["J_final"]), chunk_times[-1],
                     metrics_lib.format_duration(left))

    names, every = [metric_names.canonical(n) for n in p["keep_metrics"]], p["trace_every"]
    _check_trace_names(ex.make_train(tb, tc), names, variant)
    t0 = time.time()
    traces, summ = ex.run_cells_chunked(tb, tc, cells, chunk_size=min(c.chunk_size, n),
                                        keep_metrics=names, trace_every=every,
                                        on_chunk=on_chunk, skip_chunk=skip_chunk)
    wall = time.time() - t0

    files.write_csv_atomic(os.path.join(vdir, "cells.csv"), {
        "S": cells["max_lag"], "lr": cells["lr"], "seed": cells["seed"], "b1": cells["b1"],
        "J_init": summ["J_init"], "J_final": summ["J_final"], "J_best": summ["J_best"],
        "collapse_step": summ["collapse_step"], "collapsed": summ["collapsed"].astype(int)})

    lags, lrs, seeds, b1s = p["lags"], np.array(p["lrs"]), p["seeds"], p["b1s"]
    shape = (len(lags), len(lrs), len(seeds), len(b1s))
    collapsed = summ["collapsed"].reshape(shape)
    t_col = summ["collapse_step"].reshape(shape).astype(float)
    j_final = summ["J_final"].reshape(shape)
    j_best = summ["J_best"].reshape(shape)
    per_b1 = []
    for bi, b1 in enumerate(b1s):
        eta, censor = xa.eta_max_per_seed(lrs, collapsed[..., bi])
        fit = xa.bootstrap_alpha(lags, lrs, collapsed[..., bi], n_boot=c.n_boot)
        lr_full = np.broadcast_to(lrs[None, :, None], collapsed[..., bi].shape)
        col = collapsed[..., bi]
        warm = tc.collapse.warmup  # a collapse flagged at the warm-up's end has an unknown time
        law_all = xa.collapse_time_law(lr_full[col], t_col[..., bi][col], min_step=warm)
        law_per_s = {}
        for i, s in enumerate(lags):
            ci = col[i]
            law_per_s[str(s)] = xa.collapse_time_law(lr_full[i][ci], t_col[i, ..., bi][ci],
                                                     min_step=warm)
        horizons = {}
        for h in p.get("horizons", ()):
            col_h = col & (t_col[..., bi] <= h)     # the collapse rule is causal
            eta_h, cens_h = xa.eta_max_per_seed(lrs, col_h)
            horizons[str(h)] = {
                "eta_max_geomean": {str(s): float(np.exp(np.log(eta_h[i]).mean()))
                                    for i, s in enumerate(lags)},
                "n_censored": {str(s): int((cens_h[i] != 0).sum()) for i, s in enumerate(lags)},
                "collapsed_cells": {str(s): int(col_h[i].sum()) for i, s in enumerate(lags)},
                "alpha_fit_S_ge_1": xa.bootstrap_alpha(lags, lrs, col_h, n_boot=c.n_boot)}
        per_b1.append({
            "b1": b1,
            "eta_max": {str(s): eta[i].tolist() for i, s in enumerate(lags)},
            "eta_max_censor": {str(s): censor[i].tolist() for i, s in enumerate(lags)},
            "eta_max_geomean": {str(s): float(np.exp(np.log(eta[i]).mean()))
                                for i, s in enumerate(lags)},
            "collapse_frac": {str(s): collapsed[i, :, :, bi].mean(1).tolist()
                              for i, s in enumerate(lags)},
            "J_final_mean": {str(s): np.nanmean(j_final[i, :, :, bi], 1).tolist()
                             for i, s in enumerate(lags)},
            "J_best_mean": {str(s): np.nanmean(j_best[i, :, :, bi], 1).tolist()
                            for i, s in enumerate(lags)},
            "alpha_fit_S_ge_1": fit,
            "collapse_time_law": {"all": law_all, "per_S": law_per_s},
            **({"horizons": horizons} if horizons else {}),
        })
    regime = regime_summary(traces, summ, cells, lags, lrs, per_b1, tb.cfg, tc)
    result = {"variant": variant, "testbed": dataclasses.asdict(p["testbeds"][variant]),
              "surrogate": p["testbeds"][variant].surrogate, "train": dataclasses.asdict(tc),
              "collapse_rules": tc.collapse.describe(),
              "lags": lags, "lrs": lrs.tolist(), "seeds": seeds, "num_cells": n,
              "wall_s": wall, "chunk_s": chunk_times, "results": per_b1,
              "traces": {"metrics": list(names), "trace_every": every}}
    if regime is not None:
        result["regime"] = regime
    files.write_json_atomic(os.path.join(vdir, "summary.json"), result)
    try:
        _plot(result, collapsed, t_col, os.path.join(vdir, "phase"))
    except Exception as e:  # pylint: disable=broad-except
        logging.warning("plotting failed: %s", e)
    return result


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


def regime_summary(traces, summ, cells, lags, lrs, per_b1, tb_cfg, tc):
    """Which regime the grid is in, from the traces (needs clip_frac — the exact population clip
    fraction — or else clip_frac_sampled (the library's, on the sample), update_norm and
    drift_cycle in `keep_metrics`; else None): the clip radius R_clip (`clip_radius`, pooled over every S ≥ 1
    cell before its collapse) and, per S and b1, medians over the cells at each seed's η_max
    (the largest η that did not collapse) and their steps of the clip fraction, the update norm
    ‖u_t‖ and the within-cycle drift ‖θ_t − φ_t‖, the last two also in units of R_clip."""
    traces = {metric_names.canonical(k): v for k, v in traces.items()}
    clip_key = metric_names.CLIP_FRAC if metric_names.CLIP_FRAC in traces else "clip_frac_sampled"
    if not all(k in traces for k in (clip_key, "update_norm", metric_names.DRIFT_CYCLE)):
        return None
    # Short names for the regime's own keys (drift_cycle_median, ... in summary.json).
    traces = dict(traces, clip_frac=traces[clip_key], drift_cycle=traces[metric_names.DRIFT_CYCLE])
    need = ("clip_frac", "update_norm", "drift_cycle")
    every = tc.num_steps // traces["J"].shape[1]
    cs = summ["collapse_step"].astype(np.int64)
    tr = {k: _pre_collapse(traces[k], cs, every) for k in need}
    stale = cells["max_lag"] >= 1
    r_clip, d_max = clip_radius(tr["drift_cycle"][stale].ravel(), tr["clip_frac"][stale].ravel())
    out = {"clip_metric": clip_key, "clip_onset": CLIP_ONSET, "R_clip": r_clip, "max_drift_cycle": d_max,
           "clip_eps": tb_cfg.surrogate.get("clip_eps"), "trace_every": every, "per_b1": []}
    for r in per_b1:
        rows = {}
        for s in lags:
            etas = np.array(r["eta_max"][str(s)])
            cens = np.array(r["eta_max_censor"][str(s)])
            sel = np.zeros(len(cs), bool)
            for seed, (e, cen) in enumerate(zip(etas, cens)):
                if cen == -1:     # every η collapsed: no stable cell
                    continue
                sel |= ((cells["max_lag"] == s) & np.isclose(cells["lr"], e) &
                        (cells["seed"] == seed) & np.isclose(cells["b1"], r["b1"]))
            row = {"n_cells": int(sel.sum())}
            for k in need:
                v = tr[k][sel]
                row[f"{k}_median"] = float(np.nanmedian(v)) if np.isfinite(v).any() else None
                row[f"{k}_p90"] = float(np.nanpercentile(v, 90)) if np.isfinite(v).any() else None
            for k in ("update_norm", "drift_cycle"):
                m = row[f"{k}_median"]
                row[f"{k}_over_R_clip"] = (m / r_clip if (m is not None and r_clip) else None)
            rows[str(s)] = row
        out["per_b1"].append({"b1": r["b1"], "at_eta_max": rows})
    return out


def _plot(result, collapsed, t_col, stem):
    """Full-width figure, three panels: (a) collapsed fraction over (η, S) with each seed's
    η_max, (b) η_max(S) with the power-law fit, (c) collapse step against η."""
    lags, lrs = result["lags"], np.array(result["lrs"])
    r = result["results"][0]
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

        warm = result["train"]["collapse"]["warmup"]
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
        fig.suptitle(f"Exact testbed, surrogate {result['variant']}: stability over (S, η), "
                     f"{len(result['seeds'])} seeds, T = {result['train']['num_steps']} steps",
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


def summary_table(results: list[dict]) -> str:
    lines = [SUMMARY_LEGEND.format(rules=results[0]["collapse_rules"])] if results else []
    for res in results:
        for r in res["results"]:
            fit = r["alpha_fit_S_ge_1"]
            lines.append(f"variant={res['variant']} b1={r['b1']} cells={res['num_cells']} "
                         f"wall={res['wall_s']:.1f}s")
            lines.append(f"  {'S':>3} {'eta_max(geo)':>12} {'[min, max] over seeds':>24} "
                         f"{'censored':>8} {'collapsed':>9} {'late':>5} {'med t*eta':>10} "
                         f"{'t~eta^b':>8}")
            for s in res["lags"]:
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
                lines += _horizon_lines(r["horizons"], res["lags"])
            if res.get("regime"):
                lines += _regime_lines(res["regime"], r["b1"])
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
    """Runs (or resumes) the sweep of config `c` (its `plan`, if already made) into `workdir`;
    -> the summary table."""
    p = plan(c) if p is None else p
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    # float64 for this sweep only (a caller's process keeps its own precision; the binary is
    # the same either way)
    with jax.enable_x64(bool(c.x64)):
        results = [run_variant(c, p, v, workdir) for v in p["variants"]]
    files.write_json_atomic(os.path.join(workdir, "summary.json"), {
        "config": json.loads(c.to_json()), "machine": workdir_lib.machine(),
        "total_wall_s": time.time() - t0, "variants": results})
    return (summary_table(results) +
            f"\ntotal wall time {time.time() - t0:.1f}s; results in {workdir}")


def _define_flags():
    """Flags exist only when this module is the binary, so `experiments.sweep` can import its
    functions (absl refuses a flag defined twice)."""
    global _CONFIG, _WORKDIR
    _CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG,
                                              "Config file (experiments/configs/exact_sweep.py).",
                                              lock_config=True)
    _WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required.")
    try:
        p = plan(_CONFIG.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    print(run_sweep(_CONFIG.value, _WORKDIR.value, p))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
