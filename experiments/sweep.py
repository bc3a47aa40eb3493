r"""One sweep front end: exact-testbed grids and LM-scale GRPO grids.

  python -m experiments.sweep --config=experiments/configs/sweep_lm.py --workdir=runs/sweep_lm
  python -m experiments.sweep --config=experiments/configs/sweep_lm.py:quick --workdir=DIR
  python -m experiments.sweep --config=experiments/configs/exact_sweep.py --workdir=DIR

An exact-testbed config (it has a `testbed` section) runs `experiments.exact_sweep`. An LM config
(`kind = "lm"`, experiments/configs/sweep_lm.py) runs the population runner
(`async_grpo.rl.population`): every (S, η, seed) cell is a whole GRPO run, cells run in chunks
of one compiled program sized to `memory_budget_gb` through the grid runner
(`async_grpo.grid_runner`): each finished chunk is saved atomically to <workdir>/chunks/ (never
recomputed; `workdir.claim` refuses a different config in the same workdir). A sweep config
refuses a `run` key the sweep sets itself per cell (`IGNORED`: run.rl.optimizer.lr, as η comes
from lr_min / lr_max / lrs_per_octave; run.staleness.max_lag, as S comes from lags). To
spread a grid over processes or hosts sharing the workdir, run `--num_shards=N --shard=I` for
I = 0..N-1, or the same command on every host of a job whose launcher sets
ASYNC_GRPO_NUM_PROCESSES / ASYNC_GRPO_PROCESS_ID (or JAX_NUM_PROCESSES / JAX_PROCESS_ID): shard I
takes every N-th chunk, shard 0 trains the SFT warm start and writes the results once all chunks
are there. Cells share nothing, so the shards start no jax.distributed job.

LM results in <workdir>: one `async_grpo.results.GridResult` (axes S, η, seed; per cell the
collapse step and rule, rewards over the first / last / best 10 steps, the held-out greedy
accuracy at the end `heldout/accuracy`, the final drift; per-step curves [cells, T] of reward,
KL(behavior‖current), clip fraction, ESS, update norm, drifts, consecutive-gradient cosine,
realized lag, ...; the fits: η_max per S and seed with the censoring and the α fit; the config,
the machine, wall times and invocations) and phase.png/.pdf.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Optional

from absl import flags, logging
import jax
import numpy as np

from async_grpo import config as config_lib
from async_grpo import distributed, figures, grid_axes, grid_runner, results, simulate
from async_grpo import metric_names as mn
from async_grpo import lr_control as lr_control_lib
from async_grpo import metrics as metrics_lib
from async_grpo import workdir as workdir_lib
from async_grpo.rl import components, population
from async_grpo.sft import run_sft
from async_grpo import scaling as xa
from experiments import _main, exact_sweep
from experiments.configs import common

HELDOUT = mn.HELDOUT_ACC     # the held-out greedy accuracy (at the end of a cell, and at the evals)

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
    eval_every: int = 0         # held-out evaluation inside the program every k steps (0: off)


# Keys of `run` that the sweep sets itself, per cell: a value set in a sweep config would be
# silently ignored, so it is refused (naming the key and where the value comes from).
IGNORED = {"rl.optimizer.lr": "η comes from the grid, one per cell: --config.lr_min, "
                              "--config.lr_max, --config.lrs_per_octave",
           "staleness.max_lag": "S comes from the grid, one per cell: --config.lags"}


def refuse_ignored(run) -> None:
    """Refuses a sweep config whose `run` sets a key the sweep ignores (`IGNORED`): its value
    differs from the base config's (experiments/configs/common.py)."""
    base = common.get_base_config()
    for key, why in IGNORED.items():
        got, default = run, base
        for part in key.split("."):
            got, default = got[part], default[part]
        if got != default:
            raise ValueError(f"--config.run.{key}={got!r} is ignored by the sweep ({why}); "
                             f"remove it from the sweep config (base value {default!r}).")


def lm_plan(c) -> Plan:
    """Parses and checks an LM sweep config (nothing heavy)."""
    refuse_ignored(c.run)
    config = config_lib.RunConfig.from_config(c.run)
    lags = grid_axes.parse_list(c.lags, int, "lags")
    if not lags or min(lags) < 0:
        raise ValueError(f"--config.lags={c.lags!r}: non-empty integers >= 0")
    lrs = grid_axes.lr_grid(float(c.lr_min), float(c.lr_max), int(c.lrs_per_octave))
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
    eval_every = c.get("eval_every", 0)
    if not (isinstance(eval_every, int) and eval_every >= 0
            and (eval_every == 0 or config.rl.steps % eval_every == 0)):
        raise ValueError(f"--config.eval_every={eval_every!r}: 0 (evaluate at the end only) or "
                         f"an integer >= 1 that divides run.rl.steps = {config.rl.steps}")
    return Plan(config, lags, lrs, seeds, c.batching, c.memory_budget_gb * 2**30,
                int(c.max_chunk_cells), control, info, eval_every)


def _lr_control(lc, max_lag):
    """`c.lr_control` (absent, or r_batch = 0 with no r_batch_from and ess_power = 0: off) ->
    (Params, info).

    R_batch is `r_batch`, or measured from the finished fixed-η LM sweep in `r_batch_from`
    (`scaling.estimate_r_batch`: the median peak within-cycle drift of the stable runs at the
    stability edge, S ≥ 1), or, with neither, inf (no drift bound). `ess_power` p > 0 multiplies
    the factor by (ESS/B)^p: p = 0.5 with no R_batch is the VCPO baseline (lr_control.Params)."""
    ess_power = float(lc.get("ess_power", 0.0)) if lc is not None else 0.0
    if lc is None or (not lc.get("r_batch") and not lc.get("r_batch_from") and not ess_power):
        return None, None
    if lc.get("r_batch") and lc.get("r_batch_from"):
        raise ValueError(f"--config.lr_control: set r_batch={lc.r_batch!r} or r_batch_from="
                         f"{lc.r_batch_from!r}, not both")
    info = {"margin": float(lc.margin), "r_crit": float(lc.r_crit), "ess_power": ess_power}
    if not lc.get("r_batch") and not lc.get("r_batch_from"):
        info.update(r_batch=None, source="none (no within-cycle bound: R_batch = inf)")
    elif lc.get("r_batch_from"):
        src = lc.r_batch_from
        try:
            gr = results.read(src)
        except (OSError, ValueError) as e:
            raise ValueError(f"--config.lr_control.r_batch_from={src!r}: not a finished LM "
                             f"sweep ({e})") from None
        g = results.cube(gr)
        calib = xa.estimate_r_batch([int(s) for s in g["lags"]], g["lrs"],
                                    [int(s) for s in g["seeds"]],
                                    gr.summaries["collapsed"][g["index"]].astype(bool),
                                    gr.summaries["collapse_step"][g["index"]],
                                    gr.curves[mn.DRIFT_CYCLE][g["index"]])
        info.update(r_batch=calib["r_batch"], source=f"measured from {src}",
                    calibration={k: v for k, v in calib.items() if k != "edges"})
    else:
        info.update(r_batch=float(lc.r_batch), source="config")
    params = lr_control_lib.Params(math.inf if info["r_batch"] is None else info["r_batch"],
                                   info["margin"], info["r_crit"], 0.0, ess_power)
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


def _lm_compute(pop, fn, comps, cells, size):
    """compute(idx) of the grid runner: one population chunk (padded to `size` by repeating its
    last cell: one compile), and each cell's held-out greedy accuracy at the end: the last of
    the in-program evaluations when the grid has them (`eval_every`), else the evaluator's."""
    def compute(idx):
        pad = np.concatenate([idx, np.full(size - len(idx), idx[-1])])
        metrics, params, summary = population.run_chunk(fn, pop, {k: v[pad] for k, v in
                                                                  cells.items()})
        evals = {k: v[:len(idx)] for k, v in summary.pop(simulate.EVALS, {}).items()}
        if evals:
            acc = evals[HELDOUT][:, -1]
        else:
            acc = np.asarray([comps.evaluator(jax.tree.map(lambda x, j=j: x[j], params))[HELDOUT]
                              for j in range(len(idx))])
        return {"curves": {k: v[:len(idx)] for k, v in metrics.items()},
                "summaries": {**{k: v[:len(idx)] for k, v in summary.items()}, HELDOUT: acc},
                "evals": evals}
    return compute


def run_lm_sweep(c, workdir: str, plan: Plan, shard: int = 0, num_shards: int = 1) -> str:
    """Runs (or resumes) the LM grid of `plan` into `workdir` (this process's shard of its
    chunks); shard 0 writes the GridResult once every chunk is there. -> the table."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard={shard} with --num_shards={num_shards}: "
                         "need 0 <= shard < num_shards")
    workdir_lib.claim(workdir, "sweep_lm", json.loads(c.to_json()),
                      defaults={"run": config_lib.RunConfig().to_dict(), "eval_every": 0})
    t0 = time.time()
    config = _warm_start(plan, workdir, shard)
    comps = components.build_grpo(config)
    pop = population.make_population(config, comps, seeds=plan.seeds,
                                     max_lag_cap=max(plan.lags), lr_control=plan.lr_control,
                                     eval_every=plan.eval_every)
    cells = population.make_cells(pop, lrs=plan.lrs, lags=plan.lags)
    n = len(cells["lr"])
    size = min(plan.max_chunk_cells,
               population.chunk_size(config, comps, max(plan.lags), plan.budget_bytes, n,
                                     eval_rows=config.eval.batch_size if plan.eval_every else 0))
    logging.info("LM sweep: %d cells in %d chunks of up to %d (%.0f MB per cell estimated); "
                 "shard %d of %d", n, -(-n // size), size,
                 population.cell_bytes(config, comps, max(plan.lags)) / 2**20, shard, num_shards)
    fn = population.compile_chunk(pop, plan.batching)
    run = grid_runner.run_chunks(os.path.join(workdir, "chunks"), n, size,
                                 _lm_compute(pop, fn, comps, cells, size), label="LM sweep",
                                 shard=shard, num_shards=num_shards)
    if shard != 0:
        return f"shard {shard}: my chunks are done; shard 0 writes the results"
    gr = lm_result(c, plan, config, cells, run, time.time() - t0, num_shards, workdir,
                   pop.eval_steps)
    gr.write(workdir)
    _plot(gr, os.path.join(workdir, "phase"))
    return lm_table(gr)


def lm_result(c, plan: Plan, config, cells, run, wall, num_shards, workdir,
              eval_steps=None) -> results.GridResult:
    """The LM grid's GridResult: the cells' axes and summaries (with the reward over the first,
    last and best 10 steps), the per-step curves, the stability fits; the invocations keep every
    run's wall time (a rerun that only refits adds one, it does not replace the one that
    computed the chunks)."""
    curves, summ = run.curves, dict(run.summaries)
    summ["collapsed"] = summ["collapse_step"] >= 0
    reward = curves[mn.REWARD]
    summ["reward_first10"] = reward[:, :10].mean(1)
    summ["reward_last10"] = reward[:, -10:].mean(1)
    summ["reward_best10"] = np.max(np.stack([np.convolve(r, np.ones(10) / 10, "valid")
                                             for r in reward]), axis=1)
    shape = (len(plan.lags), len(plan.lrs), len(plan.seeds))
    acc = summ[HELDOUT].reshape(shape)
    stab = results.stability(plan.lags, plan.lrs, summ["collapsed"].reshape(shape))
    stab["heldout_final_mean"] = {str(s): acc[i].mean(1).tolist()
                                  for i, s in enumerate(plan.lags)}
    return results.GridResult(
        "lm", {"S": cells["max_lag"], "lr": cells["lr"], "seed": cells["seed"]}, summ, curves,
        1, evals=run.evals, eval_steps=eval_steps if run.evals else None,
        fits={"stability": [stab]}, config=json.loads(c.to_json()),
        meta={"run": config.to_dict(), "collapse_rules": config.collapse.describe(),
              "lr_control": plan.lr_control_info, "processes": num_shards,
              "num_chunks": run.num_chunks},
        machine=workdir_lib.machine(), wall_s=wall, chunk_wall_s=run.chunk_wall_s,
        invocations=(results.previous_invocations(workdir) +
                     [grid_runner.invocation(run, num_shards, wall)]))


def lm_table(gr: results.GridResult) -> str:
    """The LM grid's table (the binary prints it; the report renders it from the result)."""
    r = gr.stability()
    lines = ["S = staleness (fixed lag); eta_max = geometric mean over seeds of the largest grid "
             "eta with no collapse; censored = seeds whose eta_max is only a bound (nothing or "
             "everything collapsed); collapsed = fraction of cells; heldout = mean held-out "
             f"greedy accuracy at the end over eta and seeds. Collapse: "
             f"{gr.meta['collapse_rules']}",
             f"  {'S':>3} {'eta_max':>10} {'[min, max] over seeds':>24} {'censored':>8} "
             f"{'collapsed':>9} {'heldout':>8}"]
    for s in dict.fromkeys(int(x) for x in gr.axes["S"]):
        e = np.asarray(r["eta_max"][str(s)])
        cens = int((np.asarray(r["eta_max_censor"][str(s)]) != 0).sum())
        lines.append(f"  {s:>3} {r['eta_max_geomean'][str(s)]:>10.3g} "
                     f"{f'[{e.min():.3g}, {e.max():.3g}]':>24} {cens:>8d} "
                     f"{np.mean(r['collapse_frac'][str(s)]):>9.2f} "
                     f"{np.mean(r['heldout_final_mean'][str(s)]):>8.3f}")
    lines.append("  fit eta_max ∝ S^-alpha (S>=1, censored MLE): "
                 + xa.format_alpha(r["alpha_fit_S_ge_1"]))
    walls = [w for w in gr.chunk_wall_s if w is not None and np.isfinite(w)]
    num_chunks = gr.meta.get("num_chunks") or len(gr.chunk_wall_s)
    lines.append(f"{gr.num_cells} cells in {num_chunks} chunks, {gr.meta.get('processes', 1)} "
                 "process(es)" +
                 (f"; the chunks took {metrics_lib.format_duration(sum(walls))} in all"
                  if len(walls) == num_chunks else
                  "; chunk wall times not recorded (chunks written before they were saved)") +
                 _invocations(gr.invocations))
    return "\n".join(lines)


def _invocations(runs: list) -> str:
    """The invocations that computed chunks (wall incl. the SFT warm start when it ran), and
    how many only refit finished chunks."""
    work = [v for v in runs if v.get("chunks_computed")]
    out = "; ".join(f"an invocation computed {v['chunks_computed']} chunk(s) in "
                    f"{metrics_lib.format_duration(v['wall_s'])}" for v in work)
    refits = len(runs) - len(work)
    return (f"; {out}" if out else "") + (f"; {refits} rerun(s) only refit" if refits else "")


def _plot(gr: results.GridResult, stem):
    g = results.cube(gr)
    lags, lrs = [int(s) for s in g["lags"]], g["lrs"]
    col = gr.summaries["collapsed"][g["index"]].astype(bool)
    acc = gr.summaries[HELDOUT][g["index"]]
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


def _shard_flags() -> dict:
    return {
        "num_shards": flags.DEFINE_integer(
            "num_shards", 0, "LM sweeps: processes (or hosts) sharing the workdir, each with its "
            "own --shard (0: from ASYNC_GRPO_NUM_PROCESSES / JAX_NUM_PROCESSES, else 1)."),
        "shard": flags.DEFINE_integer(
            "shard", -1, "LM sweeps: this process's shard, 0..num_shards-1 (-1: from "
            "ASYNC_GRPO_PROCESS_ID / JAX_PROCESS_ID, else 0); it runs every num_shards-th "
            "chunk, shard 0 also the SFT warm start and the results.")}


def run(c, workdir: str, num_shards: int = 0, shard: int = -1) -> str:
    """Runs the sweep of config `c` (exact or LM) into `workdir`; -> its table. Shards of 0 / -1
    come from the launcher's environment (`distributed.process_slot`)."""
    if "testbed" in c:
        return exact_sweep.run_sweep(c, workdir, exact_sweep.plan(c))
    plan = lm_plan(c)
    workdir_lib.check_writable(workdir)
    env_shard, env_count = distributed.process_slot()
    num_shards = num_shards or env_count
    shard = shard if shard >= 0 else env_shard
    return run_lm_sweep(c, workdir, plan, shard, num_shards)


if __name__ == "__main__":
    _main.run(lambda c, workdir, f: run(c, workdir, f["num_shards"], f["shard"]),
              config_help="A sweep config: experiments/configs/sweep_lm.py[:quick] or "
                          "experiments/configs/exact_sweep.py.", extra=_shard_flags)
