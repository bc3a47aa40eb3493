"""async_grpo.scaling on synthetic collapse maps with known answers: the censored α fit."""

import numpy as np
import pytest

from async_grpo import scaling


def _map(lrs, lags, eta_true, n_seed=6, jitter=0.3, seed=0):
    """collapsed[S, η, seed] = η > eta_true(S)·2^u, u ~ U(−jitter, jitter) per (S, seed)."""
    rng = np.random.default_rng(seed)
    thr = np.array([[eta_true(s) * 2.0 ** rng.uniform(-jitter, jitter) for _ in range(n_seed)]
                    for s in lags])
    return np.asarray(lrs)[None, :, None] > thr[:, None, :]


def _old_geomean_alpha(lags, lrs, collapsed):
    """The fit this module used to make: least squares on geometric means of point η_max."""
    eta, _ = scaling.eta_max_per_seed(lrs, collapsed)
    use = np.asarray(lags) >= 1
    return scaling.fit_power_law(np.asarray(lags)[use], np.exp(np.log(eta[use]).mean(1)))["alpha"]


def test_intervals_bracket_the_threshold_and_mark_bounds():
    lrs = 2.0 ** np.arange(0, 6)                          # 1 .. 32
    collapsed = np.array([[[False], [False], [True], [True], [True], [True]],    # 2 <= η* < 4
                          [[False]] * 6,                                         # never
                          [[True]] * 6])                                         # always
    lo, hi = scaling.eta_max_intervals(lrs, collapsed)
    assert lo[:, 0].tolist() == [2.0, 32.0, 0.0]
    assert hi[:, 0].tolist() == [4.0, np.inf, 1.0]


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 1.5])
def test_recovers_a_known_exponent(alpha):
    lrs = 2.0 ** np.arange(-6, 8, 0.5)
    lags = [0, 1, 2, 4, 8, 16]
    collapsed = _map(lrs, lags, lambda s: 16.0 / max(s, 0.5) ** alpha)
    fit = scaling.bootstrap_alpha(lags, lrs, collapsed, n_boot=200)
    assert abs(fit["alpha"] - alpha) < 0.12, fit
    assert fit["ci"][0] <= fit["alpha"] <= fit["ci"][1]
    assert fit["n_lower_bound"] == fit["n_upper_bound"] == 0


def test_lower_bounds_are_used_not_taken_as_values():
    """With the grid topping out below η_max at small S, the bounds at S = 1, 2 must not drag α
    down: the old fit (geometric means of the bounds as if they were values) does, this one not."""
    lrs = 2.0 ** np.arange(-4, 3, 0.5)                    # up to 4: η_max = 16/S is above it
    lags = [1, 2, 4, 8, 16, 32]                           # at S = 1, 2 (and part of S = 4)
    collapsed = _map(lrs, lags, lambda s: 16.0 / s, n_seed=8, seed=1)
    fit = scaling.bootstrap_alpha(lags, lrs, collapsed, n_boot=200)
    assert fit["n_lower_bound"] >= 16
    assert abs(fit["alpha"] - 1.0) < 0.15, fit
    assert abs(_old_geomean_alpha(lags, lrs, collapsed) - 1.0) > 0.2   # the bias it removes


def test_no_number_without_two_bracketed_lags():
    lrs = 2.0 ** np.arange(0, 5)
    lags = [0, 1, 2, 4]
    nothing = np.zeros((4, 5, 3), bool)
    fit = scaling.bootstrap_alpha(lags, lrs, nothing, n_boot=50)
    assert fit["alpha"] is None and "two or more" in fit["reason"]
    assert "n/a" in scaling.format_alpha(fit)
    everything = np.ones((4, 5, 3), bool)
    assert scaling.bootstrap_alpha(lags, lrs, everything, n_boot=50)["alpha"] is None
    one = nothing.copy()
    one[1, 3:, :] = True                                  # only S = 1 is bracketed
    assert scaling.bootstrap_alpha(lags, lrs, one, n_boot=50)["alpha"] is None
    one[3, 2:, 0] = True                                  # and S = 4 for one seed: 4 of 9
    fit = scaling.bootstrap_alpha(lags, lrs, one, n_boot=50)
    assert fit["alpha"] is None and "4 of 9" in fit["reason"]          # mostly bounds
    fit = scaling.bootstrap_alpha(lags, lrs, one, n_boot=50, min_bracketed_frac=0.4)
    assert fit["alpha"] is not None and np.isfinite(fit["alpha"])


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="expected"):
        scaling.bootstrap_alpha([1, 2], [1.0, 2.0, 4.0], np.zeros((2, 2, 3), bool))


def test_interval_probability_is_stable_in_the_tails():
    z_lo = np.array([-np.inf, 30.0, -40.0, 0.0])
    z_hi = np.array([-35.0, np.inf, -39.0, 1e-8])
    out = scaling._log_interval_prob(z_lo, z_hi)   # pylint: disable=protected-access
    assert np.all(np.isfinite(out)) and np.all(out < 0)
    assert out[1] < -400 and out[0] < -600


def test_likelihood_gradient_matches_finite_differences():
    x = np.log(np.repeat([1.0, 2.0, 4.0, 8.0], 3))
    y_lo = np.array([1, 0.5, -np.inf, 0, -1, -1, -2, -2, -3, -3, -np.inf, -4.0])
    y_hi = np.where(np.isfinite(y_lo), y_lo + 0.35, -3.5)
    y_hi[3] = np.inf                                           # bounds of both kinds
    for p in (np.array([0.3, 0.8, np.log(0.4)]), np.array([-1.0, 2.0, np.log(0.1)])):
        _, g = scaling._interval_nll(p, x, y_lo, y_hi)     # pylint: disable=protected-access
        h = 1e-6
        num = [(scaling._interval_nll(p + e, x, y_lo, y_hi)[0]      # pylint: disable=protected-access
                - scaling._interval_nll(p - e, x, y_lo, y_hi)[0]) / (2 * h)  # pylint: disable=protected-access
               for e in np.eye(3) * h]
        np.testing.assert_allclose(g, num, rtol=1e-5)


# --- η_max at a horizon, the null model, the two-constraint rule -----------------------------

def test_collapsed_at_horizon_is_causal_and_counts_steps():
    c = np.array([-1, 0, 4, 5, 9])
    assert scaling.collapsed_at_horizon(c, 5).tolist() == [False, True, True, False, False]
    assert scaling.collapsed_at_horizon(c, 10).tolist() == [False, True, True, True, True]
    # patience 3: a streak starting at step 4 is confirmed at step 6, i.e. within 7 steps
    assert scaling.collapsed_at_horizon(c, 6, patience=3).tolist() == [False, True, False,
                                                                        False, False]
    assert scaling.collapsed_at_horizon(c, 7, patience=3)[2]
    with pytest.raises(ValueError, match="horizon"):
        scaling.collapsed_at_horizon(c, 0)
    with pytest.raises(ValueError, match="collapse_step"):
        scaling.collapsed_at_horizon([-2, 3], 5)
    with pytest.raises(ValueError, match="integers"):
        scaling.collapsed_at_horizon([0.5], 5)


def test_horizon_table_rows_match_the_map():
    lrs = [1.0, 2.0, 4.0]
    c = np.array([[[-1], [7], [2]]])                         # S = 3, one seed
    tab = scaling.horizon_table([3], lrs, c, [2, 3, 8], num_steps=10)
    assert tab["collapsed"].shape == (1, 3, 3, 1)
    assert tab["T"].tolist() == [2, 3, 8] and tab["S"].tolist() == [3, 3, 3]
    assert tab["lo"].tolist() == [4.0, 2.0, 1.0]             # nothing, η = 4, η ≥ 2 collapsed
    assert tab["hi"].tolist() == [np.inf, 4.0, 2.0]
    with pytest.raises(ValueError, match="num_steps"):
        scaling.horizon_table([3], lrs, c, [11], num_steps=10)
    with pytest.raises(ValueError, match="expected"):
        scaling.horizon_table([3, 4], lrs, c, [5], num_steps=10)


def _null_map(lags, lrs, eta0, c, n_seed=6, sigma=0.1, seed=0):
    rng = np.random.default_rng(seed)
    thr = eta0 / (np.asarray(lags, float)[:, None] + c) * np.exp(
        sigma * rng.standard_normal((len(lags), n_seed)))
    return np.asarray(lrs)[None, :, None] > thr[:, None, :]


def test_null_model_recovers_eta0_and_c_and_beats_the_power_law():
    lrs = 2.0 ** np.arange(-9, 3, 0.5)
    lags = [0, 1, 2, 4, 8, 16, 32]
    fit = scaling.fit_null_model(lags, lrs, _null_map(lags, lrs, 2.0, 3.0), n_boot=100)
    assert abs(np.log(fit["eta0"] / 2.0)) < 0.15 and abs(np.log(fit["c"] / 3.0)) < 0.3, fit
    assert fit["ci_c"][0] <= fit["c"] <= fit["ci_c"][1] and fit["n_boot_identified"] > 90
    assert fit["compare"]["delta_loglik"] > 3                # the bend is seen
    assert "(S + 3." in scaling.format_null_model(fit)
    # power-law data with alpha = 0.5 have no 1/(S + c) shape: the power law wins
    pw = _map(lrs, lags[1:], lambda s: 1.0 / s ** 0.5, n_seed=6, jitter=0.15)
    fit = scaling.fit_null_model(lags[1:], lrs, pw, n_boot=0)
    assert fit["compare"]["delta_loglik"] < -3, fit["compare"]


def test_null_model_on_delayed_gradient_descent():
    """The docstring's example: delayed GD on a unit quadratic is stable iff η < 2 sin(π/(4S+2)),
    which least squares on the exact log η_max over S = 1…32 fits with η0 = 1.581, c = 0.573
    (→ π/2, 1/2 as S → ∞); the censored fit to the grid intervals finds the same curve."""
    lrs = 2.0 ** np.arange(-8, 2, 0.125)
    lags = [1, 2, 4, 8, 16, 32]
    edge = 2 * np.sin(np.pi / (4 * np.asarray(lags) + 2))
    collapsed = np.repeat((lrs[None, :] >= edge[:, None])[..., None], 3, axis=2)
    fit = scaling.fit_null_model(lags, lrs, collapsed, min_lag=1, n_boot=0)
    assert abs(fit["eta0"] / 1.581 - 1) < 0.03 and abs(fit["c"] - 0.573) < 0.1, fit


def test_null_model_says_why_without_data():
    lrs = 2.0 ** np.arange(0, 5)
    fit = scaling.fit_null_model([0, 1, 2], lrs, np.zeros((3, 5, 4), bool), n_boot=10)
    assert np.isnan(fit["eta0"]) and np.isnan(fit["c"]) and "two or more" in fit["reason"]
    assert "n/a" in scaling.format_null_model(fit)
    with pytest.raises(ValueError, match="min_lag"):
        scaling.fit_null_model([0, 1, 2], lrs, np.zeros((3, 5, 4), bool), min_lag=-1)


def test_null_likelihood_gradient_matches_finite_differences():
    s = np.array([0.0, 1, 2, 4, 8, 16])
    y_lo = np.array([-1.0, -1.5, -np.inf, -2.5, -3.0, -4.0])
    y_hi = np.array([-0.6, -1.1, -1.8, np.inf, -2.6, -3.6])
    model = scaling._null_model(s)                              # pylint: disable=protected-access

    def nll(p):
        mu, dmu = model(p[:2])
        return scaling._censored_nll(mu, dmu, p[2], y_lo, y_hi)  # pylint: disable=protected-access

    p, h = np.array([0.2, np.log(2.0), np.log(0.3)]), 1e-6
    num = [(nll(p + e)[0] - nll(p - e)[0]) / (2 * h) for e in np.eye(3) * h]
    np.testing.assert_allclose(nll(p)[1], num, rtol=1e-5)


A_TRUE, B_TRUE = 0.1, 2.0
HORIZONS = [10, 20, 40, 80, 160, 320]


def _two_constraint_sweep(a=A_TRUE, b=B_TRUE, sigma=0.15, n_seed=5, seed=0, num_steps=400):
    """A sweep whose collapse steps follow the two-constraint rule: a run collapses early (step
    2) if S_eff·η ≥ a·u, else when its cumulative drift t·η reaches b·v; u, v lognormal per
    (S, seed). So η_max at horizon T is min{a·u/S_eff, b·v/T} (collapse_step ≤ T − 1)."""
    rng = np.random.default_rng(seed)
    lrs = 2.0 ** np.arange(-10, 0, 0.5)
    lags = np.array([0, 1, 2, 4, 8, 16])
    u, v = np.exp(sigma * rng.standard_normal((2, len(lags), 1, n_seed)))
    eta, s_eff = lrs[None, :, None], (lags + 1)[:, None, None]
    t_c = np.where(s_eff * eta >= a * u, 2, np.ceil(b * v / eta) - 1)
    return lags, lrs, np.where(t_c >= num_steps, -1, t_c).astype(int), num_steps


def test_two_constraint_recovers_a_b_and_predicts_held_out_horizons():
    lags, lrs, c, n = _two_constraint_sweep()
    tab = scaling.horizon_table(lags, lrs, c, HORIZONS, num_steps=n)
    train = np.isin(tab["T"], [10, 40, 160])
    rows = {k: tab[k][train] for k in ("S", "T", "lo", "hi", "seed")}
    fit = scaling.fit_two_constraint(rows["S"], rows["T"], rows["lo"], rows["hi"], rows["seed"],
                                     n_boot=50)
    assert abs(np.log(fit["a"] / A_TRUE)) < 0.15 and abs(np.log(fit["b"] / B_TRUE)) < 0.2, fit
    assert fit["ci_a"][0] <= fit["a"] <= fit["ci_a"][1]
    assert fit["n_stale_bracketed"] >= 10 and fit["n_horizon_bracketed"] >= 10
    assert "reason" not in fit and "n/a" not in scaling.format_two_constraint(fit)
    pred = scaling.predict_two_constraint(fit, tab["S"][~train], tab["T"][~train])
    err = scaling.heldout_error(pred, tab["lo"][~train], tab["hi"][~train])
    step = np.log(2.0) / 2                                   # the grid's log step
    assert err["median_abs_log_ratio"] < step / 2 and err["frac_in_interval"] > 0.5, err
    # a rule without the staleness term (a -> inf) predicts much worse on the same cells
    no_stale = dict(fit, log_a=np.inf)
    bad = scaling.heldout_error(scaling.predict_two_constraint(no_stale, tab["S"][~train],
                                                               tab["T"][~train]),
                                tab["lo"][~train], tab["hi"][~train])
    assert bad["median_abs_log_ratio"] > 2 * err["median_abs_log_ratio"]


def test_two_constraint_on_exact_lognormal_intervals_recovers_sigma_and_offset():
    """η_max = min{a/S_eff, b/T}·e^{σε} bracketed on a grid: a, b, σ come back; with S_eff = S
    (s_offset 0) the S = 0 cells are horizon-only and the likelihood prefers the true offset."""
    rng = np.random.default_rng(3)
    s, t = np.meshgrid([0, 1, 2, 4, 8, 16, 32], [5, 10, 20, 40, 80, 160, 320, 640])
    s, t = np.repeat(s.ravel(), 8), np.repeat(t.ravel(), 8)
    seed = np.tile(np.arange(8), s.size // 8)
    eta = np.minimum(0.2 / (s + 1), 4.0 / t) * np.exp(0.2 * rng.standard_normal(s.size))
    grid = 2.0 ** np.arange(-14, 2, 0.25)
    k = np.searchsorted(grid, eta)
    lo, hi = grid[k - 1], grid[k]
    fit = scaling.fit_two_constraint(s, t, lo, hi, seed, n_boot=0)
    assert abs(np.log(fit["a"] / 0.2)) < 0.08 and abs(np.log(fit["b"] / 4.0)) < 0.08, fit
    assert abs(fit["sigma"] - 0.2) < 0.04 and abs(fit["crossover"] - 20) < 3
    other = scaling.fit_two_constraint(s, t, lo, hi, seed, n_boot=0, s_offset=0)
    assert other["loglik"] < fit["loglik"] - 10


def test_two_constraint_in_parameter_norm_units():
    """With per-cell G_upd the fit returns R_batch = a·G and R_crit = b·G: here η_max =
    min{R_batch/(S_eff·G), R_crit/(T·G)} with G varying by cell."""
    rng = np.random.default_rng(4)
    s, t = np.meshgrid([0, 1, 2, 4, 8, 16], [10, 20, 40, 80, 160, 320])
    s, t = np.repeat(s.ravel(), 4), np.repeat(t.ravel(), 4)
    g = np.exp(rng.uniform(-1, 1, s.size))
    eta = np.minimum(0.5 / (s + 1), 10.0 / t) / g * np.exp(0.1 * rng.standard_normal(s.size))
    grid = 2.0 ** np.arange(-14, 4, 0.25)
    k = np.searchsorted(grid, eta)
    seed = np.tile(np.arange(4), s.size // 4)
    fit = scaling.fit_two_constraint(s, t, grid[k - 1], grid[k], seed, g_upd=g, n_boot=0)
    assert fit["units"] == "parameter norm"
    assert abs(np.log(fit["R_batch"] / 0.5)) < 0.1 and abs(np.log(fit["R_crit"] / 10)) < 0.1
    with pytest.raises(ValueError, match="pass g_upd"):
        scaling.predict_two_constraint(fit, [1], [10])
    np.testing.assert_allclose(scaling.predict_two_constraint(fit, [1], [10], g_upd=[2.0]),
                               min(fit["R_batch"] / 2, fit["R_crit"] / 10) / 2.0)
    # radii from an η-unit fit and a single measured G
    eta_fit = {"units": "eta", "a": 0.1, "b": 2.0}
    assert scaling.radii(eta_fit, 3.0) == {"R_batch": 0.1 * 3.0, "R_crit": 2.0 * 3.0,
                                           "g_upd": 3.0}
    with pytest.raises(ValueError, match="already"):
        scaling.radii(fit, 3.0)


def test_g_upd_per_cell_uses_pre_collapse_steps():
    u = np.array([[0.1, 0.1, 0.1, 9.0], [0.2, 0.4, 0.2, 0.2], [np.nan, 5.0, 5.0, 5.0]])
    g = scaling.g_upd_per_cell(u, [0.1, 0.2, 1.0], [3, -1, 0])
    np.testing.assert_allclose(g[:2], [1.0, 1.0])
    assert np.isnan(g[2])                                  # its only pre-collapse step is NaN
    with pytest.raises(ValueError, match="runs"):
        scaling.g_upd_per_cell(u, [0.1, 0.2], [3, -1, 0])


def test_two_constraint_says_what_is_not_identified():
    """All cells horizon-limited: b is fitted, a is NaN with a reason; all bounds: nothing."""
    s = np.repeat([0, 1, 2, 4], 12)
    t = np.tile(np.repeat([50, 100, 200, 400], 3), 4)
    eta = 2.0 / t
    grid = 2.0 ** np.arange(-12, 0, 0.5)
    k = np.searchsorted(grid, eta * np.exp(0.05 * np.random.default_rng(0).standard_normal(
        s.size)))
    seed = np.tile([0, 1, 2], 16)
    fit = scaling.fit_two_constraint(s, t, grid[k - 1], grid[k], seed, n_boot=20)
    assert np.isnan(fit["a"]) and "a not identified" in fit["reason"]
    assert "a = n/a" in scaling.format_two_constraint(fit)
    assert abs(np.log(fit["b"] / 2.0)) < 0.2 and np.isnan(fit["crossover"])
    assert np.isnan(scaling.predict_two_constraint(fit, [1], [100])).all()
    only_bounds = scaling.fit_two_constraint(s, t, grid[k], np.full(s.size, np.inf), seed)
    assert np.isnan(only_bounds["a"]) and np.isnan(only_bounds["b"])
    assert "bracketed" in only_bounds["reason"]


def test_two_constraint_refuses_bad_rows():
    ok = dict(s=[1, 2], t=[10, 10], lo=[0.1, 0.1], hi=[0.2, 0.2], seed=[0, 0])
    with pytest.raises(ValueError, match="length"):
        scaling.fit_two_constraint(**dict(ok, t=[10]))
    with pytest.raises(ValueError, match="lo < hi"):
        scaling.fit_two_constraint(**dict(ok, hi=[0.2, 0.05]))
    with pytest.raises(ValueError, match="horizons"):
        scaling.fit_two_constraint(**dict(ok, t=[0, 10]))
    with pytest.raises(ValueError, match="s_offset"):
        scaling.fit_two_constraint(**ok, s_offset=2)
    with pytest.raises(ValueError, match="g_upd"):
        scaling.fit_two_constraint(**ok, g_upd=[1.0, -1.0])
    with pytest.raises(ValueError, match="pred"):
        scaling.heldout_error([np.nan], [0.1], [0.2])


def test_two_constraint_likelihood_gradient_matches_finite_differences():
    s_eff, t = np.array([1.0, 2, 4, 8, 1]), np.array([10.0, 10, 100, 100, 400])
    log_g = np.array([0.0, 0.3, -0.2, 0.1, 0.0])
    y_lo = np.array([-3.0, -np.inf, -5.0, -4.5, -6.0])
    y_hi = np.array([-2.6, -3.0, -4.6, np.inf, -5.6])
    model = scaling._two_constraint_model(s_eff, t, log_g)     # pylint: disable=protected-access

    def nll(p):
        mu, dmu = model(p[:2])
        return scaling._censored_nll(mu, dmu, p[2], y_lo, y_hi)  # pylint: disable=protected-access

    p, h = np.array([np.log(0.1), np.log(2.0), np.log(0.3)]), 1e-6   # no cell on the kink
    num = [(nll(p + e)[0] - nll(p - e)[0]) / (2 * h) for e in np.eye(3) * h]
    np.testing.assert_allclose(nll(p)[1], num, rtol=1e-5)


# --- collapse time per S and regimes ----------------------------------------------------------

def test_collapse_time_per_lag_recovers_t_eta_and_slope():
    rng = np.random.default_rng(0)
    lags = np.repeat([1, 4], 60)
    eta = np.tile(np.geomspace(1e-3, 1e-1, 60), 2)
    k = np.where(lags == 1, 2.0, 8.0)                         # t_c·η = 2 at S=1, 8 at S=4
    c = np.round(k / eta * np.exp(0.1 * rng.standard_normal(lags.size))).astype(int) - 1
    c[::7] = -1                                               # some never collapsed
    out = scaling.collapse_time_per_lag(lags, eta, c)
    for s, kk in ((1, 2.0), (4, 8.0)):
        d = out["per_lag"][s]
        assert abs(np.log(d["median_t_eta"] / kk)) < 0.05
        assert d["q16_t_eta"] < d["median_t_eta"] < d["q84_t_eta"]
        assert abs(np.log(d["q84_t_eta"] / d["q16_t_eta"]) / 2 - 0.1) < 0.04
        assert abs(d["slope"] + 1) < 0.05 and d["n"] == int(((lags == s) & (c >= 0)).sum())
    with pytest.raises(ValueError, match="lrs"):
        scaling.collapse_time_per_lag([1], [0.0], [3])


def test_regimes_follow_which_radius_is_reached_first():
    lags = np.array([1, 1, 8, 8, 2])
    dc = np.array([[0.1] * 6, [0.1, 0.2, 0.6, 0.7, 0.8, 0.9], [1.0] * 6, [0.1] * 6,
                   [0.1, 0.2, 0.6, np.nan, np.nan, np.nan]])
    dk = np.array([[0.1, 1, 2, 3, 4, 5], [0.1, 1, 2, 3, 4, 5], [1.0] * 6, [0.1] * 6,
                   [0.1, 1, 2, 3, np.nan, np.nan]])
    c = np.array([4, 4, 1, -1, 1])        # run 4 collapsed at 1, before its drift hit R_batch
    out = scaling.classify_regimes(lags, dc, dk, c, r_batch=0.5, r_crit=3.0)
    assert out["regime"].tolist() == ["horizon-limited", "stale-limited", "stale-limited",
                                      "stable", "stable"]
    assert out["t_batch"].tolist() == [-1, 2, 0, -1, -1] and out["t_crit"][0] == 3
    assert out["counts"][8] == {"stale-limited": 1, "horizon-limited": 0, "stable": 1}
    assert out["vs_collapse"][2]["stable"] == {"collapsed": 1, "not_collapsed": 0}
    # bound traces: S_eff·η·G and (t+1)·η·G; with a, b from an η-unit fit and G = 1
    dcb, dkb = scaling.drift_bound_traces([0, 9], [0.01, 0.01], 1.0, 50)
    assert dcb[:, 0].tolist() == [0.01, 0.1] and dkb[0, 49] == pytest.approx(0.5)
    got = scaling.classify_regimes([0, 9], dcb, dkb, [-1, -1], r_batch=0.05, r_crit=0.3)
    assert got["regime"].tolist() == ["horizon-limited", "stale-limited"]
    with pytest.raises(ValueError, match="r_batch"):
        scaling.classify_regimes(lags, dc, dk, c, r_batch=np.nan, r_crit=3.0)


# --- the cosine diagnostic ----------------------------------------------------------------------

def _cos_runs(n=40, T=200, ramp=0.5, seed=0):
    """Half the runs collapse at t_c ~ U[80, 180) with cos ramping linearly from 0 to `ramp`
    over the 30 steps before t_c; all have N(0, 0.1) noise, NaN after collapse."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.1, (n, T))
    c = np.full(n, -1)
    c[: n // 2] = rng.integers(80, 180, n // 2)
    t = np.arange(T)
    for i in range(n // 2):
        x[i] += ramp * np.clip((t - (c[i] - 30)) / 30, 0, 1)
        x[i, c[i] + 1:] = np.nan
    x[:, 0] = 0.0
    return x, c


def test_auc_mann_whitney_matches_scipy_and_counts_ties():
    from scipy import stats                                   # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 30), rng.normal(0, 1, 40)
    u = stats.mannwhitneyu(a, b).statistic
    assert scaling.auc_mann_whitney(a, b) == pytest.approx(u / (30 * 40))
    assert scaling.auc_mann_whitney([1, 1], [1, 1]) == 0.5
    assert scaling.auc_mann_whitney([2, 3], [0, 1]) == 1.0
    assert np.isnan(scaling.auc_mann_whitney([], [1.0]))


def test_cosine_separates_collapsing_runs_and_gives_a_lead_time():
    x, c = _cos_runs()
    out = scaling.cosine_auc(x, c, window=10, leads=[0, 5, 10, 20, 30, 40], n_boot=300)
    assert out["auc"][0] > 0.97 and out["ci"][0][0] > 0.9
    assert out["auc"][-1] < 0.75                             # 40 steps ahead: ramp not started
    assert 10 <= out["lead_time"] <= 20, out                 # window 10 ending k before t_c
    assert out["lead_time_conservative"] <= out["lead_time"]
    assert out["n_collapsing"][0] == 20 and out["n_stable"][0] == 20
    near = scaling.cosine_auc(x, c, window=10, leads=[0, 2, 4], n_boot=0)
    assert near["lead_time"] == 4 and np.isnan(near["lead_time_conservative"])  # no CI, no claim


def test_cosine_without_signal_gives_auc_near_half():
    x, c = _cos_runs(n=60, ramp=0.0, seed=1)
    out = scaling.cosine_auc(x, c, window=10, leads=[0], n_boot=300)
    lo, hi = out["ci"][0]
    assert lo < 0.5 < hi and abs(out["auc"][0] - 0.5) < 0.2
    assert np.isnan(out["lead_time"]) and "smallest lead" in out["reason"]


def test_cosine_scores_windows():
    x = np.tile(np.arange(10.0), (3, 1))
    sc = scaling.cosine_scores(x, [6, -1, 2], window=3, lead=1, stable_end="end")
    assert sc["score"][0] == 4.0 and sc["end"][0] == 5       # mean of steps 3, 4, 5
    assert sc["score"][1] == 7.0                             # steps 6, 7, 8 (end = 9 − 1)
    assert np.isnan(sc["score"][2]) and sc["end"][2] == -1   # window would reach step 0
    y = x.copy()
    y[0, 1] = np.nan                                         # outside run 0's window
    assert scaling.cosine_scores(y, [6, -1, 2], window=3, lead=1, stable_end="end")[
        "score"][0] == 4.0
    rm = scaling.running_mean(y, 3)
    assert np.isnan(rm[0, :4]).all() and rm[0, 4] == 3.0 and rm[1, 3] == 2.0
    assert np.isnan(rm[1, :3]).all()                         # window would reach step 0
    ends = {int(scaling.cosine_scores(x, [6, -1, 2], window=3, lead=1, seed=k)["end"][1])
            for k in range(20)}                              # anchor drawn from {6, 2}
    assert ends == {5, -1}                                   # 2 − 1 = 1: the window won't fit
    with pytest.raises(ValueError, match="collapse_step"):
        scaling.cosine_scores(x, [10, -1, 2], window=3, lead=0)
    with pytest.raises(ValueError, match="needs at least one collapsing"):
        scaling.cosine_scores(x, [-1, -1, -1], window=3, lead=0)
    with pytest.raises(ValueError, match="leads"):
        scaling.cosine_auc(x, [6, -1, 2], window=3, leads=[5, 1])


def test_cosine_alarm_threshold_from_training_runs():
    x, c = _cos_runs(n=80, seed=2)
    train = np.arange(80) % 2 == 0
    out = scaling.cosine_alarm(x, c, window=10, train=train)
    assert 0.05 < out["threshold"] < 0.5
    assert out["test"]["tpr"] > 0.9 and out["test"]["fpr"] < 0.15, out
    assert 3 <= out["test"]["median_lead"] <= 30
    assert np.all(out["alarm_step"][c >= 0] < np.where(c >= 0, c, 10 ** 9)[c >= 0])
    none = scaling.cosine_alarm(x, c, window=10, train=c >= 0)
    assert np.isnan(none["threshold"]) and "both" in none["reason"]
    with pytest.raises(ValueError, match="bool mask"):
        scaling.cosine_alarm(x, c, window=10, train=np.arange(80))


def _paired_draws(mu, sigma, r, rng):
    x = mu[None, :] + sigma * rng.standard_normal((r, mu.size))
    return x @ x.T, x


def test_mean_norm_sq_is_unbiased_where_the_plain_norm_is_not():
    rng = np.random.default_rng(0)
    mu = np.full(50, 0.1)                                    # ‖μ‖² = 0.5
    sigma, r = 0.5, 8                                        # tr Cov = 12.5: noise ≫ signal
    ests, ses, plain, noise = [], [], [], []
    for _ in range(3000):
        g, x = _paired_draws(mu, sigma, r, rng)
        out = scaling.mean_norm_sq(g)
        ests.append(out["est"]), ses.append(out["se"]), noise.append(out["noise"])
        plain.append(float((x.mean(0) ** 2).sum()))
    ests = np.asarray(ests)
    sem = ests.std() / np.sqrt(ests.size)
    assert abs(ests.mean() - 0.5) < 4 * sem, (ests.mean(), sem)
    assert np.mean(plain) > 0.5 + 12.5 / r * 0.9             # ‖x̄‖² carries tr Cov / R
    # noise-dominated: the jackknife SE errs high (≈ √2 at a zero mean, a degenerate U-statistic)
    assert 1.0 < np.mean(ses) / ests.std() < 1.5
    assert abs(np.mean(noise) - 50 * sigma ** 2) < 0.2       # tr Cov(x) per draw
    mu = np.full(50, 0.3)                                    # signal-dominated: calibrated
    e, s = zip(*[(o["est"], o["se"]) for o in
                 (scaling.mean_norm_sq(_paired_draws(mu, sigma, 16, rng)[0]) for _ in range(1500))])
    assert 0.85 < np.mean(s) / np.std(e) < 1.2


def test_mean_norm_sq_at_zero_mean_is_rarely_resolved():
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(500):
        g, _ = _paired_draws(np.zeros(30), 1.0, 16, rng)
        out = scaling.mean_norm_sq(g)
        iv = scaling.norm_interval(out["est"], out["se"])
        hits += iv["resolved"]
        assert iv["lo"] <= iv["norm"] <= iv["hi"]
    assert hits / 500 < 0.06                                 # ≈ the 2.3 % of a 2-SE one-sided test
    g, _ = _paired_draws(np.full(30, 2.0), 1.0, 16, rng)     # a large mean is resolved
    out = scaling.mean_norm_sq(g)
    iv = scaling.norm_interval(out["est"], out["se"])
    assert iv["resolved"] and iv["lo"] < np.sqrt(120) < iv["hi"]


def test_mean_norm_sq_refuses_bad_input():
    with pytest.raises(ValueError, match="R >= 3"):
        scaling.mean_norm_sq(np.eye(2))
    with pytest.raises(ValueError, match="square"):
        scaling.mean_norm_sq(np.ones((3, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        scaling.mean_norm_sq(np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="se >= 0"):
        scaling.norm_interval(1.0, -1.0)


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_loglog_slope_ci_recovers_the_power(power):
    rng = np.random.default_rng(2)
    x = np.repeat(np.geomspace(1e-3, 1e-1, 6), 4)
    norm = 3.0 * x ** power
    se = 0.05 * norm ** 2
    est = norm ** 2 + se * rng.standard_normal(x.size)
    out = scaling.loglog_slope_ci(x, est, se, n_boot=300)
    assert out["ci"][0] <= power <= out["ci"][1], out
    assert abs(out["slope"] - power) < 0.05 and out["n"] == x.size
    # points below the noise floor are left out; too few resolved ones give NaN and a reason
    est2 = est.copy()
    est2[:20] = 0.0
    small = scaling.loglog_slope_ci(x, est2, se + (np.arange(x.size) < 20), n_boot=10)
    assert np.isnan(small["slope"]) and "resolved" in small["reason"] and small["n"] == 4 - 0
