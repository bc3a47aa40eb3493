r"""Three learning-rate schedules under staleness on the testbed where GRPO learns.

    python -m experiments.learn_control --config=experiments/configs/learn_control.py \
        --workdir=runs/study/lm_learn_control

Issue 22's part 6: at each S ≥ 1, on seeds the learning grid did not use, the accuracy-area
(mean held-out greedy accuracy over the run, `learning.area`) of

* the best fixed η at that S (picked on these seeds: an oracle, so it flatters the fixed arm),
* `async_grpo.lr_control`'s drift rule (η_t = min{η, m·R_batch/(S·G_t)}),
* the VCPO baseline η_t = η·√(ESS_t/B) (arXiv 2602.17616),

the two controllers from the base η that is best at S = 0 (a user tunes the synchronous run, then
turns staleness on without re-tuning), each as a fraction of the best fixed η's area at S = 0
(paired by seed: the same prompts and sampling keys), with its t-interval over seeds. The target
(the project's moonshot): a controller at S = 16 reaches `target` (95 %) of S = 0.

Each arm is an `experiments.sweep` grid (one `async_grpo.results.GridResult`) in
<workdir>/{fixed, drift, ess}; the drift and ess arms are built from the fixed arm's results
(their base η and R_batch), so a rerun resumes each arm where it stopped. `compare(workdir)` reads
the three results; the report (`experiments.report`, block `learning_control`) and Figure 11
(`experiments.study`) call it.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from async_grpo import learning, results
from async_grpo import metric_names as mn

ARMS = ("fixed", "drift", "ess")
# the comparison's own keys, which the arms' sweep configs do not take
_OWN = ("control_lags", "margin", "ess_power", "target")


def arm_grid(gr: results.GridResult) -> dict[str, Any]:
    """An arm's cells as [S, η, seed] arrays: lags, lrs, seeds, eval_steps, acc [S, η, seed, E],
    area [S, η, seed], collapsed [S, η, seed], the controller's mean factor and the mean ESS/B
    where recorded (NaN otherwise), and the grid's `lr_control` settings (None without) and
    chunk wall times."""
    if mn.HELDOUT_ACC not in gr.evals or gr.eval_steps is None:
        raise ValueError(f"{gr.dir}: no in-program held-out evaluations (eval_every = 0)")
    g = results.cube(gr)
    idx = g["index"]
    steps = np.asarray(gr.eval_steps, float)
    acc = np.asarray(gr.evals[mn.HELDOUT_ACC], float)[idx]
    area = np.apply_along_axis(lambda a: learning.area(steps, a), -1, acc)
    nan = np.full(idx.shape, np.nan)
    scale = np.asarray(gr.summaries[mn.LR_SCALE_MEAN], float)[idx] \
        if mn.LR_SCALE_MEAN in gr.summaries else nan
    ess = np.asarray(gr.curves[mn.ESS_FRAC], float).mean(-1)[idx] \
        if mn.ESS_FRAC in gr.curves else nan
    return dict(lags=[int(s) for s in g["lags"]], lrs=np.asarray(g["lrs"], float),
                seeds=[int(s) for s in g["seeds"]], eval_steps=steps, acc=acc, area=area,
                collapsed=np.asarray(gr.summaries[mn.COLLAPSED], bool)[idx],
                lr_scale_mean=scale, ess_mean=ess, lr_control=gr.meta.get("lr_control"),
                chunk_wall_s=[w for w in gr.chunk_wall_s if w is not None],
                machine=gr.machine)


def best_fixed(g: dict[str, Any]) -> dict[int, int]:
    """{S: index of the η with the largest seed-mean area} (the fixed arm's oracle choice)."""
    return {s: int(np.argmax(g["area"][i].mean(-1))) for i, s in enumerate(g["lags"])}


def r_batch_at_best(gr: results.GridResult, g: dict[str, Any], best: dict[int, int]) -> float:
    """R_batch for the drift rule: the median over S ≥ 1 and seeds of the run-peak within-cycle
    drift ‖θ_t − φ_t‖ (before any collapse) at each S's best fixed η."""
    cube = results.cube(gr)
    drift = np.asarray(gr.curves[mn.DRIFT_CYCLE], float)
    stop = np.asarray(gr.summaries[mn.COLLAPSE_STEP])
    peaks = []
    for i, s in enumerate(g["lags"]):
        if s < 1:
            continue
        for row in cube["index"][i, best[s]]:
            end = stop[row] if stop[row] >= 0 else drift.shape[1]
            d = drift[row, :max(int(end), 1)]
            peaks.append(float(np.max(d[np.isfinite(d)])) if np.isfinite(d).any() else np.nan)
    peaks = np.asarray(peaks)
    if not peaks.size or not np.isfinite(peaks).any():
        raise ValueError(f"{gr.dir}: no S >= 1 cell with a finite within-cycle drift to measure "
                         f"R_batch from")
    return float(np.median(peaks[np.isfinite(peaks)]))


def controller_plan(gr: results.GridResult, margin: float, ess_power: float) -> dict[str, Any]:
    """From the finished fixed arm: the base η (best at S = 0) and the two controllers'
    `lr_control` settings."""
    g = arm_grid(gr)
    if 0 not in g["lags"]:
        raise ValueError(f"{gr.dir}: the fixed arm needs S = 0 (the reference), has "
                         f"{g['lags']}")
    best = best_fixed(g)
    base = float(g["lrs"][best[0]])
    r_batch = r_batch_at_best(gr, g, best)
    return {"base_lr": base, "r_batch": r_batch,
            "drift": dict(r_batch=r_batch, r_batch_from="", margin=margin, r_crit=0.0,
                          ess_power=0.0),
            "ess": dict(r_batch=0.0, r_batch_from="", margin=1.0, r_crit=0.0,
                        ess_power=ess_power)}


def _ratio(num, den) -> dict[str, Any]:
    """The mean over seeds of the per-seed ratio num/den (paired: the same seed's prompts and
    sampling keys) and its Student-t interval (coverage and the target rule's power:
    tests/test_learn_control.py)."""
    return learning.t_interval(np.asarray(num) / np.asarray(den))


def reaches(ratio: dict[str, Any], target: float) -> bool:
    """The target rule: the ratio's whole 95 % interval lies at or above `target`."""
    return ratio["lo"] is not None and ratio["lo"] >= target


def compare(workdir: str, target: float = 0.95,
            timing: Optional[dict[str, float]] = None) -> Optional[dict[str, Any]]:
    """The comparison from the arms' results in `workdir`, or None while the fixed arm is
    missing. Rows per S ≥ 1 of the fixed arm: each arm's η, area (t-interval over seeds), area /
    the S = 0 best fixed area (paired by seed, t-interval), collapsed cells, mean controller
    factor and mean ESS/B; "target_met" per controller at the largest S.

    With `timing` ({"t_gen", "t_learn", "overhead"} in seconds, `bench.async_pipeline`'s
    medians), each row also has "per_second": its area over its T steps divided by the S = 0
    reference's mean accuracy over the same wall-clock window (seed by seed), with separate
    devices' step times (`learning.step_seconds`): S ≥ 1 runs its T steps in the time S = 0 runs
    T·step(S)/step(0) of them; above 1, the schedule beats S = 0 per second."""
    if not results.exists(os.path.join(workdir, "fixed")):
        return None
    fixed_gr = results.read(os.path.join(workdir, "fixed"))
    fx = arm_grid(fixed_gr)
    best = best_fixed(fx)
    ref = fx["area"][fx["lags"].index(0), best[0]]            # [seeds]
    arms = {a: arm_grid(results.read(os.path.join(workdir, a))) for a in ARMS[1:]
            if results.exists(os.path.join(workdir, a))}
    for a, g in arms.items():
        if g["seeds"] != fx["seeds"]:
            raise ValueError(f"{workdir}/{a}: seeds {g['seeds']} differ from the fixed arm's "
                             f"{fx['seeds']} (the ratios are paired by seed)")

    ref_acc = fx["acc"][fx["lags"].index(0), best[0]]         # [seeds, evals]

    def per_second(s, a):
        if timing is None:
            return None
        t = {k: float(timing[k]) for k in ("t_gen", "t_learn", "overhead")}
        frac = learning.step_seconds(s, **t) / learning.step_seconds(0, **t)
        end = fx["eval_steps"][0] + frac * (fx["eval_steps"][-1] - fx["eval_steps"][0])
        window = [learning.window_area(fx["eval_steps"], c, end) for c in ref_acc]
        return dict(_ratio(a, window), window_steps=float(end))

    def row(arm, g, i, j):
        a = g["area"][i, j]
        return {"arm": arm, "lr": float(g["lrs"][j]), "area": learning.t_interval(a),
                "per_second": per_second(g["lags"][i], a),
                "ratio": _ratio(a, ref), "collapsed": int(g["collapsed"][i, j].sum()),
                "lr_scale_mean": float(np.nanmean(g["lr_scale_mean"][i, j]))
                if np.isfinite(g["lr_scale_mean"][i, j]).any() else None,
                "ess_mean": float(np.nanmean(g["ess_mean"][i, j]))
                if np.isfinite(g["ess_mean"][i, j]).any() else None}

    rows = []
    for i, s in enumerate(fx["lags"]):
        r = dict(row("fixed", fx, i, best[s]), S=s)
        if s == 0:            # the reference itself: its ratio is 1 by definition, no interval
            r["ratio"] = {"mean": 1.0, "lo": None, "hi": None, "n": r["area"]["n"]}
            if r["per_second"] is not None:
                r["per_second"] = dict(r["ratio"], window_steps=float(fx["eval_steps"][-1]))
        rows.append(r)
        for a, g in arms.items():
            if s in g["lags"]:
                rows.append(dict(row(a, g, g["lags"].index(s), 0), S=s))
    s_top = max(fx["lags"])
    met = {r["arm"]: (reaches(r["ratio"], target), r["ratio"]["mean"] >= target)
           for r in rows if r["S"] == s_top}
    return {"rows": rows, "target": target, "S_top": s_top, "seeds": fx["seeds"],
            "timing": timing,
            "T": int(fx["eval_steps"][-1]), "eval_every": int(fx["eval_steps"][1]),
            "reference_lr": float(fx["lrs"][best[0]]),
            "target_met": {a: {"interval_above": v[0], "mean_above": v[1]}
                           for a, v in met.items()},
            "grids": {"fixed": fx, **arms}}


def table(cmp: dict[str, Any]) -> str:
    """The comparison as a Markdown table (every number from `compare`)."""
    def iv(d, f):
        if d["mean"] is None:
            return "–"
        return f"{d['mean']:{f}}" + ("" if d["lo"] is None else
                                     f" [{d['lo']:{f}}, {d['hi']:{f}}]")
    timed = cmp.get("timing") is not None
    lines = ["| S | schedule | η (base) | area | area / S = 0 best (per step) | "
             + ("per second | " if timed else "") + "collapsed | mean c_t | mean ESS/B |",
             "|---|---|---|---|---|" + ("---|" if timed else "") + "---|---|---|"]
    for r in cmp["rows"]:
        lines.append(
            f"| {r['S']} | {r['arm']} | {r['lr']:.3g} | {iv(r['area'], '.3f')} | "
            f"{iv(r['ratio'], '.3f')} | "
            + (f"{iv(r['per_second'], '.3f')} | " if timed else "")
            + f"{r['collapsed']}/{r['area']['n']} | "
            + ("–" if r["lr_scale_mean"] is None else f"{r['lr_scale_mean']:.2f}") + " | "
            + ("–" if r["ess_mean"] is None else f"{r['ess_mean']:.2f}") + " |")
    return "\n".join(lines)


def target_lines(cmp: dict[str, Any]) -> list[str]:
    """One sentence per schedule at the largest S: its area as a fraction of S = 0's and
    whether it reaches the target by the rule (`reaches`)."""
    out = []
    for arm, v in cmp["target_met"].items():
        r = next(r for r in cmp["rows"] if r["arm"] == arm and r["S"] == cmp["S_top"])
        lo = "–" if r["ratio"]["lo"] is None else f"{100 * r['ratio']['lo']:.1f}"
        out.append(f"* {arm} at S = {cmp['S_top']}: {100 * r['ratio']['mean']:.1f} % of the "
                   f"S = 0 area (lower end {lo} %): "
                   + ("reaches" if v["interval_above"] else "does not reach")
                   + f" the {cmp['target']:.0%} target"
                   + (" (its mean does, its interval does not)"
                      if v["mean_above"] and not v["interval_above"] else "") + ".")
    return out


def _arm_config(c, *, lags: str, lr: Optional[float] = None,
                lr_control: Optional[dict] = None):
    import ml_collections  # pylint: disable=import-outside-toplevel
    sub = ml_collections.ConfigDict(c.to_dict())
    for k in _OWN:
        del sub[k]
    sub.lags = lags
    if lr is not None:
        sub.lr_min = sub.lr_max = lr
        sub.lrs_per_octave = 1
    if lr_control is not None:
        sub.lr_control = ml_collections.ConfigDict(lr_control)
    return sub


def run(c, workdir: str) -> str:
    """Runs (or resumes) the three arms into `workdir`; -> the comparison's table."""
    from experiments import sweep  # pylint: disable=import-outside-toplevel
    for k in _OWN:
        if k not in c:
            raise ValueError(f"the learn_control config needs {k!r} "
                             f"(experiments/configs/learn_control.py)")
    if not 0 < float(c.target) <= 1.5:
        raise ValueError(f"--config.target={c.target!r}: a fraction of the S = 0 area in (0, 1.5]")
    if not all(s >= 1 for s in (int(x) for x in str(c.control_lags).split(","))):
        raise ValueError(f"--config.control_lags={c.control_lags!r}: integers >= 1")
    os.makedirs(workdir, exist_ok=True)
    print(sweep.run(_arm_config(c, lags=c.lags), os.path.join(workdir, "fixed")), flush=True)
    plan = controller_plan(results.read(os.path.join(workdir, "fixed")), float(c.margin),
                           float(c.ess_power))
    print(f"controllers: base η = {plan['base_lr']:.3g} (best fixed at S = 0), "
          f"R_batch = {plan['r_batch']:.4g} (margin {float(c.margin)})", flush=True)
    for arm in ARMS[1:]:
        print(sweep.run(_arm_config(c, lags=c.control_lags, lr=plan["base_lr"],
                                    lr_control=plan[arm]), os.path.join(workdir, arm)),
              flush=True)
    cmp = compare(workdir, float(c.target))
    return "\n".join([table(cmp), ""] + target_lines(cmp))


if __name__ == "__main__":
    from experiments import _main
    _main.run(lambda c, workdir, f: run(c, workdir),
              config_help="experiments/configs/learn_control.py[:quick|:tiny]")
