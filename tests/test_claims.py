"""The claims registry and the power of every claim's verdict rule.

Each power test draws synthetic data sets under the claim and under a plausible alternative and
states the measured rates of "supported": the bar is ≥ 80 % under the claim and ≤ 10 % under the
alternative, at the design named in the test."""

import numpy as np
import pytest

from async_grpo import scaling
from experiments import claims
from experiments.claims import base
from tests import synthetic


def test_every_claim_module_is_registered_and_complete():
    reg = claims.discover()
    assert list(reg) == sorted(reg) and {1, 2, 3, 4, 5} <= set(reg), reg
    for n, mod in reg.items():
        assert mod.NUMBER == n and mod.STATEMENT and mod.GPU_CHANGE and mod.STAGES
        assert callable(mod.verdict) and callable(mod.rows)


def test_interval_verdict():
    assert base.interval_verdict([0.8, 1.2], 1.0, 0.4) == base.SUPPORTED
    assert base.interval_verdict([0.5, 1.2], 1.0, 0.4) == base.INCONCLUSIVE
    assert base.interval_verdict([0.2, 0.9], 1.0, 0.4) == base.NOT_SUPPORTED
    assert base.interval_verdict([None, None], 1.0, 0.4) == base.INCONCLUSIVE
    assert base.interval_verdict([float("nan"), 1.0], 1.0, 0.4) == base.INCONCLUSIVE


def _rates(verdicts):
    return {v: verdicts.count(v) / len(verdicts) for v in base.VERDICTS}


@pytest.mark.parametrize("ratio", [2 ** 0.5, 2.0])
def test_claim2_rule_has_power(ratio):
    """Design: S ∈ {1, 2, 4, 8, 16}, 5 seeds, σ = 0.25 on log η_max, 60 draws. Measured (100
    draws): √2 grid, α = 1: supported 94 %; α = 0.5 (η_max ∝ 1/√S): supported 0 %, not
    supported 100 %. ×2 grid: 96 % and 0 %. At 3 seeds the rule is weaker (α = 1 supported
    67 % on √2, 59 % on ×2, the rest mostly inconclusive; α = 0.5 never supported): 3 seeds
    rarely decide claim 2, and the rule says "inconclusive" rather than "not supported"."""
    c2 = claims.discover()[2]
    for alpha, lo, hi in ((1.0, 0.8, 1.0), (0.5, 0.0, 0.1)):
        rng = np.random.default_rng(1)
        vs = []
        for _ in range(60):
            lags, lrs, col = synthetic.alpha_map(rng, alpha, 0.25, ratio, 5)
            vs.append(c2.verdict(scaling.bootstrap_alpha(lags, lrs, col), n_lags=5,
                                 n_seeds=5)[0])
        rate = _rates(vs)[base.SUPPORTED]
        assert lo <= rate <= hi, (alpha, _rates(vs))


@pytest.mark.slow
def test_claim1_rule_has_power():
    """Design: 4 η × 4 anchors × 5 lags (16 anchors), anchor slopes spread sd 0.1, levels
    e^{±0.5}, within-anchor correlation 0.5; 60 draws. Measured: β = 1 supported 92 %
    (not supported 5 %); β = 0.5 (‖δ‖ ∝ √(s·η)) supported 0 %. At the current LM design
    (8 anchors, no slope spread) β = 1 is supported in 75 % (inconclusive 13 %, not supported
    12 %): two more anchor steps per η buy the power."""
    c1 = claims.discover()[1]
    for beta, lo, hi in ((1.0, 0.8, 1.0), (0.5, 0.0, 0.1)):
        rng = np.random.default_rng(5)
        vs = []
        for _ in range(60):
            c = synthetic.lm_bias_cells(rng, beta, slope_sd=0.1, anchors=(20, 30, 40, 50))
            vs.append(c1.verdict(scaling.anchored_slope(c["x"], c["est"], c["se"],
                                                        c["anchor"]))[0])
        assert lo <= _rates(vs)[base.SUPPORTED] <= hi, (beta, _rates(vs))


def test_claim1_rule_at_the_lm_design():
    """The current LM design (8 anchors), no slope spread, 30 draws: β = 1 mostly supported
    (75 % in 60 draws; with slope spread sd 0.1, 57 %), β = 0.5 never."""
    c1 = claims.discover()[1]
    for beta, lo, hi in ((1.0, 0.6, 1.0), (0.5, 0.0, 0.1)):
        rng = np.random.default_rng(5)
        vs = [c1.verdict(scaling.anchored_slope(**{k: c[k] for k in ("x", "est", "se",
                                                                      "anchor")}))[0]
              for c in (synthetic.lm_bias_cells(rng, beta, slope_sd=0.0) for _ in range(30))]
        assert lo <= _rates(vs)[base.SUPPORTED] <= hi, (beta, _rates(vs))


@pytest.mark.parametrize("num_steps", [100, 200])
def test_claim3_rule_has_power(num_steps):
    """Design: 10 η × 5 seeds spanning onsets from warm-up/3 to 2T, σ = 0.3, lag 6, 25 draws.
    Measured (40 draws): t_c ∝ 1/η supported 95 % at T = 100 and at T = 200 (not supported
    5 %); t_c ∝ η^−½ supported 0 % (not supported 100 %)."""
    c3 = claims.discover()[3]
    for exponent, lo, hi in ((1.0, 0.8, 1.0), (0.5, 0.0, 0.1)):
        rng = np.random.default_rng(2)
        vs = []
        for _ in range(25):
            lrs, c, d = synthetic.collapse_times(rng, num_steps=num_steps, exponent=exponent,
                                                 k=1000.0 ** exponent)
            vs.append(c3.verdict(scaling.collapse_time_censored(
                lrs, c, num_steps=num_steps, warmup=10, lag=d))[0])
        assert lo <= _rates(vs)[base.SUPPORTED] <= hi, (exponent, _rates(vs))


@pytest.mark.slow
def test_claim5_rule_has_power():
    """6 η × 12 runs, confounded by η. Measured (20 draws): a cosine rise of 0.1 over the 50
    steps before collapse, stable cosine ≈ 0: supported 100 %; the null (no rise): supported
    0 %."""
    c5 = claims.discover()[5]
    for signal, lo, hi in ((0.1, 0.8, 1.0), (0.0, 0.0, 0.1)):
        rng = np.random.default_rng(7)
        vs = []
        for _ in range(20):
            cos, c, eta = synthetic.cosine_runs(rng, signal=signal)
            r = scaling.cosine_auc_stratified(cos, c, eta, 20, (0, 20, 50, 100), n_perm=100,
                                              n_boot=50)
            vs.append(c5.verdict(r, float(np.median(cos[c < 0, -20:].mean(1))))[0])
        assert lo <= _rates(vs)[base.SUPPORTED] <= hi, (signal, _rates(vs))


def _claim4_rates(exponent, draws, n_seed=3):
    c4 = claims.discover()[4]
    rng = np.random.default_rng(1)
    vs = []
    for _ in range(draws):
        lags, lrs, c, steps = synthetic.two_constraint_grid(rng, exponent=exponent,
                                                            n_seed=n_seed)
        tab = scaling.horizon_table(lags, lrs, c, [steps // 8, steps // 4, steps // 2, steps],
                                    num_steps=steps)
        vs.append(c4.verdict(scaling.heldout_by_seed(tab["S"], tab["T"], tab["lo"], tab["hi"],
                                                     tab["seed"]))[0])
    return _rates(vs)


def test_claim4_rule_has_power():
    """3 seeds, S ∈ {0, 1, 2, 4, 8, 16}, √2 grid, σ = 0.2, horizons T/8 … T. Measured (60
    draws): data made by the rule supported 92 %; data made from (S + 1)^−0.4 (and the same
    horizon constraint) supported 3 % — the old held-out check passed it in 100 % of sweeps."""
    assert _claim4_rates(1.0, 20)[base.SUPPORTED] >= 0.8
    assert _claim4_rates(0.4, 20)[base.SUPPORTED] <= 0.1


def test_claims_markdown_of_an_empty_study():
    md = claims.claims_markdown({"exact": {}, "sampled": {}, "bias": None, "lm": None,
                                 "lm_bias": None})
    for n in range(1, 7):
        assert f"**Claim {n}.**" in md
    assert md.count("Not measured at this scale") == 6


def test_a_new_claim_is_one_new_file(tmp_path, monkeypatch):
    """Dropping claim7_<key>.py next to the others registers claim 7: the table prints it, in
    order, with no other edit (claim 6, experiments/claims/claim6_learning.py, came so)."""
    (tmp_path / "claim7_regime.py").write_text(
        'NUMBER = 7\nKEY = "regime"\nSTATEMENT = "A seventh claim."\nSTAGES = ("exact_sweep",)\n'
        'GRIDS = "any"\nGPU_CHANGE = "something"\n'
        'def verdict(fit):\n    return "inconclusive", "synthetic"\n'
        'def rows(study):\n    return [dict(testbed="t", measured="m", interval="i", grid="g",'
        ' verdict="inconclusive: synthetic")]\n', encoding="utf-8")
    monkeypatch.setattr(claims, "__path__", list(claims.__path__) + [str(tmp_path)])
    reg = claims.discover()
    assert list(reg)[-1] == 7 and reg[7].KEY == "regime"
    md = claims.claims_markdown({"exact": {}, "sampled": {}, "bias": None, "lm": None,
                                 "lm_bias": None})
    assert md.index("**Claim 6.**") < md.index("**Claim 7.** A seventh claim.")
    assert "inconclusive: synthetic" in md
    (tmp_path / "claim8_bad.py").write_text("NUMBER = 8\n", encoding="utf-8")
    with pytest.raises(TypeError, match="without"):
        claims.discover()


def test_claim1_rows_on_lm_bias_results():
    """Claim 1's rows from an `experiments.lm_bias` result: ‖δ‖ ∝ s·η over 4 anchors is
    supported; with 2 anchors the anchored slope has no interval, and the row says inconclusive
    rather than a verdict."""
    from tests.test_lm_bias import _synthetic   # pylint: disable=import-outside-toplevel
    res = _synthetic(1.0, np.random.default_rng(3))
    rows = claims.discover()[1].rows({"bias": None, "lm_bias": res})
    lm = [r for r in rows if r["testbed"].startswith("LM")]
    assert lm and lm[0]["verdict"].startswith("supported"), lm[0]["verdict"]
    two = dict(res, rows=[r for r in res["rows"] if r["lr"] in (1e-4, 2e-4)])
    rows = claims.discover()[1].rows({"bias": None, "lm_bias": two})
    lm = [r for r in rows if r["testbed"].startswith("LM")]
    assert lm and lm[0]["verdict"].startswith("inconclusive") and "anchor" in lm[0]["verdict"]


def _null_comparisons(gen, draws):
    c2 = claims.discover()[2]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(draws):
        if gen[0] == "null":
            lags, lrs, col = synthetic.null_map(rng, 2.0, gen[1], (1, 2, 4, 8, 16), 2 ** 0.5,
                                                3, 0.25)
        else:
            lags, lrs, col = synthetic.alpha_map(rng, gen[1], 0.25, 2 ** 0.5, 3)
        d = scaling.fit_null_model(lags, lrs, col, min_lag=1)["compare"]["delta_loglik"]
        out.append(c2.null_comparison(d).split(":")[0])
    return {k: out.count(k) / len(out) for k in ("null better", "power law better", "a tie")}


@pytest.mark.parametrize("gen", [("null", 3.0), ("null", 1.0), ("power", 1.0), ("power", 0.5),
                                 ("power", 0.3)])
def test_claim2_null_comparison_rates(gen):
    """The claims table's "null better" / "power law better" / tie between η0/(S + c) and
    S^−α, at S ∈ {1, …, 16}, 3 seeds, σ = 0.25, √2 grid. Measured (80 draws each, margin
    2 nats): grids made by the power law (α = 1, 0.5, 0.3) are called "null better" in 0–3 %;
    grids made by the null (c = 3, 1) are called "power law better" in 1 %. The price is power:
    the null is recognised in only 30 % (c = 3) and 10 % (c = 1) of its own grids, the rest tie
    (at margin 1 nat the false "null better" rate was up to 14 %). At this design the two laws are
    rarely told apart, and a tie is what the table says."""
    rates = _null_comparisons(gen, 30)
    wrong = "power law better" if gen[0] == "null" else "null better"
    assert rates[wrong] <= 0.10, rates


def test_summary_line_groups_the_rows_by_verdict():
    rows = [dict(testbed="exact; large drift", verdict="not supported: α < 1"),
            dict(testbed="LM", verdict="inconclusive: wide"),
            dict(testbed="sampled", verdict="not supported: α > 1"),
            dict(testbed="tiny", verdict="supported: fine")]
    assert claims.summary_line(rows) == ("supported on 1 (tiny); not supported on 2 (exact, "
                                         "sampled); inconclusive on 1 (LM)")
    with pytest.raises(ValueError, match="does not start"):
        claims.summary_line([dict(testbed="x", verdict="maybe")])
