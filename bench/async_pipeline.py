r"""Wall time per step of the pipeline against its jitted parts measured alone.

  python -m bench.async_pipeline             # tiny model, addition, 32 prompts x 8, CPU
  python -m bench.async_pipeline --config.model.preset=small --config.rl.prompts_per_step=64 \
      --blocks=5 --json_out=/tmp/async_pipeline.json
  # the learning regime's run config (docs/learning_regime.md, the wall-clock model): t_gen,
  # t_learn and the pipeline at S = 0 and S = 1, into DIR/async_pipeline.json
  python -m bench.async_pipeline --config=bench/async_pipeline_config.py:learn --workdir=DIR

The config (bench/async_pipeline_config.py) is experiments/configs/addition.py with the bench
defaults
(any field can be overridden with --config.x=y); `:learn` is instead the run config of
`experiments/configs/sweep_lm.py:learn` (16 prompts x 8 from the shipped warm start) with the
bench's step settings. The model starts from a random init of the configured preset (or from
--config.init_from=DIR, an SFT workdir or a shipped checkpoint), so no checkpoint is needed.

The measurement runs in blocks of `rl.steps` steps, each block in turn:
  * parts alone: the synchronous loop done by hand, each part timed and blocked on its result:
    sampling + reward = `components.source.generate(θ_t, t, t)` (what the generator thread
    runs), and learner step = `Learner.step` (sharded, donated) with its metrics fetched to the
    host (the pipeline fetches them on log steps; the bench logs every step). This is the same
    computation as the pipeline with S = 0.
  * the pipeline, `pipeline.run` with `fixed` S = 0 (sequential: ideal = sampling + learner)
  * and with S = 1 (pipelined; on a device that runs both at once the ideal would be the larger
    part; on a CPU the two share the cores). Per-step time = differences of the logged `wall_s`.
The same learner is reused by every run (compiled once, in an uncounted first block). Each
quantity is the median over a block's steps after `--skip`; the table gives the median over
blocks and the [min, max]. Short interleaved blocks pair every pipeline measurement with a parts
measurement taken seconds apart, which matters on a shared machine whose speed drifts.
Overhead = pipeline per step / (sampling + learner) − 1: what the pipeline adds (thread
hand-off, parameter snapshot, drift norms, lag statistics, metrics to host, JSONL + TensorBoard,
collapse state). Evaluation and checkpoints are off (periodic; timed in their own metrics).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from async_grpo import config as config_lib
from async_grpo import files
from async_grpo import metrics as metrics_lib
from async_grpo import workdir as workdir_lib
from async_grpo.rl import components, pipeline


_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "async_pipeline_config.py"),
    "bench/async_pipeline_config.py, optionally with ':learn' (see the docstring).")
_BLOCKS = flags.DEFINE_integer("blocks", 10, "Measured blocks (parts, S=0, S=1 in turn each).")
_SKIP = flags.DEFINE_integer("skip", 2, "Leading steps of each run dropped from its median.")
_JSON_OUT = flags.DEFINE_string("json_out", "", "Also write the results as JSON here.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Also write the results to WORKDIR/async_pipeline.json "
                               "(what experiments.report and the study read).")
RESULT = "async_pipeline.json"


def parts_alone(comps, learner, steps: int) -> tuple[list[float], list[float]]:
    """Per-step seconds of sampling + reward and of the learner step, run one after the other."""
    params = learner.place_params(comps.init_params)
    theta0 = learner.place_params(comps.init_params)
    opt_state, aux = learner.init_opt_state(params), learner.init_aux(params)
    gen_s, learn_s = [], []
    for t in range(steps):
        t0 = time.perf_counter()
        batch = comps.source.generate(params, t, t)     # host-side rewards: already on host
        t1 = time.perf_counter()
        params, opt_state, aux, m = learner.step(params, opt_state, aux, batch.arrays, theta0,
                                                 step=t + 1)
        metrics_lib.to_scalars(m)                        # blocks on the update
        t2 = time.perf_counter()
        gen_s.append(t1 - t0)
        learn_s.append(t2 - t1)
    return gen_s, learn_s


def with_lag(config: config_lib.RunConfig, max_lag: int) -> config_lib.RunConfig:
    """`config` with the `fixed` policy and S = max_lag."""
    return dataclasses.replace(config, staleness=dataclasses.replace(
        config.staleness, policy="fixed", max_lag=max_lag))


def pipeline_steps(config, comps, learner, workdir: str) -> tuple[list[float], list[float]]:
    """Per-step wall seconds of `pipeline.run` into a fresh `workdir`, and the generator
    thread's own time per batch (`rollout/generate_s`)."""
    pipeline.run(config, comps, workdir, learner=learner)
    recs = metrics_lib.read_metrics(workdir)
    return (np.diff([0.0] + [r["wall_s"] for r in recs]).tolist(),
            [r["rollout/generate_s"] for r in recs])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg, skip, blocks = _CONFIG.value, _SKIP.value, _BLOCKS.value
    try:
        config = config_lib.RunConfig.from_config(cfg)
    except ValueError as e:
        raise app.UsageError(f"bad config: {e}") from None
    steps = config.rl.steps
    if steps <= skip + 2:
        raise app.UsageError(f"--config.rl.steps={steps} must exceed --skip={skip} by at least 3.")
    if blocks < 1:
        raise app.UsageError(f"--blocks must be >= 1, got {blocks}.")
    tmp = tempfile.mkdtemp(prefix="async_pipeline_")
    if not config.init_from:
        config = dataclasses.replace(config, init_from=components.save_random_init(
            config, os.path.join(tmp, "init")))
    comps = components.build_grpo(config)
    learner = pipeline.make_learner(config, comps)
    configs = {0: with_lag(config, 0), 1: with_lag(config, 1)}
    med = lambda xs: statistics.median(xs[skip:])
    rows: dict[str, list[float]] = {k: [] for k in (
        "sampling + reward (alone)", "learner step (alone)", "sum of parts",
        "pipeline S=0", "pipeline S=0 overhead", "pipeline S=1", "pipeline S=1 generator",
        "pipeline S=1 vs sum", "pipeline S=1 vs max")}
    for b in range(-1, blocks):          # block -1 compiles everything and is not counted
        gen_s, learn_s = parts_alone(comps, learner, steps)
        g, l = med(gen_s), med(learn_s)
        total = med([a + b for a, b in zip(gen_s, learn_s)])
        s0, _ = pipeline_steps(configs[0], comps, learner, os.path.join(tmp, f"s0_{b}"))
        s1, s1_gen = pipeline_steps(configs[1], comps, learner, os.path.join(tmp, f"s1_{b}"))
        e0, e1 = med(s0), med(s1)
        if b < 0:
            continue
        for k, v in (("sampling + reward (alone)", g), ("learner step (alone)", l),
                     ("sum of parts", total), ("pipeline S=0", e0),
                     ("pipeline S=0 overhead", e0 / total - 1), ("pipeline S=1", e1),
                     ("pipeline S=1 generator", med(s1_gen)),
                     ("pipeline S=1 vs sum", e1 / total - 1),
                     ("pipeline S=1 vs max", e1 / max(g, l) - 1)):
            rows[k].append(v)
        print(f"block {b}: parts {1e3 * g:.1f} + {1e3 * l:.1f} ms, pipeline S=0 {1e3 * e0:.1f} ms "
              f"({100 * (e0 / total - 1):+.1f}%), S=1 {1e3 * e1:.1f} ms", flush=True)

    dev = jax.devices()[0]
    print(f"\ndevice: {dev.platform} {dev.device_kind} x{len(jax.devices())}; model "
          f"{cfg.model.preset}; batch {cfg.rl.prompts_per_step}x{cfg.rl.group_size}; {blocks} "
          f"blocks of {steps} steps (median of steps {skip}..{steps - 1} in each block): median "
          "over blocks [min, max]")
    print(f"| {'':28s} | {'per step':>28s} |")
    print(f"|{'-' * 30}|{'-' * 30}|")
    for k, v in rows.items():
        m, lo, hi = statistics.median(v), min(v), max(v)
        if "overhead" in k or " vs " in k:
            cell = f"{100 * m:+.1f}% [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        else:
            cell = f"{1e3 * m:.1f} ms [{1e3 * lo:.1f}, {1e3 * hi:.1f}]"
        print(f"| {k:28s} | {cell:>28s} |")
    record = {"device": f"{dev.platform} {dev.device_kind} x{len(jax.devices())}",
              "machine": workdir_lib.machine(), "config": cfg.to_dict(), "skip": skip,
              "blocks": blocks, "steps": steps, "seconds_or_fraction": rows}
    outs = [_JSON_OUT.value] if _JSON_OUT.value else []
    if _WORKDIR.value:
        os.makedirs(_WORKDIR.value, exist_ok=True)
        outs.append(os.path.join(_WORKDIR.value, RESULT))
    for path in outs:
        files.write_json_atomic(path, record)


if __name__ == "__main__":
    app.run(main)
