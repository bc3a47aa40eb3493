"""The staleness-aware learning-rate controller (async_grpo.lr_control) and its wiring into the
simulator, the exact testbed and experiments/lr_controller.py."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from async_grpo import lr_control as lc
from async_grpo import scaling
from async_grpo import simulate
from async_grpo.testbeds import exact as ex
from experiments import lr_controller as lcb
from experiments import report
from experiments.configs import lr_controller as lcb_cfg
from tests.helpers import repo_root


@pytest.fixture(autouse=True)
def _float64():
    """Every test here runs in float64 (the bounds are checked to 1e-12)."""
    with jax.enable_x64(True):
        yield


_scale = jax.jit(lambda p, st, **kw: lc.scale(p, st, **kw))


def _synthetic(params, s_max, lags, proposals):
    """Runs the controller on a synthetic path: θ_{t+1} = θ_t + c_t·û_t, φ_t = θ_{t−s_t}.
    Returns (within-cycle drifts ‖θ_t − φ_t‖, cumulative drifts, scales, the final state,
    ‖θ_t − φ_{t+1}‖)."""
    thetas = [np.zeros(proposals.shape[1])]
    state = lc.init(jnp.float64)
    drifts, cums, scales, nexts = [], [], [], []
    for t, u in enumerate(proposals):
        theta = thetas[-1]
        phi = thetas[t - lags[t]]
        d = float(np.linalg.norm(theta - phi))
        nxt = lags[t + 1] if t + 1 < len(lags) else 0
        d_next = float(np.linalg.norm(theta - thetas[t + 1 - nxt])) if nxt > 0 else 0.0
        cum = float(np.linalg.norm(theta - thetas[0]))
        c, state = _scale(params, state, update_norm=np.linalg.norm(u), max_lag=s_max,
                            drift_cycle=d, drift_cum=cum, drift_next=d_next)
        drifts.append(d)
        nexts.append(d_next)
        cums.append(cum)
        scales.append(float(c))
        thetas.append(theta + float(c) * u)
    return np.array(drifts), np.array(cums), np.array(scales), state, np.array(nexts)


def _proposals(rng, steps, dim, ballistic):
    """Heavy-tailed proposed updates (norms over 6 decades); ballistic ones all point the same
    way, where the triangle inequality is tight."""
    norms = np.exp(rng.normal(0.0, 3.0, steps))
    dirs = np.tile(np.eye(dim)[0], (steps, 1)) if ballistic else rng.normal(size=(steps, dim))
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True) * norms[:, None]


@pytest.mark.parametrize("s_max", [1, 3, 8])
@pytest.mark.parametrize("ballistic", [True, False])
def test_rule_never_lets_the_drift_exceed_margin_times_r_batch(s_max, ballistic):
    rng = np.random.default_rng(s_max)
    steps = 300
    # the worst case s_t = min(t, S), and random lags in [0, min(t, S)]
    for lags in (np.minimum(np.arange(steps), s_max),
                 np.minimum(rng.integers(0, s_max + 1, steps), np.arange(steps))):
        params = lc.Params(r_batch=2.0, margin=0.5)
        d, _, c, state, _ = _synthetic(params, s_max, lags, _proposals(rng, steps, 5, ballistic))
        assert np.all(np.isfinite(d)) and np.all((c >= 0) & (c <= 1))
        assert d.max() <= 1.0 * (1 + 1e-12), d.max()
        assert int(state.over) == 0 and float(state.max_drift) == pytest.approx(d.max())
    if ballistic:
        assert d.max() > 0.99      # the bound is tight for aligned updates: it can fail
        assert int(state.limited) > 0


@pytest.mark.parametrize("s_max", [1, 3, 8])
@pytest.mark.parametrize("ballistic", [True, False])
def test_lookahead_keeps_the_next_drift_under_the_bound(s_max, ballistic):
    """‖θ_{t+1} − φ_{t+1}‖ ≤ m·R_batch whenever ‖θ_t − φ_{t+1}‖ ≤ m·R_batch; with the fixed
    lag schedule and aligned updates that always holds, so the drift never exceeds it."""
    rng = np.random.default_rng(10 + s_max)
    steps = 300
    fixed = np.minimum(np.arange(steps), s_max)
    for lags in (fixed, np.minimum(rng.integers(0, s_max + 1, steps), np.arange(steps))):
        params = lc.Params(r_batch=2.0, margin=0.5, lookahead=1.0)
        d, _, c, _, d_next = _synthetic(params, s_max, lags,
                                        _proposals(rng, steps, 5, ballistic))
        assert np.all((c >= 0) & (c <= 1))
        ok = d_next[:-1] <= 1.0
        assert np.all(d[1:][ok] <= 1.0 * (1 + 1e-12)), d[1:][ok].max()
        if ballistic and lags is fixed:
            assert d.max() <= 1.0 * (1 + 1e-12) and d.max() > 0.9


def test_without_the_controller_the_same_path_exceeds_the_bound():
    """The synthetic path of the test above, unscaled, does leave the radius (so the test can
    fail)."""
    rng = np.random.default_rng(0)
    params = lc.Params(r_batch=1e300, margin=1.0)
    lags = np.minimum(np.arange(200), 4)
    d, _, c, _, _ = _synthetic(params, 4, lags, _proposals(rng, 200, 5, True))
    assert np.all(c == 1.0) and d.max() > 10.0


def test_cumulative_bound():
    rng = np.random.default_rng(1)
    params = lc.Params(r_batch=1e6, margin=0.5, r_crit=3.0)
    _, cum, c, _, _ = _synthetic(params, 2, np.minimum(np.arange(200), 2),
                              _proposals(rng, 200, 4, False))
    assert cum.max() <= 1.5 * (1 + 1e-12) and cum.max() > 1.4
    assert c[-1] < 1


@pytest.mark.parametrize("lookahead", [0.0, 1.0])
def test_huge_r_batch_is_the_base_learning_rate(lookahead):
    state = lc.init(jnp.float64)
    for norm in (0.0, 1e-8, 1.0, 1e8):
        for s in (0, 1, 16):
            c, state = lc.scale(lc.Params(1e300, 1.0, 0.0, lookahead), state, update_norm=norm,
                                max_lag=s, drift_next=1e3)
            assert float(c) == 1.0
    assert int(state.limited) == 0


def test_rule_is_the_paper_constraint():
    """c = m·R_batch / (S·‖û‖) when that is < 1, so S·(cη)·G = m·R_batch exactly."""
    c, _ = lc.scale(lc.Params(2.0, 0.5), lc.init(jnp.float64), update_norm=3.0, max_lag=4)
    assert float(c) == pytest.approx(0.5 * 2.0 / (4 * 3.0), rel=1e-15)
    c, _ = lc.scale(lc.Params(2.0, 0.5, 0.0, 1.0), lc.init(jnp.float64), update_norm=3.0,
                    max_lag=4, drift_next=0.4)
    assert float(c) == pytest.approx((1.0 - 0.4) / (2.0 * 3.0), rel=1e-15)
    c, _ = lc.scale(lc.Params(2.0, 0.5), lc.init(jnp.float64), update_norm=jnp.nan, max_lag=4)
    assert math.isnan(float(c))      # NaN never passes as a finite scale


def test_jittable_and_vmappable_over_cells():
    n = 7
    rng = np.random.default_rng(2)
    params = lc.Params(jnp.asarray(rng.uniform(0.1, 3, n)), jnp.asarray(rng.uniform(0.1, 1, n)),
                       jnp.asarray(np.where(np.arange(n) % 2, 2.0, 0.0)),
                       jnp.asarray((np.arange(n) % 3 == 0).astype(float)),
                       jnp.asarray(np.where(np.arange(n) % 4 == 1, 0.5, 0.0)))
    norms = jnp.asarray(rng.uniform(0, 5, n))
    lags = jnp.asarray(rng.integers(0, 9, n), jnp.int32)
    dnext, dcum = jnp.asarray(rng.uniform(0, 1, n)), jnp.asarray(rng.uniform(0, 2, n))
    ess = jnp.asarray(rng.uniform(0.05, 1, n))
    states = jax.vmap(lambda _: lc.init(jnp.float64))(jnp.arange(n))

    def one(p, st, u, s, dn, dc, e):
        return lc.scale(p, st, update_norm=u, max_lag=s, drift_next=dn, drift_cum=dc,
                        ess_frac=e)

    c_all, _ = jax.jit(jax.vmap(one))(params, states, norms, lags, dnext, dcum, ess)
    for i in range(n):
        p = lc.Params(*(float(x[i]) for x in params))
        c, _ = one(p, lc.init(jnp.float64), float(norms[i]), int(lags[i]), float(dnext[i]),
                   float(dcum[i]), float(ess[i]))
        assert float(c_all[i]) == pytest.approx(float(c), rel=1e-14)


def test_optax_transformation_scales_the_optimizer_update():
    opt = optax.sgd(1.0)
    ctl = lc.scale_by_drift_control(lc.Params(1.0, 0.5))
    g = {"a": jnp.array([3.0, 4.0])}          # update −g, norm 5
    u, _ = opt.update(g, opt.init(g))
    v, st = ctl.update(u, ctl.init(u), max_lag=2)
    np.testing.assert_allclose(v["a"], -np.array([3.0, 4.0]) * 0.5 / (2 * 5.0), rtol=1e-6)
    assert int(st.limited) == 1


@pytest.mark.parametrize("params,match", [
    (lc.Params(-1.0), "r_batch"),
    (lc.Params(float("nan")), "r_batch"),
    (lc.Params(0.0), "r_batch .* > 0"),
    (lc.Params(1.0, 0.5, 0.0, 0.0, -0.5), "ess_power must be finite and >= 0"),
    (lc.Params(1.0, 0.5, 0.0, 0.0, float("nan")), "ess_power"),
    (lc.Params("x"), "r_batch .* must be a real scalar"),
    (lc.Params(1.0, 0.0), "margin must be in \\(0, 1\\]"),
    (lc.Params(1.0, 1.5), "margin"),
    (lc.Params(1.0, 0.5, -1.0), "r_crit .* >= 0"),
    (lc.Params(1.0, 0.5, 0.0, 0.5), "lookahead must be 0"),
])
def test_bad_inputs_raise(params, match):
    with pytest.raises(ValueError, match=match):
        lc.validate(params)


def test_ess_scaling_is_vcpo_and_multiplies_the_drift_rule():
    """c_t = min{1, w_t}·(ESS/B)^p: with R_batch = inf and p = 1/2 it is VCPO's √(ESS/B); on
    policy (ESS/B = 1) it is the base η; p = 0 ignores the ESS; with the rule it multiplies w_t."""
    lc.validate(lc.Params(float("inf"), 1.0, 0.0, 0.0, 0.5), max_lag=16)   # inf: no drift bound
    vcpo = lc.Params(float("inf"), 1.0, 0.0, 0.0, 0.5)
    for s in (0, 1, 16):
        for norm in (0.0, 1e-3, 1e8):
            c, _ = lc.scale(vcpo, lc.init(jnp.float64), update_norm=norm, max_lag=s,
                            drift_cycle=1e9, drift_next=1e9, ess_frac=0.36)
            assert float(c) == pytest.approx(0.6, rel=1e-15)
            c, _ = lc.scale(vcpo, lc.init(jnp.float64), update_norm=norm, max_lag=s, ess_frac=1.0)
            assert float(c) == 1.0
    c, st = lc.scale(lc.Params(float("inf"), 1.0, 0.0, 0.0, 1.0), lc.init(jnp.float64),
                     update_norm=1.0, max_lag=4, ess_frac=0.25)
    assert float(c) == 0.25 and int(st.limited) == 1 and int(st.over) == 0
    c, _ = lc.scale(lc.Params(2.0, 0.5), lc.init(jnp.float64), update_norm=3.0, max_lag=4,
                    ess_frac=0.01)
    assert float(c) == pytest.approx(0.5 * 2.0 / (4 * 3.0), rel=1e-15)     # p = 0: no ESS
    c, _ = lc.scale(lc.Params(2.0, 0.5, 0.0, 0.0, 0.5), lc.init(jnp.float64), update_norm=3.0,
                    max_lag=4, ess_frac=0.25)
    assert float(c) == pytest.approx(0.5 * 2.0 / (4 * 3.0) * 0.5, rel=1e-15)


def test_ess_scaling_in_the_engine_uses_the_updates_ess_and_refuses_a_testbed_without_it():
    """The engine passes the update's ``loss/ess_frac`` to the controller: a run whose update
    reports ESS/B = 0.25 at every step moves exactly half as far as the run without the
    controller (SGD, p = 1/2); a testbed with no ESS metric is refused, naming the metric."""
    def update(ess):
        def fn(theta, phi, key, ctx):
            m = {} if ess is None else {"loss/ess_frac": jnp.asarray(ess)}
            return {"x": jnp.ones(3)}, m
        return fn

    init = lambda key, cell: {"x": jnp.zeros(3)}       # noqa: E731
    opt = lambda cell: optax.sgd(cell["lr"])          # noqa: E731
    cells = simulate.make_cells(max_lag=[0, 4], lr=[0.1], seed=[0])
    vcpo = lambda cell: lc.Params(float("inf"), 1.0, 0.0, 0.0, 0.5)   # noqa: E731
    kw = dict(num_steps=6, max_lag_cap=4)
    _, plain = simulate.run_cells(simulate.make_train(update(0.25), init, opt, **kw), cells)
    m, ctl = simulate.run_cells(simulate.make_train(update(0.25), init, opt,
                                                    lr_control=vcpo, **kw), cells)
    np.testing.assert_allclose(ctl["drift_final"], 0.5 * plain["drift_final"], rtol=1e-12)
    assert np.all(plain["drift_final"] > 0)
    np.testing.assert_allclose(m["lr_scale"], 0.5, rtol=1e-12)
    with pytest.raises(ValueError, match="no 'loss/ess_frac' metric"):
        simulate.run_cells(simulate.make_train(update(None), init, opt, lr_control=vcpo, **kw),
                           cells)
    # without ESS scaling the same testbed runs (the drift rule needs no ESS)
    simulate.run_cells(simulate.make_train(update(None), init, opt,
                                           lr_control=lambda cell: lc.Params(1.0, 1.0), **kw),
                       cells)


def test_bad_max_lag_raises():
    with pytest.raises(ValueError, match="max_lag .* integer >= 0"):
        lc.validate(lc.Params(1.0), max_lag=-1)
    with pytest.raises(ValueError, match="max_lag"):
        lc.validate(lc.Params(1.0), max_lag=1.5)


# ----------------------------------------------------------------------------------------------
# Wiring: the simulator and the exact testbed.
# ----------------------------------------------------------------------------------------------

_TB = ex.TestbedConfig(num_prompts=2, vocab_size=2, seq_len=2, feature_dim=4, kl_coef=0.1)


def _tc(**kw):
    return ex.TrainConfig(num_steps=40, max_lag_cap=4, optimizer="sgd", diagnostics=False, **kw)


def _exact_check(staleness):
    """One fixed-η run and one controlled program (cells with a huge and a small R_batch, both
    modes): the huge R_batch reproduces the fixed run bit for bit; the small one keeps the
    measured drift under m·R_batch in rule mode, where the fixed run's drift is far larger."""
    tb = ex.make_testbed(_TB)
    cells = ex.make_cells([16.0, 256.0], [0, 1], [0, 1, 4], [0.0], max_lag_cap=4)
    m0, _ = ex.run_cells(tb, _tc(staleness=staleness), cells)
    n = len(cells["lr"])
    parts = [ex.with_control(cells, r, mg, 0.0, look)
             for r, mg, look in ((1e300, 1.0, 0.0), (1e300, 1.0, 1.0), (0.5, 0.5, 0.0))]
    both = {k: np.concatenate([q[k] for q in parts]) for k in parts[0]}
    m, s = ex.run_cells(tb, _tc(staleness=staleness, lr_control=True), both)
    for i in range(2):
        np.testing.assert_array_equal(m["J"][i * n:(i + 1) * n], m0["J"])
        np.testing.assert_array_equal(m["lag"][i * n:(i + 1) * n], m0["lag"])
        assert np.all(m["lr_scale"][i * n:(i + 1) * n] == 1.0)
    small = slice(2 * n, 3 * n)
    assert m0["drift/within_cycle"].max() > 1.0    # without the controller the drift is large
    assert np.all(np.isfinite(m["J"][small]))
    assert m["drift/within_cycle"][small].max() <= 0.25 * (1 + 1e-9)
    np.testing.assert_allclose(s["drift/within_cycle_max"], m["drift/within_cycle"].max(1))
    stale = both["max_lag"][small] > 0
    assert np.all((m["lr_scale"][small] > 0) & (m["lr_scale"][small] <= 1))
    assert s["lr_limited_frac"][small][stale].min() > 0


def test_exact_testbed_controller_random_lags():
    _exact_check("random_uniform")


@pytest.mark.slow
@pytest.mark.parametrize("staleness", ["fixed", "sync_interval"])
def test_exact_testbed_controller_other_schedules(staleness):
    _exact_check(staleness)


def test_exact_testbed_refuses_cells_without_controller_keys(monkeypatch):
    tb = ex.make_testbed(_TB)
    cells = ex.make_cells([1.0], [0], [1], [0.0], max_lag_cap=4)
    monkeypatch.setattr(jax, "jit", lambda *a, **k: (_ for _ in ()).throw(AssertionError()))
    with pytest.raises(ValueError, match="lack \\['r_batch', 'margin', 'r_crit', 'lookahead'\\]"):
        ex.run_cells(tb, _tc(lr_control=True), cells)
    bad = ex.with_control(cells, 1.0, 0.5)
    bad["margin"] = np.array([2.0])
    with pytest.raises(ValueError, match="margin must be in"):
        ex.run_cells(tb, _tc(lr_control=True), bad)
    with pytest.raises(ValueError, match="r_batch"):
        ex.with_control(cells, -1.0, 0.5)
    with pytest.raises(ValueError, match="lr_control must be True or False"):
        _tc(lr_control=1)


def test_simulator_keeps_the_random_stream_with_the_controller():
    """The controller peeks at the next step's lag key without consuming it: lags and sampled
    draws are those of the run without it."""
    def update(theta, phi, key, ctx):
        return {"x": phi["x"] - 1.0 + 0.0 * jax.random.normal(key)}, {"r": jax.random.normal(key)}

    def init(key, cell):
        return {"x": jnp.zeros(3)}

    kw = dict(num_steps=25, staleness="random_geometric", max_lag_cap=3)
    opt = lambda cell: optax.sgd(cell["lr"])  # noqa: E731
    a = simulate.make_train(update, init, opt, **kw)
    b = simulate.make_train(update, init, opt, lr_control=lambda cell: lc.Params(1e300, 1.0), **kw)
    cells = simulate.make_cells(max_lag=[3], lr=[0.1], seed=[0, 3])
    ma, _ = simulate.run_cells(a, cells)
    mb, _ = simulate.run_cells(b, cells)
    np.testing.assert_array_equal(ma["lag"], mb["lag"])
    np.testing.assert_array_equal(ma["r"], mb["r"])
    np.testing.assert_allclose(ma["drift/within_cycle"], mb["drift/within_cycle"], rtol=1e-12,
                               atol=1e-15)


# ----------------------------------------------------------------------------------------------
# experiments/lr_controller.py
# ----------------------------------------------------------------------------------------------


def test_binary_plan_and_bad_flags():
    p = lcb.plan(lcb_cfg.get_config())
    assert p["lags"] == [0, 1, 2, 4, 8, 16] and len(p["eval_seeds"]) >= 3
    assert not set(p["eval_seeds"]) & set(p["seeds"])       # held-out evaluation seeds
    for field, value, match in [("controller.modes", "rule,pid", "unknown \\['pid'\\]"),
                                ("controller.margins", "0.5,2", "margin must be in"),
                                ("controller.r_batch", -1.0, "r_batch"),
                                ("controller.base_lrs", "0", "finite and > 0"),
                                ("k_steps", 0, "k_steps")]:
        c = lcb_cfg.get_config()
        node, _, leaf = field.rpartition(".")
        setattr(c[node] if node else c, leaf, value)
        with pytest.raises(ValueError, match=match):
            lcb.plan(c)


def test_estimate_r_batch_reads_the_edge_of_stability():
    lags, lrs, seeds = [0, 1, 2], np.array([1.0, 2.0, 4.0]), [0, 1]
    collapsed = np.zeros((3, 3, 2), bool)
    collapsed[1:, 2, :] = True                      # S >= 1: eta 4 collapses, eta 2 is the edge
    step = np.where(collapsed, 5, -1)
    drift = np.zeros((3, 3, 2, 10))
    drift[1, 1, :, 3] = [1.0, 2.0]
    drift[2, 1, :, 7] = [3.0, 4.0]
    drift[1:, 2, :, 2] = 9.0                        # before the collapse step
    drift[1:, 2, :, 8] = 99.0                       # after it: not counted
    est = scaling.estimate_r_batch(lags, lrs, seeds, collapsed, step, drift)
    assert est["n_edges"] == 4 and est["r_batch"] == pytest.approx(2.5)
    assert est["peak_drift_collapsed_quantiles"][-1] == 9.0
    with pytest.raises(ValueError, match="bracketed"):
        scaling.estimate_r_batch(lags, lrs, seeds, np.zeros_like(collapsed), step, drift)


@pytest.mark.slow
def test_binary_end_to_end_and_its_report(tmp_path):
    """A tiny run of experiments/lr_controller.py: R_batch measured, the table's numbers in
    summary.json, and the docs' report kind renders them."""
    root = repo_root()
    env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
    work = tmp_path / "runs" / "ctl"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.lr_controller", f"--workdir={work}",
         "--config.lags=0,1,4", "--config.lr_min=4", "--config.lr_max=64",
         "--config.num_seeds=2", "--config.eval_seeds=2,3", "--config.train.num_steps=60",
         "--config.k_steps=10", "--config.controller.base_lrs=64",
         "--config.controller.margins=0.5"],
        cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((work / "summary.json").read_text())
    calib = json.loads((work / "calibration.json").read_text())
    assert s["r_batch"] == calib["r_batch"] > 0 and calib["n_edges"] >= 1
    assert [t["S"] for t in s["table"]] == [0, 1, 4]
    for t in s["table"][1:]:
        for q in t["control"]:
            assert q["drift_cycle_max"] <= 0.5 * s["r_batch"] * (1 + 1e-9) or q["mode"] != "rule"
    text = report.render("lr_controller ctl", str(tmp_path / "runs"))
    assert "| 4 | rule, m = 0.5 |" in text and "fixed η =" in text
    table = report.render("lr_controller_map ctl", str(tmp_path / "runs"))
    assert table.splitlines()[2].startswith("| 0 | ") and "rule, m = 0.5: collapsed" in table
    assert "rule m=0.5 η0=64" in proc.stdout
