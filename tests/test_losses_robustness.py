"""Robustness of every registered loss: no NaN/Inf in loss, gradient or any metric.

Inputs cover log-ratios up to ±50 (current vs behavior, proximal and reference), all-masked
rows, single-token responses, zero-std groups and NaN garbage in masked positions.
"""

import functools

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import async_grpo.losses as L

B, T, G = 6, 5, 3  # the shape of test_losses_invariants.py (shared eager caches)
VARIANTS = ["cispo", "dapo", "decoupled_ppo", "dr_grpo", "geo_rs", "grpo", "gspo", "mis",
            "no_ratio", "pg",
            "rloo", "tis", "total_derivative"]

# Options that are not the default of any registered variant, exercised through overrides.
EXTRA = {
    "dual": ("grpo", dict(clip_mode="dual")),
    "seq_ratio": ("pg", dict(ratio_level="sequence")),
    "seq_tis": ("tis", dict(tis_level="sequence")),
    "token_mis_veto": ("mis", dict(mis_level="token", mis_veto=1e-4)),
    "td_trunc_selfnorm": ("total_derivative", dict(truncation=2.0, self_normalize=True)),
    "td_group_mean_kl": ("total_derivative", dict(baseline="group_mean", kl_coef=0.1)),
    "grpo_k1_reward": ("grpo", dict(kl_estimator="k1", kl_placement="reward")),
    "decoupled_cispo_tis": ("decoupled_ppo", dict(clip_mode="cispo", tis_cap=2.0)),
    "dapo_k2": ("dapo", dict(kl_coef=0.5, kl_estimator="k2")),
}
CASES = VARIANTS + list(EXTRA)


def test_all_registered_variants_are_covered():
    assert set(L.list_losses()) <= set(VARIANTS) | {n for n in L.list_losses() if n.startswith("_")}


def _make(case):
    name, kw = EXTRA.get(case, (case, {}))
    return L.make_loss(name, **kw)


def _evaluate(loss_fn, lp, blp, prox, ref, rewards, mask):
    def f(x):
        return loss_fn(x, blp, rewards, mask, group_size=G, proximal_logp=prox, ref_logp=ref)

    (loss, met), grad = jax.value_and_grad(f, has_aux=True)(lp)
    return loss, met, grad


def _assert_finite(loss, met, grad, case):
    assert np.isfinite(float(loss)), case
    assert np.all(np.isfinite(np.asarray(grad))), case
    bad = {k: float(v) for k, v in met.items() if not np.isfinite(float(v))}
    assert not bad, (case, bad)
    for k in ("clip_frac", "clip_frac_low", "clip_frac_high", "mis_masked_frac", "tis_frac",
              "ess_frac", "zero_adv_group_frac", "pad_frac", "veto_seq_frac"):
        if k in met:
            assert -1e-6 <= float(met[k]) <= 1 + 1e-6, (case, k, float(met[k]))


f32 = functools.partial(st.floats, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def batches(draw):
    lp = draw(hnp.arrays(np.float32, (B, T), elements=f32(-30.0, 0.0)))
    d_b = draw(hnp.arrays(np.float32, (B, T), elements=f32(-50.0, 50.0)))
    d_p = draw(hnp.arrays(np.float32, (B, T), elements=f32(-50.0, 50.0)))
    d_r = draw(hnp.arrays(np.float32, (B, T), elements=f32(-50.0, 50.0)))
    lengths = np.asarray(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    rewards = draw(hnp.arrays(np.float32, (B,), elements=st.sampled_from([0.0, 1.0]) | f32(-5, 5)))
    mask = np.arange(T)[None, :] < lengths[:, None]
    junk = np.where(mask, 0.0, np.nan).astype(np.float32)   # NaN garbage in masked positions.
    lp = lp + junk
    return (jnp.asarray(lp), jnp.asarray(lp - d_b + junk), jnp.asarray(lp - d_p + junk),
            jnp.asarray(lp - d_r + junk), jnp.asarray(rewards), jnp.asarray(mask))


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(case=st.sampled_from(CASES), batch=batches())
def test_no_nan_eager_hypothesis(case, batch):
    _assert_finite(*_evaluate(_make(case), *batch), case)


def _extreme_batch():
    """Deterministic worst case: ±50 log-ratios, all-masked rows, single-token rows, a group
    with zero reward std (rows 0–2) and one with a single varying reward (rows 3–5)."""
    lp = np.full((B, T), -0.5, np.float32)
    sign = np.where(np.random.default_rng(0).random((B, T)) < 0.5, -1.0, 1.0).astype(np.float32)
    sign[0] = 1.0   # a long row whose log-ratios all have the same sign: Σ = ±250.
    sign[4] = -1.0
    lengths = np.array([5, 1, 0, 1, 5, 0])
    mask = np.arange(T)[None, :] < lengths[:, None]
    junk = np.where(mask, 0.0, np.nan).astype(np.float32)
    lp = lp + junk
    return (jnp.asarray(lp), jnp.asarray(lp - 50 * sign + junk), jnp.asarray(lp + 50 * sign + junk),
            jnp.asarray(lp - 50 * sign + junk), jnp.asarray([1.0, 1.0, 1.0, 0.0, 1.0, 0.0]),
            jnp.asarray(mask))


EXTREME_CASES = [(c, False) for c in CASES] + [(c, True) for c in VARIANTS]


@pytest.mark.parametrize("case,jit", EXTREME_CASES,
                         ids=[f"{c}-{'jit' if j else 'eager'}" for c, j in EXTREME_CASES])
def test_no_nan_extreme(case, jit):
    fn = functools.partial(_evaluate, _make(case))
    out = (jax.jit(fn) if jit else fn)(*_extreme_batch())
    _assert_finite(*out, case)


@pytest.mark.parametrize("case", ["grpo", "gspo", "total_derivative"])
def test_single_token_responses(case):
    # T = 1 arrays (not just masks), ±50 log-ratios, one zero-std group (rows 3–5).
    lp = jnp.array([[-0.1], [-3.0], [-0.2], [-0.4], [-1.0], [-2.0]])
    d = jnp.array([[50.0], [-50.0], [1.0], [0.0], [50.0], [-50.0]])
    out = _evaluate(_make(case), lp, lp - d, lp + d, lp - d,
                    jnp.array([1.0, 0.0, 1.0, 1.0, 1.0, 1.0]), jnp.ones((6, 1)))
    _assert_finite(*out, case)


def test_group_advantages_extreme_rewards():
    r = jnp.array([1e30, -1e30, 5.0, 5.0, 1e-30, 0.0], jnp.float32)
    for kw in (dict(), dict(std_normalize=False), dict(leave_one_out=True)):
        adv = L.group_advantages(r, 2, **kw)
        assert np.all(np.isfinite(np.asarray(adv))), kw
        assert float(adv[2]) == 0.0 and float(adv[3]) == 0.0
