"""Plain, readable reference steps: what the learner's one `update` must reproduce bit for bit.

No mesh, no donation, no finite guard, no diagnostics: value_and_grad of the loss and one optax
update. `tests/test_pipeline.py` and `tests/test_learner.py` compare the `Learner` (one device,
S = 0) against these.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from async_grpo import models, sampling


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("optimizer", "loss_fn",
                                                                  "group_size", "temperature"))
def grpo_step(graphdef, params, opt_state, batch, ref_params, *, optimizer, loss_fn, group_size,
              temperature=1.0):
    """One GRPO update on `batch` with the loss `loss_fn` (KL reference `ref_params`)."""
    def score(p):
        return sampling.score_responses(
            graphdef, p, batch["prompt_tokens"], batch["prompt_lengths"],
            batch["response_tokens"], batch["response_mask"], temperature=temperature)

    ref_logp = jax.lax.stop_gradient(score(ref_params))
    kl_on = loss_fn.config.get("kl_coef", 0.0) != 0

    def loss(p):
        return loss_fn(score(p), batch["behavior_logp"], batch["rewards"],
                       batch["response_mask"], group_size=group_size,
                       ref_logp=ref_logp if kl_on else None)[0]

    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("optimizer",))
def sft_step(graphdef, params, opt_state, tokens, mask, *, optimizer):
    """One cross-entropy update on the answer tokens."""
    def loss(p):
        logits = models.forward(graphdef, p, tokens[:, :-1]).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(nll * mask) / jnp.maximum(mask.sum(), 1.0)

    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value
