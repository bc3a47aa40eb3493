"""The GRPO/SFT learner's optimizer (`rl.components.make_optimizer`): AdamW or SGD, warm-up,
global-norm clipping."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from async_grpo.config import OptimizerConfig
from async_grpo.rl.components import make_optimizer


def _step(opt_cfg, grads, steps=1):
    params = {"w": jnp.zeros(3)}
    opt = make_optimizer(opt_cfg, 100)
    state = opt.init(params)
    for _ in range(steps):
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params["w"]


def test_sgd_takes_minus_lr_times_the_clipped_gradient():
    g = {"w": jnp.array([3.0, 4.0, 0.0])}                  # norm 5, clipped to norm 1
    w = _step(OptimizerConfig(name="sgd", lr=0.5, b1=0.0, warmup_steps=0), g)
    np.testing.assert_allclose(w, -0.5 * np.array([0.6, 0.8, 0.0]), rtol=1e-6)
    w = _step(OptimizerConfig(name="sgd", lr=0.5, b1=0.0, warmup_steps=0, grad_clip=0.0), g)
    np.testing.assert_allclose(w, -0.5 * np.array([3.0, 4.0, 0.0]), rtol=1e-6)


def test_sgd_momentum_is_heavy_ball_and_adamw_is_the_default():
    g = {"w": jnp.array([1.0, 0.0, 0.0])}
    w = _step(OptimizerConfig(name="sgd", lr=1.0, b1=0.5, warmup_steps=0), g, steps=2)
    np.testing.assert_allclose(w[0], -(1.0 + 1.5), rtol=1e-6)   # u1 = g, u2 = g + 0.5·u1
    assert OptimizerConfig().name == "adamw"
    w = _step(OptimizerConfig(lr=0.1, warmup_steps=0), g)
    np.testing.assert_allclose(w[0], -0.1, rtol=1e-3)           # Adam's first step is ±lr


def test_unknown_optimizer_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="name='lamb'.*adamw.*sgd"):
        OptimizerConfig(name="lamb")
