"""The generic stale-gradient simulator on model problems of its own (not the exact testbed)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from async_grpo import collapse as collapse_lib
from async_grpo import metric_names as mn
from async_grpo import simulate
from async_grpo import staleness as staleness_lib
from experiments import delayed_quadratic as dq
from experiments.configs import delayed_quadratic as dq_config


def test_delayed_quadratic_matches_the_exact_stability_bound():
    """η_max of θ_{t+1} = θ_t − ηλθ_{t−S} is 2cos(Sπ/(2S+1))/λ; the simulator finds it to within
    the η grid step (×1.057) and the finite horizon (growth just above the bound is slow)."""
    c = dq_config.get_config()
    with c.unlocked():
        c.lags = "0,1,2,4,8"
    res = dq.run(c)
    step = res["grid_step"]
    for r in res["rows"]:
        for eta in r["eta_max_per_seed"]:
            assert r["exact"] / step ** 2 < eta < r["exact"] * step, (r, eta)
    assert [r["S"] for r in res["rows"]] == [0, 1, 2, 4, 8]
    assert 0.8 < res["fit_S_ge_1"]["alpha"] < 0.95        # the exact curve's α is 0.85 here


def _version_problem(num_steps, staleness, max_lag_cap=4):
    """θ = (counter, x): the counter of θ_t is t, so φ's counter is its version v_t = t − s_t."""
    def update(theta, phi, key, ctx):
        return {"count": -jnp.ones(()), "x": jnp.zeros(())}, {"phi_version": phi["count"]}

    def init(key, cell):
        return {"count": jnp.zeros(()), "x": jax.random.normal(key, ())}

    train = simulate.make_train(
        update, init, lambda cell: optax.sgd(1.0), num_steps=num_steps, staleness=staleness,
        max_lag_cap=max_lag_cap, collapse=None)
    return train


@pytest.mark.parametrize("staleness", staleness_lib.SCHEDULED)
def test_the_update_sees_exactly_theta_t_minus_lag(staleness):
    train = _version_problem(30, staleness)
    cells = simulate.make_cells(max_lag=[0, 1, 3, 4], seed=[0, 5])
    m, s = simulate.run_cells(train, cells)
    t = np.arange(30)
    for i, s_max in enumerate(cells["max_lag"]):
        np.testing.assert_array_equal(m["phi_version"][i], t - m["lag"][i])
        assert np.all((m["lag"][i] >= 0) & (m["lag"][i] <= np.minimum(t, s_max)))
        if staleness == "fixed":
            np.testing.assert_array_equal(m["lag"][i], np.minimum(t, s_max))
    assert "collapse_step" not in s and "J_init" not in s   # no rules, no objective


def test_random_lags_differ_by_seed_and_cover_the_range():
    train = _version_problem(60, "random_uniform")
    m, _ = simulate.run_cells(train, simulate.make_cells(max_lag=[4], seed=[0, 1]))
    assert not np.array_equal(m["lag"][0], m["lag"][1])
    assert set(np.unique(m["lag"][0][4:])) == {0, 1, 2, 3, 4}


def test_collapse_on_an_update_metric_without_an_objective():
    def update(theta, phi, key, ctx):
        return -phi, {"norm": jnp.linalg.norm(theta)}     # ascent on ‖θ‖: it blows up

    rules = collapse_lib.CollapseRules(metric="norm", max_metric="norm", max_value=10.0,
                                       warmup=0, patience=3)
    train = simulate.make_train(update, lambda key, cell: jnp.ones(2),
                                lambda cell: optax.sgd(cell["lr"]), num_steps=40,
                                staleness="fixed", max_lag_cap=2, collapse=rules)
    m, s = simulate.run_cells(train, simulate.make_cells(max_lag=[2], lr=[0.5], seed=[0]))
    first = int(np.argmax(m["norm"][0] > 10.0))
    assert s["collapse_step"][0] == first      # patience 3: the streak's first step
    assert collapse_lib.reason_name(s["collapse_reason"][0]) == "ceiling"
    assert m["collapsed"][0][first + 2] and not m["collapsed"][0][first + 1]
    with pytest.raises(ValueError, match="tracks 'J' but no objective"):
        simulate.make_train(update, lambda key, cell: jnp.ones(2), lambda cell: optax.sgd(0.1),
                            num_steps=5, collapse=simulate.default_collapse())


@pytest.mark.parametrize("cells,match", [
    ({"seed": [0], "max_lag": [5]}, "exceeds the ring-buffer cap S_max = 4"),
    ({"seed": [-1], "max_lag": [0]}, "Every seed must be an integer >= 0"),
    ({"max_lag": [0]}, "Every cell needs 'seed'"),
    ({"seed": [0, 1], "max_lag": [0]}, "differ in length"),
    ({"seed": [0], "max_lag": [0], "lr": [float("nan")]}, "'lr' must be finite"),
])
def test_bad_cells_fail_before_compiling(cells, match, monkeypatch):
    train = _version_problem(5, "fixed")

    def no_jit(*a, **k):
        raise AssertionError("compiled before validating")
    monkeypatch.setattr(jax, "jit", no_jit)
    with pytest.raises(ValueError, match=match):
        simulate.run_cells(train, {k: np.asarray(v) for k, v in cells.items()})


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="bounded_async.*random_uniform"):
        _version_problem(5, "bounded_async")
    with pytest.raises(ValueError, match="max_lag_cap"):
        _version_problem(5, "fixed", max_lag_cap=-1)
    with pytest.raises(ValueError, match="grid is empty"):
        simulate.make_cells(max_lag=[], seed=[0])


def _drifting_problem(num_steps):
    """A noisy stale descent on ‖θ‖²/2: every recorded trace varies from step to step."""
    def update(theta, phi, key, ctx):
        return phi + 0.3 * jax.random.normal(key, theta.shape), {"phi0": phi[0]}

    return simulate.make_train(update, lambda key, cell: jax.random.normal(key, (3,)),
                               lambda cell: optax.sgd(cell["lr"]), num_steps=num_steps,
                               staleness="fixed", max_lag_cap=3,
                               objective=lambda theta, ctx: -jnp.sum(theta ** 2))


def test_trace_every_returns_block_means_of_the_full_traces():
    with jax.enable_x64(True):      # float64: block means agree with numpy's to rounding
        _check_block_means()


def _check_block_means():
    train = _drifting_problem(24)
    cells = simulate.make_cells(max_lag=[0, 3], lr=[0.1, 0.7], seed=[0, 1])
    keep = ("J", "cos/consecutive_updates", "update_norm", "finite")
    full, s_full = simulate.run_cells(train, cells, keep_metrics=keep)
    thin, s_thin = simulate.run_cells(train, cells, keep_metrics=keep, trace_every=4)
    assert set(thin) == set(keep) and thin["J"].shape == (8, 6)
    for k in keep:
        want = full[k].astype(float).reshape(8, 6, 4).mean(-1)
        np.testing.assert_allclose(thin[k], want, rtol=1e-12, atol=0)
    assert np.ptp(thin["cos/consecutive_updates"]) > 0.1    # a real trace, not a constant
    for k in s_full:                                  # the summary is untouched
        np.testing.assert_array_equal(s_full[k], s_thin[k])
    chunked, _ = simulate.run_cells_chunked(train, cells, chunk_size=3, keep_metrics=keep,
                                            trace_every=4)
    for k in keep:
        np.testing.assert_allclose(chunked[k], thin[k], rtol=1e-12, atol=0)


@pytest.mark.parametrize("every,match", [(5, "must divide the number of steps T = 24"),
                                         (0, "trace_every must be an integer >= 1")])
def test_trace_every_must_divide_the_horizon(every, match):
    train = _drifting_problem(24)
    with pytest.raises(ValueError, match=match):
        simulate.run_cells(train, simulate.make_cells(max_lag=[0], lr=[0.1], seed=[0]),
                           trace_every=every)


def test_cos_grad_is_cos_update_for_plain_sgd_but_not_under_momentum():
    with jax.enable_x64(True):
        def update(theta, phi, key, ctx):
            return 0.05 * phi + jax.random.normal(key, theta.shape), {}   # mostly noise

        def train(momentum):
            return simulate.make_train(update, lambda key, cell: jnp.ones(4),
                                       lambda cell: optax.sgd(0.1, momentum=momentum),
                                       num_steps=40, staleness="fixed", max_lag_cap=2,
                                       collapse=None)

        cells = simulate.make_cells(max_lag=[0, 2], seed=[0, 1])
        keep = (mn.COS_UPDATES, mn.COS_GRADS)
        m, _ = simulate.run_cells(train(None), cells, keep_metrics=keep)
        np.testing.assert_allclose(m[mn.COS_GRADS], m[mn.COS_UPDATES], rtol=1e-9, atol=1e-12)
        assert np.all(m[mn.COS_GRADS][:, 0] == 0) and np.ptp(m[mn.COS_GRADS]) > 0.5
        m, _ = simulate.run_cells(train(0.9), cells, keep_metrics=keep)
        assert m[mn.COS_UPDATES][:, 10:].mean() > m[mn.COS_GRADS][:, 10:].mean() + 0.3


def test_the_engine_draws_the_pipelines_lags_and_reports_the_version():
    """One staleness schedule: a random policy's lag of step t in the engine is the pipeline's
    (`StalenessPolicy(...).lag(t)`, key `staleness.step_key(seed, t)`), and the version the
    update sees is logged as ``version`` = t − s_t."""
    train = _version_problem(25, "random_uniform")
    cells = simulate.make_cells(max_lag=[3], seed=[7])
    m, _ = simulate.run_cells(train, cells)
    policy = staleness_lib.StalenessPolicy("random_uniform", 3, seed=7)
    np.testing.assert_array_equal(m["lag"][0], [policy.lag(t) for t in range(25)])
    np.testing.assert_array_equal(m[mn.VERSION][0], m["phi_version"][0])


def test_update_norm_is_the_optimizers_update_and_a_non_finite_step_is_not_applied():
    """‖u_t‖ is the optimizer's own update, not θ_{t+1} − θ_t recomputed (which float arithmetic
    absorbs when |θ| ≫ |u|: here 1e20 + 1 == 1e20). A step whose direction is non-finite
    leaves θ at its last finite value, records finite = False and trips the collapse rule."""
    def update(theta, phi, key, ctx):
        bad = ctx.step == 5
        return {"x": jnp.where(bad, jnp.nan, -1.0)}, {"m": jnp.zeros(())}

    train = simulate.make_train(
        update, lambda key, cell: {"x": jnp.asarray(1e20, jnp.float32)},
        lambda cell: optax.sgd(1.0), num_steps=8, max_lag_cap=0,
        collapse=collapse_lib.CollapseRules(metric="m", warmup=0))
    m, s = simulate.run_cells(train, simulate.make_cells(max_lag=[0], seed=[0]))
    assert np.all(m[mn.UPDATE_NORM][0, :5] == 1.0)
    assert list(m[mn.FINITE][0]) == [True] * 5 + [False] + [True] * 2
    assert int(s["collapse_step"][0]) == 5 and bool(s["collapsed"][0])
    assert np.isfinite(s["drift_final"][0])


def _quadratic_with_objective(num_steps, evaluate=None, eval_every=0):
    """Noisy gradient descent on J(θ) = −‖θ‖²/2 with stale gradients (a sampled update)."""
    def update(theta, phi, key, ctx):
        return phi + 0.1 * jax.random.normal(key, theta.shape), {}

    return simulate.make_train(
        update, lambda key, cell: jax.random.normal(key, (3,)),
        lambda cell: optax.sgd(cell["lr"]), num_steps=num_steps, max_lag_cap=2,
        objective=lambda theta, ctx: -0.5 * jnp.sum(theta ** 2), collapse=None,
        evaluate=evaluate, eval_every=eval_every)


def test_in_program_evaluations_see_theta_every_k_steps_and_change_nothing_else():
    """`evaluate` every k steps: evaluation i is of θ after ik updates, so it equals the J(θ_ik)
    the step logs before update ik (and J_final at T); the per-step metrics and the summary are
    bit-identical to the run without evaluations (the blocked scan is the same computation)."""
    cells = simulate.make_cells(max_lag=[0, 2], lr=[0.1, 0.5], seed=[0, 3])
    plain = simulate.run_cells(_quadratic_with_objective(20), cells)
    both = lambda theta, ctx: {"J": -0.5 * jnp.sum(theta ** 2), "x0": theta[0]}  # noqa: E731
    train = _quadratic_with_objective(20, both, 5)
    m, s = simulate.run_cells(train, cells)
    np.testing.assert_array_equal(train.eval_steps, [0, 5, 10, 15, 20])
    for k in plain[0]:
        np.testing.assert_array_equal(m[k], plain[0][k], err_msg=k)
    for k in plain[1]:
        np.testing.assert_array_equal(s[k], plain[1][k], err_msg=k)
    ev = s[simulate.EVALS]
    assert ev["J"].shape == ev["x0"].shape == (8, 5)
    np.testing.assert_allclose(ev["J"][:, :4], m["J"][:, ::5], rtol=1e-6)
    np.testing.assert_allclose(ev["J"][:, 4], s["J_final"], rtol=1e-6)
    # chunked (padded last chunk) concatenates the evaluations like every other summary
    mc, sc = simulate.run_cells_chunked(train, cells, chunk_size=3)
    np.testing.assert_array_equal(sc[simulate.EVALS]["J"], ev["J"])


@pytest.mark.parametrize("every, evaluate, match", [
    (3, lambda theta, ctx: {}, "must divide"), (0, lambda theta, ctx: {}, "trace_every"),
    (4, None, "needs an evaluate function")])
def test_eval_every_must_divide_the_horizon_and_needs_a_function(every, evaluate, match):
    with pytest.raises(ValueError, match=match):
        _quadratic_with_objective(20, evaluate, every)
