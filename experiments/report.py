r"""Writes the result tables of docs/ from results directories, so docs and code cannot drift.

  python -m experiments.report [--runs=runs] [--docs=docs]   # rewrite every generated block
  python -m experiments.report --check                       # exit 1 if a block is out of date

A generated block in a markdown file is

  <!-- report: KIND ARG ... -->
  (the table; rewritten by this command)
  <!-- end report -->

where KIND is one of `REPORTS` below and each ARG a results directory relative to --runs (the
directories `bash experiments/reproduce_docs.sh` fills). A block whose results are missing is
left unchanged and reported; `--check` fails on it.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys
from typing import Callable

import numpy as np

from async_grpo import learning
from async_grpo import metric_names as mn
from async_grpo import metrics as metrics_lib
from async_grpo import results
from async_grpo import scaling

BLOCK = re.compile(r"(<!-- report: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- end report -->)",
                   re.S)


class MissingResults(FileNotFoundError):
    pass


def _load(path):
    if not os.path.exists(path):
        raise MissingResults(path)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _g(x, digits=3):
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}g}"


def _grids(d: str) -> list:
    """The GridResults of a sweep directory (one per variant), or MissingResults."""
    grids = list(results.read_sweep(d).values())
    if not grids:
        raise MissingResults(d)
    return grids


def _run_record(d):
    rec = os.path.join(d, "run.json")
    return _load(rec) if os.path.exists(rec) else {}


def _machine_line(machine: dict) -> str:
    if not machine:
        return ""
    flags = machine.get("xla_flags") or "none"
    return (f"Machine: {machine.get('cpu', '?')}, {machine.get('cpu_count', '?')} cores, jax "
            f"{machine.get('jax', '?')}, XLA_FLAGS {flags}.")


# ------------------------------------------------------------------------------------------------
# Exact testbed.
# ------------------------------------------------------------------------------------------------


def exact_sweep(d: str) -> str:
    """η_max(S) per variant (geometric mean over seeds [min, max]), collapsed fraction, α."""
    variants = _grids(d)
    lags, lrs = variants[0].axis("S"), variants[0].axis("lr")
    head = "| S | " + " | ".join(f"{v.meta['variant']} η_max | {v.meta['variant']} collapsed"
                                 for v in variants) + " |"
    lines = [head, "|---" * (1 + 2 * len(variants)) + "|"]
    for lag in lags:
        row = [str(lag)]
        for v in variants:
            r = v.stability()
            e = r["eta_max"][str(lag)]
            row.append(f"{_g(r['eta_max_geomean'][str(lag)])} [{_g(min(e))}, {_g(max(e))}]")
            row.append(f"{np.mean(r['collapse_frac'][str(lag)]):.2f}")
        lines.append("| " + " | ".join(row) + " |")
    row = ["**α (S ≥ 1)**"]
    for v in variants:
        f = v.stability()["alpha_fit_S_ge_1"]
        row += [f"**{_alpha(f)}** (σ {_g(f['sigma'], 2)})" if f["alpha"] is not None
                else _alpha(f), ""]
    lines.append("| " + " | ".join(row) + " |")
    seeds = len(variants[0].axis("seed"))
    lines += ["", f"{seeds} seeds, {_precision(variants[0])}; η grid ×{lrs[1] / lrs[0]:.3f} "
                  f"from {_g(lrs[0])} to {_g(lrs[-1])}; the "
                  "α is the interval-censored maximum-likelihood fit over S ≥ 1 (each seed's η_max "
                  "enters as the grid interval that brackets it, or as a bound when nothing or "
                  f"everything collapsed); its interval is {_ALPHA_CI}, and does not cover "
                  "float precision (docs/reproducibility.md). " +
                  _machine_line(variants[0].machine)]
    return "\n".join(lines)


def _alpha(f: dict) -> str:
    """α [95 % CI] of a censored fit, or why there is none."""
    if f.get("alpha") is None:
        return f"n/a ({f.get('reason', 'not identified')})"
    lo, hi = f["ci"]
    return f"{f['alpha']:.2f} [{lo:.2f}, {hi:.2f}]" if lo is not None else f"{f['alpha']:.2f}"


def _precision(gr) -> str:
    return "float64" if gr.config.get("x64") else "float32"


def _setting(gr) -> str:
    tb, tr = gr.meta["testbed"], gr.meta["train"]
    return (f"{tb['policy']}, {tr['optimizer']}, {tr['staleness']}, T = {tr['num_steps']}, "
            f"KL β = {tb['kl_coef']:g}, {tr['mode']}")


# How every α interval the reports print is made (one wording for every table).
_ALPHA_CI = ("a 95 % t-interval over the per-seed slopes, floored at the grid's resolution "
             "(`scaling.bootstrap_alpha`, coverage in tests/test_coverage.py)")


def _alpha_groups(fits: list[tuple[str, dict]]) -> str:
    """Which α intervals lie below 1, hold 1, lie above 1, or are missing: the sentence about
    an α column, made from the column."""
    groups: dict[str, list[str]] = {"lies below 1": [], "holds 1": [], "lies above 1": [],
                                    "is missing": []}
    for label, f in fits:
        lo, hi = (f.get("ci") or [None, None]) if f.get("alpha") is not None else (None, None)
        key = ("is missing" if lo is None else "lies below 1" if hi < 1 else
               "lies above 1" if lo > 1 else "holds 1")
        groups[key].append(label)
    return "The α interval " + "; ".join(f"{k} for {len(v)} ({', '.join(v)})"
                                         for k, v in groups.items() if v) + "."


def exact_families(*dirs: str) -> str:
    """One row per (run, variant): the setting, η_max(S=0) → η_max(S ≥ 1) range, α [CI]."""
    lines = ["| run | setting | variant | η_max(S=0) → η_max(S ≥ 1), geometric means | α (S ≥ 1) [95 % CI] | σ of log η_max | cells collapsed |",
             "|---|---|---|---|---|---|---|"]
    fits = []
    for d in dirs:
        for v in _grids(d):
            r = v.stability()
            gm = r["eta_max_geomean"]
            pos = [gm[str(x)] for x in v.axis("S") if x >= 1]
            cens0 = sum(c != 0 for c in r["eta_max_censor"].get("0", []))
            s0 = f"{_g(gm.get('0'))}" + (f" ({cens0} censored)" if cens0 else "")
            f = r["alpha_fit_S_ge_1"]
            frac = np.mean([np.mean(x) for x in r["collapse_frac"].values()])
            lines.append(f"| `{os.path.basename(d)}` | {_setting(v)}, {_precision(v)} | "
                         f"{v.meta['variant']} | "
                         f"{s0} → {_g(min(pos))}–{_g(max(pos))} | {_alpha(f)} | "
                         f"{_g(f['sigma'], 2)} | {frac:.2f} |")
            fits.append((f"{os.path.basename(d)}/{v.meta['variant']}", f))
    lines += ["", f"α: the interval-censored fit over S ≥ 1 with {_ALPHA_CI}. "
                  + _alpha_groups(fits)]
    return "\n".join(lines)


def lm_families(*dirs: str) -> str:
    """LM grids of the same (S, η, seed) product, one per variant (sweep_lm.py:variants_*): the
    objective, η_max per S (geometric mean over seeds), α [CI] with censoring, and the regime."""
    from experiments import grids, study  # pylint: disable=import-outside-toplevel
    lines = ["| run | objective | η_max per S (geometric mean over seeds) | α (S ≥ 1) [95 % CI] | "
             "regime (clip fraction just below η_max) | cells collapsed | collapse step at S = "
             "max (median of cells collapsing after the warm-up) | mean reward over run and "
             "cells |", "|---|---|---|---|---|---|---|---|"]
    fits = []
    for d in dirs:
        run = study.load_lm(d)
        if run is None:
            raise MissingResults(d)
        gr = run["result"]
        s = gr.stability()
        rl = gr.meta["run"]["rl"]
        obj = rl["loss"] + "".join(f", {k}={v}" for k, v in rl["loss_kwargs"].items()
                                   if k != "kl_coef")
        obj += f", KL {rl['loss_kwargs'].get('kl_coef', 0)}"
        if rl.get("grad_mode", "surrogate") != "surrogate":
            obj += f", gradient {rl['grad_mode']}"
        gm = s["eta_max_geomean"]
        cens = {k: sum(c != 0 for c in v) for k, v in s["eta_max_censor"].items()}
        per_s = ", ".join(f"S={k}: {_g(gm[k], 2)}" + (f" ({cens[k]} cens.)" if cens[k] else "")
                          for k in sorted(gm, key=int))
        frac = np.mean([np.mean(x) for x in s["collapse_frac"].values()])
        clip = grids.regime(run).get("clip_frac")
        g = grids.grid(run)
        warm = int(gr.meta["run"]["collapse"]["warmup"])
        t_last = g["t_collapse"][-1]
        late = t_last[t_last > warm]
        late_txt = f"{np.median(late):.0f} (n = {late.size})" if late.size else "none"
        fits.append((os.path.basename(d), s["alpha_fit_S_ge_1"]))
        lines.append(f"| `{os.path.basename(d)}` | {obj} | {per_s} | "
                     f"{_alpha(s['alpha_fit_S_ge_1'])} | "
                     f"{'—' if clip is None else f'{clip:.1%}'} | {frac:.2f} | {late_txt} | "
                     f"{run['traces'][mn.REWARD].mean():.4f} |")
    grid = results.read(dirs[0])
    lrs = grid.axis("lr")
    lines += ["", f"Grid: S ∈ {{{', '.join(map(str, grid.axis('S')))}}}, {len(lrs)} η from "
                  f"{_g(lrs[0])} to {_g(lrs[-1])} (one per octave), "
                  f"{len(grid.axis('seed'))} seeds, T = {grid.meta['run']['rl']['steps']}; "
                  f"α's interval is {_ALPHA_CI}. {_alpha_groups(fits)} "
                  f"{_machine_line(grid.machine)}"]
    return "\n".join(lines)


def lm_controller(fixed_dir: str, control_dir: str) -> str:
    """The LM learning-rate controller against fixed η on the same (S, η, seed) cells: per S, the
    best fixed η (highest mean reward over the run, averaged over seeds), the largest fixed η
    that never collapsed, and the controller at every base η (collapse rate, mean reward, mean
    effective η / base η)."""
    from experiments import grids, study  # pylint: disable=import-outside-toplevel
    fixed, ctl = study.load_lm(fixed_dir), study.load_lm(control_dir)
    if fixed is None or ctl is None:
        raise MissingResults(fixed_dir if fixed is None else control_dir)
    gf, gc = grids.grid(fixed), grids.grid(ctl)
    if not (np.array_equal(gf["lags"], gc["lags"]) and np.allclose(gf["lrs"], gc["lrs"])
            and np.array_equal(gf["seeds"], gc["seeds"])):
        raise ValueError(f"{fixed_dir} and {control_dir} are not the same (S, η, seed) grid")
    mean_r = lambda run, g: run["traces"][mn.REWARD].mean(1)[g["index"]]  # noqa: E731  [S, E, seed]
    rf, rc = mean_r(fixed, gf), mean_r(ctl, gc)
    scale = ctl["traces"][mn.LR_SCALE].mean(1)[gc["index"]]
    lrs = gf["lrs"]
    first = np.asarray(fixed["cells"]["reward_first10"])[gf["index"]]
    last = np.asarray(fixed["cells"]["reward_last10"])[gf["index"]]
    lines = ["| S | best fixed η: mean reward (collapsed seeds); first → last 10 steps | "
             "largest fixed η never collapsed | "
             "fixed: cells collapsed | controller: cells collapsed | controller: best mean reward "
             "(base η) | controller at the largest base η: mean reward, effective η / base η |",
             "|---|---|---|---|---|---|---|"]
    for i, s in enumerate(gf["lags"]):
        j = int(np.argmax(rf[i].mean(1)))
        never = [lrs[k] for k in range(len(lrs)) if not gf["collapsed"][i, k].any()]
        jc = int(np.argmax(rc[i].mean(1)))
        lines.append(
            f"| {s} | η = {lrs[j]:.3g}: {rf[i, j].mean():.3f} ({int(gf['collapsed'][i, j].sum())}"
            f"/{len(gf['seeds'])}); {first[i, j].mean():.3f} → {last[i, j].mean():.3f} | "
            f"{_g(max(never)) if never else 'none'} | "
            f"{gf['collapsed'][i].mean():.2f} | {gc['collapsed'][i].mean():.2f} | "
            f"{rc[i, jc].mean():.3f} ({lrs[jc]:.3g}) | {rc[i, -1].mean():.3f}, "
            f"{scale[i, -1].mean():.3f} |")
    info = ctl["meta"].get("lr_control") or {}
    cal = info.get("calibration", {})
    q = cal.get("peak_drift_stable_quantiles")
    lines += ["", f"R_batch = {_g(info.get('r_batch'))} ({info.get('source', '?')}"
                  + (f"; {cal.get('n_edges')} edge runs, peak drift quartiles "
                     f"{_g(q[1], 2)}–{_g(q[3], 2)}" if q else "") +
                  f"), margin m = {_g(info.get('margin'))}. Mean reward: the rollout reward "
                  f"averaged over the {gf['num_steps']} steps and over {len(gf['seeds'])} seeds "
                  f"({', '.join(map(str, gf['seeds']))}). "
                  f"{_machine_line(ctl['result'].machine)}"]
    return "\n".join(lines)


def exact_collapse_law(*dirs: str) -> str:
    """Collapse-time law per (run, variant): late collapses, t ~ η^b, median t·η."""
    lines = ["| run | variant | collapsed cells | after the warm-up | t ∝ η^b: b | R² | median t·η |",
             "|---|---|---|---|---|---|---|"]
    for d in dirs:
        for v in _grids(d):
            r = v.stability()
            law = r["collapse_time_law"]["all"]
            n_col = int(round(sum(np.sum(x) * len(v.axis("seed"))
                                  for x in r["collapse_frac"].values())))
            lines.append(f"| `{os.path.basename(d)}` | {v.meta['variant']} | {n_col} | {law['n']} | "
                         f"{_g(law['slope'])} | {_g(law['r2'], 2)} | "
                         f"{_g(law['median_t_eta'])} |")
    return "\n".join(lines)


def lm_bias(d: str) -> str:
    """experiments.lm_bias: per (η, t, s) the noise-corrected ‖δ‖ with its 2-SE interval, its
    split into the policy-gradient and KL-penalty parts, δ_TD's upper end, ‖H(θ, θ)‖, one
    batch's noise, the clip fraction, KL(φ‖θ) and the largest ratio; then the fits."""
    b = _load(os.path.join(d, "bias.json"))
    f, c = b["fits"], b["config"]
    lines = ["| η | t | s | s·η | ‖θ_t − θ_{t−s}‖ | ‖δ‖ [2-SE interval] | ‖δ_PG‖ | ‖δ_KL‖ | "
             "‖δ_TD‖ ≤ | ‖H(θ,θ)‖ | one batch's noise | clip frac | KL(φ‖θ) k3 | max ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    star = lambda ok: " *" if ok else ""  # noqa: E731
    for r in b["rows"]:
        mark = star(r["resolved"])
        lines.append(
            f"| {r['lr']:g} | {r['anchor']} | {r['lag']} | {_g(r['s_eta'], 2)} | "
            f"{_g(r['drift'], 3)} | {_g(r['delta_norm'], 3)} [{_g(r['delta_lo'], 2)}, "
            f"{_g(r['delta_hi'], 2)}]{mark} | {_g(r['pg_norm'], 3)}{star(r['pg_resolved'])} | "
            f"{_g(r['kl_norm'], 3)}{star(r['kl_resolved'])} | {_g(r['td_hi'], 2)} | "
            f"{_g(r['h_norm'], 3)} | "
            f"{_g(r['noise_single'], 3)} | {r['clip_frac']:.3f} | {_g(r['kl_behavior_k3'], 2)} | "
            f"{_g(r.get('ratio_max'), 3)} |")
    from experiments.claims import claim1_bias   # pylint: disable=import-outside-toplevel

    def txt(est, se, clip_max=None):
        x = claim1_bias.lm_fit(b, est, se, clip_max=clip_max)
        if not np.isfinite(x["slope"]):
            return f"not fitted ({x.get('reason', '')})"
        return (f"{x['slope']:.2f} [{x['ci'][0]:.2f}, {x['ci'][1]:.2f}] over {x['n']} cells of "
                f"{x['n_anchors']} anchors")
    lines += [
        "",
        r"\* = resolved: the 2-SE interval excludes 0. "
        f"{c['replicates']} coupled batch pairs per "
        f"row; {b['num_params']} parameters; lag 0 is the fresh–fresh control (resolved in "
        f"{f['control_resolved']} of {f['n_control']}). Slope of ‖δ‖ on s·η with a level per "
        "anchor (η, t), every cell resolved or not, 95 % delete-one-anchor jackknife "
        "t-interval (claim 1's fit, `scaling.anchored_slope`; one trajectory per η, so it does "
        "not cover trajectory-to-trajectory spread):",
        "",
        f"- ‖δ‖, clip fraction < {f['clip_small']:.0%}: {txt('delta_est', 'delta_se')}; all "
        f"stale cells: {txt('delta_est', 'delta_se', math.inf)}",
        f"- ‖δ_PG‖ (without the KL penalty), clip fraction < {f['clip_small']:.0%}: "
        f"{txt('pg_est', 'pg_se')}; all stale cells: {txt('pg_est', 'pg_se', math.inf)}",
        f"- resolved in the {f['n_stale']} stale cells: δ {f['n_resolved']}, δ_PG "
        f"{f['pg_resolved']}, δ_KL {f['kl_resolved']}, δ_TD (total-derivative mode) "
        f"{f['td_resolved']}.",
        "",
        f"Wall time {b['wall_s']:.0f} s. {_machine_line(b.get('machine', {}))}"]
    return "\n".join(lines)


def lm_bias_words(d: str) -> str:
    """The sentences about the `lm_bias` table, computed from the same rows, so that they cannot
    contradict it: where ‖δ‖ is resolved, how it grows with s at a fixed (η, t), how much of it
    the policy-gradient part carries, where the KL part dominates and turns heavy-tailed, and
    δ_TD."""
    b = _load(os.path.join(d, "bias.json"))
    f = b["fits"]
    small = f["clip_small"]
    stale = [r for r in b["rows"] if r["lag"] >= 1]
    lrs = sorted({r["lr"] for r in stale})
    anchors = sorted({r["anchor"] for r in stale})
    lags = sorted({r["lag"] for r in stale})
    at = {(r["lr"], r["anchor"], r["lag"]): r for r in stale}

    def where(cells):
        by = {}
        for r in cells:
            by.setdefault((r["lr"], r["anchor"]), []).append(str(r["lag"]))
        return "; ".join(f"η = {lr:g}, t = {t}: s ∈ {{{', '.join(v)}}}"
                         for (lr, t), v in sorted(by.items())) or "no cell"

    out = []
    # 1. where the bias is resolved
    parts, first_everywhere = [], []
    for lr in lrs:
        per = []
        for t in anchors:
            res = [s for s in lags if (lr, t, s) in at and at[(lr, t, s)]["resolved"]]
            per.append(f"t = {t}: " + ("s ∈ {" + ", ".join(map(str, res)) + "}" if res
                                       else "never"))
        parts.append(f"η = {lr:g} ({'; '.join(per)})")
        if all((lr, t, lags[0]) in at and at[(lr, t, lags[0])]["resolved"] for t in anchors):
            first_everywhere.append(f"{lr:g}")
    res_small = [r for r in stale if r["resolved"] and r["clip_frac"] < small]
    ratio_h = [r["delta_norm"] / r["h_norm"] for r in res_small if r["h_norm"] > 0]
    ratio_n = [r["delta_norm"] / r["noise_single"] for r in res_small if r["noise_single"] > 0]
    out.append(
        "- **Where it is resolved** (2-SE interval above 0): " + ", ".join(parts) + ". "
        + (f"Resolved from s = {lags[0]} at every anchor only at η ∈ {{"
           + ", ".join(first_everywhere) + "}. " if first_everywhere else
           f"At no η is it resolved from s = {lags[0]} at every anchor. ")
        + (f"Where resolved with clip fraction < {small:.0%} ({len(res_small)} cells) its "
           f"median size is {np.median(ratio_h):.2g} × ‖H(θ, θ)‖ and {np.median(ratio_n):.2g} × "
           f"one batch's noise." if res_small else ""))
    # 2. growth with s at a fixed (η, t)
    lo_s, hi_s = lags[0], lags[-1]
    grow, falls, rises = [], [], []
    for lr in lrs:
        for t in anchors:
            a, z = at.get((lr, t, lo_s)), at.get((lr, t, hi_s))
            if a and z:
                g = (f"{z['delta_norm'] / a['delta_norm']:.3g}×" if a["delta_norm"] > 0
                     else "from 0")
                star = "" if a["resolved"] and z["resolved"] else " (an end unresolved)"
                grow.append(f"η = {lr:g}, t = {t}: {g}{star}")
            p_ = at.get((lr, t, lags[-2])) if len(lags) >= 2 else None
            if p_ and z:
                (falls if z["delta_norm"] < p_["delta_norm"] else rises).append(
                    f"η = {lr:g}, t = {t}")
    last = (f" From s = {lags[-2]} to {hi_s} it falls at " + (", ".join(falls) or "no anchor")
            + " and rises at " + (", ".join(rises) or "no anchor") + "."
            if len(lags) >= 2 else "")
    out.append(
        f"- **Growth with s at a fixed (η, t).** A bias ∝ s·η would grow {hi_s // lo_s}× from "
        f"s = {lo_s} to s = {hi_s}; measured: " + "; ".join(grow) + "." + last)
    # 3. the policy-gradient part at small drift
    from experiments.claims import claim1_bias   # pylint: disable=import-outside-toplevel
    pg_share = [r["pg_norm"] / r["delta_norm"] for r in res_small if r["delta_norm"] > 0]
    pg_fit = claim1_bias.lm_fit(b, "pg_est", "pg_se")
    fit_txt = (f"its slope on s·η with a level per anchor is {pg_fit['slope']:.2f} "
               f"[{pg_fit['ci'][0]:.2f}, {pg_fit['ci'][1]:.2f}]"
               if np.isfinite(pg_fit["slope"]) and np.isfinite(pg_fit["ci"][0])
               else "its slope is not identified")
    out.append(
        f"- **The policy-gradient part** (the surrogate without its KL penalty, same batches): "
        + (f"in the resolved cells with clip fraction < {small:.0%} it is a median "
           f"{np.median(pg_share):.0%} of ‖δ‖; " if pg_share else "") + fit_txt + ".")
    # 4. the KL part: where it dominates, where ‖δ‖ is heavy-tailed
    dom = [r for r in stale if r["kl_resolved"] and r["kl_norm"] > r["pg_norm"]]
    heavy = [r for r in stale if r["h_norm"] > 0 and r["delta_norm"] > 10 * r["h_norm"]]
    kl_txt = (f"KL(φ‖θ) {min(r['kl_behavior_k3'] for r in heavy):.2g}–"
              f"{max(r['kl_behavior_k3'] for r in heavy):.2g} nat/token, ‖δ‖/‖H‖ "
              f"{min(r['delta_norm'] / r['h_norm'] for r in heavy):.2g}–"
              f"{max(r['delta_norm'] / r['h_norm'] for r in heavy):.2g}; there "
              f"‖δ_PG‖/‖H‖ ≤ {max(r['pg_norm'] / r['h_norm'] for r in heavy):.2g}" if heavy
              else "")
    out.append(
        "- **The KL-penalty part** is resolved and larger than the policy-gradient part at: "
        + where(dom) + f". ‖δ‖ exceeds 10 × ‖H(θ, θ)‖ (resolved or not) at: {where(heavy)}"
        + (f" ({kl_txt})" if heavy else "") + ".")
    # 5. the total derivative
    td_hi = [r["td_hi"] / r["delta_norm"] for r in stale if r["delta_norm"] > 0 and
             r.get("td_hi") is not None]
    out.append(
        f"- **The total derivative.** δ_TD is resolved in {f['td_resolved']} of "
        f"{f['n_stale']} stale cells" + (f"; the median upper end of its interval is "
                                         f"{np.median(td_hi):.2g} × ‖δ‖" if td_hi else "") +
        ".")
    return "\n".join(out)


def exact_bias(d: str) -> str:
    """Controlled pairs (ranges over anchors × directions) and trajectory fits."""
    b = _load(os.path.join(d, "bias.json"))
    c, t = b["controlled"], b["traj"]
    rng = lambda k: (min(x[k] for x in c), max(x[k] for x in c))  # noqa: E731
    lo_r2, _ = rng("r2_small")
    s_lo, s_hi = rng("slope_small")
    l_lo, l_hi = rng("loglog_slope_small")
    br_lo, br_hi = rng("linearity_break_r")
    on_lo, on_hi = rng("clip_onset_r")
    lines = [
        f"Controlled pairs ({len(c)} series: anchors × directions), below the clip onset: R² ≥ "
        f"{lo_r2:.5f}; log–log slope {l_lo:.3f}–{l_hi:.3f}; slope dδ/dr {s_lo:.2g}–{s_hi:.2g}. "
        f"Linearity breaks at r = {_g(br_lo, 2)}–{_g(br_hi, 2)}; the first clipped token appears "
        f"at r = {_g(on_lo, 2)}–{_g(on_hi, 2)}.",
        "",
        f"Trajectories: {t['n_stale_steps']} stale steps, {t['n_small_drift_steps']} without a "
        f"clipped token; {100 * t['frac_stale_steps_clipped']:.0f} % of stale steps clipped; "
        f"clipping from s·η ≥ {_g(t['clip_onset_s_eta_min'])} and from drifts of "
        f"{_g(t['clip_onset_drift_p05'], 2)} (5th percentile).",
        "",
        "| fit (through the origin) | slope c | R² | log–log slope |",
        "|---|---|---|---|",
        f"| ‖δ‖ vs s·η, steps without clipping | {t['vs_s_eta_small']['slope']:.3g} | "
        f"{t['vs_s_eta_small']['r2']:.3f} | {t['loglog_slope_vs_s_eta_small']:.3f} |",
        f"| ‖δ‖ vs ‖θ_t − φ_t‖, steps without clipping | {t['vs_drift_small']['slope']:.3g} | "
        f"{t['vs_drift_small']['r2']:.3f} | {t['loglog_slope_vs_drift_small']:.3f} |",
        f"| ‖δ‖ vs s·η, all stale steps | {t['vs_s_eta_all']['slope']:.3g} | "
        f"{t['vs_s_eta_all']['r2']:.3f} | — |",
        f"| ‖δ‖ vs ‖θ_t − φ_t‖, all stale steps | {t['vs_drift_all']['slope']:.3g} | "
        f"{t['vs_drift_all']['r2']:.3f} | — |",
        "", f"Float64. {_machine_line(b.get('machine', {}))}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Language-model runs.
# ------------------------------------------------------------------------------------------------


def _evals(d: str) -> list[dict]:
    return [r for r in metrics_lib.read_metrics(d) if "heldout/accuracy" in r]


def sft_grpo(sft_dir: str, grpo_dir: str) -> str:
    """Held-out accuracy after SFT and along GRPO (500 held-out problems; standard error in
    parentheses), with wall times."""
    sft, grpo = _evals(sft_dir), _evals(grpo_dir)
    if not sft or not grpo:
        raise MissingResults(sft_dir if not sft else grpo_dir)
    n = _run_record(sft_dir).get("config", {}).get("eval", {}).get("num_problems", 500)
    se = lambda p: 100 * math.sqrt(max(p * (1 - p), 1e-12) / n)  # noqa: E731
    lines = ["| stage | step | held-out greedy | held-out sampled | wall |", "|---|---|---|---|---|"]
    for r in sft:
        lines.append(f"| SFT | {r['step']} | {100 * r['heldout/accuracy']:.1f} % "
                     f"(±{se(r['heldout/accuracy']):.1f}) | "
                     f"{100 * r.get('heldout_sampled/accuracy', float('nan')):.1f} % | "
                     f"{metrics_lib.format_duration(r.get('wall_s', float('nan')))} |")
    for r in grpo:
        lines.append(f"| GRPO | {r['step']} | {100 * r['heldout/accuracy']:.1f} % "
                     f"(±{se(r['heldout/accuracy']):.1f}) | "
                     f"{100 * r.get('heldout_sampled/accuracy', float('nan')):.1f} % | "
                     f"{metrics_lib.format_duration(r.get('wall_s', 0.0))} |")
    lines += ["", _machine_line(_run_record(grpo_dir).get("machine", {}))]
    return "\n".join(lines)


def staleness_curves(*dirs: str) -> str:
    """Per run: realized lags, rollout reward first → last 20 steps, held-out accuracy at each
    evaluation, mean KL(behavior‖current), clip fraction, within-cycle drift, wall time."""
    lines = ["| run | realized lags | rollout reward, first → last 20 steps | held-out greedy at each evaluation | mean KL(behavior‖current) k3 | mean clip frac | mean ‖θ_t − φ_t‖ | wall |",
             "|---|---|---|---|---|---|---|---|"]
    for d in dirs:
        if not os.path.isdir(d):
            raise MissingResults(d)
        recs = [r for r in metrics_lib.read_metrics(d) if "rollout/reward" in r]
        if not recs:
            raise MissingResults(d)
        lags = [r["lag"] for r in recs]
        counts = {v: lags.count(v) for v in sorted(set(lags))}
        lag_text = ", ".join(f"{v}×{k}" for v, k in counts.items())
        rew = [r["rollout/reward"] for r in recs]
        ev = " / ".join(f"{100 * r['heldout/accuracy']:.1f}" for r in _evals(d))
        mean = lambda k: float(np.mean([r.get(k, 0.0) for r in recs]))  # noqa: E731
        lines.append(f"| `{os.path.basename(d)}` | {lag_text} | {np.mean(rew[:20]):.3f} → "
                     f"{np.mean(rew[-20:]):.3f} | {ev} % | {mean('loss/kl_behavior_k3'):.2g} | "
                     f"{mean('loss/clip_frac'):.3f} | {mean('drift/within_cycle'):.3f} | "
                     f"{metrics_lib.format_duration(recs[-1]['wall_s'])} |")
    return "\n".join(lines)


def isa_spread(*dirs: str) -> str:
    """The same experiment with XLA restricted to other instruction sets: headline numbers."""
    lines = ["| run | XLA_FLAGS | precision | headline numbers |", "|---|---|---|---|"]
    first = {}      # precision -> the first exact sweep of that precision (the reference)

    for d in dirs:
        grids = results.read_sweep(d)
        if grids:
            prec = _precision(next(iter(grids.values())))
            ref = first.setdefault(prec, d)
            parts = []
            for name, v in grids.items():
                r = v.stability()
                f = r["alpha_fit_S_ge_1"]
                part = (f"{name}: α = {_alpha(f)}, "
                        f"η_max(S=1) = {_g(r['eta_max_geomean']['1'])}")
                if ref != d:
                    mine = v.summaries["collapsed"].astype(bool)
                    theirs = results.read_sweep(ref)[name].summaries["collapsed"].astype(bool)
                    differ = int((mine != theirs).sum())
                    part += (f", collapse flag differs from `{ref.split(os.sep, 1)[-1]}` in "
                             f"{differ} of {len(mine)} cells")
                parts.append(part)
            flags = next(iter(grids.values())).machine.get("xla_flags", "") or "none (native)"
        else:
            ev = _evals(d)
            if not ev:
                raise MissingResults(d)
            last = ev[-1]
            parts = [f"SFT step {last['step']}: held-out greedy "
                     f"{100 * last['heldout/accuracy']:.1f} %, sampled "
                     f"{100 * last.get('heldout_sampled/accuracy', float('nan')):.1f} %; "
                     "greedy at each evaluation " +
                     " / ".join(f"{100 * r['heldout/accuracy']:.1f}" for r in ev)]
            flags = _run_record(d).get("machine", {}).get("xla_flags", "") or "none (native)"
            prec = "float32"
        lines.append(f"| `{d.split(os.sep, 1)[-1]}` | `{flags}` | {prec} | {'; '.join(parts)} |")
    return "\n".join(lines)


def group_bias(d: str) -> str:
    """‖E[H_G] − H_pop‖ / ‖H_pop‖ per advantage estimator and group size."""
    r = _load(os.path.join(d, "results.json"))
    gs = [str(g) for g in r["group_sizes"]]
    lines = ["| advantages | " + " | ".join(f"G={g}" for g in gs) + " |",
             "|---" * (1 + len(gs)) + "|"]
    for name, gaps in r["relative_gap"].items():
        lines.append(f"| {name} | " + " | ".join(f"{gaps[g]:.3g}" for g in gs) + " |")
    lines += ["", "Float64. " + _machine_line(r.get("machine", {}))]
    return "\n".join(lines)


def bench_exact_grid(d: str) -> str:
    b = _load(os.path.join(d, "bench.json"))
    base = b["wall_s"]["grid (compile incl.)"]
    lines = ["| way to run the cells | wall | vs the grid (compile incl.) |", "|---|---|---|"]
    for k, v in b["wall_s"].items():
        lines.append(f"| {k} | {v:.2f} s | {v / base:.1f}× |")
    lines += ["", f"{b['cells']} cells × {b['num_steps']} steps. "
                  f"{_machine_line(b.get('machine', {}))}"]
    return "\n".join(lines)


def lm_sweep(d: str) -> str:
    """The table `experiments.sweep` printed for an LM grid, from its GridResult."""
    from experiments import sweep  # pylint: disable=import-outside-toplevel
    if not results.exists(d):
        raise MissingResults(d)
    gr = results.read(d)
    c = _load(os.path.join(d, "run.json"))["config"]["run"]    # the sweep config as launched
    sft = _evals(os.path.join(d, "sft")) if not c.get("init_from") else []
    start = (f" The SFT start: held-out greedy accuracy {100 * sft[-1]['heldout/accuracy']:.1f} % "
             f"at step {sft[-1]['step']}." if sft else "")
    n = c["eval"]["num_problems"]
    best = float(np.max(gr.summaries["heldout/accuracy"]))
    start += (f" Best held-out accuracy at the end over all cells: {100 * best:.1f} % (standard "
              f"error of a {n}-problem estimate ±{100 * math.sqrt(best * (1 - best) / n):.1f}).")
    lrs = gr.axis("lr")
    return ("```\n" + sweep.lm_table(gr) + "\n```\n\n"
            f"{len(gr.axis('S'))} S × {len(lrs)} η ({_g(lrs[0])} … {_g(lrs[-1])}, "
            f"grid step ×{lrs[1] / lrs[0]:.3g}) × {len(gr.axis('seed'))} seeds; "
            f"{c['model']['preset']} model, {c['rl']['steps']} steps of "
            f"{c['rl']['prompts_per_step']} prompts × {c['rl']['group_size']}, "
            f"SFT {c['sft']['steps']} steps.{start} {_machine_line(gr.machine)}")


def bench_lm_grid(d: str) -> str:
    b = _load(os.path.join(d, "lm_grid.json"))
    n, rows = b["cells"], b["wall_s"]
    ref = next(v for k, v in rows.items() if k.startswith("population"))
    lines = ["| way to run the cells | wall | cells per hour | vs population |",
             "|---|---|---|---|"]
    for k, v in rows.items():
        lines.append(f"| {k} | {v:.1f} s | {3600 * n / v:.0f} | {v / ref:.1f}× |")
    lines += ["", f"{n} cells × {b['steps']} GRPO steps; device {b['device']}. "
                  f"{_machine_line(b.get('machine', {}))}"]
    return "\n".join(lines)


def gpu_check(d: str) -> str:
    """The table `bash gpu/check.sh DIR` printed, from DIR/check.json (one row per part)."""
    rec = _load(os.path.join(d, "check.json"))
    probe = rec.get("probe", {})
    lines = ["| part | result | goal | met | wall (s) |", "|---|---|---|---|---|"]
    for name, part in rec.get("parts", {}).items():
        result, goal, met = part["row"]
        if rec.get("tiny"):
            met = "— (tiny)"   # toy shapes on a CPU: no goal applies
        lines.append(f"| {name} | {result} | {goal} | {met} | "
                     f"{part['result'].get('part_wall_s', 0):.0f} |")
    mode = "--tiny (toy shapes: a check of the code path, not a benchmark)" if rec.get("tiny") \
        else "full shapes"
    lines += ["", f"{mode}; jax {probe.get('jax', '?')} on {probe.get('count', '?')}x "
                  f"{probe.get('device', '?')} (backend {probe.get('backend', '?')}), Python "
                  f"{probe.get('python', '?')}; {rec.get('wall_s', 0):.0f} s of a "
                  f"{rec.get('budget_s', 0):.0f} s budget."]
    return "\n".join(lines)


def study_claims(d: str, *extra: str) -> str:
    """The claims table of a study directory (`experiments.reproduce`), as `experiments.study`
    renders it for <workdir>/results.md; `extra` exact-sweep directories add their grids (each
    labelled by its directory name)."""
    from experiments import study  # pylint: disable=import-outside-toplevel
    for x in (d,) + extra:
        if not results.read_sweep(x) and x != d or not os.path.isdir(x):
            raise MissingResults(x)
    return study.claims_markdown(study.load_study(
        d, {os.path.basename(x).replace("_", " "): x for x in extra}))


def study_stages(d: str) -> str:
    """What each stage of a study directory ran: command and wall time."""
    lines = ["| stage | command | wall |", "|---|---|---|"]
    found, total = False, 0.0
    for stage in sorted(glob.glob(os.path.join(d, "*", "stage.json"))):
        s = _load(stage)
        found = True
        total += s["wall_s"]
        cmd = s["command"].split(" -m ", 1)[-1]
        lines.append(f"| {os.path.basename(os.path.dirname(stage))} | `python -m {cmd}` | "
                     f"{s['wall_s']:.0f} s |")
    if not found:
        raise MissingResults(os.path.join(d, "*/stage.json"))
    grids = results.read_sweep(os.path.join(d, "exact_sweep"))
    machine = next(iter(grids.values())).machine if grids else {}
    lines += ["", f"Total {metrics_lib.format_duration(total)} (a stage reused from an earlier "
                  f"invocation counts the wall time of the call that computed it). "
                  f"{_machine_line(machine)}"]
    return "\n".join(lines)


def lr_controller(*dirs: str) -> str:
    """experiments.lr_controller: per S, the best fixed η, the largest never-collapsing fixed η
    and the controller at the largest base η (each mode and margin), on held-out seeds."""
    lines = []
    for d in dirs:
        r = _load(os.path.join(d, "summary.json"))
        k, eta0 = r["k_steps"], max(q["base_lr"] for q in r["table"][0]["control"])
        c = r["config"]
        lines += [f"**`{d.split(os.sep, 1)[-1]}`**: {c['testbed']['policy']}, "
                  f"{c['train']['optimizer']}, {c['train']['staleness']}, "
                  f"{c['train']['mode']}, T = {c['train']['num_steps']}, variant "
                  f"{r['variant']}; R_batch = {r['r_batch']:.3g} ({r['r_batch_source']}); "
                  f"held-out seeds {r['eval_seeds']}; controller rows at base η0 = {_g(eta0)}.", "",
                  f"| S | run | J@{k} | mean J | final J | collapsed | mean η_t/η0 | max ‖θ−φ‖ |",
                  "|---|---|---|---|---|---|---|---|"]

        def row(s, name, x, scale="—"):
            return (f"| {s} | {name} | {x['J_at_k']:.3f} | {x['J_mean']:.3f} ± "
                    f"{x['J_mean_sd']:.3f} | {x['J_final']:.3f} ± {x['J_final_sd']:.3f} | "
                    f"{x['collapse_rate']:.2f} | {scale} | {_g(x['drift_cycle_max'])} |")

        for t in r["table"]:
            b = t["fixed_best"]
            lines.append(row(t["S"], f"fixed η = {_g(b['lr'])} (best mean J)", b))
            big = t["fixed_largest_stable_lr"]
            if big is not None and big != b["lr"]:
                x = next(q for q in t["fixed_per_lr"] if q["lr"] == big)
                lines.append(row(t["S"], f"fixed η = {_g(big)} (largest never collapsing)", x))
            ctl = [q for q in t["control"] if q["base_lr"] == eta0]
            if t["S"] == 0:     # no within-cycle drift: every mode and margin is the base η
                ctl = [dict(ctl[0], mode="controller (inactive at S = 0)", margin=None)]
            for q in ctl:
                name = q["mode"] + ("" if q["margin"] is None else f", m = {q['margin']:g}")
                lines.append(row(t["S"], name, q, f"{q['lr_scale_mean']:.3f}"))
        lines += ["", f"Means over {len(r['eval_seeds'])} seeds ± sd over seeds; float64. "
                      f"{_machine_line(r.get('machine', {}))}", ""]
    return "\n".join(lines)


def lr_controller_map(d: str) -> str:
    """experiments.lr_controller with the controller at every grid η: per S, the fraction of
    (η, seed) cells that collapsed with a fixed η and with the controller (each mode and
    margin), and the mean J of the best fixed η against the controller's at the largest η0."""
    r = _load(os.path.join(d, "summary.json"))
    runs = sorted({(q["mode"], q["margin"]) for q in r["table"][0]["control"]})
    lrs = r["lrs"]
    head = ["S", "fixed: collapsed", "fixed: best mean J (η)"]
    for mode, m in runs:
        head += [f"{mode}, m = {m:g}: collapsed", f"{mode}, m = {m:g}: mean J at η0 = "
                                                  f"{_g(max(lrs))}"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for t in r["table"]:
        fixed = t["fixed_per_lr"]
        b = t["fixed_best"]
        cells = [str(t["S"]), f"{np.mean([q['collapse_rate'] for q in fixed]):.2f}",
                 f"{b['J_mean']:.3f} ({_g(b['lr'])})"]
        for mode, m in runs:
            qs = [q for q in t["control"] if q["mode"] == mode and q["margin"] == m]
            top = max(qs, key=lambda q: q["base_lr"])
            cells += [f"{np.mean([q['collapse_rate'] for q in qs]):.2f}", f"{top['J_mean']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Base η0 on the whole grid ({len(lrs)} values, {_g(lrs[0])} … {_g(lrs[-1])}) "
                  f"× {len(r['eval_seeds'])} held-out seeds {r['eval_seeds']}; R_batch = "
                  f"{r['r_batch']:.3g} ({r['r_batch_source']}); {r['config']['train']['mode']} "
                  f"mode, T = {r['config']['train']['num_steps']}, float64. "
                  f"{_machine_line(r.get('machine', {}))}"]
    return "\n".join(lines)


def memory_plan(d: str) -> str:
    """The per-device budgets `python -m bench.memory_plan --out=DIR/<plan>.json` wrote, one
    column per plan (every *.json of the directory, sorted by name)."""
    paths = sorted(glob.glob(os.path.join(d, "*.json")))
    if not paths:
        raise MissingResults(os.path.join(d, "*.json"))
    plans = [(os.path.basename(p)[:-5], _load(p)) for p in paths]
    backend = {p["backend"] for _, p in plans}
    gb = lambda v: f"{v / 1e9:.2f}"  # noqa: E731
    keys = ("micro_batch", "max_lag", "logits_chunk", "remat", "attention_impl", "compute_dtype",
            "param_dtype",
            "opt_state_dtype", "snapshot_dtype", "snapshot_memory", "cosines", "loss")
    head = "| | " + " | ".join(f"`{n}`" for n, _ in plans) + " |"
    lines = [f"Per-device memory (GB = 1e9 bytes); compiled parts from the "
             f"**XLA:{'/'.join(sorted(b.upper() for b in backend))} memory analysis** "
             "(not a GPU's).", "", head, "|---" * (len(plans) + 1) + "|"]
    for k in keys:
        label = "rows per micro-batch" if k == "micro_batch" else k
        lines.append(f"| {label} | " + " | ".join(str(p["settings"].get(k, "—")) for _, p in plans)
                     + " |")
    n_rows = max(len(p["budget_rows"]) for _, p in plans)
    for i in range(n_rows):
        labels = [p["budget_rows"][i][0] if i < len(p["budget_rows"]) else "" for _, p in plans]
        name = next(lb for lb in labels if lb).split(":")[0]
        cells = []
        for (_, p), label in zip(plans, labels):
            if not label:
                cells.append("—")
                continue
            extra = label.split(":", 1)[1].strip() if ":" in label else ""
            cells.append(gb(p["budget_rows"][i][1]) + (f" ({extra})" if extra else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"**{gb(p['total'])}**" for _, p in plans) + " |")
    lines.append("| margin to " + gb(plans[0][1]["budget"]) + " | " +
                 " | ".join(gb(p["margin"]) for _, p in plans) + " |")
    s0 = plans[0][1]["settings"]
    lines += ["", f"{plans[0][1]['preset']} ({plans[0][1]['num_params'] / 1e9:.3f}B parameters), "
              f"learner B={s0['batch']}, T={s0['seq_len']} (prompt {s0['prompt_len']}); sampler "
              f"{s0['sample_prompts']} prompts × {s0['num_samples']} samples, "
              f"{s0['new_tokens']} new tokens; jax {plans[0][1]['jax']}."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# The sampler.
# ------------------------------------------------------------------------------------------------


def parity_table(r: dict) -> str:
    """The |Δ| distribution table of a `bench.logprob_parity` result (Δ = learner − sampler)."""
    qs = list(r["rows"][0]["quantiles_abs"])
    lines = ["| sampler | learner | tokens | mean \\|Δ\\| | " +
             " | ".join(f"p{100 * float(q):g} \\|Δ\\|" for q in qs) +
             " | max \\|Δ\\| | mean Δ | ratio ∉ [0.8, 1.25] |",
             "|---|---|---|---|" + "---|" * len(qs) + "---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['sampler']} | {row['learner']} | {row['tokens']:,} | "
                     f"{row['mean_abs']:.2e} | " +
                     " | ".join(f"{row['quantiles_abs'][q]:.2e}" for q in qs) +
                     f" | {row['max_abs']:.2e} | {row['mean_signed']:+.1e} | "
                     f"{100 * row['ratio_out_frac']:.3g} % |")
    return "\n".join(lines)


def logprob_parity(d: str) -> str:
    r = _load(os.path.join(d, "parity.json"))
    n = r.get("max_new_tokens") or "the run's"
    return (parity_table(r) + "\n\n" +
            f"Model: {r['model']} ({r['task']} prompts); {r['steps']} batches of {r['prompts']} "
            f"prompts × {r['group_size']} samples, temperature {r['temperature']:g}, "
            f"{n} new tokens{' with EOS off' if r.get('no_eos') else ''}; parameters stored in "
            f"float32, the dtype is the compute dtype; backend {r['backend']}. "
            f"{_machine_line(r.get('machine', {}))}")


def _throughput_rows(d: str) -> tuple[dict[str, list[float]], str]:
    """{row name: [tokens/s of each run]} and the machine line from the tables that
    `bench/model_throughput.py` printed into d/model_throughput*.txt (one file per run)."""
    files = sorted(glob.glob(os.path.join(d, "model_throughput*.txt")))
    if not files:
        raise MissingResults(os.path.join(d, "model_throughput*.txt"))
    rows: dict[str, list[float]] = {}
    machine = ""
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("machine:"):
                    machine = line.strip()
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if line.startswith("| ") and len(cells) == 6 and cells[0] != "what":
                    rows.setdefault(cells[0], []).append(float(cells[2].replace(",", "")))
    return rows, machine


def throughput_before_after(before: str, after: str) -> str:
    """Sampler tokens/s of `bench/model_throughput.py` run by two versions of the code on the same
    machine (median over the runs in each directory)."""
    b, machine = _throughput_rows(before)
    a, _ = _throughput_rows(after)
    lines = ["| what | tokens/s before (runs) | tokens/s after (runs) | after / before |",
             "|---|---|---|---|"]
    for name, vals in b.items():
        if name not in a:
            continue
        mb, ma = float(np.median(vals)), float(np.median(a[name]))
        lines.append(f"| {name} | {mb:,.0f} ({', '.join(f'{v:,.0f}' for v in vals)}) | "
                     f"{ma:,.0f} ({', '.join(f'{v:,.0f}' for v in a[name])}) | {ma / mb:.2f} |")
    return "\n".join(lines + ["", f"{machine.replace('machine: ', 'Machine: ')}."])


def _ci(t: dict, scale: float = 100.0, digits: int = 1) -> str:
    """mean [lo, hi] of a `learning.t_interval`, or the mean alone (n < 2), or n/a."""
    if t.get("mean") is None:
        return "n/a"
    if t.get("lo") is None:
        return f"{scale * t['mean']:.{digits}f} (n = {t['n']})"
    return (f"{scale * t['mean']:.{digits}f} [{scale * t['lo']:.{digits}f}, "
            f"{scale * t['hi']:.{digits}f}]")


def _eta_max_cell(eta_max, codes) -> str:
    """η_max's geometric mean over seeds, as a bound when every seed's is one (+1: nothing
    collapsed, so η_max ≥ the largest η; −1: everything did, ≤ the smallest)."""
    codes = np.asarray(codes)
    gm = float(np.exp(np.log(eta_max).mean()))
    if np.all(codes == 1):
        return f"≥ {gm:.3g}"
    if np.all(codes == -1):
        return f"≤ {gm:.3g}"
    k = int((codes != 0).sum())
    return f"{gm:.3g}" + (f" ({k} of {len(codes)} seeds censored)" if k else "")


def learning_regime(learn_dir: str) -> str:
    """The learning-regime grid (`sweep_lm.py:learn`), per S at its best grid η (by the area,
    seed mean): η* (median over seeds of the parabola peak), held-out accuracy at the start, the
    area and the final accuracy with 95 % t-intervals over seeds, the ScaleRL ceiling A and
    steepness B of the per-seed fits (t-intervals over the seeds whose fit is identified),
    collapses; then η_max per S and claim 6's row."""
    from experiments import study  # pylint: disable=import-outside-toplevel
    from experiments.claims import claim6_learning as c6  # pylint: disable=import-outside-toplevel
    g = study.load_learn(learn_dir)
    if g is None:
        raise MissingResults(os.path.join(learn_dir, "evals.npz"))
    res = c6.analyse(g["lags"], g["lrs"], g["seeds"], g["eval_steps"], g["heldout"],
                     g["collapse_step"])
    eta_max, cens = scaling.eta_max_per_seed(g["lrs"], g["collapse_step"] >= 0)
    n, steps = len(g["seeds"]), g["eval_steps"]
    lines = [f"Per S at its best grid η (by area); accuracies in %, 95 % t-intervals over {n} "
             f"seeds on one fixed set of {g['run']['result'].meta['run']['eval']['num_problems']}"
             f" held-out problems (its own standard error is about 2 points); evaluations at "
             f"steps 0, {int(steps[1])}, …, {int(steps[-1])}.", "",
             "| S | best η | η* (median) | start | area | final | ceiling A | steepness B | "
             "collapsed (best η / all η) | η_max (geo. mean over seeds) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, s in enumerate(g["lags"]):
        r = res["per_S"][int(s)]
        j = int(np.argmin(np.abs(np.asarray(g["lrs"]) - r["best_lr"])))
        start = g["heldout"][i, j, :, 0].mean()
        edge = f" ({r['n_censored']} of {n} seeds at the grid's edge)" if r["n_censored"] else ""
        lines.append(
            f"| {int(s)} | {r['best_lr']:.3g} | {r['eta_star_median']:.3g}{edge} | "
            f"{100 * start:.1f} | {_ci(r['area'])} | {_ci(r['final'])} | "
            f"{_ci(r['A'])} ({r['n_identified']} fits) | {_ci(r['B'], 1.0, 2)} | "
            f"{r['n_collapsed']} / {int((g['collapse_step'][i] >= 0).sum())} | "
            f"{_eta_max_cell(eta_max[i], cens[i])} |")
    row = c6.rows({"learn": g})[0]
    walls = [w for w in g["run"]["result"].chunk_wall_s if w is not None]
    if 0 in list(g["lags"]):
        i0 = list(g["lags"]).index(0)
        j0 = int(np.argmin(np.abs(np.asarray(g["lrs"]) - res["per_S"][0]["best_lr"])))
        start, end = g["heldout"][i0, j0, :, 0], g["heldout"][i0, j0, :, -1]
        gain = learning.t_interval(100 * (end - start))
        lines += ["", f"Warm start: {100 * start.mean():.1f} % held-out greedy. The best S = 0 "
                  f"cell (η = {g['lrs'][j0]:.3g}, by area) ends at {100 * end.mean():.1f} %, a "
                  f"gain of **{gain['mean']:+.1f} points** (95 % t-interval over {n} seeds "
                  f"[{gain['lo']:+.1f}, {gain['hi']:+.1f}]; the worst seed "
                  f"{100 * (end - start).min():+.1f})."]
    lines += ["", f"Claim 6: {row['measured']}; {row['interval']}; **{row['verdict']}**.", "",
              f"{len(g['lags']) * len(g['lrs']) * n} cells; the chunks took "
              f"{metrics_lib.format_duration(sum(walls))}. "
              f"{_machine_line(g['run']['result'].machine)}"]
    return "\n".join(lines)


def learning_time(learn_dir: str, time_dir: str) -> str:
    """The wall-clock model of the learning regime: t_gen and t_learn measured alone (medians
    over blocks), the pipeline measured here at S = 0 and 1, and per S the modeled seconds per
    step, steps and seconds to 90 % of the S = 0 ceiling at its best η."""
    from experiments import study  # pylint: disable=import-outside-toplevel
    g, tm = study.load_learn(learn_dir), study.load_learn_time(time_dir)
    if g is None:
        raise MissingResults(os.path.join(learn_dir, "evals.npz"))
    if tm is None:
        raise MissingResults(os.path.join(time_dir, "async_pipeline.json"))
    rows = study.learning_time_rows(g, tm)
    ms = lambda x: f"{1e3 * x:.1f} ms"  # noqa: E731
    lines = [f"Measured ({tm['device']}, medians over {tm['blocks']} blocks): sampling + reward "
             f"t_gen = {ms(tm['t_gen'])}, learner step t_learn = {ms(tm['t_learn'])}, the "
             f"pipeline's own cost {ms(tm['overhead'])} per step; the pipeline here: S = 0 "
             f"{ms(tm['pipeline_s0'])}, S = 1 {ms(tm['pipeline_s1'])} per step "
             f"(model for separate devices: {ms(tm['t_gen'] + tm['t_learn'] + tm['overhead'])} "
             f"and {ms(max(tm['t_gen'], tm['t_learn']) + tm['overhead'])}). "
             f"{_machine_line(tm['machine'])}", "",
             f"Target: {100 * study.CEILING_FRAC:.0f} % of the S = 0 ceiling (its best η's "
             f"seed-mean final accuracy {100 * rows[0]['ceiling']:.1f} %) = "
             f"{100 * rows[0]['target']:.1f} %, first reached by the seed-mean curve "
             "(interpolated between evaluations).", "",
             "| S | best η | modeled s / step (bound by) | steps to target | seconds to target |",
             "|---|---|---|---|---|"]
    for r in rows:
        hit = "not reached" if r["steps_to_target"] is None else f"{r['steps_to_target']:.0f}"
        sec = ("—" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f}")
        lines.append(f"| {r['S']} | {r['lr']:.3g} | {1e3 * r['step_s']:.1f} ms ({r['bound_by']})"
                     f" | {hit} | {sec} |")
    return "\n".join(lines)


def learning_control(d: str, time_dir: str | None = None) -> str:
    """The LR-schedule comparison (`experiments.learn_control`): per S each schedule's η (the
    controllers' base η), area with its 95 % t-interval over the held-out seeds, area as a
    fraction of the best fixed η's at S = 0 (paired by seed), the same per second when the step
    timing `time_dir` is given, collapses, the controllers' mean factor c_t and the mean ESS/B;
    then the target's verdict per schedule at the largest S and what the numbers say limits it."""
    from experiments import learn_control as lcm  # pylint: disable=import-outside-toplevel
    from experiments import study  # pylint: disable=import-outside-toplevel
    timing = None
    if time_dir is not None:
        timing = study.load_learn_time(time_dir)
        if timing is None:
            raise MissingResults(os.path.join(time_dir, "async_pipeline.json"))
    cmp = lcm.compare(d, timing=timing)
    if cmp is None:
        raise MissingResults(os.path.join(d, "fixed", "result.json"))
    ctl = {a: g["lr_control"] for a, g in cmp["grids"].items() if a != "fixed"}
    lines = [f"{len(cmp['seeds'])} held-out seeds ({', '.join(map(str, cmp['seeds']))}), "
             f"T = {cmp['T']}, held-out greedy accuracy every {cmp['eval_every']} steps; area = "
             f"mean accuracy over the run; 95 % t-intervals over seeds. The fixed schedule's η "
             f"is the best of {len(cmp['grids']['fixed']['lrs'])} on these same seeds (an "
             f"oracle); the controllers start from S = 0's best η, "
             f"{cmp['reference_lr']:.3g}.", ""]
    if "drift" in ctl and ctl["drift"]:
        lines += [f"Drift rule: R_batch = {ctl['drift']['r_batch']:.4g} (the median run-peak "
                  f"within-cycle drift at each S ≥ 1's best fixed η), margin "
                  f"{ctl['drift']['margin']:g}. VCPO: (ESS/B)^"
                  f"{ctl.get('ess', {}).get('ess_power', float('nan')):g}.", ""]
    lines += [lcm.table(cmp), ""] + lcm.target_lines(cmp)
    lines += _limits(cmp)
    walls = [w for g in cmp["grids"].values() for w in g["chunk_wall_s"]]
    lines += ["", f"{sum(g['area'].size for g in cmp['grids'].values())} cells; the chunks took "
              f"{metrics_lib.format_duration(sum(walls))}. "
              f"{_machine_line(cmp['grids']['fixed']['machine'])}"]
    return "\n".join(lines)


def _limits(cmp: dict) -> list[str]:
    """Sentences on the largest S, every number from `cmp`: per second against S = 0 (with the
    timing), and what limits the schedules there (collapses, the importance weights' ESS, the
    drift rule's effective η beside the best fixed one)."""
    top = {r["arm"]: r for r in cmp["rows"] if r["S"] == cmp["S_top"]}
    out = []
    if cmp.get("timing") is not None:
        tm = cmp["timing"]
        per = "; ".join(f"{a} {100 * r['per_second']['mean']:.1f} % "
                        f"[{100 * r['per_second']['lo']:.1f}, {100 * r['per_second']['hi']:.1f}]"
                        for a, r in top.items() if r["per_second"]["lo"] is not None)
        beat = [a for a, r in top.items() if r["per_second"]["lo"] is not None
                and r["per_second"]["lo"] > 1]
        out.append(f"* Per second (separate devices: t_gen = {1e3 * tm['t_gen']:.1f} ms, "
                   f"t_learn = {1e3 * tm['t_learn']:.1f} ms, {tm['device']}), at S = "
                   f"{cmp['S_top']} against S = 0's mean accuracy over the same wall-clock "
                   f"window: {per}; "
                   + (f"{', '.join(beat)} beat{'s' if len(beat) == 1 else ''} S = 0 per second."
                      if beat else "none beats S = 0 per second with its whole interval."))
    n = cmp["rows"][0]["area"]["n"]
    coll = ", ".join(f"{a} {r['collapsed']}" for a, r in top.items())
    ess = ", ".join(f"{a} {r['ess_mean']:.2f}" for a, r in top.items() if r["ess_mean"] is not None)
    line = (f"* What limits them at S = {cmp['S_top']}: collapsed cells (of {n}): {coll}; mean "
            f"ESS/B of the importance weights: {ess}.")
    if "drift" in top and top["drift"]["lr_scale_mean"] is not None:
        eff = top["drift"]["lr_scale_mean"] * top["drift"]["lr"]
        line += (f" The drift rule's mean effective η, {eff:.2g}, sits beside the best fixed "
                 f"η, {top['fixed']['lr']:.2g}, and their areas' intervals "
                 + ("overlap" if _overlap(top["drift"]["area"], top["fixed"]["area"])
                    else "do not overlap") + ".")
    return out + [line]


def _overlap(a: dict, b: dict) -> bool:
    return a["lo"] is not None and b["lo"] is not None and a["lo"] <= b["hi"] and b["lo"] <= a["hi"]


def claims_rules() -> str:
    """Each registered claim's verdict rule, from its module (the "Verdict" paragraph of its
    docstring, each backticked module constant followed by its value): the rules the code
    applies, so the docs cannot describe older ones."""
    from experiments import claims  # pylint: disable=import-outside-toplevel
    out = []
    for n, mod in claims.discover().items():
        doc = mod.__doc__ or ""
        at = [i for i, line in enumerate(doc.splitlines()) if "Verdict" in line or
              re.search(r"[Tt]he verdict\b", line)]
        if not at:
            raise ValueError(f"{mod.__name__}: its docstring has no Verdict paragraph")
        lines = doc.splitlines()[at[0]:]
        para = " ".join(line.strip() for line in lines[:next(
            (i for i, line in enumerate(lines) if not line.strip()), len(lines))])
        para = para[para.index("erdict") - 1:] if "erdict" in para else para
        para = "The " + para if para.startswith("verdict") else para

        def value(m, mod=mod):
            name = m.group(1)
            v = getattr(mod, name, None)
            return m.group(0) + (f" (= {v})" if name.isupper() and v is not None
                                 and not callable(v) else "")
        out.append(f"* **Claim {n}** ({mod.KEY}): {re.sub(r'`([A-Za-z_][A-Za-z_0-9]*)`', value, para)}")
    return "\n".join(out)


REPORTS: dict[str, Callable[..., str]] = {
    "logprob_parity": logprob_parity, "throughput_before_after": throughput_before_after,
    "study_claims": study_claims, "study_stages": study_stages, "memory_plan": memory_plan,
    "lm_sweep": lm_sweep, "bench_lm_grid": bench_lm_grid, "gpu_check": gpu_check,
    "exact_sweep": exact_sweep, "exact_families": exact_families, "lm_families": lm_families,
    "lm_controller": lm_controller,
    "exact_collapse_law": exact_collapse_law, "exact_bias": exact_bias, "lm_bias": lm_bias,
    "lm_bias_words": lm_bias_words,
    "sft_grpo": sft_grpo,
    "staleness_curves": staleness_curves, "isa_spread": isa_spread,
    "bench_exact_grid": bench_exact_grid, "group_bias": group_bias,
    "lr_controller": lr_controller, "lr_controller_map": lr_controller_map,
    "learning_regime": learning_regime, "learning_time": learning_time,
    "learning_control": learning_control,
    "claims_rules": claims_rules,
}


def render(spec: str, runs: str) -> str:
    kind, *args = spec.split()
    if kind not in REPORTS:
        raise ValueError(f"unknown report kind {kind!r}; valid: {sorted(REPORTS)}")
    return REPORTS[kind](*[os.path.join(runs, a) for a in args]).rstrip() + "\n"


def update_file(path: str, runs: str) -> tuple[str, list[str], list[str]]:
    """-> (new text, blocks that changed, blocks whose results are missing)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    changed, missing = [], []

    def sub(m):
        spec = m.group("spec")
        try:
            body = render(spec, runs)
        except FileNotFoundError as e:   # MissingResults, or a reader's own (read_metrics)
            missing.append(f"{path}: {spec} (missing {e})")
            return m.group(0)
        if body != m.group("body"):
            changed.append(f"{path}: {spec}")
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(sub, text), changed, missing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="runs", help="where the results directories are")
    ap.add_argument("--docs", default="docs", help="markdown files to update (a directory)")
    ap.add_argument("--check", action="store_true", help="only check; exit 1 if out of date")
    args = ap.parse_args(argv)
    all_changed, all_missing = [], []
    for path in sorted(glob.glob(os.path.join(args.docs, "*.md"))):
        text, changed, missing = update_file(path, args.runs)
        all_changed += changed
        all_missing += missing
        if changed and not args.check:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    for line in all_changed:
        print(("out of date: " if args.check else "updated: ") + line)
    for line in all_missing:
        print("results missing: " + line)
    return 1 if args.check and (all_changed or all_missing) else 0


if __name__ == "__main__":
    sys.exit(main())
