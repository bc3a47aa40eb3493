r"""Measures the staleness bias δ = H(θ, φ) − H(θ, θ) on the LM testbed, noise floor removed.

  python -m experiments.lm_bias --config=experiments/configs/lm_bias.py --workdir=runs/lm_bias \
      --config.run.init_from=runs/reproduce/lm_sweep/sft

The LM has no exact H: every estimate Ĥ(θ, φ) is the surrogate gradient at θ of one batch sampled
from φ, so a single difference Ĥ(θ, φ) − Ĥ(θ, θ) (the pipeline's `bias/*` diagnostic) is δ plus
two batches of sampling noise. Here, for each (η, anchor step t, lag s), R independent pairs of
batches of the same prompts are drawn, one from φ = θ_{t−s} and one from θ_t, and both are
differentiated at θ_t. With `couple` (the default) the two batches of a pair share their sampling
key (common random numbers: the same Gumbel noise at every position, so where φ and θ agree they
draw the same tokens). Each batch is still an exact sample of its own policy, so E x_r = δ
either way; coupling only shrinks the pair's noise, by far at small drift. With x_r = Ĥ_r(θ, φ) − Ĥ_r(θ, θ), the
U-statistic Σ_{r≠r'} ⟨x_r, x_r'⟩ / (R(R−1)) estimates ‖δ‖² without the noise floor
(`async_grpo.scaling.mean_norm_sq`, jackknife standard error). Lag 0 pairs two fresh batches at
θ_t: a control whose true bias is 0, so its estimates measure the false-resolution rate.

The same pairs also give, from extra backward passes:
* the total-derivative mode's δ_TD (`rl.objectives` c = 1, an importance-weighted estimate of
  ∇J(θ) that is unbiased at any φ under the conditions `losses.total_derivative_surrogate`
  states): the correction's answer to claim 1 on this testbed;
* the split δ = δ_PG + δ_KL: δ_PG is the same measurement for the surrogate without its KL
  penalty (kl_coef = 0, same batches), δ_KL the rest (the k3 penalty to the reference policy,
  evaluated on the stale samples);
* ‖H(θ, θ)‖ and the single-batch noise √tr Cov(Ĥ), so ‖δ‖ is read against both.

The trajectory θ_0 … θ_T is synchronous GRPO (batch t sampled by θ_t) with the run's optimizer at
learning rate η, from the SFT checkpoint; φ = θ_{t−s} is exactly the snapshot a learner with lag
s would train on at step t of that trajectory. The drift ‖θ_t − θ_{t−s}‖ is measured.

Memory: the R flattened float32 differences of every lag of one anchor are held on the host,
(len(lags) + 2)·R·P·4 bytes (P parameters): 0.1 GB for the 105 k-parameter testbed model at
R = 32, but about 1 TB for a 1B model. At that scale the Gram matrix needs a random projection of
the gradients (inner products are preserved in expectation, so the U-statistic stays unbiased);
that is not built.

Writes <workdir>/bias.json (per-cell rows, the fits of `analyse`, config, machine, wall time),
cells.csv, trajectory.csv and bias.png/.pdf, and prints a table.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time

from absl import logging
import jax
import jax.flatten_util  # pylint: disable=unused-import
import jax.numpy as jnp
import numpy as np

from async_grpo import config as config_lib
from async_grpo import figures, files, grid_axes, losses
from async_grpo import scaling
from async_grpo import workdir as workdir_lib
from async_grpo.rl import components, pipeline
from async_grpo.sft import run_sft
from async_grpo.tasks import TRAIN
from experiments import _main

# Per-replicate metrics of the stale batch scored at θ_t, averaged over replicates.
STALE_METRICS = ("loss/clip_frac", "loss/ratio_mean", "loss/ratio_max", "loss/kl_behavior_k3",
                 "reward")


def plan(c) -> dict:
    """Parses and checks the config (nothing heavy)."""
    config = config_lib.RunConfig.from_config(c.run)
    lrs = grid_axes.parse_list(c.lrs, float, "lrs")
    lags = grid_axes.parse_list(c.lags, int, "lags")
    anchors = grid_axes.parse_list(c.anchor_steps, int, "anchor_steps")
    if not lrs or min(lrs) <= 0:
        raise ValueError(f"--config.lrs={c.lrs!r}: positive learning rates")
    if not lags or min(lags) < 1:
        raise ValueError(f"--config.lags={c.lags!r}: integers >= 1 (lag 0, the control, is "
                         "always measured)")
    if not anchors or min(anchors) < max(lags):
        raise ValueError(f"--config.anchor_steps={c.anchor_steps!r}: every anchor t must be >= "
                         f"the largest lag {max(lags)} (φ = θ_(t−s) must exist)")
    if not isinstance(c.replicates, int) or c.replicates < 3:
        raise ValueError(f"--config.replicates={c.replicates!r}: an integer >= 3 (the "
                         "U-statistic's jackknife needs 3)")
    if not 0 <= c.clip_small < 1:
        raise ValueError(f"--config.clip_small={c.clip_small!r}: a fraction in [0, 1)")
    config = dataclasses.replace(
        config, rl=dataclasses.replace(config.rl, steps=max(anchors)))
    return dict(config=config, lrs=sorted(lrs), lags=sorted(set(lags)),
                anchors=sorted(set(anchors)), replicates=int(c.replicates),
                couple=bool(c.couple))


def warm_start(config: config_lib.RunConfig, workdir: str) -> config_lib.RunConfig:
    """`run.init_from`, or an SFT run into <workdir>/sft."""
    if config.init_from:
        return config
    sft_dir = os.path.join(workdir, "sft")
    run_sft(config, sft_dir, devices=jax.local_devices())
    return dataclasses.replace(config, init_from=sft_dir)


def _grads(objective, pg_objective, params, batch, ref_params):
    """At `params` on `batch`: (flat surrogate gradient H, flat total-derivative gradient, flat
    gradient of the surrogate without its KL penalty (`pg_objective`; H itself when None), the
    surrogate's metrics). The sign is the loss's."""
    def one(obj):
        extras = obj.prepare(batch, ref_params)
        g, m = jax.grad(lambda p: obj(p, batch, extras), has_aux=True)(params)
        return jax.flatten_util.ravel_pytree(g)[0].astype(jnp.float32), m
    g_sur, m = one(objective.with_td_weight(0.0))
    g_td, _ = one(objective.with_td_weight(1.0))
    g_pg = g_sur if pg_objective is None else one(pg_objective.with_td_weight(0.0))[0]
    return g_sur, g_td, g_pg, {k: m[k] for k in STALE_METRICS if k in m}


def pg_objective(comps):
    """The run's surrogate without its KL penalty (None if it has none): H = H_PG + H_KL, and δ
    splits the same way on the same batches."""
    rc = comps.config.rl
    kwargs = dict(rc.loss_kwargs)
    if not kwargs.get("kl_coef", 0.0):
        return None
    return dataclasses.replace(comps.objective,
                               loss_fn=losses.make_loss(rc.loss, **dict(kwargs, kl_coef=0.0)))


def _flat(params) -> np.ndarray:
    return np.asarray(jax.flatten_util.ravel_pytree(jax.device_get(params))[0], np.float64)


def trajectory(config, comps, learner, lr: float, keep: set[int], ref):
    """Synchronous GRPO at learning rate `lr` for config.rl.steps steps from θ_0.
    -> ({step: snapshot θ_step for step in keep}, per-step rows)."""
    params = learner.place_params(comps.init_params)
    opt_state, aux = learner.init_opt_state(params), learner.init_aux(params)
    snaps, rows = {}, []
    for t in range(config.rl.steps):
        snap = learner.snapshot(params)
        if t in keep:
            snaps[t] = snap
        batch = comps.source.generate(learner.gen_params(snap), t, t)
        params, opt_state, aux, m = learner.step(params, opt_state, aux, batch.arrays, ref,
                                                 step=t + 1)
        m = jax.device_get(m)
        rows.append({"lr": lr, "step": t, "reward": batch.stats["reward"],
                     "update_norm": float(m.get("update_norm", np.nan)),
                     "grad_norm": float(m.get("grad_norm", np.nan))})
    if config.rl.steps in keep:
        snaps[config.rl.steps] = learner.snapshot(params)
    return snaps, rows


def measure(p: dict, comps, grads_fn, snaps: dict, lr_index: int, t: int, ref) -> dict:
    """The R replicate pairs at anchor t: {lag: {"sur", "td", "pg": [R, P] differences, metrics}}
    (surrogate, total derivative, surrogate without KL) with lag 0 the fresh–fresh control, plus
    "fresh": the fresh batches' surrogate gradients [R, P]."""
    config, lags, r_n = p["config"], p["lags"], p["replicates"]
    theta = snaps[t]
    rollouts, task = comps.source.rollouts, comps.task
    base = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), lr_index), t)
    out = {s: {"sur": [], "td": [], "pg": [], "metrics": []} for s in [0] + lags}
    fresh_sur = []
    for r in range(r_n):
        problems = task.sample_batch(np.random.default_rng([config.seed, 11, lr_index, t, r]),
                                     config.rl.prompts_per_step, TRAIN)
        key = jax.random.fold_in(base, r)

        def grads_of(version, salt):
            batch = rollouts.generate_batch(snaps[version], version, jax.random.fold_in(key, salt),
                                            problems)
            return jax.device_get(grads_fn(theta, batch.arrays, ref_params=ref))

        f_sur, f_td, f_pg, _ = grads_of(t, 0)
        fresh_sur.append(f_sur)
        for s in [0] + lags:
            # Lag 0 (the control): a second fresh batch at θ_t with its own key. Stale batches
            # share the fresh batch's key when coupled (common random numbers), else their own.
            salt = 1 if s == 0 else (0 if p["couple"] else 1 + s)
            g_sur, g_td, g_pg, m = grads_of(t - s, salt)
            out[s]["sur"].append(g_sur - f_sur)
            out[s]["td"].append(g_td - f_td)
            out[s]["pg"].append(g_pg - f_pg)
            out[s]["metrics"].append({k: float(v) for k, v in m.items()})
    for s in out:
        for k in ("sur", "td", "pg"):
            out[s][k] = np.asarray(out[s][k])
    out["fresh"] = np.asarray(fresh_sur)
    return out


def cell_rows(p: dict, lr: float, t: int, m: dict, snaps: dict) -> list[dict]:
    """One row per lag of the noise-corrected norms (`scaling.mean_norm_sq`)."""
    gram = lambda x: np.asarray(x, np.float64) @ np.asarray(x, np.float64).T  # noqa: E731
    h = scaling.mean_norm_sq(gram(m["fresh"]))
    h_iv = scaling.norm_interval(h["est"], h["se"])
    theta = _flat(snaps[t])
    rows = []
    for s in [0] + p["lags"]:
        sur = scaling.mean_norm_sq(gram(m[s]["sur"]))
        td = scaling.mean_norm_sq(gram(m[s]["td"]))
        pg = scaling.mean_norm_sq(gram(m[s].get("pg", m[s]["sur"])))
        kl = scaling.mean_norm_sq(gram(m[s]["sur"] - m[s].get("pg", m[s]["sur"])))
        sur_iv, td_iv, pg_iv, kl_iv = (scaling.norm_interval(x["est"], x["se"])
                                       for x in (sur, td, pg, kl))
        met = {k: float(np.mean([d[k] for d in m[s]["metrics"]])) for k in m[s]["metrics"][0]}
        ratio_max = max(d.get("loss/ratio_max", np.nan) for d in m[s]["metrics"])
        rows.append({
            "lr": lr, "anchor": t, "lag": s, "s_eta": s * lr,
            "drift": float(np.linalg.norm(theta - _flat(snaps[t - s]))),
            "delta_est": sur["est"], "delta_se": sur["se"], "delta_norm": sur_iv["norm"],
            "delta_lo": sur_iv["lo"], "delta_hi": sur_iv["hi"], "resolved": sur_iv["resolved"],
            "td_est": td["est"], "td_se": td["se"], "td_norm": td_iv["norm"],
            "td_hi": td_iv["hi"], "td_resolved": td_iv["resolved"],
            "pg_est": pg["est"], "pg_se": pg["se"], "pg_norm": pg_iv["norm"],
            "pg_lo": pg_iv["lo"], "pg_hi": pg_iv["hi"], "pg_resolved": pg_iv["resolved"],
            "kl_norm": kl_iv["norm"], "kl_lo": kl_iv["lo"], "kl_hi": kl_iv["hi"],
            "kl_resolved": kl_iv["resolved"],
            "h_norm": h_iv["norm"], "noise_single": float(np.sqrt(max(h["noise"], 0.0))),
            "noise_pair": float(np.sqrt(max(sur["noise"], 0.0))),
            "clip_frac": met.get("loss/clip_frac", np.nan),
            "ratio_mean": met.get("loss/ratio_mean", np.nan), "ratio_max": ratio_max,
            "kl_behavior_k3": met.get("loss/kl_behavior_k3", np.nan),
            "stale_reward": met.get("reward", np.nan),
            "replicates": p["replicates"]})
    return rows


def analyse(rows: list[dict], *, clip_small: float) -> dict:
    """Claim 1's anchored fits of ‖δ‖ (against s·η and against the drift) and of ‖δ_PG‖
    (against s·η), over the small-drift stale cells (clip fraction < clip_small) and over all
    stale cells (`claims.claim1_bias.anchored_fit`: every cell, resolved or not, a level per
    anchor, a jackknife over anchors); the lag-0 control's false resolutions; δ_TD."""
    from experiments.claims import claim1_bias   # pylint: disable=import-outside-toplevel
    col = lambda k, sel: np.asarray([r[k] for r in rows], float)[sel]  # noqa: E731
    lag = np.asarray([r["lag"] for r in rows])
    clip = np.asarray([r["clip_frac"] for r in rows], float)
    stale = lag >= 1
    small = stale & (np.nan_to_num(clip, nan=1.0) < clip_small)
    out = {"n_stale": int(stale.sum()), "n_small": int(small.sum()), "clip_small": clip_small}
    for name, clip_max in (("all", math.inf), ("small", clip_small)):
        for xname in ("s_eta", "drift"):
            out[f"{name}_vs_{xname}"] = claim1_bias.anchored_fit(rows, clip_max=clip_max,
                                                                 x=xname)
        out[f"pg_{name}_vs_s_eta"] = claim1_bias.anchored_fit(rows, "pg_est", "pg_se",
                                                              clip_max=clip_max)
    pg_res = np.asarray([r["pg_resolved"] for r in rows])
    out["pg_resolved"] = int((pg_res & stale).sum())
    kl_res = np.asarray([r["kl_resolved"] for r in rows])
    out["kl_resolved"] = int((kl_res & stale).sum())
    res = np.asarray([r["resolved"] for r in rows])
    td_res = np.asarray([r["td_resolved"] for r in rows])
    out["n_resolved"] = int((res & stale).sum())
    out["control_resolved"] = int(res[~stale].sum())
    out["control_td_resolved"] = int(td_res[~stale].sum())
    out["n_control"] = int((~stale).sum())
    out["td_resolved"] = int((td_res & stale).sum())
    both = stale & res
    out["median_delta_over_noise"] = (float(np.median(col("delta_norm", both) /
                                                      col("noise_single", both)))
                                      if both.any() else float("nan"))
    out["median_delta_over_h"] = (float(np.median(col("delta_norm", both) / col("h_norm", both)))
                                  if both.any() else float("nan"))
    # δ_TD against δ on the same resolved cells: the ratio of the upper end of ‖δ_TD‖ to ‖δ‖.
    out["median_td_hi_over_delta"] = (float(np.median(col("td_hi", both) /
                                                      col("delta_norm", both)))
                                      if both.any() else float("nan"))
    return out


def _plot(rows, res, stem):
    lrs = sorted({r["lr"] for r in rows})
    colors = figures.palette(max(2, len(lrs)))
    with figures.style():
        fig, ax = figures.figure("full", ncols=2, aspect=0.8)
        for j, lr in enumerate(lrs):
            sel = [r for r in rows if r["lr"] == lr and r["lag"] >= 1]
            for a, xk in zip(ax, ("s_eta", "drift")):
                x = np.asarray([r[xk] for r in sel])
                y = np.asarray([r["delta_norm"] for r in sel])
                lo = np.asarray([r["delta_lo"] for r in sel])
                hi = np.asarray([r["delta_hi"] for r in sel])
                ok = np.asarray([r["resolved"] for r in sel])
                a.errorbar(x[ok], y[ok], yerr=[y[ok] - lo[ok], hi[ok] - y[ok]], fmt="o", ms=3,
                           color=colors[j], label=f"η = {lr:g}" if a is ax[0] else None)
                a.plot(x[~ok], hi[~ok], "v", ms=3, color=colors[j], alpha=0.6)
        floor = np.median([r["noise_single"] for r in rows])
        for a, xk in zip(ax, ("s_eta", "drift")):
            a.axhline(floor, color="0.5", ls="--", lw=0.8,
                      label="one batch's sampling noise" if a is ax[0] else None)
            fit = res[f"all_vs_{xk}"]
            if np.isfinite(fit["slope"]):
                x = np.geomspace(min(r[xk] for r in rows if r["lag"] >= 1),
                                 max(r[xk] for r in rows if r["lag"] >= 1), 20)
                a.plot(x, np.exp(fit["intercept"]) * x ** fit["slope"], ":", color="k",
                       label=f"slope {fit['slope']:.2f}" if a is ax[0] else None)
            a.set_xscale("log")
            a.set_yscale("log")
            a.set_ylabel("‖δ‖ (noise floor removed)")
        ax[0].set_xlabel("s·η (lag × learning rate)")
        ax[1].set_xlabel("drift ‖θ_t − θ_(t−s)‖")
        ax[0].legend(loc="upper center", bbox_to_anchor=(1.1, -0.25), ncol=3)
        fig.suptitle("LM testbed: staleness bias with 2-SE intervals (▼: upper end, unresolved)",
                     fontsize=8)
        figures.save(fig, stem)


def run(c, workdir: str) -> dict:
    """The whole measurement into `workdir` (see the module docstring). -> the bias.json dict."""
    p = plan(c)
    workdir_lib.claim(workdir, "lm_bias", json.loads(c.to_json()),
                      defaults={"run": config_lib.RunConfig().to_dict()})
    t0 = time.time()
    config = warm_start(p["config"], workdir)
    p["config"] = config
    comps = components.build_grpo(config)
    keep = {t - s for t in p["anchors"] for s in [0] + p["lags"]}
    ref = None
    all_rows, traj_rows = [], []
    for i, lr in enumerate(p["lrs"]):
        opt = components.make_optimizer(config.rl.optimizer, config.rl.steps, lr=lr,
                                        mu_dtype=config.precision.opt_state_dtype)
        lcomps = dataclasses.replace(comps, optimizer=opt)
        learner = pipeline.make_learner(config, lcomps)
        ref = learner.place_params(comps.init_params)
        grads_fn = learner.compile_fn(functools.partial(_grads, comps.objective,
                                                        pg_objective(comps)))
        snaps, tr = trajectory(config, lcomps, learner, lr, keep, ref)
        traj_rows += tr
        for t in p["anchors"]:
            m = measure(p, comps, grads_fn, snaps, i, t, ref)
            rows = cell_rows(p, lr, t, m, snaps)
            all_rows += rows
            for r in rows:
                logging.info("η=%g t=%d s=%d ‖δ‖=%.3g [%.3g, %.3g] clip %.3f",
                             lr, t, r["lag"], r["delta_norm"], r["delta_lo"], r["delta_hi"],
                             r["clip_frac"])
        print(f"η = {lr:g}: done ({time.time() - t0:.0f} s)", flush=True)
    res = {"rows": all_rows,
           "fits": analyse(all_rows, clip_small=c.clip_small),
           "config": json.loads(c.to_json()), "init_from": config.init_from,
           "num_params": int(_flat(comps.init_params).size),
           "machine": workdir_lib.machine(), "wall_s": time.time() - t0}
    files.write_csv_atomic(os.path.join(workdir, "cells.csv"),
                           {k: [r[k] for r in all_rows] for k in all_rows[0]})
    files.write_csv_atomic(os.path.join(workdir, "trajectory.csv"),
                           {k: [r[k] for r in traj_rows] for k in traj_rows[0]})
    _plot(all_rows, res["fits"], os.path.join(workdir, "bias"))
    files.write_json_atomic(os.path.join(workdir, "bias.json"), res)
    return res


def table(res: dict) -> str:
    """The per-cell table and the fits, as printed by the binary."""
    lines = [f"{'η':>8} {'t':>4} {'s':>3} {'s·η':>9} {'drift':>8} {'‖δ‖':>9} {'2-SE interval':>21} "
             f"{'‖δ_PG‖':>9} {'‖δ_KL‖':>9} {'‖δ_TD‖ ≤':>9} {'‖H‖':>8} {'noise':>8} {'clip':>6}"]
    for r in res["rows"]:
        lines.append(
            f"{r['lr']:>8.2g} {r['anchor']:>4} {r['lag']:>3} {r['s_eta']:>9.3g} "
            f"{r['drift']:>8.3g} {r['delta_norm']:>9.3g} "
            f"[{r['delta_lo']:>8.3g}, {r['delta_hi']:>8.3g}]{'*' if r['resolved'] else ' '} "
            f"{r['pg_norm']:>8.3g}{'*' if r['pg_resolved'] else ' '} "
            f"{r['kl_norm']:>8.3g}{'*' if r['kl_resolved'] else ' '} {r['td_hi']:>9.3g} {r['h_norm']:>8.3g} {r['noise_single']:>8.3g} "
            f"{r['clip_frac']:>6.3f}")
    f = res["fits"]
    lines.append("* = resolved above the noise floor (2 SE). Slopes of ‖δ‖, a level per anchor "
                 "(η, t), every cell, 95 % jackknife over anchors:")
    for k in ("all_vs_s_eta", "all_vs_drift", "small_vs_s_eta", "small_vs_drift",
              "pg_all_vs_s_eta", "pg_small_vs_s_eta"):
        fit = f[k]
        ci = fit["ci"]
        lines.append(f"  {k:>17}: slope {fit['slope']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] "
                     f"({fit['n']} cells, {fit['n_anchors']} anchors) {fit.get('reason', '')}")
    lines.append(f"  lag-0 control resolved: {f['control_resolved']} of {f['n_control']} "
                 f"(surrogate), {f['control_td_resolved']} (TD); δ_TD resolved in "
                 f"{f['td_resolved']} of {f['n_stale']} stale cells; δ_PG (no KL) in "
                 f"{f['pg_resolved']}, δ_KL in {f['kl_resolved']}")
    return "\n".join(lines)


def _binary(c, workdir: str) -> str:
    plan(c)
    os.makedirs(workdir, exist_ok=True)
    res = run(c, workdir)
    return table(res) + f"\nwall time {res['wall_s']:.0f} s; results in {workdir}"


if __name__ == "__main__":
    _main.run(lambda c, workdir, _: _binary(c, workdir),
              config_help="experiments/configs/lm_bias.py[:tiny]")
