r"""Wall time per step of the async engine against its jitted parts measured alone.

  python -m bench.async_pipeline --steps=20 --prompts=8 --group=8

Builds the tiny addition setup (random init, no SFT needed), then measures:
  * sampling + reward: `trainer.generate_fn` alone (the generator thread's unit of work),
  * learner step: `Learner.step` alone (sharded, donated, blocked on its result),
  * the engine: `AsyncEngine.run()` per step, for S = 0 (sequential: ideal = sum of the parts)
    and fixed S = 1 (pipelined: ideal = the larger part, when they run on separate resources).
Overhead = engine time per step / ideal − 1. Prints a table; first steps (compilation) dropped.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from async_grpo import metrics as metrics_lib  # noqa: E402
from async_grpo.rl import engine  # noqa: E402
from tests.test_async_engine import config, dense_rewards, make_init  # noqa: E402


def _time(fn, n):
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    make_init(os.path.join(tmp, "init"))
    base = {"rl.steps": args.steps, "rl.prompts_per_step": args.prompts,
            "rl.group_size": args.group, "diagnostics.cosines": True}

    class P:  # a pathlib-like tmp for config()
        def __truediv__(self, x):
            return os.path.join(tmp, x)

    cfg = config(P(), **base)
    trainer = dense_rewards(engine.build_trainer(cfg, os.path.join(tmp, "parts")))
    eng = engine.AsyncEngine(trainer)
    L = eng.learner
    params = L.place_params(trainer.ref_params)
    gen_s = _time(lambda: trainer.generate_fn(params, 0, 0), 5)
    batch = trainer.generate_fn(params, 0, 0).arrays
    state = [L.place_params(trainer.ref_params), None, None]
    state[1], state[2] = L.init_opt_state(state[0]), L.init_aux(state[0])
    ref = L.place_params(trainer.ref_params)

    def learn():
        p, o, a, m = L.step(state[0], state[1], state[2], batch, ref)
        jax.block_until_ready(m)
        state[:] = [p, o, a]

    learn_s = _time(learn, 5)
    rows = [("sampling + reward (alone)", gen_s, None), ("learner step (alone)", learn_s, None)]
    for name, kw, ideal in [("engine S=0 (sequential)", {"staleness.policy": "fixed",
                                                         "staleness.max_lag": 0},
                             gen_s + learn_s),
                            ("engine fixed S=1 (pipelined)", {"staleness.policy": "fixed",
                                                              "staleness.max_lag": 1},
                             max(gen_s, learn_s))]:
        wd = os.path.join(tmp, name.split()[1].replace("=", ""))
        tr = dense_rewards(engine.build_trainer(config(P(), **base, **kw), wd))
        t0 = time.perf_counter()
        engine.AsyncEngine(tr).run()
        recs = metrics_lib.read_metrics(wd)
        walls = np.diff([r["wall_s"] for r in recs])[2:]
        rows.append((name, float(np.mean(walls)), ideal))
        del t0
    print(f"device: {jax.devices()[0].device_kind} x{len(jax.devices())}; tiny model; "
          f"batch {args.prompts}x{args.group}; {args.steps} steps")
    print(f"{'part':32s} {'s/step':>10s} {'ideal':>10s} {'overhead':>9s}")
    for name, t, ideal in rows:
        ov = "" if ideal is None else f"{100 * (t / ideal - 1):+.1f}%"
        print(f"{name:32s} {t:10.4f} {'' if ideal is None else f'{ideal:10.4f}':>10s} {ov:>9s}")


if __name__ == "__main__":
    main()
