r"""Does a staleness-aware learning-rate controller beat the best fixed η? (exact testbed)

  python -m experiments.lr_controller --workdir=runs/controller
  python -m experiments.lr_controller --workdir=runs/controller_sampled --config.train.mode=sampled

(Config: experiments/configs/lr_controller.py; its docstring describes the two stages.)

1. Calibration: the fixed-η (S, η, seed) grid of the default stability map (seeds 0..4), with the
   within-cycle drift ‖θ_t − φ_t‖ kept every step. R_batch is MEASURED there (`scaling.estimate_r_batch`):
   for every S ≥ 1 and seed whose η_max is bracketed (a collapse above a stable η), the edge run
   is the stable run at η_max, one grid step below a collapse; its peak within-cycle drift over
   the whole run is a drift that the testbed survives right at the edge of stability, while
   one step of η higher the run collapses. R_batch is the median of these peaks over (S, seed).
   The peak drift of the collapsing neighbour before its collapse step is recorded beside it.
2. Evaluation on held-out seeds: the fixed-η grid, and the controller (`async_grpo.lr_control`)
   in each mode at each base η, with R_batch from stage 1 and margin m. For each S the table
   lists the best fixed η (the η with the highest mean J over the run, averaged over seeds) and
   the controlled runs: J after k steps, mean J over the run, final J, collapse rate, the mean
   effective η / base η and the largest measured within-cycle drift.

Each grid runs through the grid runner (resumable chunks; `workdir.claim` guards the workdir)
and is written as a GridResult (`async_grpo.results`): <workdir>/calibration/, <workdir>/fixed/
and <workdir>/control/ (axes S, η, seed, b1, and for the controller lookahead and margin).
Writes also <workdir>/calibration.json (R_batch and its edge runs) and <workdir>/summary.json
(the comparison table's numbers, R_batch, config, machine, wall times); prints the table.
"""

from __future__ import annotations

import json
import os
import time

import dataclasses
import jax
import numpy as np

from async_grpo import files, grid_runner, results
from async_grpo import metric_names as mn
from async_grpo import lr_control
from async_grpo import scaling as xa
from async_grpo import workdir as workdir_lib
from async_grpo.testbeds import exact as ex
from async_grpo.testbeds import exact_configs as xc
from experiments import _main, exact_sweep

MODES = {"rule": 0.0, "lookahead": 1.0}
KEEP = (mn.OBJECTIVE, mn.DRIFT_CYCLE, mn.UPDATE_NORM)


def plan(c) -> dict:
    """Parses and validates the config (nothing compiled)."""
    p = xc.sweep_plan(c)
    if len(p["variants"]) != 1:
        raise ValueError(f"--config.variants must name one variant, got {p['variants']}.")
    eval_seeds = xc.parse_list(c.eval_seeds, int, "eval_seeds")
    if not eval_seeds or min(eval_seeds) < 0:
        raise ValueError(f"--config.eval_seeds must be integers >= 0, got {c.eval_seeds!r}.")
    modes = xc.parse_list(c.controller.modes, str, "controller.modes")
    bad = [m for m in modes if m not in MODES]
    if not modes or bad:
        raise ValueError(f"--config.controller.modes: unknown {bad or 'empty'}; valid: "
                         f"{list(MODES)}.")
    base_lrs = (list(p["lrs"]) if str(c.controller.base_lrs).strip() == "grid" else
                xc.parse_list(c.controller.base_lrs, float, "controller.base_lrs"))
    ex.validate_grid(base_lrs, eval_seeds, p["lags"], p["b1s"])
    margins = xc.parse_list(c.controller.margins, float, "controller.margins")
    if not margins:
        raise ValueError("--config.controller.margins is empty.")
    r_batch = c.controller.r_batch
    for m in margins:
        lr_control.validate(lr_control.Params(1.0 if r_batch is None else r_batch, m,
                                              c.controller.r_crit))
    if not isinstance(c.k_steps, int) or not 1 <= c.k_steps <= c.train.num_steps:
        raise ValueError(f"--config.k_steps must be an integer in [1, num_steps], got "
                         f"{c.k_steps!r}.")
    return dict(p, eval_seeds=eval_seeds, modes=modes, base_lrs=base_lrs, margins=margins)


def _grid(c, tb, tc, cells, keep, d, label, axes_extra=None) -> results.GridResult:
    """One grid of cells through the grid runner (resumable chunks in <d>/chunks), written as a
    GridResult into `d`; its curves and summaries in the canonical names."""
    names = exact_sweep.engine_names(ex.make_train(tb, tc), cells, keep, label)
    n = len(cells["lr"])
    size = min(c.chunk_size, n)
    run = grid_runner.run_chunks(os.path.join(d, "chunks"), n, size,
                                 exact_sweep.exact_compute(tb, tc, cells, size, names, 1),
                                 label=label)
    gr = results.GridResult(
        "lr_control", {"S": cells["max_lag"], "lr": cells["lr"], "seed": cells["seed"],
                       "b1": cells["b1"], **(axes_extra or {})},
        run.summaries, run.curves, 1, config=json.loads(c.to_json()),
        meta={"grid": label, "train": dataclasses.asdict(tc)}, machine=workdir_lib.machine(),
        wall_s=run.wall_s, chunk_wall_s=run.chunk_wall_s,
        invocations=results.previous_invocations(d) + [grid_runner.invocation(run)], dir=d)
    gr.write(d)
    return gr


def _stats(m, s, sel, k):
    """Mean over the selected cells (seeds) of J@k, mean J, final J, collapse rate; sd = the
    standard deviation over seeds."""
    j = m[mn.OBJECTIVE][sel]
    return {"J_at_k": float(np.mean(j[:, k - 1])), "J_mean": float(np.mean(j)),
            "J_mean_sd": float(np.std(j.mean(1))),
            "J_final": float(np.mean(s["J_final"][sel])),
            "J_final_sd": float(np.std(s["J_final"][sel])),
            "collapse_rate": float(np.mean(s["collapsed"][sel])), "n": int(sel.sum())}


def _calibrate(c, p, tb, tc, workdir) -> dict:
    """Stage 1: R_batch measured on the fixed-η grid of the calibration seeds."""
    lags, lrs, seeds = p["lags"], np.array(p["lrs"]), p["seeds"]
    cells = ex.make_cells(p["lrs"], seeds, lags, p["b1s"], max_lag_cap=tc.max_lag_cap)
    gr = _grid(c, tb, tc, cells, (mn.DRIFT_CYCLE,), os.path.join(workdir, "calibration"),
               "calibration")
    s = gr.summaries
    shape = (len(lags), len(lrs), len(seeds))
    calib = xa.estimate_r_batch(lags, lrs, seeds, s["collapsed"].reshape(shape),
                                s["collapse_step"].reshape(shape),
                                gr.curves[mn.DRIFT_CYCLE].reshape(shape + (-1,)))
    calib["collapse_frac_per_S"] = {str(S): float(v) for S, v in zip(
        lags, s["collapsed"].reshape(shape).mean((1, 2)))}
    calib["seeds"] = seeds
    files.write_json_atomic(os.path.join(workdir, "calibration.json"), calib)
    return calib


def run(c, workdir: str, p=None) -> str:
    p = plan(c) if p is None else p
    if len(p["b1s"]) != 1:
        raise ValueError("--config.b1s must hold one value here.")
    if c.x64:
        jax.config.update("jax_enable_x64", True)
    workdir_lib.claim(workdir, "lr_controller", json.loads(c.to_json()))
    variant = p["variants"][0]
    tb = ex.make_testbed(p["testbeds"][variant])
    lags, lrs, b1s = p["lags"], np.array(p["lrs"]), p["b1s"]
    tc_fixed = p["train"]
    tc_ctl = xc.train_config(c, tc_fixed.max_lag_cap, lr_control=True)
    walls = {}
    r_batch = c.controller.r_batch
    calib = None
    if r_batch is None:
        t0 = time.time()
        calib = _calibrate(c, p, tb, tc_fixed, workdir)
        r_batch = calib["r_batch"]
        walls["calibration_s"] = time.time() - t0
    r_crit, k = float(c.controller.r_crit), c.k_steps

    t0 = time.time()
    seeds = p["eval_seeds"]
    fixed = ex.make_cells(p["lrs"], seeds, lags, b1s, max_lag_cap=tc_fixed.max_lag_cap)
    gf = _grid(c, tb, tc_fixed, fixed, KEEP, os.path.join(workdir, "fixed"), "fixed")
    mf, sf = gf.curves, gf.summaries
    walls["fixed_s"] = time.time() - t0

    t0 = time.time()
    parts = []
    for mode in p["modes"]:
        for margin in p["margins"]:
            cl = ex.make_cells(p["base_lrs"], seeds, lags, b1s, max_lag_cap=tc_fixed.max_lag_cap)
            parts.append(ex.with_control(cl, r_batch, margin, r_crit, MODES[mode]))
    ctl = {key: np.concatenate([q[key] for q in parts]) for key in parts[0]}
    gc = _grid(c, tb, tc_ctl, ctl, KEEP + (mn.LR_SCALE,), os.path.join(workdir, "control"),
               "control", {"lookahead": ctl["lookahead"], "margin": ctl["margin"]})
    mc, sc = gc.curves, gc.summaries
    walls["control_s"] = time.time() - t0

    table = []
    for s_val in lags:
        row = {"S": int(s_val)}
        per_lr = []
        for e in lrs:
            sel = (fixed["max_lag"] == s_val) & (fixed["lr"] == e)
            per_lr.append(dict(_stats(mf, sf, sel, k), lr=float(e),
                               drift_cycle_max=float(mf[mn.DRIFT_CYCLE][sel].max())))
        best = max(per_lr, key=lambda r: r["J_mean"])
        row["fixed_best"] = best
        stable = [r for r in per_lr if r["collapse_rate"] == 0]
        row["fixed_largest_stable_lr"] = max(r["lr"] for r in stable) if stable else None
        row["fixed_best_stable"] = max(stable, key=lambda r: r["J_mean"]) if stable else None
        row["fixed_per_lr"] = per_lr
        row["control"] = []
        for mode in p["modes"]:
            for margin in p["margins"]:
                for e in p["base_lrs"]:
                    sel = ((ctl["max_lag"] == s_val) & (ctl["lr"] == e)
                           & (ctl["lookahead"] == MODES[mode]) & (ctl["margin"] == margin))
                    row["control"].append(dict(
                        _stats(mc, sc, sel, k), mode=mode, margin=margin, base_lr=float(e),
                        lr_scale_mean=float(np.mean(sc["lr_scale_mean"][sel])),
                        drift_cycle_max=float(mc[mn.DRIFT_CYCLE][sel].max())))
        table.append(row)
    summary = {"config": json.loads(c.to_json()), "machine": workdir_lib.machine(),
               "wall_s": walls, "variant": variant, "r_batch": r_batch,
               "r_batch_source": "measured (calibration.json)" if calib else "config",
               "margins": p["margins"], "r_crit": r_crit, "k_steps": k, "eval_seeds": seeds,
               "calibration_seeds": calib["seeds"] if calib else None,
               "lrs": lrs.tolist(), "table": table}
    files.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    return format_table(summary) + f"\nresults in {workdir}"


def _pm(r, key):
    return f"{r[key]:.4f}±{r[key + '_sd']:.4f}"


def format_table(summary: dict) -> str:
    k = summary["k_steps"]
    lines = [f"variant={summary['variant']} mode={summary['config']['train']['mode']} "
             f"R_batch={summary['r_batch']:.3g} ({summary['r_batch_source']}) "
             f"margins={summary['margins']} R_crit={summary['r_crit']} "
             f"eval seeds={summary['eval_seeds']} T={summary['config']['train']['num_steps']}",
             "Fixed: the grid η with the highest mean J (over steps and seeds). Controller: base "
             "η; scale = mean effective η / base η; maxD = largest within-cycle drift measured.",
             "± = sd over seeds.",
             f"  {'S':>3} {'run':<27} {'J@' + str(k):>7} {'J mean':>14} {'J final':>14} "
             f"{'collapse':>8} {'scale':>6} {'maxD':>7}"]
    for row in summary["table"]:
        b = row["fixed_best"]
        lines.append(f"  {row['S']:>3} {'fixed η=' + format(b['lr'], '.3g'):<27} "
                     f"{b['J_at_k']:>7.4f} {_pm(b, 'J_mean'):>14} {_pm(b, 'J_final'):>14} "
                     f"{b['collapse_rate']:>8.2f} {'':>6} {b['drift_cycle_max']:>7.3g}")
        for r in row["control"]:
            name = f"{r['mode']} m={r['margin']:g} η0={r['base_lr']:.3g}"
            lines.append(f"  {'':>3} {name:<27} {r['J_at_k']:>7.4f} {_pm(r, 'J_mean'):>14} "
                         f"{_pm(r, 'J_final'):>14} {r['collapse_rate']:>8.2f} "
                         f"{r['lr_scale_mean']:>6.3f} {r['drift_cycle_max']:>7.3g}")
        lines.append(f"      (largest fixed η with no collapse: {row['fixed_largest_stable_lr']})")
    return "\n".join(lines)


if __name__ == "__main__":
    _main.run(lambda c, workdir, _: run(c, workdir), default_config="lr_controller.py")
