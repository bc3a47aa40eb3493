"""Invariants of `async_grpo.losses`: on-policy reductions, padding, analytic gradients, vmap."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import async_grpo.losses as L

JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])

B, T, G = 6, 5, 3


def _maybe_jit(fn, jit):
    return jax.jit(fn) if jit else fn


def _close(x, y, tol=1e-5):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def _inputs(seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    lp = jnp.asarray(-2.0 * rng.random((B, T)), jnp.float32)
    blp = lp + jnp.asarray(scale * rng.standard_normal((B, T)), jnp.float32)
    lens = np.array([5, 3, 1, 4, 2, 5])
    mask = jnp.asarray(np.arange(T)[None, :] < lens[:, None])
    rewards = jnp.asarray([1.0, 0.0, 0.5, 1.0, 1.0, 1.0])  # group 1 has zero std.
    return lp, blp, mask, rewards


def _value_and_grad(fn, jit=False, metrics=True):
    """fn(logp) -> (loss, metrics) ⇒ (loss, metrics or None, dloss/dlogp), optionally jitted.

    Comparison baselines are computed eagerly (jit=False): after the first call at a shape,
    eager evaluation is much cheaper than compiling one more function."""
    if metrics:
        vg = lambda lp: (lambda o, g: (o[0], o[1], g))(*jax.value_and_grad(fn, has_aux=True)(lp))
    else:
        vg = lambda lp: (lambda v, g: (v, None, g))(*jax.value_and_grad(lambda x: fn(x)[0])(lp))
    return _maybe_jit(vg, jit)


# On-policy (π_θ = π_b = π_prox): every off-policy correction must reduce to plain GRPO.
ON_POLICY_OPTIONS = {
    "tis_token": dict(tis_cap=2.0),
    "tis_sequence": dict(tis_cap=1.5, tis_level="sequence"),
    "mis_token": dict(mis_low=0.5, mis_high=2.0),
    "mis_sequence": dict(mis_low=0.5, mis_high=2.0, mis_level="sequence"),
    "mis_geometric": dict(mis_low=0.999, mis_high=1.001, mis_level="geometric", mis_veto=1e-4),
    "decoupled": dict(proximal=True),
    "decoupled_tis": dict(proximal=True, tis_cap=2.0),
    "dual": dict(clip_mode="dual"),
}


@JIT
@pytest.mark.parametrize("option", list(ON_POLICY_OPTIONS))
def test_on_policy_corrections_equal_grpo(option, jit):
    lp, _, mask, rewards = _inputs()
    adv = L.group_advantages(rewards, G)
    kw = dict(ON_POLICY_OPTIONS[option])
    if kw.pop("proximal", False):
        kw["proximal_logp"] = lp
    base = _value_and_grad(lambda x: L.grpo_surrogate(x, lp, adv, mask, group_size=G))(lp)
    got = _value_and_grad(lambda x: L.grpo_surrogate(x, lp, adv, mask, group_size=G, **kw),
                          jit)(lp)
    _close(got[0], base[0], 1e-6)
    _close(got[2], base[2], 1e-6)
    met = got[1]
    for k in ("ratio_mean", "ratio_max", "ratio_min", "ratio_p01", "ratio_p50", "ratio_p99",
              "is_weight_mean", "is_weight_max", "ess_frac"):
        _close(met[k], 1.0, 1e-6)
    for k in ("clip_frac", "clip_frac_low", "clip_frac_high", "dual_clip_frac", "tis_frac",
              "mis_masked_frac", "veto_seq_frac", "kl_behavior_k1", "kl_behavior_k3"):
        _close(met[k], 0.0, 1e-7)
    _close(met["zero_adv_group_frac"], 0.5)  # group 1 = [1, 1, 1].


# Registry variants on-policy: each equals GRPO (kl 0) with the same advantage and aggregation.
VARIANT_BASE = {
    "dapo": dict(aggregation="token-mean"),
    "tis": dict(aggregation="token-mean"),
    "pg": dict(aggregation="token-mean"),
    "mis": dict(),
    "geo_rs": dict(),
    "gspo": dict(),
    "decoupled_ppo": dict(aggregation="token-mean"),
    "dr_grpo": dict(std_normalize=False, aggregation="seq-mean-token-sum-norm"),
    "rloo": dict(std_normalize=False, leave_one_out=True, aggregation="seq-mean-token-sum"),
    "cispo": dict(aggregation="token-mean"),  # gradient only: CISPO's value contains log π.
}


@JIT
@pytest.mark.parametrize("name", list(VARIANT_BASE))
def test_on_policy_registry_variants_equal_grpo(name, jit):
    lp, _, mask, rewards = _inputs(1)
    kw = dict(group_size=G)
    if name == "decoupled_ppo":
        kw["proximal_logp"] = lp
    f = L.make_loss(name)
    g = L.make_loss("grpo", kl_coef=0.0, **VARIANT_BASE[name])
    got = _value_and_grad(lambda x: f(x, lp, rewards, mask, **kw), jit, metrics=not jit)(lp)
    base = _value_and_grad(lambda x: g(x, lp, rewards, mask, group_size=G), metrics=False)(lp)
    if name != "cispo":
        _close(got[0], base[0], 1e-6)
    _close(got[2], base[2], 1e-6)
    if not jit:
        _close(got[1]["ess_frac"], 1.0, 1e-6)
        _close(got[1]["kl_behavior_k3"], 0.0, 1e-7)


@JIT
def test_decoupled_with_proximal_equal_behavior_is_ppo(jit):
    lp, blp, mask, rewards = _inputs(2)
    adv = L.group_advantages(rewards, G)
    ppo = _value_and_grad(lambda x: L.grpo_surrogate(x, blp, adv, mask))(lp)
    dec = _value_and_grad(lambda x: L.grpo_surrogate(x, blp, adv, mask, proximal_logp=blp),
                          jit, metrics=False)(lp)
    _close(dec[0], ppo[0], 1e-6)
    _close(dec[2], ppo[2], 1e-6)
    assert float(ppo[1]["clip_frac"]) > 0  # the case exercises the clip.


@JIT
@pytest.mark.parametrize("level", ["sequence_geomean", "sequence"])
def test_sequence_ratios(level, jit):
    # With A = 1 per row, clip none and seq-mean-token-mean, the loss is −mean_i ρ_i, and each
    # row's ratio is exp(mean) (GSPO) or exp(sum) (product) of its masked token log-ratios.
    lp, blp, mask, _ = _inputs(3, scale=0.1)
    d = np.where(np.asarray(mask), np.asarray(lp - blp, np.float64), 0.0)
    n = np.asarray(mask).sum(-1)
    rho = np.exp(d.sum(-1) / n) if level == "sequence_geomean" else np.exp(d.sum(-1))
    f = functools.partial(L.grpo_surrogate, ratio_level=level, clip_mode="none")
    loss, _, grad = _value_and_grad(lambda x: f(x, blp, jnp.ones(B), mask), jit)(lp)
    _close(loss, -rho.mean(), 1e-5)
    # ∂/∂logp_{i,t} = −ρ_i·(1/n_i or 1)/B on real tokens.
    per_tok = rho / n if level == "sequence_geomean" else rho
    expected = np.where(np.asarray(mask), -(per_tok / B)[:, None], 0.0)
    _close(grad, expected, 1e-5)


def test_geometric_vs_product_over_100_tokens():
    # verl §3.3: a per-token ratio of 1.01 over 100 tokens is a product of 1.01^100 = 2.7048138
    # but a geometric mean of 1.01, so Geo-RS thresholds must be tight (e.g. 1.001), and the
    # sequence-level MIS window [0.5, 2] rejects the sequence while the geometric one keeps it.
    lp = jnp.full((1, 100), np.log(1.01), jnp.float32)

    def losses(x):
        out = []
        for level in ("sequence_geomean", "sequence"):
            out.append(L.grpo_surrogate(x, jnp.zeros_like(x), jnp.ones(1), jnp.ones((1, 100)),
                                        ratio_level=level, clip_mode="none")[0])
        for level in ("geometric", "sequence"):
            out.append(L.grpo_surrogate(x, jnp.zeros_like(x), jnp.ones(1), jnp.ones((1, 100)),
                                        mis_low=0.5, mis_high=2.0, mis_level=level,
                                        clip_mode="none")[0])
        return jnp.stack(out)

    # kept: loss −1.01 (token ratios 1.01, token mean); rejected: nothing left → 0.
    _close(jax.jit(losses)(lp), [-1.01, -2.7048138, -1.01, 0.0], 1e-5)


def _analytic_grpo_grad(lp, blp, adv, mask, eps_low, eps_high, aggregation, normalizer=None):
    """Per-token ∂loss/∂logp of PPO-clip GRPO: −A·ρ/normaliser unless the clip zeroes it."""
    lp, blp, mask = (np.asarray(a, np.float64) for a in (lp, blp, mask))
    adv = np.broadcast_to(np.asarray(adv, np.float64)[:, None], lp.shape)
    rho = np.exp(lp - blp)
    active = ~(((adv > 0) & (rho > 1 + eps_high)) | ((adv < 0) & (rho < 1 - eps_low)))
    n = mask.sum(-1, keepdims=True)
    nrows = (n[:, 0] > 0).sum()
    if aggregation == "token-mean":
        denom = mask.sum()
    elif aggregation == "seq-mean-token-mean":
        denom = np.maximum(n, 1) * nrows
    elif aggregation == "seq-mean-token-sum":
        denom = nrows
    else:
        denom = normalizer * nrows
    return np.where((mask > 0) & active, -adv * rho / denom, 0.0)


@JIT
@pytest.mark.parametrize("aggregation", L.AGGREGATIONS)
def test_grpo_gradient_matches_analytic(aggregation, jit):
    lp, blp, mask, rewards = _inputs(4, scale=0.4)
    adv = L.group_advantages(rewards, G)
    f = functools.partial(L.grpo_surrogate, clip_eps=0.2, clip_eps_high=0.28,
                          aggregation=aggregation, normalizer=7.0)
    _, met, grad = _value_and_grad(lambda x: f(x, blp, adv, mask), jit)(lp)
    assert float(met["clip_frac_low"]) > 0 and float(met["clip_frac_high"]) > 0
    _close(grad, _analytic_grpo_grad(lp, blp, adv, mask, 0.2, 0.28, aggregation, 7.0), 1e-5)


GARBAGE = [1e9, -1e9, np.nan, np.inf]


PADDING_CASES = [(n, False) for n in ("grpo", "dapo", "dr_grpo", "gspo", "cispo", "tis", "mis",
                                       "decoupled_ppo", "total_derivative")]
PADDING_CASES += [(n, True) for n in ("dapo", "mis", "decoupled_ppo", "total_derivative")]


@pytest.mark.parametrize("name,jit", PADDING_CASES,
                         ids=[f"{n}-{'jit' if j else 'eager'}" for n, j in PADDING_CASES])
def test_masked_garbage_changes_nothing(name, jit):
    # The rows of `_inputs` have lengths [5, 3, 1, 4, 2, 5]: the positions past each length are
    # padding. Filling every padded position of every per-token input with garbage (±1e9, NaN,
    # inf) changes neither the loss, the metrics nor the gradient, and padding gets gradient 0.
    # (Extra padded columns are checked against hand values in test_losses.py.)
    lp, blp, mask, rewards = _inputs(5)
    ref = lp - 0.1
    prox = blp + 0.05
    rng = np.random.default_rng(0)
    m = np.asarray(mask)

    def garbage(x):
        junk = rng.choice(np.array(GARBAGE, np.float32), size=m.shape)
        return jnp.asarray(np.where(m, np.asarray(x), junk))

    lp2, blp2, ref2, prox2 = garbage(lp), garbage(blp), garbage(ref), garbage(prox)
    kw = {} if name == "total_derivative" else dict(ref_logp=ref)
    kw2 = {} if name == "total_derivative" else dict(ref_logp=ref2)
    if name == "decoupled_ppo":
        kw["proximal_logp"], kw2["proximal_logp"] = prox, prox2
    f = L.make_loss(name)
    a = _value_and_grad(lambda x: f(x, blp, rewards, mask, group_size=G, **kw))(lp)
    b = _value_and_grad(lambda x: f(x, blp2, rewards, mask, group_size=G, **kw2), jit)(lp2)
    _close(b[0], a[0], 1e-6)
    _close(b[2], a[2], 1e-6)
    assert np.all(np.asarray(b[2])[~m] == 0.0)
    for k in a[1]:
        _close(b[1][k], a[1][k], 1e-6)


def _numpy_grpo_loss(lp, blp, adv, mask, eps, aggregation, normalizer):
    """PPO-clip loss in numpy float64, rows without a real token excluded."""
    lp, blp, mask = (np.asarray(a, np.float64) for a in (lp, blp, mask))
    adv = np.broadcast_to(np.asarray(adv, np.float64)[:, None], lp.shape)
    rho = np.exp(np.where(mask > 0, lp - blp, 0.0))
    f = np.where(mask > 0, np.minimum(rho * adv, np.clip(rho, 1 - eps, 1 + eps) * adv), 0.0)
    n = mask.sum(-1)
    rows = n > 0
    if aggregation == "token-mean":
        return -f.sum() / mask.sum()
    per_row = {"seq-mean-token-mean": f.sum(-1) / np.maximum(n, 1),
               "seq-mean-token-sum": f.sum(-1),
               "seq-mean-token-sum-norm": f.sum(-1) / normalizer}[aggregation]
    return -per_row[rows].mean()


ALL_MASKED_CASES = [(a, False) for a in L.AGGREGATIONS]
ALL_MASKED_CASES += [("token-mean", True), ("seq-mean-token-mean", True)]


@pytest.mark.parametrize("aggregation,jit", ALL_MASKED_CASES,
                         ids=[f"{a}-{'jit' if j else 'eager'}" for a, j in ALL_MASKED_CASES])
def test_all_masked_rows_are_excluded(aggregation, jit):
    # Rows 4 and 5 are all-masked (NaN / 1e9 garbage, nonzero advantages): they count in no
    # denominator (the loss and gradient equal the 4-real-row formulas) and get gradient 0.
    lp, blp, mask, rewards = _inputs(6)
    adv = L.group_advantages(rewards, G)
    dead = np.arange(B) >= 4
    mask = jnp.asarray(np.where(dead[:, None], False, np.asarray(mask)))
    lp = jnp.asarray(np.where(dead[:, None], np.nan, np.asarray(lp)), jnp.float32)
    blp = jnp.asarray(np.where(dead[:, None], 1e9, np.asarray(blp)), jnp.float32)
    adv = adv.at[4:].set(jnp.array([5.0, -5.0]))
    f = functools.partial(L.grpo_surrogate, aggregation=aggregation, normalizer=float(T))
    loss, _, grad = _value_and_grad(lambda x: f(x, blp, adv, mask), jit, metrics=False)(lp)
    lp0 = np.nan_to_num(np.asarray(lp))
    _close(loss, _numpy_grpo_loss(lp0, blp, adv, mask, 0.2, aggregation, float(T)), 1e-5)
    _close(grad, _analytic_grpo_grad(lp0, blp, adv, mask, 0.2, 0.2, aggregation, float(T)), 1e-5)
    assert np.all(np.asarray(grad)[4:] == 0.0)
    # Nothing real at all: loss 0, finite metrics.
    c = _value_and_grad(lambda x: f(x, blp, adv, jnp.zeros_like(mask)), jit)(lp)
    assert float(c[0]) == 0.0
    assert all(np.isfinite(np.asarray(v)) for v in c[1].values())


@JIT
def test_advantages_per_token_equal_broadcast(jit):
    lp, blp, mask, rewards = _inputs(7)
    adv = L.group_advantages(rewards, G)
    f = _maybe_jit(lambda a: L.grpo_surrogate(lp, blp, a, mask)[0], jit)
    _close(f(jnp.broadcast_to(adv[:, None], (B, T))), f(adv), 1e-6)


def test_vmap_over_minibatches():
    lp, blp, mask, rewards = _inputs(8)
    stack = lambda x: jnp.stack([x, x[::-1]])
    loss_fn = functools.partial(L.make_loss("dapo"), group_size=G)
    vm = jax.jit(jax.vmap(lambda a, b, r, m: loss_fn(a, b, r, m)[0]))(
        stack(lp), stack(blp), stack(rewards), stack(mask))
    loop = [loss_fn(lp, blp, rewards, mask)[0], loss_fn(lp[::-1], blp[::-1], rewards[::-1],
                                                        mask[::-1])[0]]
    _close(vm, loop, 1e-6)


def test_float64_inputs_stay_float64():
    jit = True  # float64 eager evaluation is covered by the estimator and reference tests.
    with jax.enable_x64(True):
        lp, blp, mask, rewards = _inputs(9)
        lp, blp = lp.astype(jnp.float64), blp.astype(jnp.float64)
        loss, met = _maybe_jit(functools.partial(L.make_loss("dapo"), group_size=G), jit)(
            lp, blp, rewards.astype(jnp.float64), mask)
        assert loss.dtype == jnp.float64 and met["ratio_mean"].dtype == jnp.float64
