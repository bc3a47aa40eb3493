"""Kill the engine (SIGKILL, SIGTERM) mid-run, restart it, and end bit-identical (`fixed`)."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from async_grpo import checkpoint as ckpt_lib
from async_grpo import metrics as metrics_lib
from tests.test_async_engine import config, make_init, run_engine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 7
OVERRIDES = {"rl.steps": STEPS, "rl.checkpoint_every": 1, "staleness.policy": "fixed",
             "staleness.max_lag": 2, "staleness.queue_size": 2, "keep_checkpoints": 2}

# The same run as `run_engine(config(...))`, in a fresh process, each batch slowed down so that a
# kill lands mid-run (the engine itself is unchanged).
RUNNER = """
import sys, time, pathlib
from tests.test_async_engine import config, run_engine
tmp, workdir = pathlib.Path(sys.argv[1]), sys.argv[2]
def slow(trainer):
    gen = trainer.generate_fn
    trainer.generate_fn = lambda p, v, s: (time.sleep(0.4), gen(p, v, s))[1]
run_engine(config(tmp, **{overrides!r}), workdir, wrap=slow)
print("FINISHED")
"""


def _start(tmp_path, workdir):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    code = RUNNER.format(overrides=OVERRIDES)
    return subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(workdir)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(proc, workdir, step, timeout=120):
    path = os.path.join(workdir, metrics_lib.METRICS_FILE)
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"runner exited early: {proc.communicate()}")
        if os.path.exists(path) and any(r["step"] >= step for r in metrics_lib.read_metrics(path)):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def test_sigkill_and_sigterm_resume_bit_identical(tmp_path):
    make_init(str(tmp_path / "init"))
    ref, _, ref_recs = run_engine(config(tmp_path, **OVERRIDES), tmp_path / "ref")

    workdir = tmp_path / "killed"
    # 1) SIGKILL once step 2 is logged: at an arbitrary point (mid-step, mid-save, in generation).
    proc = _start(tmp_path, workdir)
    _wait_for_step(proc, str(workdir), 2)
    time.sleep(0.15)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    killed_at = ckpt_lib.latest_step(str(workdir / "checkpoints"))
    assert killed_at is not None and killed_at < STEPS
    # 2) Restart with the same command; SIGTERM after step 4: saves and exits cleanly.
    proc = _start(tmp_path, workdir)
    _wait_for_step(proc, str(workdir), max(killed_at + 1, 4))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    termed_at = ckpt_lib.latest_step(str(workdir / "checkpoints"))
    assert killed_at < termed_at <= STEPS
    # 3) Restart again and finish (in-process).
    eng, _, recs = run_engine(config(tmp_path, **OVERRIDES), workdir)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), jax.device_get(eng.params),
                        jax.device_get(ref.params))
    assert all(jax.tree.leaves(same))
    # The metrics stream has each step once, with the uninterrupted run's losses.
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in recs] == [r["loss"] for r in ref_recs]
    assert [r["lag"] for r in recs] == [min(t, 2) for t in range(STEPS)]
