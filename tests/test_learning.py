"""async_grpo.learning: the saturating curve fit, the area, η*(S), its law and claim 6's rule,
on synthetic data with a known answer."""

import numpy as np
import pytest

from async_grpo import learning as L


def test_the_fit_recovers_a_known_curve_and_flags_one_that_has_not_bent():
    steps = np.arange(0, 301, 20.0)
    truth = dict(r0=0.15, a=0.7, t_mid=80.0, b=1.8)
    rng = np.random.default_rng(0)
    acc = L.saturating_curve(steps, **truth) + rng.normal(0, 0.01, steps.shape)
    acc[0] = truth["r0"]
    fit = L.fit_saturating(steps, acc)
    assert fit["identified"]
    assert abs(fit["A"] - 0.7) < 0.03 and abs(fit["t_mid"] / 80 - 1) < 0.15
    assert abs(fit["B"] - 1.8) < 0.4 and fit["rmse"] < 0.02
    # Still on its straight early part at the horizon: A and t_mid are not identified.
    early = L.saturating_curve(steps, 0.1, 0.9, 3000.0, 1.0)
    assert not L.fit_saturating(steps, early)["identified"]


def test_area_is_the_mean_accuracy():
    steps = np.array([0, 10, 20, 30.0])
    assert L.area(steps, [0.2, 0.2, 0.2, 0.2]) == pytest.approx(0.2)
    assert L.area(steps, [0.0, 0.1, 0.2, 0.3]) == pytest.approx(0.15)


@pytest.mark.parametrize("bad,match", [
    (dict(steps=[0, 1, 2], acc=[0, 0, 0]), "≥ 4"),
    (dict(steps=[0, 2, 1, 3], acc=[0, 0, 0, 0]), "increasing"),
    (dict(steps=[0, 1, 2, 3], acc=[0, np.nan, 0, 0]), "finite"),
])
def test_bad_curves_are_refused_clearly(bad, match):
    with pytest.raises(ValueError, match=match):
        L.fit_saturating(bad["steps"], bad["acc"])


def test_the_t_interval_covers_at_three_seeds_and_is_never_of_zero_width():
    rng = np.random.default_rng(1)
    hits = sum(lo <= 0.3 <= hi for lo, hi in (
        (c["lo"], c["hi"]) for c in (L.t_interval(rng.normal(0.3, 0.05, 3))
                                     for _ in range(2000))))
    assert 0.93 <= hits / 2000 <= 0.97
    one = L.t_interval([0.5])
    assert one["mean"] == 0.5 and one["lo"] is None and one["hi"] is None


def test_eta_star_interpolates_between_grid_points_and_censors_the_edges():
    lrs = 1e-4 * 2.0 ** (np.arange(7) / 2)          # half-octave grid
    true = lrs[3] * 2 ** 0.2                          # between two grid points
    scores = -(np.log(lrs) - np.log(true)) ** 2       # a parabola in log η
    eta, cen = L.eta_star_per_seed(lrs, np.stack([scores, -lrs, lrs], 1))
    assert eta[0] == pytest.approx(true, rel=1e-6) and cen[0] == 0
    assert (eta[1], cen[1]) == (lrs[0], -1) and (eta[2], cen[2]) == (lrs[-1], 1)
    with pytest.raises(ValueError, match="increasing"):
        L.eta_star_per_seed(lrs[::-1], scores[:, None])


def _synthetic_law(gamma, rng, seeds=5, sigma=0.15, lags=(0, 1, 2, 4, 8, 16)):
    """η*(S) = η0·max(S, 1)^−γ with seed noise σ on log η*, seen through a half-octave grid and
    the parabola interpolation of a noisy accuracy peak (the measurement the study makes)."""
    lrs = 1e-5 * 2.0 ** (np.arange(24) / 2)
    eta = np.empty((len(lags), seeds))
    cen = np.zeros((len(lags), seeds), int)
    for i, s in enumerate(lags):
        true = 3e-4 * max(s, 1) ** -gamma * np.exp(rng.normal(0, sigma, seeds))
        scores = -(np.log(lrs)[:, None] - np.log(true)[None]) ** 2 / 4
        scores = scores + rng.normal(0, 0.02, scores.shape)
        eta[i], cen[i] = L.eta_star_per_seed(lrs, scores)
    return L.eta_star_law(lags, eta, cen)


def test_claim6_rule_has_power_and_a_low_false_rate():
    """Under the claim (γ = 1) "supported" in ≥ 80 % of synthetic sweeps; under the alternative
    γ = 0.4 (the LM η_max exponent measured at this scale) "supported" in ≤ 10 %, and under
    γ = 0 (staleness does not move η*) never."""
    rng = np.random.default_rng(2)
    n = 200
    under = [L.claim6_verdict(_synthetic_law(1.0, rng)) for _ in range(n)]
    alt = [L.claim6_verdict(_synthetic_law(0.4, rng)) for _ in range(n)]
    flat = [L.claim6_verdict(_synthetic_law(0.0, rng)) for _ in range(n)]
    assert under.count("supported") / n >= 0.80, under.count("supported")
    assert alt.count("supported") / n <= 0.10, alt.count("supported")
    assert alt.count("not supported") / n >= 0.80
    assert flat.count("supported") == 0


def test_the_law_interval_covers_the_true_exponent():
    rng = np.random.default_rng(3)
    laws = [_synthetic_law(0.7, rng) for _ in range(300)]
    cover = np.mean([law["lo"] <= 0.7 <= law["hi"] for law in laws])
    assert cover >= 0.90, cover
    assert L.claim6_verdict({"lo": None, "hi": None}) == "inconclusive"
    assert L.eta_star_law([0, 1, 2], np.ones((3, 2)))["gamma"] is None   # < 3 values of S ≥ 1


def test_claim6_is_one_module_of_the_registry_and_reads_a_learning_grid():
    """Claim 6 is one file in experiments/claims: the registry finds it, and its row comes from
    a synthetic learning grid whose η* ∝ 1/S (supported) or does not move with S."""
    from experiments import claims
    from experiments.claims import claim6_learning as c6
    assert claims.discover()[6] is c6
    rng = np.random.default_rng(4)
    lags, lrs, seeds = [0, 1, 2, 4, 8, 16], 2e-6 * 2.0 ** (np.arange(20) / 2), range(5)
    steps = np.arange(0, 201, 20.0)

    def grid(gamma):
        acc = np.empty((len(lags), len(lrs), len(seeds), len(steps)))
        for i, s in enumerate(lags):
            star = 2e-4 * max(s, 1) ** -gamma * np.exp(rng.normal(0, 0.1, len(seeds)))
            a = 0.8 - 0.08 * (np.log(lrs)[:, None] - np.log(star)[None]) ** 2
            for k, t in enumerate(steps):
                acc[i, :, :, k] = 0.15 + (np.clip(a, 0.15, 1) - 0.15) * t / (t + 60)
        acc += rng.normal(0, 0.005, acc.shape)
        return {"learn": dict(lags=lags, lrs=lrs, seeds=list(seeds), eval_steps=steps,
                              heldout=acc)}

    row = c6.rows(grid(1.0))[0]
    assert row["verdict"].startswith("supported:"), row
    assert c6.rows(grid(0.0))[0]["verdict"].startswith("not supported:")
    assert c6.rows({}) == []
    md = claims.claims_markdown({"exact": {}, "sampled": {}, "bias": None, "lm": None,
                                 "lm_bias": None, "extra": {}, **grid(1.0)})
    assert "**Claim 6.**" in md and "learning regime" in md


def test_claim6_scores_a_collapsed_cell_by_what_it_ends_with_and_fits_before_the_collapse():
    """A cell that climbs fastest and then collapses (accuracy 0 after step 100) must not be
    η*: the area counts its evaluations after the collapse. The ScaleRL fit at a best η whose
    seeds collapsed stops at the first collapse step."""
    from experiments.claims import claim6_learning as c6
    lrs, seeds, steps = np.array([1e-5, 2e-5, 4e-5, 8e-5]), [0, 1, 2], np.arange(0, 201, 20.0)
    acc = np.empty((1, 4, 3, len(steps)))
    for j, top in enumerate((0.5, 0.6, 0.55, 0.9)):
        acc[0, j] = 0.3 + (top - 0.3) * steps / (steps + 40)
    cstep = np.full((1, 4, 3), -1)
    acc[0, 3, :, steps > 100] = 0.0
    cstep[0, 3] = 105
    res = c6.analyse([0], lrs, seeds, steps, acc, cstep)
    r = res["per_S"][0]
    assert r["best_lr"] == 2e-5 and r["n_collapsed"] == 0
    assert np.all(res["eta_star"] < 4e-5)
    # without the collapse marks the same curves would pick the fast one: the area decides
    acc[0, 3] = 0.3 + 0.6 * steps / (steps + 40)
    cstep[0, 3] = 150
    res = c6.analyse([0], lrs, seeds, steps, acc, cstep)
    r = res["per_S"][0]
    assert r["best_lr"] == 8e-5 and r["n_collapsed"] == 3
    assert r["fit"] is not None and r["fit"]["A"] == pytest.approx(0.9, abs=0.05)


def test_fit_cells_fits_every_cell_before_its_collapse():
    """Per-cell fits recover each cell's ceiling; a cell cut by its collapse is fitted on its
    pre-collapse points only, and one with < 4 of them has no fit (NaN), never a made-up one."""
    steps = np.arange(0, 201, 20.0)
    tops = np.array([[0.6, 0.8], [0.7, 0.5]])
    acc = 0.3 + (tops[..., None] - 0.3) / (1 + (50 / np.maximum(steps, 1e-9)) ** 1.5)
    acc[..., 0] = 0.3
    cs = np.array([[-1, 120], [50, -1]])
    acc[0, 1, steps > 120] = 0.0             # what the collapse leaves, never fitted
    f = L.fit_cells(steps, acc, cs)
    assert f["n_points"].tolist() == [[11, 7], [3, 11]]
    np.testing.assert_allclose(f["A"][0, 0], 0.6, atol=0.01)
    np.testing.assert_allclose(f["A"][0, 1], 0.8, atol=0.03)
    np.testing.assert_allclose(f["B"][1, 1], 1.5, atol=0.05)
    assert np.isnan(f["A"][1, 0]) and not f["identified"][1, 0]
    with pytest.raises(ValueError, match="last axis"):
        L.fit_cells(steps[:-1], acc)


def test_step_seconds_is_the_sum_synchronously_and_the_max_asynchronously():
    assert L.step_seconds(0, 0.3, 0.2, 0.01) == pytest.approx(0.51)
    for s in (1, 4, 16):
        assert L.step_seconds(s, 0.3, 0.2, 0.01) == pytest.approx(0.31)
        assert L.step_seconds(s, 0.1, 0.2) == pytest.approx(0.2)
    for bad in (dict(t_gen=-1.0), dict(t_learn=float("nan")), dict(overhead=float("inf"))):
        kw = {**dict(lag=1, t_gen=0.1, t_learn=0.1), **bad}
        with pytest.raises(ValueError, match=next(iter(bad))):
            L.step_seconds(**kw)
    with pytest.raises(ValueError, match="lag"):
        L.step_seconds(-1, 0.1, 0.1)


def test_first_crossing_interpolates_between_evaluations():
    steps = [0, 20, 40, 60]
    assert L.first_crossing(steps, [0.3, 0.5, 0.7, 0.6], 0.6) == pytest.approx(30.0)
    assert L.first_crossing(steps, [0.3, 0.5, 0.7, 0.6], 0.3) == 0.0
    assert L.first_crossing(steps, [0.3, 0.5, 0.55, 0.5], 0.6) is None
    assert L.first_crossing(steps, [0.3, np.nan, 0.7, 0.6], 0.6) == pytest.approx(40.0)


def test_claim6_rows_include_every_extra_learning_grid():
    """load_study puts an extra grid with held-out evaluations into "learn_extra": claim 6
    gives it its own labelled row beside the study's own learning grid."""
    from experiments.claims import claim6_learning as c6
    rng = np.random.default_rng(0)
    lags, lrs, seeds = [0, 1, 4, 16], 2e-6 * 2.0 ** (np.arange(16) / 2), range(3)
    steps = np.arange(0, 101, 20.0)
    star = 2e-5 * np.exp(rng.normal(0, 0.1, (len(lags), 1, len(seeds))))
    a = 0.8 - 0.08 * (np.log(lrs)[None, :, None] - np.log(star)) ** 2
    acc = 0.15 + (np.clip(a, 0.15, 1) - 0.15)[..., None] * steps / (steps + 60)
    g = dict(lags=lags, lrs=lrs, seeds=list(seeds), eval_steps=steps, heldout=acc)
    rows = c6.rows({"learn": g, "learn_extra": {"full grid": g}})
    assert [r["testbed"] for r in rows] == [
        "LM, learning regime (held-out accuracy area)",
        "LM, learning regime: full grid (held-out accuracy area)"]
    assert rows[0]["verdict"] == rows[1]["verdict"]
    assert c6.rows({"learn": None, "learn_extra": {}}) == []
