"""Coverage of every interval the claims table prints, on synthetic data with a known answer.

Each test draws a few hundred data sets with fixed seeds, computes the interval and counts how
often it holds the true value; the nominal level is 95 % and the bar 0.90. The measured numbers
are in the docstrings (and in the module that computes the interval)."""

import numpy as np
import pytest

from async_grpo import scaling
from tests import synthetic


def _alpha_coverage(alpha, sigma, ratio, n_seed, draws):
    rng = np.random.default_rng(0)
    hit, width = [], []
    for _ in range(draws):
        fit = scaling.bootstrap_alpha(*synthetic.alpha_map(rng, alpha, sigma, ratio, n_seed))
        lo, hi = fit["ci"]
        assert lo is not None and hi > lo, fit                  # never zero width
        hit.append(lo <= alpha <= hi)
        width.append(hi - lo)
    return float(np.mean(hit)), float(np.median(width))


def test_alpha_interval_covers_at_three_seeds():
    """α = 1, σ = 0.25 on log η_max, √2 grid, 3 seeds: coverage 0.98 (the old percentile
    bootstrap: 0.70), median width 0.52."""
    cov, _ = _alpha_coverage(1.0, 0.25, 2 ** 0.5, 3, 100)
    assert cov >= 0.90, cov


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [2 ** 0.5, 2.0])
@pytest.mark.parametrize("alpha", [1.0, 0.4])
@pytest.mark.parametrize("sigma", [0.10, 0.25])
@pytest.mark.parametrize("n_seed", [3, 5])
def test_alpha_interval_covers(ratio, alpha, sigma, n_seed):
    """Measured (100 draws each): 0.92–1.00 over all 16 cases; the lowest, 0.92, at ×2 grid,
    α = 0.4, σ = 0.25, 5 seeds. 3 seeds are conservative (0.98–1.00: the t quantile with 2
    degrees of freedom and the grid-resolution floor)."""
    cov, width = _alpha_coverage(alpha, sigma, ratio, n_seed, 100)
    assert cov >= 0.90, (cov, width)


def test_alpha_interval_is_undetermined_not_zero_width():
    """One seed, or seeds whose slopes cannot be told apart by the grid: no zero-width
    interval. A single seed gives no interval at all (ci_reason says why)."""
    rng = np.random.default_rng(3)
    lags, lrs, col = synthetic.alpha_map(rng, 1.0, 0.0, 2.0, 1)
    fit = scaling.bootstrap_alpha(lags, lrs, col)
    assert fit["alpha"] is not None and fit["ci"] == [None, None] and "ci_reason" in fit
    lags, lrs, col = synthetic.alpha_map(rng, 1.0, 0.0, 2.0, 3)     # every seed identical
    fit = scaling.bootstrap_alpha(lags, lrs, col)
    assert len(set(fit["alpha_per_seed"])) == 1
    assert fit["ci"][1] - fit["ci"][0] > 0.1, fit


def _claim1_coverage(beta, slope_sd, draws):
    rng = np.random.default_rng(0)
    hit, old = [], []
    for _ in range(draws):
        c = synthetic.lm_bias_cells(rng, beta, slope_sd=slope_sd)
        fit = scaling.anchored_slope(c["x"], c["est"], c["se"], c["anchor"])
        assert fit["ci"][1] > fit["ci"][0]
        hit.append(fit["ci"][0] <= beta <= fit["ci"][1])
        prev = scaling.loglog_slope_ci(c["x"], c["est"], c["se"], n_boot=100)
        old.append(prev["ci"][0] <= beta <= prev["ci"][1])
    return float(np.mean(hit)), float(np.mean(old))


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_claim1_anchored_slope_covers_with_anchor_differences(beta):
    """The LM design (4 η × 2 anchors × 5 lags), anchor levels spread e^{±0.5}, anchor slopes
    spread sd 0.1, errors correlated 0.5 within an anchor. Measured (150–200 draws): coverage
    0.885–0.905 at β = 1, 0.905 at β = 0.5 (no slope spread: 0.88–0.925); the old fit
    (resolved cells, measurement-error bootstrap) 0.18–0.29 on the same data. The bar here is
    0.85: a jackknife over 8 anchors is close to, not at, its nominal level."""
    cov, old = _claim1_coverage(beta, 0.1, 80)
    assert cov >= 0.85, cov
    assert old < 0.6, old


def test_claim1_anchored_slope_uses_unresolved_cells():
    """Cells at the noise floor (est ≤ 0 included) enter the fit; an anchor whose lags share
    one x cannot fix a slope and is dropped; fewer than 3 usable anchors give no slope."""
    rng = np.random.default_rng(1)
    c = synthetic.lm_bias_cells(rng, 1.0)
    assert (c["est"] <= 2 * c["se"]).any()
    fit = scaling.anchored_slope(c["x"], c["est"], c["se"], c["anchor"])
    assert fit["n"] == c["x"].size and fit["n_anchors"] == 8
    few = c["anchor"] < 2
    fit = scaling.anchored_slope(c["x"][few], c["est"][few], c["se"][few], c["anchor"][few])
    assert np.isnan(fit["slope"]) and "anchor" in fit["reason"]


def _claim3(num_steps, draws):
    rng = np.random.default_rng(0)
    hit, ols = [], []
    for _ in range(draws):
        lrs, c, d = synthetic.collapse_times(rng, num_steps=num_steps)
        fit = scaling.collapse_time_censored(lrs, c, num_steps=num_steps, warmup=10, lag=d)
        hit.append(fit["ci"][0] <= -1.0 <= fit["ci"][1])
        ols.append(scaling.collapse_time_law(lrs, c, min_step=10)["slope"])
    return float(np.mean(hit)), float(np.mean(ols))


def test_claim3_censored_slope_covers_minus_one_at_t100():
    """t_c·η exactly constant, lognormal spread σ = 0.3, EMA 0.9 / drop 0.5 (lag 6 steps),
    warm-up 10, T = 100, 10 η × 5 seeds. Measured (100 draws): coverage 0.92, mean slope −1.00;
    least squares over the timed collapses: −0.67 (truncation and lag)."""
    cov, ols = _claim3(100, 40)
    assert cov >= 0.85 and ols > -0.8, (cov, ols)


@pytest.mark.slow
def test_claim3_censored_slope_covers_minus_one_at_t200():
    """As above at T = 200. Measured (100 draws): coverage 0.94, mean slope −1.00; least squares
    −0.74."""
    cov, ols = _claim3(200, 100)
    assert cov >= 0.90 and ols > -0.85, (cov, ols)


def test_detection_lag():
    assert scaling.detection_lag(0.0, 0.5) == 0
    assert scaling.detection_lag(0.9, 0.5) == 6        # 0.9^7 = 0.478 < 0.5 ≤ 0.9^6


@pytest.mark.slow
def test_claim5_stratified_auc_null_and_signal():
    """6 η × 12 runs, collapse probability and cosine level both rising with η (the
    confounder), leads 0/20/50/100. Measured (40 draws each): under the null (cosine
    independent of collapse given η) the stratified test fires 0 % and the AUC interval at
    lead 0 holds ½ in 92.5 %, while the old clause (any lead's unstratified interval above ½)
    fires 100 %; with a cosine rise of 0.1 over the 50 steps before collapse it fires 100 %."""
    leads = (0, 20, 50, 100)
    for signal in (0.0, 0.1):
        rng = np.random.default_rng(0)
        fire, cover = [], []
        for _ in range(30):
            cos, c, eta = synthetic.cosine_runs(rng, signal=signal)
            r = scaling.cosine_auc_stratified(cos, c, eta, 20, leads, n_perm=200, n_boot=100)
            fire.append(any(r["significant"]))
            cover.append(r["ci"][0][0] <= 0.5 <= r["ci"][0][1])
        if signal == 0:
            assert np.mean(fire) <= 0.10 and np.mean(cover) >= 0.85, (fire, cover)
        else:
            assert np.mean(fire) >= 0.8, fire


def test_claim5_needs_ten_runs_per_class():
    rng = np.random.default_rng(4)
    cos, c, eta = synthetic.cosine_runs(rng, signal=0.3, n_seed=3)
    r = scaling.cosine_auc_stratified(cos, c, eta, 20, (0, 20), n_perm=20, n_boot=0)
    assert not any(r["counted"]) and not any(r["significant"])


def test_claim4_prediction_intervals_cover_held_out_seeds():
    """Sweeps made by the rule (stale constraint a/(S + 1), horizon b/T, σ = 0.2 per (S, seed)),
    3 seeds, horizons T/8 … T, each seed held out whole. Measured (20 draws): the central 95 %
    prediction interval meets a median 96 % (10th percentile 92 %) of the held-out bracketed
    rows; at 5 seeds 98 % (94 %)."""
    rng = np.random.default_rng(0)
    cov = []
    for _ in range(12):
        lags, lrs, c, steps = synthetic.two_constraint_grid(rng, n_seed=3)
        tab = scaling.horizon_table(lags, lrs, c, [steps // 8, steps // 4, steps // 2, steps],
                                    num_steps=steps)
        h = scaling.heldout_by_seed(tab["S"], tab["T"], tab["lo"], tab["hi"], tab["seed"])
        assert h["n_folds"] == 3
        cov.append(h["coverage"])
    assert np.mean(cov) >= 0.9, cov


def _two_constraint_coverage(n_seed, ratio, sigma, draws, shared_noise=True, n_boot=0):
    rng = np.random.default_rng(0)
    hit, boot = [], []
    for _ in range(draws):
        lags, lrs, c, steps = synthetic.two_constraint_grid(
            rng, n_seed=n_seed, ratio=ratio, sigma=sigma, shared_noise=shared_noise)
        tab = scaling.horizon_table(lags, lrs, c, [steps // 8, steps // 4, steps // 2, steps],
                                    num_steps=steps)
        f = scaling.fit_two_constraint(tab["S"], tab["T"], tab["lo"], tab["hi"], tab["seed"],
                                       n_boot=n_boot)
        for name, true in (("a", 0.5), ("b", 40.0)):
            lo, hi = f["ci_" + name]
            assert hi > lo, f                                  # never zero width
            hit.append(lo <= true <= hi)
            if n_boot:
                blo, bhi = f["ci_bootstrap_" + name]
                boot.append(blo <= true <= bhi)
    return float(np.mean(hit)), (float(np.mean(boot)) if boot else None)


def test_two_constraint_constants_cover_at_three_seeds():
    """Claim 4's printed a and b (`fit_two_constraint`): rule-made sweeps (a = 0.5, b = 40),
    one noise term per (S, seed) as the fit's model has it, σ = 0.5, √2 grid, 3 seeds,
    horizons T/8 … T. Measured (60 draws, a and b pooled): the per-seed t-interval covers
    0.98; the percentile bootstrap over seeds it replaces (100 resamples) 0.70."""
    cov, boot = _two_constraint_coverage(3, 2 ** 0.5, 0.5, 25, n_boot=60)
    assert cov >= 0.90, cov
    assert boot < 0.85, boot


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [2 ** 0.5, 2.0])
@pytest.mark.parametrize("sigma", [0.2, 0.5])
@pytest.mark.parametrize("n_seed", [3, 5])
def test_two_constraint_constants_cover(ratio, sigma, n_seed):
    """Measured (60 draws, a and b together): 0.96–1.00 in all 8 cases. When the two
    constraints carry independent noises of σ = 0.5 (the min of two noisy edges, which the
    fit's one-noise model does not describe) b̂ is biased by −12 % and b's coverage at 5 seeds
    falls to 0.83: the interval is calibrated for the model it fits, not for every
    misspecification."""
    cov, _ = _two_constraint_coverage(n_seed, ratio, sigma, 40)
    assert cov >= 0.90, cov


def test_two_constraint_one_seed_has_no_interval_and_says_so():
    rng = np.random.default_rng(2)
    lags, lrs, c, steps = synthetic.two_constraint_grid(rng, n_seed=1, shared_noise=True)
    tab = scaling.horizon_table(lags, lrs, c, [steps // 8, steps // 4, steps // 2, steps],
                                num_steps=steps)
    fit = scaling.fit_two_constraint(tab["S"], tab["T"], tab["lo"], tab["hi"], tab["seed"])
    assert np.isfinite(fit["a"]) and np.isnan(fit["ci_a"]).all(), fit
    assert "1 seed(s) identify it alone" in fit["ci_reason"]
    assert "no interval for a: 1 seed(s)" in scaling.format_two_constraint(fit)
