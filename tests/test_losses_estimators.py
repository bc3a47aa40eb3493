"""Exact (enumerated) checks of `total_derivative_surrogate` and the KL estimators, in float64.

Policy: a categorical over K outcomes with logits θ (single-token responses), π_θ = softmax(θ).
J(θ) = Σ_y π_θ(y) r(y), so ∇J is exact. A group of G responses is drawn i.i.d. from the behavior
policy π_b = softmax(φ); enumerating all K^G groups with their probabilities gives the exact
expectation of the estimator's gradient (chained through logp = log_softmax(θ)[y]).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import async_grpo.losses as L

JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])

K = 4
THETA = np.array([0.3, -0.5, 1.1, 0.0])
PHI_OFF = np.array([-0.4, 0.6, 0.2, 0.5])   # a behavior policy different from π_θ.
REWARD = np.array([1.0, 0.0, 2.5, -0.7])


def _maybe_jit(fn, jit):
    return jax.jit(fn) if jit else fn


def _grad_j(theta):
    return jax.grad(lambda t: jnp.sum(jax.nn.softmax(t) * REWARD))(theta)


@functools.lru_cache(maxsize=None)
def _expectation_fn(g, jit, kw_items):
    """(θ, φ) ↦ (Σ over all K^G behavior groups of P(group)·(−∇_θ loss), Σ P(group)).

    Cached per (G, jit, options) so that one compiled function serves every (θ, φ)."""
    kw = dict(kw_items)
    groups = jnp.asarray(list(itertools.product(range(K), repeat=g)))        # [K^G, G]

    def expectation(theta, phi):
        logpb = jax.nn.log_softmax(phi)
        probs = jnp.exp(jnp.sum(logpb[groups], axis=1))                      # [K^G]

        def neg_grad(ys):
            def loss(t):
                lp = jax.nn.log_softmax(t)[ys][:, None]                      # [G, 1]
                return L.total_derivative_surrogate(
                    lp, logpb[ys][:, None], jnp.asarray(REWARD)[ys], jnp.ones((g, 1)), g,
                    **kw)[0]
            return -jax.grad(loss)(theta)

        grads = jax.vmap(neg_grad)(groups)                                   # [K^G, K]
        return jnp.sum(probs[:, None] * grads, axis=0), jnp.sum(probs)

    return _maybe_jit(expectation, jit)


def _expected_estimator_grad(theta, phi, g, jit, **kw):
    est, total_prob = _expectation_fn(g, jit, tuple(sorted(kw.items())))(theta, phi)
    assert abs(float(total_prob) - 1.0) < 1e-12
    return est


def _rel_err(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


# G = 3 (64 groups) only under jit: eager evaluation is covered by G = 2.
@pytest.mark.parametrize("g,jit", [(2, False), (2, True), (3, True)],
                         ids=["G2-eager", "G2-jit", "G3-jit"])
def test_total_derivative_unbiased_leave_one_out(g, jit):
    with jax.enable_x64(True):
        theta = jnp.asarray(THETA)
        for phi in (theta, jnp.asarray(PHI_OFF)):  # behavior == current, and behavior != current
            est = _expected_estimator_grad(theta, phi, g, jit)
            assert _rel_err(est, _grad_j(theta)) < 1e-6
            # baseline "none" is unbiased too (higher variance).
            est0 = _expected_estimator_grad(theta, phi, g, jit, baseline="none")
            assert _rel_err(est0, _grad_j(theta)) < 1e-6


@pytest.mark.parametrize("g,jit", [(2, False), (2, True), (3, True)],
                         ids=["G2-eager", "G2-jit", "G3-jit"])
def test_total_derivative_group_mean_scales_by_g_minus_1_over_g(g, jit):
    with jax.enable_x64(True):
        theta = jnp.asarray(THETA)
        est = _expected_estimator_grad(theta, jnp.asarray(PHI_OFF), g, jit, baseline="group_mean")
        assert _rel_err(est, (g - 1) / g * _grad_j(theta)) < 1e-6


def test_truncation_and_self_normalization_bias():
    """Truncation (C = 1, 2) and self-normalisation bias the off-policy estimate; both are exact
    on-policy (w ≡ 1). The measured relative gaps are printed (pytest -s):
    truncation C=1: 0.4227, C=2: 0.0826 (independent of G: with a baseline independent of y_i,
    E[min(w, C)(r − b)∇log π] does not depend on G); self-normalisation: 0.2685 (G=2),
    0.1755 (G=3), shrinking with G (consistent)."""
    jit = True
    with jax.enable_x64(True):
        theta, phi = jnp.asarray(THETA), jnp.asarray(PHI_OFF)
        true = _grad_j(theta)
        gaps = {}
        for name, kw in (("truncation C=1", dict(truncation=1.0)),
                         ("truncation C=2", dict(truncation=2.0)),
                         ("self_normalize", dict(self_normalize=True))):
            for g in (2, 3):
                est = _expected_estimator_grad(theta, phi, g, jit, **kw)
                gaps[(name, g)] = _rel_err(est, true)
                on = _expected_estimator_grad(theta, theta, g, jit, **kw)
                assert _rel_err(on, true) < 1e-6, name
        print("\nrelative bias ‖E[ĝ] − ∇J‖/‖∇J‖ (K=4, off-policy):",
              {f"{k[0]}, G={k[1]}": round(v, 4) for k, v in gaps.items()})
        w_max = float(jnp.max(jnp.exp(jax.nn.log_softmax(theta) - jax.nn.log_softmax(phi))))
        assert w_max > 2.0  # so both caps bind on some outcome.
        for k, v in gaps.items():
            assert v > 1e-3, k
        # Self-normalisation is consistent: its bias shrinks as G grows.
        assert gaps[("self_normalize", 3)] < gaps[("self_normalize", 2)]


@JIT
def test_total_derivative_on_policy_equals_rloo(jit):
    """With logp == behavior_logp the surrogate's gradient is the on-policy RLOO gradient
    (1/B) Σ_i (r_i − b_i) Σ_t ∇log π, which is make_loss("rloo")'s on-policy gradient."""
    rng = np.random.default_rng(0)
    lp = jnp.asarray(-rng.random((6, 5)), jnp.float32)
    mask = jnp.asarray(rng.random((6, 5)) > 0.3).at[:, 0].set(True)
    r = jnp.asarray(rng.random(6), jnp.float32)
    td = _maybe_jit(jax.grad(lambda x: L.total_derivative_surrogate(x, lp, r, mask, 3)[0]), jit)
    rloo = _maybe_jit(jax.grad(lambda x: L.make_loss("rloo")(x, lp, r, mask, group_size=3)[0]),
                      jit)
    np.testing.assert_allclose(td(lp), rloo(lp), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        td(lp), jax.grad(lambda x: L.make_loss("total_derivative")(x, lp, r, mask,
                                                                   group_size=3)[0])(lp),
        rtol=1e-6, atol=1e-7)


REF = np.array([0.8, 0.1, -0.3, 0.4])      # reference policy logits of the KL term.
BETA = 0.7


def _expected_td_kl_grad(theta, phi, g, penalty_logp):
    """E over all K^G behavior groups of −∇ of make_loss("total_derivative", kl_coef=β), with the
    KL penalty computed on `penalty_logp` ("current": the library's; "behavior": the old code)."""
    loss_fn = L.make_loss("total_derivative", kl_coef=BETA)
    groups = jnp.asarray(list(itertools.product(range(K), repeat=g)))
    logpb, logpr = jax.nn.log_softmax(phi), jax.nn.log_softmax(jnp.asarray(REF))
    probs = jnp.exp(jnp.sum(logpb[groups], axis=1))

    def neg_grad(ys):
        def loss(t):
            lp = jax.nn.log_softmax(t)[ys][:, None]
            blp, ref, ones = logpb[ys][:, None], logpr[ys][:, None], jnp.ones((g, 1))
            if penalty_logp == "current":
                return loss_fn(lp, blp, jnp.asarray(REWARD)[ys], ones, group_size=g,
                               ref_logp=ref)[0]
            r = L.kl_penalized_rewards(jnp.asarray(REWARD)[ys], blp, ref, ones, BETA, "k1")
            return L.total_derivative_surrogate(lp, blp, r, ones, g)[0]
        return -jax.grad(loss)(theta)

    return jnp.sum(probs[:, None] * jax.vmap(neg_grad)(groups), axis=0)


def test_total_derivative_with_kl_is_unbiased_for_j_minus_beta_kl():
    """J(θ) = E_θ[r] − β KL(π_θ‖π_ref): the library's total-derivative loss penalises the reward
    with the k1 log-ratio at the *current* θ, and its expected gradient is ∇J exactly, on- and
    off-policy. The penalty at the *behavior* policy (what the engine used to do) is biased
    off-policy (a relative error of 0.66 here, for G = 2 and 3), which this test would catch."""
    with jax.enable_x64(True):
        theta = jnp.asarray(THETA)

        def j(t):
            lp, lr = jax.nn.log_softmax(t), jax.nn.log_softmax(jnp.asarray(REF))
            p = jnp.exp(lp)
            return jnp.sum(p * REWARD) - BETA * jnp.sum(p * (lp - lr))

        true = jax.grad(j)(theta)
        for phi in (theta, jnp.asarray(PHI_OFF)):
            for g in (2, 3):
                assert _rel_err(_expected_td_kl_grad(theta, phi, g, "current"), true) < 1e-9
        biased = _rel_err(_expected_td_kl_grad(theta, jnp.asarray(PHI_OFF), 2, "behavior"), true)
        assert biased > 0.5, biased
    with pytest.raises(ValueError, match="needs 'k1'"):
        L.make_loss("total_derivative", kl_coef=0.1, kl_estimator="k3")


@JIT
def test_kl_estimators_exact_expectations(jit):
    """Under y ∼ p: E[k1] = E[k3] = KL(p‖q) exactly; E[k2] = ½ E[(log q/p)²] ≠ KL in general."""
    with jax.enable_x64(True):
        p = jnp.array([0.5, 0.2, 0.2, 0.1])
        q = jnp.array([0.1, 0.3, 0.25, 0.35])
        kl = float(jnp.sum(p * jnp.log(p / q)))
        est = _maybe_jit(lambda e: {k: L.kl_estimate(jnp.log(p), jnp.log(q), k)
                                    for k in ("k1", "k2", "k3")}, jit)(None)
        e = {k: float(jnp.sum(p * v)) for k, v in est.items()}
        assert abs(e["k1"] - kl) < 1e-12 and abs(e["k3"] - kl) < 1e-12
        half_sq = float(jnp.sum(p * 0.5 * jnp.log(q / p) ** 2))
        assert abs(e["k2"] - half_sq) < 1e-12
        assert abs(e["k2"] - kl) > 0.05          # 0.7475 vs KL 0.5537 for this pair.
        assert bool(jnp.all(est["k3"] >= 0))     # k3 is nonnegative per sample; k1 is not.
        assert bool(jnp.any(est["k1"] < 0))


@JIT
def test_behavior_kl_metrics_exact(jit):
    """kl_behavior_k1/k3 are token means over the batch; on a batch containing each outcome
    y in proportion to π_b(y) they equal the exact KL(π_b‖π_θ). (Single-token responses in a
    [6, 5] batch: only column 0 is real; the rest is garbage.)"""
    pb = np.array([1 / 2, 1 / 6, 1 / 6, 1 / 6])                 # behavior
    pt = np.array([0.4, 0.3, 0.2, 0.1])                          # current
    ys = np.repeat(np.arange(K), [3, 1, 1, 1])                   # 6 rows ∝ π_b
    lp = np.full((6, 5), 3.0, np.float32)
    blp = np.full((6, 5), -3.0, np.float32)
    lp[:, 0], blp[:, 0] = np.log(pt[ys]), np.log(pb[ys])
    mask = np.zeros((6, 5), bool)
    mask[:, 0] = True
    f = _maybe_jit(functools.partial(L.grpo_surrogate), jit)
    _, met = f(jnp.asarray(lp), jnp.asarray(blp), jnp.zeros(6), jnp.asarray(mask))
    kl = float(np.sum(pb * np.log(pb / pt)))
    assert abs(float(met["kl_behavior_k1"]) - kl) < 1e-6
    assert abs(float(met["kl_behavior_k3"]) - kl) < 1e-6
