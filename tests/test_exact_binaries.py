"""Tests of the exact-testbed binaries' planning/analysis code and one end-to-end sweep."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from async_grpo import metric_names as mn
from async_grpo import results
from async_grpo import scaling as xa
from async_grpo.testbeds import exact_configs as xc
from experiments.configs import exact_bias as bias_cfg
from experiments.configs import exact_sweep as sweep_cfg

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _no_jit(monkeypatch):
    def no_jit(*a, **k):
        raise AssertionError("compiled before validating")
    monkeypatch.setattr(jax, "jit", no_jit)


def test_default_plans_are_valid():
    p = xc.sweep_plan(sweep_cfg.get_config())
    assert p["lags"] == [0, 1, 2, 4, 8, 16] and len(p["seeds"]) >= 3
    assert p["lrs"][0] == 0.5 and abs(p["lrs"][-1] - 512) < 1e-9
    assert p["train"].max_lag_cap == 16
    xc.bias_plan(bias_cfg.get_config())


@pytest.mark.parametrize("field,value,match", [
    ("lags", "0,-1", "S must be an integer >= 0"),
    ("lags", "", "grid is empty"),
    ("lags", "0,300", "max_lag_cap"),
    ("lags", "1,x", "cannot parse"),
    ("lr_min", 0.0, "lr_min must be finite and > 0"),
    ("lr_min", -1e-3, "lr_min must be finite and > 0"),
    ("lr_max", 0.1, "lr_max must be finite and >= lr_min"),
    ("num_seeds", 0, "num_seeds"),
    ("variants", "", "variants is empty"),
    ("variants", "grpo,nope", "variant 'nope': Unknown loss 'nope'; valid names"),
    ("variants", "grpo,tis", "variant 'tis'.*no exact population form"),
    ("loss_kwargs.clip_eps", 1.5, "clip_eps must be in"),
    ("collapse.patience", 0, "collapse.patience=0: must be an integer >= 1"),
    ("testbed.vocab_size", 64, "too many to enumerate"),
    ("testbed.seq_len", 9, "too many to enumerate"),
    ("train.staleness", "lifo", "Unknown staleness"),
    ("trace_every", 7, "trace_every must be an integer >= 1 that divides train.num_steps = 500"),
    ("trace_every", 0, "trace_every must be an integer >= 1"),
    ("keep_metrics", "J,,", None),
    ("horizons", "100,501", r"horizons \[501\]: every horizon T' must be in \[1, train.num_steps = 500\]"),
])
def test_sweep_plan_rejects_bad_flags_before_compiling(field, value, match, monkeypatch):
    c = sweep_cfg.get_config()
    node, _, leaf = field.rpartition(".")
    setattr(c[node] if node else c, leaf, value)
    _no_jit(monkeypatch)
    if match is None:      # accepted: empty names are dropped, J is always kept
        assert xc.sweep_plan(c)["keep_metrics"] == ("J",)
        return
    with pytest.raises(ValueError, match=match):
        xc.sweep_plan(c)


@pytest.mark.parametrize("field,value,match", [
    ("traj_lags", "-1", "S must be an integer >= 0"),
    ("traj_lrs", "0.5,0", "finite and > 0"),
    ("traj_lrs", "", "grid is empty"),
    ("anchor_lr", 0.0, "anchor_lr"),
    ("r_min", 0.0, "r_min"),
])
def test_bias_plan_rejects_bad_flags_before_compiling(field, value, match, monkeypatch):
    c = bias_cfg.get_config()
    setattr(c, field, value)
    _no_jit(monkeypatch)
    with pytest.raises(ValueError, match=match):
        xc.bias_plan(c)


def test_eta_max_and_bootstrap_recover_a_known_exponent():
    lrs = 2.0 ** np.arange(-4, 8, 0.5)
    lags = [0, 1, 2, 4, 8, 16]
    rng = np.random.default_rng(0)
    true = {s: 64.0 / max(s, 0.5) for s in lags}  # η_max = 64/S, S=0 -> 128
    collapsed = np.zeros((len(lags), len(lrs), 5), bool)
    for i, s in enumerate(lags):
        for k in range(5):
            thr = true[s] * 2.0 ** rng.uniform(-0.4, 0.4)
            collapsed[i, :, k] = lrs > thr
    collapsed[0, :, 0] = False  # one censored (never collapsed) cell
    eta, censor = xa.eta_max_per_seed(lrs, collapsed)
    assert censor[0, 0] == 1 and eta[0, 0] == lrs[-1]
    assert np.all(censor[1:] == 0)
    fit = xa.bootstrap_alpha(lags, lrs, collapsed, n_boot=300)
    assert abs(fit["alpha"] - 1.0) < 0.15
    assert fit["ci"][0] <= fit["alpha"] <= fit["ci"][1]
    assert fit["n_bracketed"] == 25 and fit["n_lower_bound"] == 0
    collapsed[3, 0, 2] = True
    eta, censor = xa.eta_max_per_seed(lrs, collapsed)
    assert censor[3, 2] == -1


def test_collapse_time_law_and_linear_fits():
    lrs = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    law = xa.collapse_time_law(lrs, 400.0 / lrs - 1.0, min_step=5)
    assert abs(law["slope"] + 1.0) < 1e-9 and abs(law["median_t_eta"] - 400.0) < 1e-9
    law = xa.collapse_time_law(lrs, np.array([3, 3, 50, 25, 12]), min_step=5)
    assert law["n"] == 3 and law["n_censored"] == 2
    x = np.geomspace(1e-4, 1.0, 30)
    y = 3.0 * x * (1 + 0.5 * (x > 0.1))
    f = xa.fit_through_origin(x[x < 0.05], y[x < 0.05])
    assert abs(f["slope"] - 3.0) < 1e-12 and f["r2"] > 0.999999
    brk = xa.linearity_break(x, y, 3.0, tol=0.1)
    assert 0.1 < brk <= x[x > 0.1][0] + 1e-12
    assert abs(xa.loglog_slope(x, y[:1] * 0 + x ** 2) - 2) < 1e-9


def _run(args, **kw):
    env = {**os.environ, "PYTHONPATH": _ROOT, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", *args], cwd=_ROOT, env=env, capture_output=True,
                          text=True, timeout=300, **kw)


def test_sweep_binary_bad_flag_fails_with_a_clear_message(tmp_path):
    out = _run(["experiments.exact_sweep", f"--workdir={tmp_path}", "--config.lags=0,-4"])
    assert out.returncode != 0
    assert "Staleness S must be an integer >= 0, got -4" in out.stderr + out.stdout
    assert not os.path.exists(tmp_path / "grpo" / "chunks")


@pytest.mark.slow
def test_sweep_binary_end_to_end_and_resume(tmp_path):
    flags_ = [f"--workdir={tmp_path}", "--config.train.num_steps=25", "--config.lags=0,2",
              "--config.lr_min=4", "--config.lr_max=64", "--config.lrs_per_octave=1",
              "--config.num_seeds=2", "--config.chunk_size=8", "--config.variants=no_ratio",
              "--config.collapse.warmup=2", "--config.collapse.patience=2",
              "--config.n_boot=50"]
    out = _run(["experiments.exact_sweep", *flags_])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "fit eta_max" in out.stdout
    for f in ("run.json", "no_ratio/result.json", "no_ratio/cells.csv", "no_ratio/phase.png",
              "no_ratio/phase.pdf"):
        assert os.path.exists(tmp_path / f), f
    chunks = sorted(os.listdir(tmp_path / "no_ratio" / "chunks"))
    assert len(chunks) == 3  # 2 S x 5 η x 2 seeds = 20 cells in chunks of 8
    before = (tmp_path / "no_ratio" / "cells.csv").read_text()
    os.remove(tmp_path / "no_ratio" / "chunks" / chunks[-1])  # as if killed during the last chunk
    out = _run(["experiments.exact_sweep", *flags_[:-1], "--config.n_boot=51"])  # analysis only
    assert out.returncode == 0, out.stderr[-3000:]
    assert "chunk 3/3" in out.stderr and "chunk 1/3" not in out.stderr
    assert (tmp_path / "no_ratio" / "cells.csv").read_text() == before
    out = _run(["experiments.exact_sweep", *flags_, "--config.lr_max=128"])
    assert out.returncode != 0 and "different config" in out.stderr + out.stdout
    assert "lr_max: 64.0 -> 128.0" in out.stderr + out.stdout and "Traceback" not in out.stderr


def test_a_workdir_written_before_workdir_records_resumes_or_is_refused(tmp_path):
    """A sweep workdir of the fingerprint era (<variant>/config_fingerprint.json, no run.json)
    is accepted with the config that wrote it and refused, naming the file, with another."""
    from async_grpo import workdir as workdir_lib
    from experiments import exact_sweep as es
    c = sweep_cfg.get_config()
    old = json.loads(c.to_json())
    for k in ("keep_metrics", "trace_every", "horizons"):   # at their defaults: not written
        del old[k]
    old["variant"] = "grpo"
    os.makedirs(tmp_path / "grpo")
    (tmp_path / "grpo" / "config_fingerprint.json").write_text(json.dumps(old, sort_keys=True))
    with c.unlocked():
        c.horizons = "100,250"           # analysis only: the same chunks
    es.claim(c, str(tmp_path), ["grpo"])
    assert json.loads((tmp_path / "run.json").read_text())["kind"] == "exact_sweep"
    os.remove(tmp_path / "run.json")
    with c.unlocked():
        c.keep_metrics = "J,cos_update"
    with pytest.raises(workdir_lib.WorkdirError, match="config_fingerprint.json"):
        es.claim(c, str(tmp_path), ["grpo"])


def test_clip_radius_is_the_drift_where_the_clip_sets_in():
    from experiments import exact_sweep as es
    d = np.geomspace(1e-3, 10, 4000)
    clip = np.clip((d - 0.5) / 5, 0, 1)                  # clipping starts at drift 0.5
    r, d_max = es.clip_radius(d, clip, onset=0.01, bins=40)
    assert 0.5 < r < 0.5 * 1.4 and d_max == d[-1]
    assert es.clip_radius(d, 0 * d)[0] is None
    assert es.clip_radius(d, np.where(d < 1, np.nan, clip))[0] > 1   # NaN (after collapse) left out


def test_sweep_saves_the_requested_traces_and_the_regime(tmp_path):
    from experiments import exact_sweep as es
    c = sweep_cfg.get_config()
    with c.unlocked():
        c.variants, c.lags, c.lr_min, c.lr_max, c.lrs_per_octave = "grpo", "0,2", 8.0, 64.0, 1
        c.num_seeds, c.n_boot, c.train.num_steps, c.chunk_size = 2, 20, 40, 16
        c.collapse.warmup, c.collapse.patience = 2, 2
        c.keep_metrics = "J,cos_update,drift_cycle,drift_cum,update_norm,clip_frac"
        c.trace_every = 4
        c.horizons = "10,40"
    table = es.run_sweep(c, str(tmp_path))
    gr = results.read(str(tmp_path / "grpo"))
    names = [mn.OBJECTIVE, mn.COS_UPDATES, mn.DRIFT_CYCLE, mn.DRIFT_CUM, mn.UPDATE_NORM,
             mn.CLIP_FRAC]                         # the legacy names, canonical
    assert sorted(gr.curves) == sorted(names) and gr.trace_every == 4
    assert gr.curves["J"].shape == (16, 10)             # 2 S x 4 η x 2 seeds, 40 / 4 blocks
    assert np.isfinite(gr.summaries["J_init"]).all()
    assert np.isfinite(gr.curves[mn.UPDATE_NORM]).all()
    lag0 = gr.axes["S"] == 0
    assert np.all(gr.curves[mn.DRIFT_CYCLE][lag0] == 0)
    assert np.all(gr.curves[mn.CLIP_FRAC][lag0] == 0)
    assert np.all(gr.curves[mn.DRIFT_CYCLE][~lag0][:, 1:] > 0)
    res = gr.stability()
    cs = np.where(gr.summaries["collapsed"], gr.summaries["collapse_step"],
                  10 ** 9).reshape(2, 4, 2)
    for h in (10, 40):                      # η_max at T' from collapse_step <= T'
        got = res["horizons"][str(h)]["collapsed_cells"]
        assert got == {"0": int((cs[0] <= h).sum()), "2": int((cs[1] <= h).sum())}
    assert res["horizons"]["40"]["eta_max_geomean"] == res["eta_max_geomean"]
    assert "at shorter horizons" in table
    reg = gr.fits["regime"]
    assert set(reg["per_b1"][0]["at_eta_max"]) == {"0", "2"} and "regime: clip radius" in table
    with c.unlocked():
        c.keep_metrics = "J,no_such_metric"
    with pytest.raises(ValueError, match="records no metric"):
        es.run_sweep(c, str(tmp_path / "other"))


def test_study_configs_plan(monkeypatch):
    from experiments.configs import study_small_drift as study
    _no_jit(monkeypatch)
    for arg in study.ARGS:
        p = xc.sweep_plan(study.get_config(arg))
        assert p["train"].num_steps % p["trace_every"] == 0 and "J" in p["keep_metrics"]
        assert all(h <= p["train"].num_steps for h in p["horizons"])
        if p["train"].mode == "sampled":
            assert all(tb.sampled_only for tb in p["testbeds"].values())
    with pytest.raises(ValueError, match="Unknown study_small_drift config 'nope'"):
        study.get_config("nope")


def test_a_workdir_resumes_whichever_vocabulary_names_the_kept_metrics(tmp_path):
    """The workdir record holds the kept metrics in the vocabulary's names, so a config naming
    them the old way (drift_cycle) and the new way (drift/within_cycle) is the same run."""
    from async_grpo import workdir as workdir_lib
    from experiments import exact_sweep as es
    c = sweep_cfg.get_config()
    with c.unlocked():
        c.keep_metrics = "J,drift_cycle,cos_update,clip_frac"
    es.claim(c, str(tmp_path), ["grpo"])
    with c.unlocked():
        c.keep_metrics = "J,drift/within_cycle,cos/consecutive_updates,loss/clip_frac"
    es.claim(c, str(tmp_path), ["grpo"])
    with c.unlocked():
        c.keep_metrics = "J,drift/within_cycle"
    with pytest.raises(workdir_lib.WorkdirError, match="keep_metrics"):
        es.claim(c, str(tmp_path), ["grpo"])
