"""The total-derivative surrogate: an importance-weighted score-function estimate of ∇J(θ)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from async_grpo.losses._checks import (_check_array, _check_choice, _check_float,
                                       _check_group_size, _check_number, _check_rank,
                                       _float_dtype, _prepare_mask, _prepare_token_array)
from async_grpo.losses._metrics import _behavior_token_metrics, _ess_metric, _masked_means
from async_grpo.losses.reductions import _masked_max, _masked_mean, _masked_min

Array = chex.Array
Numeric = chex.Numeric
_sg = jax.lax.stop_gradient

BASELINES = ("leave_one_out", "group_mean", "none")


def total_derivative_surrogate(
    logp: Array,
    behavior_logp: Array,
    rewards: Array,
    mask: Array,
    group_size: int,
    *,
    truncation: Numeric | None = None,
    self_normalize: bool = False,
    baseline: str = "leave_one_out",
    log_ratio_clip: float = 20.0,
) -> tuple[Array, dict[str, Array]]:
    """Score-function surrogate whose gradient estimates the total derivative ∇J(θ) off-policy.

    Objective: J(θ) = E_x E_{y∼π_θ(·|x)}[r(x, y)], with ∇J_x = E_{y∼π_θ}[r ∇log π_θ(y)]
    (REINFORCE, Williams 1992). From G responses per prompt drawn i.i.d. from π_b,

            loss = −(1/B) Σ_i sg(w̃_i) (r_i − b_i) Σ_t log π_θ(y_{i,t}),
            w_i = π_θ(y_i)/π_b(y_i) = exp(Σ_t (logp − behavior_logp)_{i,t}),

    so −∇loss = (1/B) Σ_i w̃_i (r_i − b_i) ∇log π_θ(y_i). Since E_{π_b}[w ∇log π_θ(y)] = 0, any
    baseline independent of y_i leaves the expectation unchanged:

    * ``baseline="leave_one_out"`` (b_i = mean of the other G−1 rewards; RLOO,
      https://arxiv.org/abs/2402.14740): with w̃ = w (no truncation, no self-normalisation) the
      gradient is an *unbiased* estimate of (1/n_prompts) Σ_x ∇J_x (the mean over the batch's
      prompts; the 1/B normalisation averages the G per-sample estimates of each prompt).
    * ``"group_mean"`` (b_i = mean of all G rewards, own sample included): the own-sample part of
      the baseline is correlated with y_i, so the expectation is scaled: E = (G−1)/G · ∇J.
    * ``"none"``: b = 0, unbiased but higher variance.

    Variance control (both bias the estimate, trading bias for variance):

    * ``truncation`` = C: w̃_i = min(w_i, C) (truncated IS; Ionides 2008). Biased (downward on
      samples where π_θ ≫ π_b) whenever P(w > C) > 0 under π_b; variance bounded by C².
    * ``self_normalize``: w̃_i = G·w_i / Σ_{j∈group} w_j (applied after truncation). Consistent
      (bias O(1/G)) but biased for finite G when π_θ ≠ π_b; removes the weights' overall scale.

    With logp == behavior_logp every w_i = 1 and this is the on-policy REINFORCE/RLOO gradient.
    log w_i is clamped to ±`log_ratio_clip` before exp (a NaN guard; it would bias the estimate only
    for |log w| > 20). Rows with no real token contribute 0 (their Σ_t log π is empty) but still
    count in B.

    **When "unbiased" holds** (all of): the baseline is "leave_one_out" or "none"; no
    truncation and no self-normalisation; the G responses of a prompt are i.i.d. draws from π_b;
    `behavior_logp` is the log-probability of the distribution actually sampled (with top-k/top-p
    or a temperature, the truncated/tempered one, and `logp` scored at the same temperature);
    π_b(y) > 0 wherever π_θ(y) > 0; |log w| ≤ `log_ratio_clip`; and `rewards` do not depend on θ
    except through a stop-gradient penalty whose per-sample value is exact (the k1 KL of
    `make_loss("total_derivative", kl_coef=β)`, evaluated at θ). tests/test_losses_estimators.py
    and tests/test_exact.py check it by exact enumeration, with and without the KL term.

    Args:
        logp: [B, T] log π_θ of the sampled tokens (differentiated).
        behavior_logp: [B, T] log π_b of the same tokens.
        rewards: [B] sequence rewards in contiguous groups of `group_size` (stop-gradient).
        mask: [B, T] response mask.
        group_size: G, a Python int dividing B; >= 2 unless baseline == "none".
        truncation: optional cap C > 0 on w.
        self_normalize: normalise w to mean 1 within each group.
        baseline: "leave_one_out", "group_mean" or "none".
        log_ratio_clip: NaN-guard clamp on log w.

    Returns:
        (loss, metrics) with metrics ``loss_pg``, ``ess_frac`` (Kish ESS/B of the raw w),
        ``weight_{mean,max,min}`` (of the raw w), ``truncated_frac`` (share of rows with w > C),
        ``kl_behavior_k1`` / ``kl_behavior_k3``, ``adv_mean`` (of r − b), ``zero_adv_group_frac``,
        ``pad_frac``.
    """
    logp = _check_array(logp, "logp")
    _check_rank(logp, 2, "logp", "[B, T]")
    _check_float(logp, "logp")
    shape = logp.shape
    _check_choice(baseline, BASELINES, "baseline")
    g = _check_group_size(group_size, shape[0], min_size=1 if baseline == "none" else 2,
                          why=f" for baseline {baseline!r}")
    _check_number(truncation, "truncation", low=0, low_inclusive=False, allow_none=True)
    _check_number(log_ratio_clip, "log_ratio_clip", low=0, low_inclusive=False)
    rewards = _check_array(rewards, "rewards")
    _check_rank(rewards, 1, "rewards", "[B]")
    if rewards.shape[0] != shape[0]:
        raise ValueError(
            f"`rewards` must have shape [B]=({shape[0]},), got {tuple(rewards.shape)}.")
    m = _prepare_mask(mask, shape)
    dtype = _float_dtype(logp, jnp.asarray(behavior_logp), rewards)
    lp = jnp.where(m, logp.astype(dtype), jnp.zeros((), dtype))
    blp = _sg(_prepare_token_array(behavior_logp, shape, "behavior_logp", m, dtype))
    r = _sg(rewards.astype(dtype)).reshape(-1, g)

    log_w_raw = jnp.sum(_sg(lp) - blp, axis=-1)                 # [B]
    log_w = jnp.clip(log_w_raw, -log_ratio_clip, log_ratio_clip)
    if truncation is not None:
        log_cap = jnp.log(jnp.asarray(truncation, dtype))
        truncated = log_w > log_cap
        log_w = jnp.minimum(log_w, log_cap)
    else:
        truncated = jnp.zeros_like(log_w, bool)
    if self_normalize:
        w = g * jax.nn.softmax(log_w.reshape(-1, g), axis=-1).reshape(-1)
    else:
        w = jnp.exp(log_w)
    w = _sg(w)

    if baseline == "leave_one_out":
        b = (jnp.sum(r, axis=1, keepdims=True) - r) / (g - 1)
    elif baseline == "group_mean":
        b = jnp.broadcast_to(jnp.mean(r, axis=1, keepdims=True), r.shape)
    else:
        b = jnp.zeros_like(r)
    adv = (r - b).reshape(-1)
    seq_logp = jnp.sum(lp, axis=-1)                              # masked positions are 0.
    loss = -jnp.mean(w * adv * seq_logp)

    row_valid = jnp.any(m, axis=-1)
    met: dict[str, Array] = {"loss_pg": loss}
    w_raw = jnp.exp(log_w_raw.clip(-log_ratio_clip, log_ratio_clip))
    met["weight_mean"] = _masked_mean(w_raw, row_valid, empty_value=1.0)
    met["weight_max"] = _masked_max(w_raw, row_valid, empty_value=1.0)
    met["weight_min"] = _masked_min(w_raw, row_valid, empty_value=1.0)
    met["truncated_frac"] = _masked_mean(truncated.astype(dtype), row_valid)
    _masked_means(_behavior_token_metrics(lp, blp, log_ratio_clip), m, met)
    _ess_metric(lp, blp, m, met)
    met["adv_mean"] = jnp.mean(adv)
    all_equal = jnp.max(r, axis=1) == jnp.min(r, axis=1)
    met["zero_adv_group_frac"] = jnp.mean(all_equal.astype(dtype))
    met["pad_frac"] = 1.0 - jnp.mean(m.astype(dtype))
    met = {k: _sg(v.astype(dtype)) for k, v in met.items()}
    return loss, met
