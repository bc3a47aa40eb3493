"""Metrics writer (JSONL + TensorBoard), progress line, and orbax checkpoint helpers."""

import glob
import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from async_grpo import checkpoint as ckpt_lib
from async_grpo import metrics as metrics_lib


def test_writer_jsonl_and_tensorboard(tmp_path):
    wd = str(tmp_path / "run")
    with metrics_lib.MetricsWriter(wd) as w:
        w.write(1, {"reward": jnp.float32(0.5), "n": 3, "flag": True, "acc": np.array([0.25])})
        w.write(2, {"reward": 0.75, "nan": float("nan")})
    recs = metrics_lib.read_metrics(wd)
    assert [r["step"] for r in recs] == [1, 2]
    assert recs[0]["reward"] == 0.5 and recs[0]["n"] == 3 and recs[0]["acc"] == 0.25
    assert recs[0]["flag"] is True and "time" in recs[0]
    assert math.isnan(recs[1]["nan"])
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        assert len([json.loads(line) for line in f]) == 2
    assert glob.glob(os.path.join(wd, "tb", "events.out.tfevents.*"))
    # Appends on reopen (resume).
    with metrics_lib.MetricsWriter(wd, tensorboard=False) as w:
        w.write(3, {"reward": 1.0})
    assert [r["step"] for r in metrics_lib.read_metrics(wd)] == [1, 2, 3]


def _read_events(logdir):
    return metrics_lib.read_tensorboard(logdir)


def test_tensorboard_scalars_read_back(tmp_path):
    wd = str(tmp_path / "run")
    with metrics_lib.MetricsWriter(wd, prefix="p/") as w:
        w.write(1, {"a": 0.5, "b": 2})
        w.write(2, {"a": 0.25, "nan": float("nan")})
    events = _read_events(os.path.join(wd, "tb"))
    assert [e for e in events if e[1] != "p/nan"] == [(1, "p/a", 0.5), (1, "p/b", 2.0),
                                                      (2, "p/a", 0.25)]
    assert [(s, t) for s, t, v in events if math.isnan(v)] == [(2, "p/nan")]


def test_writer_rejects_non_scalars(tmp_path):
    with metrics_lib.MetricsWriter(str(tmp_path), tensorboard=False) as w:
        with pytest.raises(ValueError, match="scalar"):
            w.write(0, {"x": np.zeros(3)})


def test_progress_line():
    p = metrics_lib.Progress(100, start_step=10, warmup=0)
    line = p.line(10, {"reward": 0.5, "step_name": "x"}, keys=("reward",))
    assert line.startswith("step 10/100 (10%)") and "steps/s" in line and "ETA" in line
    assert "reward 0.5" in line and "step_name" not in line
    assert metrics_lib.format_duration(3725) == "1h02m05s"
    assert metrics_lib.format_duration(65) == "1m05s"
    assert metrics_lib.format_duration(float("nan")) == "?"


def test_checkpoint_keep_n_restore_and_meta(tmp_path):
    d = str(tmp_path / "ckpt")
    params = {"layers": {0: {"w": jnp.ones((2, 3))}, 1: {"w": jnp.zeros((2, 3))}}, "b": jnp.arange(4)}
    m = ckpt_lib.make_manager(d, max_to_keep=2)
    for step in (1, 2, 3):
        ckpt_lib.save(m, step, {"params": jax_scale(params, step), "opt_state": {"count": step}},
                      meta={"step": step, "note": "x"})
    assert m.all_steps() == [2, 3]
    # No leftover temporary directories: every entry is a finished step.
    assert sorted(os.listdir(d)) == ["2", "3"]
    step, items = ckpt_lib.restore(m, {"params": params}, with_meta=True)
    m.close()
    assert step == 3 and items["meta"] == {"step": 3, "note": "x"}
    np.testing.assert_array_equal(items["params"]["layers"][0]["w"], 3 * np.ones((2, 3)))
    assert ckpt_lib.latest_step(d) == 3
    assert ckpt_lib.latest_step(str(tmp_path / "none")) is None
    _, items = ckpt_lib.load_latest(d, {"params": ckpt_lib.abstract(params)})
    np.testing.assert_array_equal(items["params"]["b"], 3 * np.arange(4))
    with pytest.raises(FileNotFoundError, match="no SFT checkpoint found in"):
        ckpt_lib.load_latest(str(tmp_path / "none"), {"params": params}, what="SFT checkpoint")
    with pytest.raises(ValueError, match="reserved"):
        ckpt_lib.save(ckpt_lib.make_manager(d), 9, {"meta": params})


def jax_scale(tree, s):
    import jax  # pylint: disable=import-outside-toplevel
    return jax.tree.map(lambda x: x * s, tree)


def test_resumed_writer_purges_the_steps_it_rewrites(tmp_path):
    """A run killed after step 3 (events for 1..3 written) and resumed from a step-1 checkpoint
    rewrites steps 2 and 3: with purge_step=2 the event stream holds each step once."""
    wd = str(tmp_path / "run")
    with metrics_lib.MetricsWriter(wd) as w:
        for t in (1, 2, 3):
            w.write(t, {"a": float(t)})
    import time  # pylint: disable=import-outside-toplevel
    time.sleep(1.1)          # a new event file (names carry the second they were opened)
    with metrics_lib.MetricsWriter(wd, purge_step=2) as w:
        for t in (2, 3, 4):
            w.write(t, {"a": 10.0 * t})
    assert [(s, v) for s, _, v in _read_events(os.path.join(wd, "tb"))] == [
        (1, 1.0), (2, 20.0), (3, 30.0), (4, 40.0)]


def test_flush_puts_every_written_step_on_disk_before_a_kill(tmp_path):
    """What a checkpoint relies on: after `flush()`, a process killed at once (no close, no
    atexit) has every written step in its event file. tensorboardX's FileWriter failed this (its
    flush does not drain the queue to its writer thread), so a resumed run lost steps for good."""
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel
    code = ("import os, sys\n"
            "from async_grpo import metrics\n"
            "w = metrics.MetricsWriter(sys.argv[1])\n"
            "for i in range(1, 301):\n"
            "    w.write(i, {'loss': float(i), 'reward': 0.5})\n"
            "w.flush()\n"
            "os._exit(0)\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=repo,
                   env=dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu"), timeout=120)
    steps = [s for s, tag, _ in metrics_lib.read_tensorboard(str(tmp_path / "tb"))
             if tag == "loss"]
    assert steps == list(range(1, 301))
