"""The learner step: a pure function of (graphdef, params, opt_state, batch), jitted.

`train_step(graphdef, params, opt_state, batch, ref_params, *, optimizer, loss_fn, group_size,
temperature)` scores the batch's responses under `params` (teacher forcing), evaluates
the GRPO-family loss from `async_grpo.losses` against the batch's behavior log-probs, and applies
one optax update. It does not know how the batch was produced, so the same step trains on fresh
(synchronous) or stale (asynchronous, version-tagged) rollouts; the lag only enters through
`batch["behavior_logp"]` (and, for decoupled objectives, an optional `batch["proximal_logp"]`).

`make_train_step` closes over the static arguments and returns a `jax.jit`-ed
`step(params, opt_state, batch, ref_params)`; a sharded learner passes explicit in/out shardings
through `jit_kwargs`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from async_grpo import sampling


def _masked_mean(x, mask):
    mask = mask.astype(jnp.float32)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _score(graphdef, params, batch, temperature):
    return sampling.score_responses(
        graphdef, params, batch["prompt_tokens"], batch["prompt_lengths"],
        batch["response_tokens"], batch["response_mask"], temperature=temperature,
        return_entropy=True)


def train_step(graphdef, params, opt_state, batch: dict[str, jax.Array], ref_params=None, *,
               optimizer: optax.GradientTransformation, loss_fn: Callable, group_size: int,
               temperature: float = 1.0):
    """One GRPO update. -> (params, opt_state, metrics dict of scalars).

    `ref_params` (the SFT policy, or None) gives the reference log-probs: passed to the loss when it
    has a KL term (`loss_fn.config["kl_coef"] != 0`), and logged as KL(current || reference).
    """
    mask = batch["response_mask"]
    needs_ref = loss_needs_ref(loss_fn)
    if needs_ref and ref_params is None:
        raise ValueError(f"loss {getattr(loss_fn, 'name', loss_fn)!r} has a KL term and needs "
                         "ref_params (the reference policy)")
    ref_logp = None
    if ref_params is not None:
        ref_logp, _ = _score(graphdef, ref_params, batch, temperature)
        ref_logp = jax.lax.stop_gradient(ref_logp)

    def objective(p):
        logp, entropy = _score(graphdef, p, batch, temperature)
        loss, m = loss_fn(logp, batch["behavior_logp"], batch["rewards"], mask,
                          group_size=group_size, proximal_logp=batch.get("proximal_logp"),
                          ref_logp=ref_logp if needs_ref else None)
        return loss, (m, logp, entropy)

    (loss, (m, logp, entropy)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

    metrics = step_metrics(m, loss, grads, updates, logp, entropy, batch, ref_logp)
    return params, opt_state, metrics


def step_metrics(loss_metrics, loss, grads, updates, logp, entropy, batch, ref_logp):
    """The per-step metrics shared by `train_step` and the engine's sharded learner step."""
    mask = batch["response_mask"]
    metrics = {f"loss/{k}": v for k, v in loss_metrics.items()}
    metrics["loss"] = loss
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["update_norm"] = optax.tree.norm(updates)
    metrics["entropy"] = _masked_mean(entropy, mask)
    metrics["response_length"] = jnp.mean(jnp.sum(mask, axis=1).astype(jnp.float32))
    metrics["reward"] = jnp.mean(batch["rewards"])
    if ref_logp is not None:
        log_ratio = ref_logp - jax.lax.stop_gradient(logp)     # log pi_ref / pi_theta on samples
        metrics["kl_ref_k1"] = _masked_mean(-log_ratio, mask)
        metrics["kl_ref_k3"] = _masked_mean(jnp.expm1(log_ratio) - log_ratio, mask)
    return metrics


def loss_needs_ref(loss_fn) -> bool:
    kl = getattr(loss_fn, "config", {}).get("kl_coef", 0.0)
    return not (isinstance(kl, (int, float)) and kl == 0)


def make_train_step(graphdef, *, optimizer, loss_fn, group_size: int, temperature: float = 1.0,
                    donate: bool = False,
                    jit_kwargs: dict[str, Any] | None = None):
    """-> jitted `step(params, opt_state, batch, ref_params=None)` with the statics bound."""
    fn = functools.partial(train_step, graphdef, optimizer=optimizer, loss_fn=loss_fn,
                           group_size=group_size, temperature=temperature)
    kwargs = dict(jit_kwargs or {})
    if donate:
        kwargs.setdefault("donate_argnums", (0, 1))
    return jax.jit(fn, **kwargs)
