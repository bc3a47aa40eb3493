"""Cross-check of the library's GRPO, DAPO and Dr. GRPO against `tests/reference_grpo.py`."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import async_grpo.losses as L
from tests import reference_grpo as ref

JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])

B, T, G, MAX_LEN = 6, 5, 3, 8


def _random_case(seed):
    rng = np.random.default_rng(seed)
    logp = -rng.exponential(1.0, (B, T))
    old = logp + rng.normal(0.0, 0.25, (B, T))            # ratios e^{±0.5}: many clipped.
    ref_logp = logp + rng.normal(0.0, 0.3, (B, T))
    lengths = rng.integers(1, T + 1, B)                    # every response has >= 1 token.
    mask = np.arange(T)[None, :] < lengths[:, None]
    rewards = rng.integers(0, 3, B).astype(np.float64)
    rewards[:G] = 1.0                                      # one zero-std group.
    return logp, old, ref_logp, mask, rewards


CASES = [("grpo", dict(kl_coef=0.04), 0.04), ("grpo", dict(kl_coef=0.0), 0.0),
         ("dapo", dict(), 0.0), ("dr_grpo", dict(normalizer=float(MAX_LEN)), 0.0)]


def _library(variant, overrides, jit, dtype, case):
    logp, old, ref_logp, mask, rewards = (jnp.asarray(a, dtype) if a.dtype != bool else
                                          jnp.asarray(a) for a in case)
    loss_fn = L.make_loss(variant, **overrides)
    kw = dict(group_size=G, ref_logp=ref_logp if overrides.get("kl_coef") else None)
    f = jax.value_and_grad(lambda x: loss_fn(x, old, rewards, mask, **kw)[0])
    return (jax.jit(f) if jit else f)(logp)


@JIT
@pytest.mark.parametrize("variant,overrides,beta", CASES,
                         ids=["grpo_kl", "grpo", "dapo", "dr_grpo"])
def test_library_matches_reference_float32(variant, overrides, beta, jit):
    for seed in range(3):
        case = _random_case(seed)
        logp, old, ref_logp, mask, rewards = case
        loss_r, grad_r = ref.loss_and_grad(variant, logp, old, rewards, mask, G,
                                           ref_logp=ref_logp, beta=beta, max_len=MAX_LEN)
        loss, grad = _library(variant, overrides, jit, jnp.float32, case)
        np.testing.assert_allclose(float(loss), loss_r, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(np.asarray(grad), grad_r, rtol=2e-5, atol=2e-6)
        # Every case has clipped tokens on both sides, so the test exercises the clip.
        r = np.exp(logp - old)
        assert np.any(mask & (r > 1.28)) and np.any(mask & (r < 0.8))


@pytest.mark.parametrize("variant,overrides,beta", CASES,
                         ids=["grpo_kl", "grpo", "dapo", "dr_grpo"])
def test_library_matches_reference_float64(variant, overrides, beta):
    with jax.enable_x64(True):
        case = _random_case(7)
        logp, old, ref_logp, mask, rewards = case
        loss_r, grad_r = ref.loss_and_grad(variant, logp, old, rewards, mask, G,
                                           ref_logp=ref_logp, beta=beta, max_len=MAX_LEN)
        loss, grad = _library(variant, overrides, True, jnp.float64, case)
        assert loss.dtype == jnp.float64
        np.testing.assert_allclose(float(loss), loss_r, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(grad), grad_r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant,beta", [("grpo", 0.04), ("dapo", 0.0), ("dr_grpo", 0.0)])
def test_reference_gradient_matches_finite_differences(variant, beta):
    logp, old, ref_logp, mask, rewards = _random_case(11)
    _, grad = ref.loss_and_grad(variant, logp, old, rewards, mask, G, ref_logp=ref_logp,
                                beta=beta, max_len=MAX_LEN)
    fd = ref.finite_difference_grad(variant, logp, old, rewards, mask, G, ref_logp=ref_logp,
                                    beta=beta, max_len=MAX_LEN)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)


def test_reference_advantages_hand():
    # [0, 1]: mean 0.5, sample std 0.7071068 → ±0.5/(0.7071068 + 1e-6) = ±0.7071058; [3, 3] → 0.
    np.testing.assert_allclose(ref.advantages([0.0, 1.0, 3.0, 3.0], 2),
                               [-0.7071058, 0.7071058, 0.0, 0.0], rtol=1e-6)
