r"""One sweep front end: exact-testbed grids and LM-scale GRPO grids.

  python -m experiments.sweep --config=experiments/configs/sweep_lm.py --workdir=runs/sweep_lm
  python -m experiments.sweep --config=experiments/configs/sweep_lm.py:quick --workdir=DIR
  python -m experiments.sweep --config=experiments/configs/exact_sweep.py --workdir=DIR

An exact-testbed config (it has a `testbed` section) runs `experiments.exact_sweep`. An LM config
(`kind = "lm"`, experiments/configs/sweep_lm.py) runs the population runner
(`async_grpo.rl.population`): every (S, η, seed) cell is a whole GRPO run, cells run in chunks
of one compiled program sized to `memory_budget_gb`, and each finished chunk is saved atomically
to <workdir>/chunks/ (never recomputed; a different config in the same workdir is refused). To
spread a grid over processes or hosts sharing the workdir, run `--num_shards=N --shard=I` for
I = 0..N-1, or the same command on every host of a job whose launcher sets
ASYNC_GRPO_NUM_PROCESSES / ASYNC_GRPO_PROCESS_ID (or JAX_NUM_PROCESSES / JAX_PROCESS_ID): shard I
takes every N-th chunk, shard 0 trains the SFT warm start and writes the results once all chunks
are there. Cells share nothing, so the shards start no jax.distributed job.

LM results in <workdir>: cells.csv (one row per cell: S, η, seed, collapse step and rule,
rewards, held-out greedy accuracy at the end, drifts and diagnostics), curves.npz (per-step
curves [cells, T] of reward, KL(behavior‖current), clip fraction, ESS, update norm, drifts,
consecutive-gradient cosine, realized lag, ...), summary.json (η_max per S and seed with the
censoring, the α fit, the config, the machine, wall times) and phase.png/.pdf.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Optional

from absl import app, flags, logging
import jax
import numpy as np
from ml_collections import config_flags

from async_grpo import collapse as collapse_lib
from async_grpo import config as config_lib
from async_grpo import distributed, figures, files
from async_grpo import lr_control as lr_control_lib
from async_grpo import metrics as metrics_lib
from async_grpo import workdir as workdir_lib
from async_grpo.rl import components, population
from async_grpo.sft import run_sft
from async_grpo import scaling as xa
from async_grpo.testbeds import exact_configs as xc
from experiments import exact_sweep

SUMMARY_KEYS = ("reward", "rollout/correct_frac", "loss/kl_behavior_k3", "loss/clip_frac",
                "loss/ess_frac", "update_norm", "drift/within_cycle", "cos/consecutive_grads",
                "entropy", "kl_ref_k3", "lr_scale")


@dataclasses.dataclass
class Plan:
    config: config_lib.RunConfig
    lags: list
    lrs: list
    seeds: list
    batching: str
    budget_bytes: float
    max_chunk_cells: int
    lr_control: Optional[lr_control_lib.Params] = None
    lr_control_info: Optional[dict] = None     # R_batch's source (and its calibration)


def lm_plan(c) -> Plan:
    """Parses and checks an LM sweep config (nothing heavy)."""
    config = config_lib.RunConfig.from_config(c.run)
    lags = xc.parse_list(c.lags, int, "lags")
    if not lags or min(lags) < 0:
        raise ValueError(f"--config.lags={c.lags!r}: non-empty integers >= 0")
    lrs = xc.lr_grid(float(c.lr_min), float(c.lr_max), int(c.lrs_per_octave))
    if not isinstance(c.num_seeds, int) or c.num_seeds < 1:
        raise ValueError(f"--config.num_seeds={c.num_seeds!r}: an integer >= 1")
    if c.batching not in population.BATCHING:
        raise ValueError(f"--config.batching={c.batching!r}: one of {list(population.BATCHING)}")
    if not c.memory_budget_gb > 0 or c.max_chunk_cells < 1:
        raise ValueError("--config.memory_budget_gb must be > 0 and max_chunk_cells >= 1")
    if config.staleness.policy == "bounded_async":
        raise ValueError("--config.run.staleness.policy='bounded_async' has no schedule inside a "
                         "compiled program; use 'random_uniform'")
    seeds = [config.seed + i for i in range(c.num_seeds)]
    control, info = _lr_control(c.get("lr_control"), max(lags))
    return Plan(config, lags, lrs, seeds, c.batching, c.memory_budget_gb * 2**30,
                int(c.max_chunk_cells), control, info)


def _lr_control(lc, max_lag):
    """`c.lr_control` (absent, or r_batch = 0 with no r_batch_from: off) -> (Params, info).

    R_batch is `r_batch`, or measured from the finished fixed-η LM sweep in `r_batch_from`
    (`scaling.estimate_r_batch`: the median peak within-cycle drift of the stable runs at the
    stability edge, S ≥ 1)."""
    if lc is None or (not lc.get("r_batch") and not lc.get("r_batch_from")):
        return None, None
    if lc.get("r_batch") and lc.get("r_batch_from"):
        raise ValueError(f"--config.lr_control: set r_batch={lc.r_batch!r} or r_batch_from="
                         f"{lc.r_batch_from!r}, not both")
    info = {"margin": float(lc.margin), "r_crit": float(lc.r_crit)}
    if lc.get("r_batch_from"):
        src = lc.r_batch_from
        try:
            with open(os.path.join(src, "summary.json"), encoding="utf-8") as f:
                s = json.load(f)
            curves = np.load(os.path.join(src, "curves.npz"))
            rows = np.genfromtxt(os.path.join(src, "cells.csv"), delimiter=",", names=True,
                                 dtype=None, encoding="utf-8")
        except OSError as e:
            raise ValueError(f"--config.lr_control.r_batch_from={src!r}: not a finished LM "
                             f"sweep ({e})") from None
        shape = (len(s["lags"]), len(s["lrs"]), len(s["seeds"]))
        drift = curves["drift__within_cycle"].reshape(shape + (-1,))
        calib = xa.estimate_r_batch(s["lags"], np.asarray(s["lrs"]), s["seeds"],
                                    rows["collapsed"].reshape(shape).astype(bool),
                                    rows["collapse_step"].reshape(shape), drift)
        info.update(r_batch=calib["r_batch"], source=f"measured from {src}",
                    calibration={k: v for k, v in calib.items() if k != "edges"})
    else:
        info.update(r_batch=float(lc.r_batch), source="config")
    params = lr_control_lib.Params(info["r_batch"], info["margin"], info["r_crit"], 0.0)
    lr_control_lib.validate(params, max_lag)
    return params, info


def _warm_start(plan: Plan, workdir: str, shard: int) -> config_lib.RunConfig:
    """The SFT checkpoint the cells start from: `run.init_from`, or an SFT run into
    <workdir>/sft (shard 0 trains it; the others wait for it)."""
    config = plan.config
    if config.init_from:
        return config
    sft_dir = os.path.join(workdir, "sft")
    final = os.path.join(sft_dir, "checkpoints", str(config.sft.steps))
    if shard == 0:
        run_sft(config, sft_dir, devices=jax.local_devices())
    elif not os.path.isdir(final):
        logging.info("shard %d: waiting for shard 0's SFT checkpoint %s", shard, final)
    while not os.path.isdir(final):
        time.sleep(1.0)
    return dataclasses.replace(config, init_from=sft_dir)


def _chunk_path(workdir, i):
    return os.path.join(workdir, "chunks", f"chunk_{i:05d}.npz")


def run_lm_sweep(c, workdir: str, plan: Plan, shard: int = 0, num_shards: int = 1) -> str:
    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard={shard} with --num_shards={num_shards}: "
                         "need 0 <= shard < num_shards")
    workdir_lib.claim(workdir, "sweep_lm", json.loads(c.to_json()),
                      defaults={"run": config_lib.RunConfig().to_dict()})
    t0 = time.time()
    config = _warm_start(plan, workdir, shard)
    comps = components.build_grpo(config)
    pop = population.make_population(config, comps, seeds=plan.seeds,
                                     max_lag_cap=max(plan.lags), lr_control=plan.lr_control)
    cells = population.make_cells(pop, lrs=plan.lrs, lags=plan.lags)
    n = len(cells["lr"])
    size = min(plan.max_chunk_cells,
               population.chunk_size(config, comps, max(plan.lags), plan.budget_bytes, n))
    chunks = [np.arange(i, min(i + size, n)) for i in range(0, n, size)]
    mine = [i for i in range(len(chunks)) if i % num_shards == shard]
    logging.info("LM sweep: %d cells in %d chunks of up to %d (%.0f MB per cell estimated); "
                 "shard %d of %d runs %d", n, len(chunks), size,
                 population.cell_bytes(config, comps, max(plan.lags)) / 2**20, shard, num_shards,
                 len(mine))
    fn = population.compile_chunk(pop, plan.batching)
    times = []
    for done, i in enumerate(mine):
        if os.path.exists(_chunk_path(workdir, i)):
            continue
        t_chunk = time.time()
        idx = chunks[i]
        sub = {k: v[idx] for k, v in cells.items()}
        if len(idx) < size:   # pad the last chunk by repeating its last cell: one compile
            pad = np.concatenate([idx, np.full(size - len(idx), idx[-1])])
            sub = {k: v[pad] for k, v in cells.items()}
        metrics, params, summary = population.run_chunk(fn, pop, sub)
        acc = [comps.evaluator(jax.tree.map(lambda x, j=j: x[j], params))["heldout/accuracy"]
               for j in range(len(idx))]
        files.save_npz_atomic(_chunk_path(workdir, i),
                              **{f"m_{k}": v[:len(idx)] for k, v in metrics.items()},
                              **{f"s_{k}": v[:len(idx)] for k, v in summary.items()},
                              heldout_accuracy=np.asarray(acc),
                              wall_s=np.asarray(time.time() - t_chunk))
        times.append(time.time() - t_chunk)
        left = (len(mine) - done - 1) * float(np.median(times))
        logging.info("chunk %d/%d (%d cells) done in %.0fs; ETA %s", i + 1, len(chunks),
                     len(idx), times[-1], metrics_lib.format_duration(left))
    while not all(os.path.exists(_chunk_path(workdir, i)) for i in range(len(chunks))):
        time.sleep(1.0)       # other shards' chunks
    if shard != 0:
        return f"shard {shard}: my chunks are done; shard 0 writes the results"
    return write_results(workdir, plan, config, cells, len(chunks), time.time() - t0,
                         num_shards, len(times))


def _load_chunks(workdir, num_chunks):
    parts = [np.load(_chunk_path(workdir, i)) for i in range(num_chunks)]
    cat = lambda prefix: {f[len(prefix):]: np.concatenate([p[f] for p in parts])  # noqa: E731
                          for f in parts[0].files if f.startswith(prefix)}
    return cat("m_"), cat("s_"), np.concatenate([p["heldout_accuracy"] for p in parts])


def _chunk_walls(workdir, num_chunks):
    """Each chunk's own wall time (whichever run or process computed it)."""
    return [np.load(_chunk_path(workdir, i)).get("wall_s", np.nan) for i in range(num_chunks)]


def write_results(workdir, plan: Plan, config, cells, num_chunks, wall, num_shards=1,
                  chunks_computed=0) -> str:
    """Writes cells.csv, curves.npz, summary.json and the figure from the chunk files; the
    summary keeps every invocation's wall time (a rerun that only refits adds one, it does not
    replace the one that computed the chunks)."""
    old = os.path.join(workdir, "summary.json")
    invocations = []
    if os.path.exists(old):
        with open(old, encoding="utf-8") as f:
            invocations = json.load(f).get("invocations", [])
    invocations.append({"wall_s": wall, "chunks_computed": chunks_computed,
                        "shard0_of": num_shards, "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    curves, summary, acc = _load_chunks(workdir, num_chunks)
    collapsed = summary["collapse_step"] >= 0
    rows = {"S": cells["max_lag"], "lr": cells["lr"], "seed": cells["seed"],
            "collapse_step": summary["collapse_step"], "collapsed": collapsed.astype(int),
            "collapse_reason": [collapse_lib.reason_name(r)
                                for r in summary["collapse_reason"]],
            "reward_first10": curves["reward"][:, :10].mean(1),
            "reward_last10": curves["reward"][:, -10:].mean(1),
            "reward_best10": np.max(np.stack([np.convolve(r, np.ones(10) / 10, "valid")
                                              for r in curves["reward"]]), axis=1),
            "heldout_greedy_final": acc, "drift_final": summary["drift_final"]}
    for k in SUMMARY_KEYS[2:]:
        if k in curves:
            rows[f"mean_{k.replace('/', '_')}"] = np.nanmean(curves[k], axis=1)
    files.write_csv_atomic(os.path.join(workdir, "cells.csv"), rows)
    files.save_npz_atomic(os.path.join(workdir, "curves.npz"), **{
        k.replace("/", "__"): v for k, v in curves.items()})
    shape = (len(plan.lags), len(plan.lrs), len(plan.seeds))
    col = collapsed.reshape(shape)
    eta, censor = xa.eta_max_per_seed(plan.lrs, col)
    fit = xa.bootstrap_alpha(plan.lags, plan.lrs, col)
    result = {
        "lags": plan.lags, "lrs": plan.lrs, "seeds": plan.seeds,
        "eta_max": {str(s): eta[i].tolist() for i, s in enumerate(plan.lags)},
        "eta_max_censor": {str(s): censor[i].tolist() for i, s in enumerate(plan.lags)},
        "eta_max_geomean": {str(s): float(np.exp(np.log(eta[i]).mean()))
                            for i, s in enumerate(plan.lags)},
        "collapse_frac": {str(s): col[i].mean(1).tolist() for i, s in enumerate(plan.lags)},
        "heldout_final_mean": {str(s): acc.reshape(shape)[i].mean(1).tolist()
                               for i, s in enumerate(plan.lags)},
        "alpha_fit_S_ge_1": fit, "collapse_rules": config.collapse.describe(),
        "lr_control": plan.lr_control_info,
        "config": config.to_dict(), "machine": workdir_lib.machine(), "wall_s": wall,
        "invocations": invocations,
        "num_cells": int(len(cells["lr"])), "num_chunks": num_chunks,
        "processes": num_shards,
        "chunk_wall_s": [float(w) for w in _chunk_walls(workdir, num_chunks)]}
    files.write_json_atomic(os.path.join(workdir, "summary.json"), result)
    _plot(result, col, acc.reshape(shape), os.path.join(workdir, "phase"))
    return lm_table(result)


def lm_table(r: dict) -> str:
    lines = ["S = staleness (fixed lag); eta_max = geometric mean over seeds of the largest grid "
             "eta with no collapse; censored = seeds whose eta_max is only a bound (nothing or "
             "everything collapsed); collapsed = fraction of cells; heldout = mean held-out "
             f"greedy accuracy at the end over eta and seeds. Collapse: {r['collapse_rules']}",
             f"  {'S':>3} {'eta_max':>10} {'[min, max] over seeds':>24} {'censored':>8} "
             f"{'collapsed':>9} {'heldout':>8}"]
    for s in r["lags"]:
        e = np.asarray(r["eta_max"][str(s)])
        cens = int((np.asarray(r["eta_max_censor"][str(s)]) != 0).sum())
        lines.append(f"  {s:>3} {r['eta_max_geomean'][str(s)]:>10.3g} "
                     f"{f'[{e.min():.3g}, {e.max():.3g}]':>24} {cens:>8d} "
                     f"{np.mean(r['collapse_frac'][str(s)]):>9.2f} "
                     f"{np.mean(r['heldout_final_mean'][str(s)]):>8.3f}")
    lines.append("  fit eta_max ∝ S^-alpha (S>=1, censored MLE): "
                 + xa.format_alpha(r["alpha_fit_S_ge_1"]))
    walls = [w for w in r.get("chunk_wall_s", []) if w is not None and np.isfinite(w)]
    lines.append(f"{r['num_cells']} cells in {r['num_chunks']} chunks, {r['processes']} "
                 "process(es)" +
                 (f"; the chunks took {metrics_lib.format_duration(sum(walls))} in all"
                  if len(walls) == r["num_chunks"] else
                  "; chunk wall times not recorded (chunks written before they were saved)") +
                 _invocations(r.get("invocations", [])))
    return "\n".join(lines)


def _invocations(runs: list) -> str:
    """The invocations that computed chunks (wall incl. the SFT warm start when it ran), and
    how many only refit finished chunks."""
    work = [v for v in runs if v["chunks_computed"]]
    out = "; ".join(f"an invocation computed {v['chunks_computed']} chunk(s) in "
                    f"{metrics_lib.format_duration(v['wall_s'])}" for v in work)
    refits = len(runs) - len(work)
    return (f"; {out}" if out else "") + (f"; {refits} rerun(s) only refit" if refits else "")


def _plot(r, col, acc, stem):
    lags, lrs = r["lags"], np.asarray(r["lrs"])
    with figures.style():
        fig, ax = figures.figure("full", ncols=2, aspect=0.75)
        im = ax[0].pcolormesh(np.arange(len(lrs) + 1) - 0.5, np.arange(len(lags) + 1) - 0.5,
                              col.mean(2), cmap=figures.SEQUENTIAL, vmin=0, vmax=1)
        ax[0].set_xticks(range(len(lrs)), [f"{x:.2g}" for x in lrs], rotation=45)
        ax[0].set_yticks(range(len(lags)), [str(s) for s in lags])
        ax[0].set(xlabel="learning rate η", ylabel="staleness S")
        fig.colorbar(im, ax=ax[0]).set_label("fraction of seeds collapsed")
        ax[0].set_title("(a) collapse map", loc="left")
        colors = figures.palette(min(len(lags), 7))
        for i, s in enumerate(lags[:7]):
            ax[1].plot(lrs, acc[i].mean(1), "o-", color=colors[i], label=f"S = {s}")
        ax[1].set(xscale="log", xlabel="learning rate η",
                  ylabel="held-out greedy accuracy at the end")
        ax[1].legend(ncol=2)
        ax[1].set_title("(b) final accuracy, mean over seeds", loc="left")
        figures.save(fig, stem)


def _define_flags():
    """Flags exist only when this module is the binary (so its functions can be imported)."""
    global _CONFIG, _WORKDIR, _SHARD, _NUM_SHARDS
    _CONFIG = config_flags.DEFINE_config_file("config", None, "A sweep config: "
                                              "experiments/configs/sweep_lm.py[:quick] or "
                                              "experiments/configs/exact_sweep.py.",
                                              lock_config=True)
    _WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
    _NUM_SHARDS = flags.DEFINE_integer(
        "num_shards", 0, "LM sweeps: processes (or hosts) sharing the workdir, each with its own "
        "--shard (0: from ASYNC_GRPO_NUM_PROCESSES / JAX_NUM_PROCESSES, else 1).")
    _SHARD = flags.DEFINE_integer(
        "shard", -1, "LM sweeps: this process's shard, 0..num_shards-1 (-1: from "
        "ASYNC_GRPO_PROCESS_ID / JAX_PROCESS_ID, else 0); it runs every num_shards-th chunk, "
        "shard 0 also the SFT warm start and the results.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    c, workdir = _CONFIG.value, _WORKDIR.value
    workdir_lib.quiet_orbax()
    if c is None or not workdir:
        raise app.UsageError("--config and --workdir are required.")
    if "testbed" in c:
        try:
            p = exact_sweep.plan(c)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
        print(exact_sweep.run_sweep(c, workdir, p))
        return
    try:
        plan = lm_plan(c)
        workdir_lib.check_writable(workdir)
        env_shard, env_count = distributed.process_slot()
        num_shards = _NUM_SHARDS.value or env_count
        shard = _SHARD.value if _SHARD.value >= 0 else env_shard
        if not 0 <= shard < num_shards:
            raise ValueError(f"--shard={shard} with --num_shards={num_shards}: "
                             "need 0 <= shard < num_shards")
    except ValueError as e:
        raise app.UsageError(f"bad config: {e}") from None
    try:
        print(run_lm_sweep(c, workdir, plan, shard, num_shards))
    except workdir_lib.WorkdirError as e:
        raise app.UsageError(str(e)) from None


if __name__ == "__main__":
    _define_flags()
    app.run(main)
