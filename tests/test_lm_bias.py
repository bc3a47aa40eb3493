"""experiments.lm_bias: which policy each batch is drawn from, coupling, and the estimator."""

import functools
import json
import re

import jax
import numpy as np
import pytest

from async_grpo.rl import components, pipeline
from experiments import lm_bias
from experiments.configs import lm_bias as lm_bias_config
from tests import helpers


@pytest.fixture(name="setup", scope="module")
def _setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lmb")
    helpers.random_init(tmp / "init")
    cfg = helpers.pipeline_config(tmp)
    comps = helpers.dense_rewards(components.build_grpo(cfg))
    learner = pipeline.make_learner(cfg, comps)
    ref = learner.place_params(comps.init_params)
    noisy = lambda tree, seed: jax.tree.map(  # noqa: E731
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(seed), x.shape, x.dtype), tree)
    theta = noisy(learner.snapshot(ref), 2)      # away from the KL reference
    phi = noisy(theta, 1)
    grads_fn = learner.compile_fn(functools.partial(lm_bias._grads, comps.objective,
                                                    lm_bias.pg_objective(comps)))
    return dict(cfg=cfg, comps=comps, ref=ref, theta=theta, phi=phi, grads_fn=grads_fn)


def _plan(setup, couple=True, replicates=3):
    return dict(config=setup["cfg"], lags=[1], replicates=replicates, couple=couple)


def test_stale_batches_come_from_phi_and_every_gradient_is_taken_at_theta(setup, monkeypatch):
    """Lag s: the batch is sampled by θ_{t−s} (tagged with its version) and differentiated at
    θ_t; the fresh batch and the lag-0 control are sampled by θ_t."""
    comps, theta, phi = setup["comps"], setup["theta"], setup["phi"]
    snaps = {0: phi, 1: theta}
    sampled, scored = [], []
    gen = comps.source.rollouts.generate_batch
    monkeypatch.setattr(comps.source.rollouts, "generate_batch",
                        lambda params, version, key, problems: sampled.append(
                            (version, params is snaps[version])) or gen(params, version, key,
                                                                        problems))

    def grads_fn(params, batch, ref_params=None):
        scored.append(params is theta)
        return setup["grads_fn"](params, batch, ref_params=ref_params)

    m = lm_bias.measure(_plan(setup), comps, grads_fn, snaps, 0, 1, setup["ref"])
    # per replicate: fresh (θ_1), control (θ_1), lag 1 (θ_0)
    assert sampled == [(1, True), (1, True), (0, True)] * 3
    assert all(scored) and len(scored) == 9
    assert m[1]["sur"].shape == m[0]["sur"].shape == m["fresh"].shape
    assert np.all(np.isfinite(m[1]["sur"])) and np.abs(m[1]["sur"]).max() > 0
    # the surrogate without its KL penalty: a different gradient on the same batches
    assert m[1]["pg"].shape == m[1]["sur"].shape and not np.allclose(m[1]["pg"], m[1]["sur"])
    assert lm_bias.pg_objective(comps).loss_fn.config["kl_coef"] == 0.0


def test_coupled_pairs_cancel_exactly_when_phi_equals_theta(setup):
    """With φ = θ a coupled pair is the same batch twice (same key, same policy): x_r ≡ 0, so
    the estimator sees no noise at all; uncoupled, or the lag-0 control, it does."""
    comps, theta = setup["comps"], setup["theta"]
    snaps = {0: theta, 1: theta}
    m = lm_bias.measure(_plan(setup), comps, setup["grads_fn"], snaps, 0, 1, setup["ref"])
    assert np.array_equal(m[1]["sur"], np.zeros_like(m[1]["sur"]))
    assert np.array_equal(m[1]["td"], np.zeros_like(m[1]["td"]))
    assert np.array_equal(m[1]["pg"], np.zeros_like(m[1]["pg"]))
    assert np.abs(m[0]["sur"]).max() > 0                      # the control: independent keys
    un = lm_bias.measure(_plan(setup, couple=False), comps, setup["grads_fn"], snaps, 0, 1,
                         setup["ref"])
    assert np.abs(un[1]["sur"]).max() > 0


def test_cell_rows_recover_a_known_bias_and_the_control_is_not_resolved():
    """Synthetic replicate differences x_r = δ + noise: the noise-corrected norm brackets ‖δ‖,
    the plain mean would not, and zero-mean lag-0 differences are not resolved."""
    rng = np.random.default_rng(0)
    r, p = 32, 400
    delta = np.full(p, 0.05)                                  # ‖δ‖ = 1.0
    noise = lambda: 0.2 * rng.standard_normal((r, p))         # noqa: E731  tr Cov = 16
    met = [{"loss/clip_frac": 0.0, "reward": 0.5}] * r
    m = {0: {"sur": noise(), "td": noise(), "metrics": met},
         1: {"sur": delta + noise(), "td": noise(), "metrics": met},
         "fresh": 0.1 + noise()}
    snaps = {0: {"w": np.zeros(3)}, 1: {"w": np.array([3.0, 4.0, 0.0])}}
    rows = lm_bias.cell_rows(dict(lags=[1], replicates=r), 1e-3, 1, m, snaps)
    control, stale = rows
    assert stale["drift"] == pytest.approx(5.0) and stale["s_eta"] == pytest.approx(1e-3)
    assert stale["resolved"] and stale["delta_lo"] < 1.0 < stale["delta_hi"]
    assert np.linalg.norm(m[1]["sur"].mean(0)) > 1.2          # the plain mean carries the noise
    assert not control["resolved"] and not stale["td_resolved"]
    assert stale["noise_single"] == pytest.approx(4.0, rel=0.1)


def test_plan_refuses_bad_values():
    c = lm_bias_config.get_config("tiny")
    c.anchor_steps = "2"
    with pytest.raises(ValueError, match="anchor_steps"):
        lm_bias.plan(c)
    c = lm_bias_config.get_config("tiny")
    c.replicates = 2
    with pytest.raises(ValueError, match="replicates"):
        lm_bias.plan(c)
    c = lm_bias_config.get_config("tiny")
    c.lags = "0,1"
    with pytest.raises(ValueError, match="lags"):
        lm_bias.plan(c)


@pytest.mark.slow
def test_tiny_binary_end_to_end(tmp_path):
    """The tiny config from SFT to bias.json: every cell measured, the control unresolved."""
    res = lm_bias.run(lm_bias_config.get_config("tiny"), str(tmp_path))
    saved = json.loads((tmp_path / "bias.json").read_text())
    assert len(saved["rows"]) == 2 * 1 * 3                     # η × anchors × (control + 2 lags)
    assert saved["fits"]["control_resolved"] == 0
    assert all(np.isfinite(r["delta_est"]) for r in saved["rows"])
    assert (tmp_path / "bias.png").exists() and res["wall_s"] > 0
    print(lm_bias.table(res))


def _synthetic(power, rng):
    """bias.json-like results whose ‖δ‖ = 1e3·(s·η)^power exactly in expectation."""
    r, p, rows = 32, 200, []
    for lr in (1e-4, 2e-4, 3e-4, 5e-4):    # four anchors: claim 1's rule needs three or more
        m = {"fresh": 1.0 + 0.05 * rng.standard_normal((r, p))}
        met = [{"loss/clip_frac": 0.0, "reward": 0.5}] * r
        for s in (0, 1, 2, 4, 8):
            norm = 0.0 if s == 0 else 1e3 * (s * lr) ** power
            delta = np.full(p, norm / np.sqrt(p))
            m[s] = {"sur": delta + 0.002 * rng.standard_normal((r, p)),
                    "td": 0.002 * rng.standard_normal((r, p)), "metrics": met}
        snaps = {20 - s: {"w": np.full(4, -s * lr)} for s in (0, 1, 2, 4, 8)}
        rows += lm_bias.cell_rows(dict(lags=[1, 2, 4, 8], replicates=r), lr, 20, m, snaps)
    cfg = {"lrs": "1e-4,2e-4,3e-4,5e-4", "lags": "1,2,4,8", "anchor_steps": "20", "replicates": r}
    return {"rows": rows, "config": cfg,
            "fits": lm_bias.analyse(rows, clip_small=0.05)}


@pytest.mark.parametrize("power,verdict", [(1.0, "supported"), (0.5, "not supported")])
def test_claim_rows_follow_the_verdict_rule(power, verdict, tmp_path):
    """The claims table says "supported" for ‖δ‖ ∝ s·η and "not supported" for ‖δ‖ ∝ √(s·η),
    and the report renders the same results."""
    from experiments import report
    from experiments.claims import claim1_bias
    res = _synthetic(power, np.random.default_rng(3))
    fits = res["fits"]
    for k in ("small_vs_s_eta", "small_vs_drift", "all_vs_s_eta", "pg_small_vs_s_eta"):
        assert fits[k]["slope"] == pytest.approx(power, abs=0.05), k
        assert fits[k]["ci"][0] - 0.05 <= power <= fits[k]["ci"][1] + 0.05, k
    assert "per_lr" not in fits     # one slope per anchor pair is no fit (issue 20)
    row = claim1_bias.rows({"lm_bias": res})[0]
    assert row["verdict"].startswith(verdict + ":"), row["verdict"]
    assert fits["control_resolved"] == 0 and fits["td_resolved"] == 0
    res.update(num_params=200, wall_s=1.0)
    (tmp_path / "bias.json").write_text(json.dumps(res))
    text = report.lm_bias(str(tmp_path))
    anchored = claim1_bias.lm_fit(res)
    assert f"‖δ‖, clip fraction < 5%: {anchored['slope']:.2f} [{anchored['ci'][0]:.2f}" in text
    assert "resolved in 0 of 4" in text
    words = report.lm_bias_words(str(tmp_path))
    if power == 1.0:    # ‖δ‖ ∝ s·η exactly: 8× from s = 1 to 8 at every anchor, never falls
        grows = re.findall(r"η = [\d.e-]+, t = 20: ([\d.]+)×", words)
        assert len(grows) == 4 and all(abs(float(g) - 8) < 0.5 for g in grows), words
        assert "it falls at no anchor" in words
        assert "Resolved from s = 1 at every anchor only at η ∈ {0.0001, 0.0002, 0.0003, " \
               "0.0005}" in words
    else:               # ∝ √(s·η): √8 ≈ 2.8×
        grows = re.findall(r"η = [\d.e-]+, t = 20: ([\d.]+)×", words)
        assert all(abs(float(g) - 8 ** 0.5) < 0.3 for g in grows), words
    assert "δ_TD is resolved in 0 of 16 stale cells" in words
