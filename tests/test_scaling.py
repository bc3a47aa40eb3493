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
