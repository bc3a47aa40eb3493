"""KL estimators (Schulman's k1/k2/k3) and the KL penalty placed in the reward."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from async_grpo.losses._checks import (_check_array, _check_choice, _check_float, _check_number,
                                       _check_rank, _float_dtype, _prepare_mask,
                                       _prepare_token_array)
from async_grpo.losses.reductions import _masked_sum

Array = chex.Array
Numeric = chex.Numeric
_sg = jax.lax.stop_gradient

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp: Array, ref_logp: Array, estimator: str = "k3",
                log_ratio_clip: float = 20.0) -> Array:
    """Per-token estimator of KL(π‖π_ref) from tokens sampled from π (Schulman 2020).

    With log r = ref_logp − logp = log π_ref(y)/π(y) and y ∼ π
    (http://joschu.net/blog/kl-approx.html):

    * k1 = −log r: unbiased, high variance, can be negative.
    * k2 = ½ (log r)²: biased (E[k2] = ½ E[(log r)²], equal to KL only to second order), low
      variance.
    * k3 = r − 1 − log r ≥ 0: unbiased (E_π[r] = 1) and low variance; the per-token KL of
      DeepSeekMath's GRPO (Shao et al. 2024, https://arxiv.org/abs/2402.03300, eq. 4).

    The gradient of each estimate w.r.t. `logp` is the pathwise derivative (not a score-function
    estimate of ∇KL); that is how GRPO's in-loss KL term is defined. r is computed as
    exp(clip(log r, ±log_ratio_clip)) so it is always finite.

    Args:
        logp: log-probs of the sampled tokens under π (any shape).
        ref_logp: log-probs of the same tokens under π_ref (same shape).
        estimator: "k1", "k2" or "k3".
        log_ratio_clip: clamp on log r before exponentiating (k3 only).

    Returns:
        Per-token estimates, same shape as `logp`.
    """
    _check_choice(estimator, KL_ESTIMATORS, "kl_estimator")
    log_r = ref_logp - logp
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    clipped = jnp.clip(log_r, -log_ratio_clip, log_ratio_clip)
    return jnp.exp(clipped) - 1.0 - log_r


def kl_penalized_rewards(rewards: Array, logp_or_behavior_logp: Array, ref_logp: Array,
                         mask: Array, kl_coef: Numeric, estimator: str = "k1") -> Array:
    """Puts the KL regulariser in the reward: r_i − β Σ_t k(y_{i,t}), stop-gradient.

    The sequence KL is the *sum* over the response's tokens of the per-token estimator
    (`kl_estimate`), since log π(y)/π_ref(y) = Σ_t log π(y_t|·)/π_ref(y_t|·). The penalised reward
    is treated as a constant (stop-gradient), as in RLHF with KL-in-reward (Ziegler et al. 2019,
    https://arxiv.org/abs/1909.08593; AReaL's `kl_ctl` with the k1 estimator). Pass the behavior
    log-probs when the penalty is fixed at rollout time (AReaL), or the current log-probs for an
    on-policy penalty.

    Args:
        rewards: [B] sequence rewards.
        logp_or_behavior_logp: [B, T] log-probs of the sampled tokens under the policy being
            regularised.
        ref_logp: [B, T] log-probs under the reference policy.
        mask: [B, T] response mask.
        kl_coef: β >= 0.
        estimator: "k1" (default), "k2" or "k3".

    Returns:
        [B] penalised rewards.
    """
    lp = _check_array(logp_or_behavior_logp, "logp_or_behavior_logp")
    _check_rank(lp, 2, "logp_or_behavior_logp", "[B, T]")
    _check_float(lp, "logp_or_behavior_logp")
    shape = lp.shape
    rewards = _check_array(rewards, "rewards")
    _check_rank(rewards, 1, "rewards", "[B]")
    if rewards.shape[0] != shape[0]:
        raise ValueError(f"`rewards` must have shape [B]=({shape[0]},) to match "
                         f"`logp_or_behavior_logp`, got {tuple(rewards.shape)}.")
    _check_choice(estimator, KL_ESTIMATORS, "kl_estimator")
    _check_number(kl_coef, "kl_coef", low=0)
    m = _prepare_mask(mask, shape)
    dtype = _float_dtype(lp, rewards)
    lp = jnp.where(m, lp.astype(dtype), 0.0)
    ref = _prepare_token_array(ref_logp, shape, "ref_logp", m, dtype)
    k = kl_estimate(lp, ref, estimator)
    seq_kl = _masked_sum(k, m, axis=-1)
    return _sg(rewards.astype(dtype) - kl_coef * seq_kl)
