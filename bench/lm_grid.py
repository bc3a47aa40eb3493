r"""Cells per hour of an LM staleness grid, run three ways on the same machine in one run.

  python -m bench.lm_grid [--steps=30] [--subprocess_cells=2] [--json_out=FILE] \
      [--ways=population,pipeline,processes] [--notensorboard]

The same 12 cells (S ∈ {0, 2} × η ∈ {1e-3, 3e-3, 1e-2} × 2 seeds) of the LM sweep config
(experiments/configs/sweep_lm.py: tiny model, 2-digit addition, 16 prompts × 8 samples; a random
init stands in for the SFT checkpoint, which changes no timing), `--steps` GRPO steps each:

  population   one compiled program for all cells (`async_grpo.rl.population`, vmapped),
               compile included;
  pipeline     the cells one after another through `pipeline.run` in one process (each cell
               builds its learner and compiles, as a user looping over cells would);
  processes    one `python -m experiments.train` process per cell (measured on
               `--subprocess_cells` cells and extrapolated to all 12).

Prints each way's wall time as it finishes (rewriting `--json_out` each time), then a table of
wall time and cells per hour (and the device). `population` and `pipeline` need neither
ml_collections nor (with --notensorboard) tensorboardX; `processes` runs the absl binary, which
parses ml_collections configs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import jax
import numpy as np

from async_grpo import config as config_lib
from async_grpo import files
from async_grpo import workdir as workdir_lib
from async_grpo.rl import components, pipeline, population
from experiments.configs import sweep_lm

_STEPS = flags.DEFINE_integer("steps", 30, "GRPO steps per cell.")
_SUB = flags.DEFINE_integer("subprocess_cells", 2, "Cells actually run as processes.")
_JSON = flags.DEFINE_string("json_out", "", "Also write the results as JSON here.")
_WAYS = flags.DEFINE_list("ways", ["population", "pipeline", "processes"],
                          "Which ways to time, in this order (population is the reference).")
_PIPE = flags.DEFINE_integer("pipeline_cells", 12, "Cells actually run through the pipeline "
                             "(the time is extrapolated to all 12).")
_TB = flags.DEFINE_bool("tensorboard", True, "The pipeline cells also write TensorBoard events "
                        "(diagnostics.tensorboard; needs tensorboardX).")
WAYS = ("population", "pipeline", "processes")

LAGS, LRS, SEEDS = (0, 2), (1e-3, 3e-3, 1e-2), (0, 1)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(steps: int, init: str, tensorboard: bool = True) -> config_lib.RunConfig:
    c = sweep_lm.run_dict()   # the LM sweep's run config as a plain dict (no ml_collections)
    c["rl"]["steps"] = steps
    c["init_from"] = init
    c["log_every"] = steps
    c["diagnostics"].update(cosines=True, tensorboard=tensorboard)
    return config_lib.RunConfig.from_config(c)


def _cell_config(base, lag, lr, seed):
    return dataclasses.replace(
        base, seed=seed, rl=dataclasses.replace(base.rl, optimizer=dataclasses.replace(
            base.rl.optimizer, lr=lr)),
        staleness=dataclasses.replace(base.staleness, max_lag=lag, policy="fixed"))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    ways = list(_WAYS.value)
    bad = [w for w in ways if w not in WAYS]
    if bad or not ways or ways[0] != "population":
        raise app.UsageError(f"--ways={','.join(ways)}: must start with population and name only "
                             f"{', '.join(WAYS)}")
    tmp = tempfile.mkdtemp(prefix="lm_grid_")
    base = _config(_STEPS.value, "", _TB.value)
    base = dataclasses.replace(base, init_from=components.save_random_init(
        base, os.path.join(tmp, "init")))
    comps = components.build_grpo(base)
    grid = [(lag, lr, seed) for lag in LAGS for lr in LRS for seed in SEEDS]
    n = len(grid)
    rows = {}
    dev = jax.devices()[0]
    device = f"{dev.platform} {dev.device_kind} x{len(jax.devices())}"

    def done(name, secs):
        rows[name] = secs
        ref = next(iter(rows.values()))
        print(f"{name}: {secs:.1f} s, {3600 * n / secs:.0f} cells/hour, {secs / ref:.1f}x the "
              "population", flush=True)
        if _JSON.value:
            files.write_json_atomic(_JSON.value, {
                "cells": n, "steps": _STEPS.value, "wall_s": rows, "device": device,
                "ways": ways, "machine": workdir_lib.machine()})

    t0 = time.time()
    pop = population.make_population(base, comps, seeds=SEEDS, max_lag_cap=max(LAGS))
    cells = population.make_cells(pop, lrs=LRS, lags=LAGS)
    metrics, _, _ = population.run_chunk(population.compile_chunk(pop), pop, cells)
    assert np.isfinite(metrics["loss/kl_behavior_k3"]).all()
    done("population (one program, compile incl.)", time.time() - t0)

    if "pipeline" in ways:
        k = max(1, min(_PIPE.value, n))
        t0 = time.time()
        # Every S and η first (grid order is S, η, seed), so a measured subset spans the lags.
        for i, (lag, lr, seed) in enumerate(sorted(grid, key=lambda c: (c[2], c[0], c[1]))[:k]):
            cfg = _cell_config(base, lag, lr, seed)
            pipeline.run(cfg, components.build_grpo(cfg), os.path.join(tmp, f"pipe_{i}"))
        name = "pipeline, cells one after another (1 process)"
        if k < n:
            name = f"pipeline, cells one after another ({k} measured, x{n / k:.0f})"
        done(name, (time.time() - t0) * n / k)

    if "processes" in ways:
        k = max(1, min(_SUB.value, n))
        t0 = time.time()
        for i, (lag, lr, seed) in enumerate(grid[:k]):
            flags_ = [f"--config.{key}={v}" for key, v in {
                "task.kwargs.num_digits": 2, "model.preset": "tiny", "model.max_seq_len": 24,
                "rl.steps": _STEPS.value, "rl.prompts_per_step": base.rl.prompts_per_step,
                "rl.group_size": base.rl.group_size, "rl.eval_every": 0,
                "rl.checkpoint_every": 0, "rl.optimizer.lr": lr,
                "rl.optimizer.warmup_steps": base.rl.optimizer.warmup_steps,
                "staleness.policy": "fixed" if lag else "sync", "staleness.max_lag": lag,
                "seed": seed, "init_from": base.init_from, "log_every": _STEPS.value,
                "rl.log_ref_kl": True, "diagnostics.cosines": True,
                "diagnostics.tensorboard": _TB.value, "collapse.stop": False,
                "collapse.drop_frac": 0.5, "collapse.patience": 10,
                "collapse.warmup": 20}.items()]
            subprocess.run([sys.executable, "-m", "experiments.train",
                            "--config=experiments/configs/addition.py",
                            f"--workdir={os.path.join(tmp, f'proc_{i}')}", *flags_], cwd=_ROOT,
                           check=True, capture_output=True,
                           env={**os.environ, "PYTHONPATH": _ROOT})
        done(f"one process per cell ({k} measured, x{n / k:.0f})", (time.time() - t0) * n / k)

    print(f"\n{n} cells x {_STEPS.value} GRPO steps (tiny model, {base.rl.prompts_per_step}x"
          f"{base.rl.group_size} per step); device {device}; {workdir_lib.machine()['cpu']}")
    print(f"| {'way':48s} | {'wall':>9s} | {'cells/hour':>10s} | {'vs population':>13s} |")
    print(f"|{'-' * 50}|{'-' * 11}|{'-' * 12}|{'-' * 15}|")
    ref = rows["population (one program, compile incl.)"]
    for name, secs in rows.items():
        print(f"| {name:48s} | {secs:8.1f}s | {3600 * n / secs:10.0f} | {secs / ref:12.1f}x |")
    print(json.dumps({"cells": n, "steps": _STEPS.value, "wall_s": rows, "device": device}))


if __name__ == "__main__":
    app.run(main)
