"""The sweep front end: LM grids (quick config, resume, refusal, 2 processes) and exact configs."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from async_grpo import metric_names as mn
from async_grpo import results
from tests.helpers import repo_root

REPO = repo_root()


def _run(workdir, *extra, env_extra=None, check=True, config="sweep_lm.py:tiny"):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", **(env_extra or {}))
    proc = subprocess.run([sys.executable, "-m", "experiments.sweep",
                           f"--config=experiments/configs/{config}", f"--workdir={workdir}",
                           *extra], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _table(workdir):
    with open(os.path.join(workdir, "cells.csv"), encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(name="one", scope="module")
def _one(tmp_path_factory):
    wd = tmp_path_factory.mktemp("sweep") / "one"
    proc = _run(wd, "--config.eval_every=6")
    return wd, proc.stdout


@pytest.mark.slow  # ~40 s (SFT, then the grid as a process); in the default suite the population
# runner is tests/test_population.py, the results format tests/test_results.py, the sweep's
# config checks the tests below and the same binary's exact path test_exact_configs_go_...
def test_lm_sweep_writes_its_table_curves_and_figure(one):
    wd, out = one
    gr = results.read(str(wd))
    assert gr.kind == "lm" and gr.num_cells == 8 and gr.axis("S") == [0, 2]
    assert gr.axes["lr"].dtype == np.float64 and gr.axis("lr") == [2e-3, 4e-3]
    assert {"collapse_step", "collapse_reason", "collapsed", "reward_last10",
            "heldout/accuracy", "drift_final"} <= set(gr.summaries)
    assert {mn.REWARD, mn.CLIP_FRAC, mn.DRIFT_CYCLE, mn.LAG} <= set(gr.curves)
    st = gr.stability()
    assert set(st["eta_max"]) == {"0", "2"} and "heldout_final_mean" in st
    for f in ("result.json", "cells.csv", "curves.npz", "phase.png", "phase.pdf", "sft/run.json"):
        assert os.path.exists(wd / f), f
    assert "eta_max" in out and "fit eta_max" in out and "8 cells in 2 chunks" in out
    assert gr.curves[mn.LAG].shape == (8, 12) and gr.curves[mn.LAG][-1].tolist() == [
        min(t, 2) for t in range(12)]
    # held-out accuracy inside the program at steps 0, 6, 12; the summary is the last of them
    assert gr.eval_steps.tolist() == [0, 6, 12]
    acc = gr.evals[mn.HELDOUT_ACC]
    assert acc.shape == (8, 3) and np.all((acc >= 0) & (acc <= 1))
    np.testing.assert_array_equal(gr.summaries[mn.HELDOUT_ACC], acc[:, -1])
    assert len(set(acc[:, 0].tolist())) == 1        # every cell starts from the same θ_0
    from experiments import study
    learn = study.load_learn(str(wd))
    assert learn["heldout"].shape == (2, 2, 2, 3) and learn["collapse_step"].shape == (2, 2, 2)


@pytest.mark.slow  # ~30 s idle; resume is also covered by the exact sweep tests
def test_lm_sweep_resumes_and_refuses_another_config(one, tmp_path):
    wd, _ = one
    before = _table(wd)
    chunk = wd / "chunks" / "chunk_00001.npz"
    os.remove(chunk)                                     # as if killed in the last chunk
    proc = _run(wd, "--config.eval_every=6")            # the same config as the fixture's
    assert "chunk 2/2" in proc.stderr and "chunk 1/2" not in proc.stderr   # only the lost one
    assert _table(wd) == before
    runs = [v["chunks_computed"] for v in results.read(str(wd)).invocations]
    assert runs == [2, 1]                                 # both invocations kept
    proc = _run(wd, "--config.eval_every=6", "--config.lr_max=8e-3", check=False)
    assert proc.returncode != 0 and "lr_max: 0.004 -> 0.008" in proc.stderr


@pytest.mark.slow  # ~40 s idle: two sweep processes
def test_two_shards_write_the_same_table(one, tmp_path):
    wd, _ = one
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    two = tmp_path / "two"          # from the first sweep's SFT checkpoint: the same θ_0
    procs = [subprocess.Popen(
        [sys.executable, "-m", "experiments.sweep",
         "--config=experiments/configs/sweep_lm.py:tiny", f"--workdir={two}",
         f"--config.run.init_from={wd / 'sft'}",
         *(["--num_shards=2", "--shard=0"] if i == 0 else [])],     # shard 1: from the env
        cwd=REPO, env=dict(env, **({} if i == 0 else {"ASYNC_GRPO_NUM_PROCESSES": "2",
                                                       "ASYNC_GRPO_PROCESS_ID": "1"})),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-3000:] for o in outs]
    assert _table(two) == _table(wd)
    assert "my chunks are done" in outs[1][0] and "2 process(es)" in outs[0][0]
    assert "chunk 1/2" in outs[0][1] and "chunk 2/2" in outs[1][1]    # each ran its own


def test_exact_configs_go_through_the_same_binary(tmp_path):
    proc = _run(tmp_path / "exact", "--config.lags=0,1", "--config.lr_min=4",
                "--config.lr_max=16", "--config.num_seeds=2", "--config.train.num_steps=30",
                "--config.n_boot=20", "--config.variants=grpo", config="exact_sweep.py")
    assert "fit eta_max" in proc.stdout and os.path.exists(tmp_path / "exact" / "grpo" /
                                                           "cells.csv")


def test_bad_lm_sweep_configs_fail_fast(tmp_path):
    """One subprocess proves the binary reports a bad value without a traceback; the other
    refusals are the same parser (`sweep.lm_plan`) and runner checks, called in-process."""
    from experiments import sweep  # pylint: disable=import-outside-toplevel
    from experiments.configs import sweep_lm  # pylint: disable=import-outside-toplevel
    proc = _run(tmp_path / "bad", "--config.lags=", check=False)
    assert proc.returncode != 0 and "lags" in proc.stderr, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    for key, value, match in (("batching", "pmap", "batching"),
                              ("run.rl.group_size", 1, "rl.group_size=1"),
                              ("run.staleness.policy", "bounded_async", "random_uniform"),
                              ("eval_every", 5, "eval_every=5"),
                              ("eval_every", -1, "eval_every=-1")):
        c = sweep_lm.get_config("tiny")
        node, *path = c, *key.split(".")
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
        with pytest.raises(ValueError, match=match):
            sweep.lm_plan(c)
    plan = sweep.lm_plan(sweep_lm.get_config("tiny"))
    with pytest.raises(ValueError, match="--shard=2 with --num_shards=1"):
        sweep.run_lm_sweep(sweep_lm.get_config("tiny"), str(tmp_path / "bad2"), plan, 2, 1)


def test_lr_control_config_is_parsed_once_with_clear_errors(tmp_path):
    import ml_collections  # pylint: disable=import-outside-toplevel
    from experiments import sweep  # pylint: disable=import-outside-toplevel
    lc = lambda **kw: ml_collections.ConfigDict(  # noqa: E731
        {**dict(r_batch=0.0, r_batch_from="", margin=0.5, r_crit=0.0), **kw})
    assert sweep._lr_control(None, 8) == (None, None)
    assert sweep._lr_control(lc(), 8) == (None, None)                 # r_batch 0: off
    params, info = sweep._lr_control(lc(r_batch=0.3), 8)
    assert params.r_batch == 0.3 and params.lookahead == 0.0 and info["source"] == "config"
    with pytest.raises(ValueError, match="not both"):
        sweep._lr_control(lc(r_batch=0.3, r_batch_from="x"), 8)
    with pytest.raises(ValueError, match="not a finished LM sweep"):
        sweep._lr_control(lc(r_batch_from=str(tmp_path)), 8)
    with pytest.raises(ValueError, match="margin"):
        sweep._lr_control(lc(r_batch=0.3, margin=2.0), 8)
