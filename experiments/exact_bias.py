r"""Measures the staleness bias δ = H(θ, φ) − H(θ, θ) on the exact testbed.

  python -m experiments.exact_bias --workdir=runs/exact_bias

(The config defaults to experiments/configs/exact_bias.py.)

Two measurements, both exact (population mode, float64 by default):

1. Along real trajectories: training runs with a fixed lag S and learning rate η record, at every
   step, ‖δ_t‖, the lag s_t, the within-cycle drift ‖θ_t − φ_t‖ and the clip fraction. ‖δ‖ is
   fitted against s·η and against ‖θ − φ‖ through the origin on the steps where no token is
   clipped (the small-drift regime), with R².
2. At controlled pairs: anchors θ from an on-policy run, φ = θ − r·v for random unit directions
   v and a log grid of radii r. ‖δ‖ vs r = ‖θ − φ‖ is fitted in the small-drift regime (r below
   the clip onset), and the radius where linearity breaks (‖δ‖/(c·r) leaves [1 − tol, 1 + tol])
   is compared with the radius where clipping starts.

Writes <workdir>/bias.json (fits, breaks, config, machine, wall time), trajectory.csv,
controlled.csv and bias.png/.pdf, and prints a short summary.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

import jax
import jax.flatten_util  # pylint: disable=unused-import
import jax.numpy as jnp
import optax

from async_grpo import figures, files
from async_grpo import metric_names as mn
from async_grpo import workdir as workdir_lib
from async_grpo.testbeds import exact as ex
from async_grpo import scaling as xa
from async_grpo.testbeds import exact_configs as xc
from experiments import _main

plan = xc.bias_plan


def trajectories(p) -> dict:
    tb = ex.make_testbed(p["testbed"])
    cells = ex.make_cells(p["lrs"], p["seeds"], p["lags"], [p["b1"]],
                          max_lag_cap=p["train"].max_lag_cap)
    m, _ = ex.run_cells(tb, p["train"], cells)
    t_steps = p["train"].num_steps
    rep = lambda a: np.repeat(np.asarray(a)[:, None], t_steps, 1)  # noqa: E731
    out = {"S": rep(cells["max_lag"]), "lr": rep(cells["lr"]), "seed": rep(cells["seed"]),
           "step": np.broadcast_to(np.arange(t_steps), m["lag"].shape)}
    for k in ("lag", "delta_norm", "delta_rel", mn.DRIFT_CYCLE, mn.CLIP_FRAC, "h_on_norm",
              "cos_stale", "cos_onpolicy", "J", "update_norm"):
        out[k] = m[k]
    return {k: np.asarray(v).reshape(-1) for k, v in out.items()}


def controlled(p, c) -> dict:
    tb = ex.make_testbed(p["testbed"])
    theta = ex.init_params(tb, jax.random.split(jax.random.PRNGKey(0))[0])
    opt = ex.make_optimizer(p["train"], c.anchor_lr, p["b1"])
    state = opt.init(theta)

    @jax.jit
    def step(th, st):
        upd, st = opt.update(ex.population_H(tb, th, th), st, th)
        return optax.apply_updates(th, upd), st

    anchors = {}
    for t in range(max(p["anchors"]) + 1):
        if t in p["anchors"]:
            anchors[t] = theta
        theta, state = step(theta, state)
    flat0, unravel = jax.flatten_util.ravel_pytree(theta)
    radii = np.geomspace(c.r_min, c.r_max, c.num_radii)

    @jax.jit
    def measure(th, v, r):
        phi = unravel(jax.flatten_util.ravel_pytree(th)[0] - r * v)
        d = ex.bias_diagnostics(tb, th, phi)
        _, aux = ex.population_loss(tb, th, phi)
        return d["delta_norm"], d["delta_rel"], aux["clip_frac"], d["drift"]

    rows = {k: [] for k in ("anchor_step", "direction", "r", "delta_norm", "delta_rel",
                            mn.CLIP_FRAC, "drift")}
    rng = np.random.default_rng(1)
    for t, th in anchors.items():
        for k in range(c.num_directions):
            v = rng.normal(size=flat0.shape)
            v = jnp.asarray(v / np.linalg.norm(v), flat0.dtype)
            dn, dr, cf, dist = jax.vmap(lambda r, th=th, v=v: measure(th, v, r))(
                jnp.asarray(radii, flat0.dtype))
            rows["anchor_step"] += [t] * len(radii)
            rows["direction"] += [k] * len(radii)
            rows["r"] += list(radii)
            for name, arr in (("delta_norm", dn), ("delta_rel", dr), (mn.CLIP_FRAC, cf),
                              ("drift", dist)):
                rows[name] += list(np.asarray(arr))
    return {k: np.asarray(v) for k, v in rows.items()}


def analyse(traj, ctrl, tol) -> dict:
    res = {}
    # Trajectories: stale steps only; small-drift regime = no token clipped.
    stale = traj["lag"] > 0
    small = stale & (traj[mn.CLIP_FRAC] == 0)
    x_seta = traj["lag"] * traj["lr"]
    res["traj"] = {
        "n_stale_steps": int(stale.sum()), "n_small_drift_steps": int(small.sum()),
        "vs_s_eta_small": xa.fit_through_origin(x_seta[small], traj["delta_norm"][small]),
        "vs_drift_small": xa.fit_through_origin(traj[mn.DRIFT_CYCLE][small],
                                                traj["delta_norm"][small]),
        "rel_vs_drift_small": xa.fit_through_origin(traj[mn.DRIFT_CYCLE][small],
                                                    traj["delta_rel"][small]),
        "loglog_slope_vs_s_eta_small": xa.loglog_slope(x_seta[small], traj["delta_norm"][small]),
        "loglog_slope_vs_drift_small": xa.loglog_slope(traj[mn.DRIFT_CYCLE][small],
                                                       traj["delta_norm"][small]),
        "vs_s_eta_all": xa.fit_through_origin(x_seta[stale], traj["delta_norm"][stale]),
        "vs_drift_all": xa.fit_through_origin(traj[mn.DRIFT_CYCLE][stale],
                                              traj["delta_norm"][stale]),
    }
    clipped = stale & (traj[mn.CLIP_FRAC] > 0)
    res["traj"]["clip_onset_drift_p05"] = (float(np.quantile(traj[mn.DRIFT_CYCLE][clipped], 0.05))
                                           if clipped.any() else None)
    res["traj"]["clip_onset_s_eta_min"] = float(x_seta[clipped].min()) if clipped.any() else None
    res["traj"]["frac_stale_steps_clipped"] = float(clipped.sum() / max(1, stale.sum()))
    # Controlled pairs: per (anchor, direction) series.
    series = []
    for t in np.unique(ctrl["anchor_step"]):
        for k in np.unique(ctrl["direction"]):
            sel = (ctrl["anchor_step"] == t) & (ctrl["direction"] == k)
            r, dn, cf = ctrl["r"][sel], ctrl["delta_norm"][sel], ctrl[mn.CLIP_FRAC][sel]
            clip_r = float(r[cf > 0].min()) if (cf > 0).any() else None
            sm = r < (clip_r if clip_r is not None else np.inf)
            fit = xa.fit_through_origin(r[sm], dn[sm])
            # Linearity reference: the slope at the smallest radii (the derivative of δ in φ).
            c0 = float(np.median(dn[:5] / r[:5]))
            brk = xa.linearity_break(r, dn, c0, tol=tol)
            series.append({"anchor_step": int(t), "direction": int(k), "slope_small": fit["slope"],
                           "r2_small": fit["r2"], "n_small": fit["n"],
                           "loglog_slope_small": xa.loglog_slope(r[sm], dn[sm]),
                           "slope_at_zero": c0, "linearity_break_r": brk, "clip_onset_r": clip_r})
    res["controlled"] = series
    return res


def _plot(traj, ctrl, res, stem):
    """Full-width figure: (a) controlled pairs ‖δ‖ vs ‖θ − φ‖ with the clip onsets,
    (b) ‖δ‖ vs s·η and (c) vs ‖θ_t − φ_t‖ along trajectories, with the fits."""
    anchors = sorted({t for t, *_ in series_iter(ctrl)})
    colors = dict(zip(anchors, figures.palette(len(anchors))))
    below = dict(loc="upper center", bbox_to_anchor=(0.5, -0.27))
    with figures.style():
        fig, ax = figures.figure("full", ncols=3, aspect=1.2)
        for t, k, r, dn, cf in series_iter(ctrl):
            ax[0].plot(r, dn, "-", lw=1, color=colors[t],
                       label=f"θ at step {t}" if k == 0 else None)
            if (cf > 0).any():
                ax[0].axvline(r[cf > 0].min(), color=colors[t], ls=":", lw=0.8)
        figures.legend_only(ax[0], [("clip onset (first clipped token)",
                                     dict(color="k", ls=":", lw=0.8))], **below)
        ax[0].set(xscale="log", yscale="log", xlabel="‖θ − φ‖ (φ = θ − r·v)",
                  ylabel="‖δ‖")
        ax[0].set_title("(a) controlled pairs", loc="left")
        stale = traj["lag"] > 0
        small = stale & (traj[mn.CLIP_FRAC] == 0)
        x = traj["lag"] * traj["lr"]
        for a, xs, lab, key, title in (
                (ax[1], x, "s·η", "vs_s_eta_small", "(b) ‖δ‖ against s·η"),
                (ax[2], traj[mn.DRIFT_CYCLE], "‖θ_t − φ_t‖", "vs_drift_small",
                 "(c) ‖δ‖ against the drift")):
            a.scatter(xs[stale & ~small], traj["delta_norm"][stale & ~small], s=2,
                      c=figures.OKABE_ITO[3], alpha=0.3, lw=0, label="some token clipped")
            a.scatter(xs[small], traj["delta_norm"][small], s=2, c=figures.OKABE_ITO[0],
                      alpha=0.3, lw=0, label="no token clipped")
            fit = res["traj"][key]
            xx = np.geomspace(max(xs[stale].min(), 1e-6), xs[stale].max(), 50)
            a.plot(xx, fit["slope"] * xx, "k--",
                   label=f"fit c·x on no-clip steps\nc = {fit['slope']:.2g}, R² = {fit['r2']:.2f}")
            a.set(xscale="log", yscale="log", xlabel=lab + " (trajectories)", ylabel="‖δ_t‖")
            a.legend(markerscale=3, **below)
            a.set_title(title, loc="left")
        fig.suptitle("Exact testbed: staleness bias δ = H(θ, φ) − H(θ, θ)", fontsize=8)
        figures.save(fig, stem)


def series_iter(ctrl):
    for t in np.unique(ctrl["anchor_step"]):
        for k in np.unique(ctrl["direction"]):
            sel = (ctrl["anchor_step"] == t) & (ctrl["direction"] == k)
            yield int(t), int(k), ctrl["r"][sel], ctrl["delta_norm"][sel], ctrl[mn.CLIP_FRAC][sel]


def run(c, workdir: str) -> None:
    """Measures ‖δ‖ for config `c` into `workdir` and prints the tables."""
    p = plan(c)
    if c.x64:
        jax.config.update("jax_enable_x64", True)
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    traj = trajectories(p)
    t_traj = time.time() - t0
    ctrl = controlled(p, c)
    res = analyse(traj, ctrl, c.linear_tol)
    res.update(config=json.loads(c.to_json()), testbed=dataclasses.asdict(p["testbed"]),
               machine=workdir_lib.machine(),
               wall_s=time.time() - t0, wall_traj_s=t_traj)
    files.write_csv_atomic(os.path.join(workdir, "trajectory.csv"), traj)
    files.write_csv_atomic(os.path.join(workdir, "controlled.csv"), ctrl)
    files.write_json_atomic(os.path.join(workdir, "bias.json"), res)
    _plot(traj, ctrl, res, os.path.join(workdir, "bias"))
    tr = res["traj"]
    print("Trajectories (small-drift regime = stale steps with no clipped token: "
          f"{tr['n_small_drift_steps']} of {tr['n_stale_steps']}):")
    for key, lab in (("vs_s_eta_small", "‖δ‖ vs s·η       "), ("vs_drift_small", "‖δ‖ vs ‖θ−φ‖     "),
                     ("vs_s_eta_all", "‖δ‖ vs s·η (all) "), ("vs_drift_all", "‖δ‖ vs ‖θ−φ‖ (all)")):
        f = tr[key]
        print(f"  {lab}: slope {f['slope']:.4g}, R² {f['r2']:.3f} (n={f['n']})")
    print(f"  log-log slope vs s·η {tr['loglog_slope_vs_s_eta_small']:.3f}, vs drift "
          f"{tr['loglog_slope_vs_drift_small']:.3f}; clipping starts at s·η ≥ "
          f"{tr['clip_onset_s_eta_min']}, drift p05 {tr['clip_onset_drift_p05']}")
    print("Controlled pairs (φ = θ − r·v):")
    print(f"  {'anchor':>6} {'dir':>3} {'slope':>10} {'R2':>7} {'loglog':>7} {'break r':>10} "
          f"{'clip r':>10}")
    for s in res["controlled"]:
        print(f"  {s['anchor_step']:>6} {s['direction']:>3} {s['slope_small']:>10.4g} "
              f"{s['r2_small']:>7.4f} {s['loglog_slope_small']:>7.3f} "
              f"{s['linearity_break_r']:>10.3g} {s['clip_onset_r'] or float('nan'):>10.3g}")
    print(f"wall time {res['wall_s']:.1f}s; results in {workdir}")


if __name__ == "__main__":
    _main.run(lambda c, workdir, _: run(c, workdir), default_config="exact_bias.py")
