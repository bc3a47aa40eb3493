"""The one results format (`async_grpo.results`) and the one chunked runner
(`async_grpo.grid_runner`): round trip, legacy directories, resume, the workdir guard."""

import json
import os

import numpy as np
import pytest

from async_grpo import files, grid_runner, results
from async_grpo import metric_names as mn
from async_grpo import workdir as workdir_lib


def _grid(n_steps=6, every=2):
    lags, lrs, seeds = [0, 2], [1e-3 * 2 ** (k / 2) for k in range(3)], [0, 1]
    cells = np.array([(s, e, r) for s in lags for e in lrs for r in seeds])
    n = len(cells)
    collapsed = (cells[:, 0] > 0) & (cells[:, 1] > 1.2e-3)
    return results.GridResult(
        "lm", {"S": cells[:, 0].astype(int), "lr": cells[:, 1], "seed": cells[:, 2].astype(int)},
        {"collapse_step": np.where(collapsed, 3, -1), "collapsed": collapsed,
         "drift_cycle_max": np.arange(n, dtype=float)},                  # a legacy name
        {"reward": np.random.default_rng(0).random((n, n_steps // every)),
         "drift_cycle": np.ones((n, n_steps // every))},                 # a legacy name
        every, evals={"heldout/accuracy": np.zeros((n, 2))}, eval_steps=np.array([0, 6]),
        fits={"stability": [results.stability(lags, lrs, collapsed.reshape(2, 3, 2),
                                              n_boot=20)]},
        config={"lr_min": 1e-3}, meta={"variant": "grpo"}, machine={"cpu": "x"}, wall_s=1.5,
        chunk_wall_s=[0.5, 1.0], invocations=[{"wall_s": 1.5, "chunks_computed": 2}])


def test_write_read_round_trip_keeps_every_field_with_canonical_names(tmp_path):
    gr = _grid()
    assert mn.DRIFT_CYCLE in gr.curves and mn.DRIFT_CYCLE_MAX in gr.summaries
    gr.write(str(tmp_path))
    back = results.read(str(tmp_path))
    assert back.kind == "lm" and back.trace_every == 2 and back.num_steps == 6
    for part in ("axes", "summaries", "curves", "evals"):
        a, b = getattr(gr, part), getattr(back, part)
        assert sorted(a) == sorted(b), part
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert back.axes["lr"].dtype == np.float64
    assert back.axes["lr"].tolist() == gr.axes["lr"].tolist()              # numbers, not text
    assert back.eval_steps.tolist() == [0, 6]
    assert back.fits == json.loads(json.dumps(files._jsonable(gr.fits)))
    assert (back.config, back.meta, back.machine, back.wall_s) == (
        gr.config, gr.meta, gr.machine, gr.wall_s)
    assert back.chunk_wall_s == [0.5, 1.0] and back.invocations == gr.invocations
    with np.load(tmp_path / "curves.npz") as z:                     # file keys, no slash
        assert sorted(z.files) == ["drift__within_cycle", "reward"]
    g = results.cube(back)
    assert g["index"].shape == (2, 3, 2) and back.axis("S") == [0, 2]
    assert results.read_sweep(str(tmp_path)).keys() == {"grpo"}


def test_a_result_refuses_cells_of_different_lengths_and_a_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="different lengths"):
        results.GridResult("x", {"S": np.zeros(3)}, {"collapsed": np.zeros(2)})
    with pytest.raises(ValueError, match="no grid result"):
        results.read(str(tmp_path))
    assert results.read_sweep(str(tmp_path / "none")) == {}


def test_legacy_directories_are_read_with_canonical_names(tmp_path):
    """An exact sweep (top summary.json, per variant summary.json + cells.csv + chunks with m_/s_)
    and an LM sweep (summary.json + cells.csv + curves.npz with `__`) written before the format."""
    top = tmp_path / "exact"
    vdir = top / "grpo"
    os.makedirs(vdir / "chunks")
    fits = {"b1": 0.0, "eta_max": {"0": [1.0]}, "alpha_fit_S_ge_1": {"alpha": None}}
    files.write_json_atomic(str(top / "summary.json"), {
        "config": {"x64": True}, "machine": {"cpu": "old"}, "variants": [{"variant": "grpo"}]})
    files.write_json_atomic(str(vdir / "summary.json"), {
        "variant": "grpo", "train": {"num_steps": 4}, "results": [fits],
        "traces": {"metrics": ["J", "cos_update"], "trace_every": 2}, "wall_s": 3.0})
    files.write_csv_atomic(str(vdir / "cells.csv"), {
        "S": [0, 1], "lr": [1.0, 1.0], "seed": [0, 0], "b1": [0.0, 0.0], "J_final": [0.5, 0.4],
        "collapse_step": [-1, 2], "collapsed": [0, 1]})
    np.savez(vdir / "chunks" / "chunk_00000.npz", m_J=np.ones((2, 2)),
             m_cos_update=np.zeros((2, 2)), s_J_final=np.array([0.5, 0.4]))
    runs = results.read_sweep(str(top))
    gr = runs["grpo"]
    assert sorted(gr.curves) == ["J", mn.COS_UPDATES] and gr.trace_every == 2
    assert gr.stability() == fits and gr.config == {"x64": True} and gr.machine["cpu"] == "old"
    assert gr.summaries["collapsed"].tolist() == [0, 1] and gr.axes["lr"].tolist() == [1.0, 1.0]

    lm = tmp_path / "lm"
    os.makedirs(lm)
    files.write_json_atomic(str(lm / "summary.json"), {
        "lags": [0], "lrs": [1e-3], "seeds": [0], "eta_max": {"0": [1e-3]},
        "alpha_fit_S_ge_1": {"alpha": None}, "config": {"rl": {"steps": 3}},
        "collapse_rules": "r", "invocations": [{"wall_s": 2.0, "chunks_computed": 1}]})
    files.write_csv_atomic(str(lm / "cells.csv"), {
        "S": [0], "lr": [1e-3], "seed": [0], "collapse_step": [-1], "collapsed": [0],
        "collapse_reason": ["none"], "heldout_greedy_final": [0.9]})
    np.savez(lm / "curves.npz", reward=np.ones((1, 3)), loss__clip_frac=np.zeros((1, 3)),
             drift__within_cycle=np.zeros((1, 3)))
    gr = results.read(str(lm))
    assert sorted(gr.curves) == [mn.DRIFT_CYCLE, mn.CLIP_FRAC, mn.REWARD]
    assert gr.summaries["heldout/accuracy"].tolist() == [0.9]
    assert gr.meta["run"] == {"rl": {"steps": 3}} and gr.stability()["eta_max"] == {"0": [1e-3]}
    assert results.previous_invocations(str(lm)) == [{"wall_s": 2.0, "chunks_computed": 1}]


def _compute(calls):
    def compute(idx):
        calls.append(idx.tolist())
        return {"curves": {"drift_cycle": np.outer(idx, np.ones(3))},
                "summaries": {"collapse_step": -np.ones(len(idx), int)}}
    return compute


def test_runner_resumes_after_a_killed_chunk_and_skips_saved_ones(tmp_path):
    calls = []
    run = grid_runner.run_chunks(str(tmp_path), 7, 3, _compute(calls))
    assert calls == [[0, 1, 2], [3, 4, 5], [6]] and run.chunks_computed == 3
    assert run.curves[mn.DRIFT_CYCLE][:, 0].tolist() == list(range(7))
    assert len(run.chunk_wall_s) == 3 and run.num_chunks == 3
    os.remove(grid_runner.chunk_path(str(tmp_path), 1))        # as if killed in that chunk
    calls.clear()
    again = grid_runner.run_chunks(str(tmp_path), 7, 3, _compute(calls))
    assert calls == [[3, 4, 5]] and again.chunks_computed == 1
    np.testing.assert_array_equal(again.curves[mn.DRIFT_CYCLE], run.curves[mn.DRIFT_CYCLE])
    with pytest.raises(ValueError, match="shard"):
        grid_runner.run_chunks(str(tmp_path), 7, 3, _compute(calls), shard=2, num_shards=2)


def test_runner_shards_take_every_nth_chunk_and_reads_legacy_chunks(tmp_path):
    calls = []
    assert grid_runner.run_chunks(str(tmp_path), 7, 3, _compute(calls), shard=1, num_shards=2,
                                  wait=False) is None
    assert calls == [[3, 4, 5]]
    np.savez(grid_runner.chunk_path(str(tmp_path), 0), m_drift_cycle=np.zeros((3, 3)),
             s_collapse_step=-np.ones(3, int), heldout_accuracy=np.ones(3))    # a legacy chunk
    calls.clear()
    grid_runner.run_chunks(str(tmp_path), 7, 3, _compute(calls), shard=0, num_shards=2,
                           wait=False)
    assert calls == [[6]]


def test_stability_is_the_one_eta_max_fit():
    collapsed = np.zeros((2, 3, 2), bool)
    collapsed[1, 2] = True
    st = results.stability([0, 2], [1.0, 2.0, 4.0], collapsed, n_boot=10)
    assert st["eta_max"] == {"0": [4.0, 4.0], "2": [2.0, 2.0]}
    assert st["eta_max_censor"] == {"0": [1, 1], "2": [0, 0]}
    assert st["eta_max_geomean"]["2"] == pytest.approx(2.0)
    assert st["collapse_frac"]["2"] == [0.0, 0.0, 1.0]


def test_the_workdir_guard_refuses_another_config(tmp_path):
    workdir_lib.claim(str(tmp_path), "sweep_lm", {"lr_min": 1e-3})
    with pytest.raises(workdir_lib.WorkdirError, match="lr_min: 0.001 -> 0.002"):
        workdir_lib.claim(str(tmp_path), "sweep_lm", {"lr_min": 2e-3})
    with pytest.raises(workdir_lib.WorkdirError, match="holds a 'sweep_lm' run"):
        workdir_lib.claim(str(tmp_path), "exact_sweep", {"lr_min": 1e-3})


def test_a_sweep_config_refuses_a_key_it_ignores_naming_it():
    from experiments import sweep  # pylint: disable=import-outside-toplevel
    from experiments.configs import sweep_lm  # pylint: disable=import-outside-toplevel
    sweep.lm_plan(sweep_lm.get_config("tiny"))
    for key, value, where in (("rl.optimizer.lr", 1e-3, "--config.lr_min"),
                              ("staleness.max_lag", 4, "--config.lags")):
        c = sweep_lm.get_config("tiny")
        node, leaf = c.run, key.split(".")
        for part in leaf[:-1]:
            node = node[part]
        setattr(node, leaf[-1], value)
        with pytest.raises(ValueError, match=f"--config.run.{key}=.* is ignored") as e:
            sweep.lm_plan(c)
        assert where in str(e.value)


def test_the_lm_grid_lrs_come_from_the_neutral_grid_axes_as_numbers():
    from async_grpo import grid_axes  # pylint: disable=import-outside-toplevel
    from async_grpo.testbeds import exact_configs  # pylint: disable=import-outside-toplevel
    from experiments import sweep  # pylint: disable=import-outside-toplevel
    from experiments.configs import sweep_lm  # pylint: disable=import-outside-toplevel
    c = sweep_lm.get_config("study")
    assert sweep.lm_plan(c).lrs == grid_axes.lr_grid(c.lr_min, c.lr_max, c.lrs_per_octave)
    assert exact_configs.lr_grid is grid_axes.lr_grid          # one definition
