# Copyright 2026 The async_grpo Authors.
"""Pure GRPO-family policy losses, group advantages, KL estimators and a registry.

Every function here is pure: arrays in, arrays out, no hidden state. All are jittable (string and
Python-number options are trace-time constants, so bind them with `functools.partial` or mark them
static) and vmappable. Shape and option errors raise `ValueError` naming the argument at trace time.

Notation (per prompt x, a group of G responses y_1..y_G, laid out contiguously in the batch):

* ``logp[b, t]``          log π_θ(y_{b,t} | x, y_{b,<t}): the current policy (differentiated).
* ``behavior_logp[b, t]`` log π_b(y_{b,t} | ...): the policy that generated the tokens (rollout).
* ``proximal_logp[b, t]`` log π_prox(...): optional trust-region anchor (decoupled PPO).
* ``ref_logp[b, t]``      log π_ref(...): optional reference policy of the KL regulariser.
* ``mask[b, t]``          nonzero (or True) on real response tokens, 0 (False) on prompt/padding.
* ``rewards[b]``          sequence rewards; rows ``g*G .. g*G + G - 1`` belong to group g.

Masked positions are replaced by 0 before any arithmetic, so arbitrary garbage there (±1e9, NaN,
inf) changes neither the loss, the metrics nor the gradient.

Conventions a user must know:

* std: `group_advantages` divides by the *sample* std (ddof 1, like torch.std in TRL/verl) plus
  eps; groups whose rewards are all equal get advantage exactly 0.
* Rows with no real token (and rows dropped by sequence-level MIS) are excluded from every
  denominator of `aggregate`; if nothing is real the loss is 0 (never NaN).
* TIS/MIS weights ρ_b = π_c/π_b are computed against the proximal policy when `proximal_logp`
  is given (decoupled PPO, the TIS paper's formulation) and against the stop-gradient *current*
  policy otherwise ("bypass" mode).
* Every log-ratio is clamped to ±20 (`log_ratio_clip`) before exp: a NaN guard.

Main entry points:

* `group_advantages`, `group_advantage_stats`: GRPO / Dr. GRPO / RLOO advantages.
* `grpo_surrogate`: the clipped (or not) importance-weighted surrogate with every ratio level,
  clip mode, off-policy correction (TIS, MIS, decoupled PPO) and aggregation in the GRPO family.
* `total_derivative_surrogate`: importance-weighted score-function surrogate whose gradient is an
  (unbiased with the leave-one-out baseline) estimate of the total derivative ∇J(θ).
* `kl_estimate`, `kl_penalized_rewards`: Schulman's k1/k2/k3 estimators, in the loss or the reward.
* `aggregate`, `masked_quantiles`: the loss-aggregation modes and a jit-friendly masked quantile.
* `make_loss(name, **overrides)`, `list_losses()`, `register`, `LOSSES`: named variants whose
  defaults follow the paper they name.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np

Array = chex.Array
Numeric = chex.Numeric

_sg = jax.lax.stop_gradient

AGGREGATIONS = (
    "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
RATIO_LEVELS = ("token", "sequence_geomean", "sequence")
CLIP_MODES = ("ppo", "dual", "none", "cispo")
KL_ESTIMATORS = ("k1", "k2", "k3")
TIS_LEVELS = ("token", "sequence")
MIS_LEVELS = ("token", "sequence", "geometric")
BASELINES = ("leave_one_out", "group_mean", "none")
KL_PLACEMENTS = ("loss", "reward")

# Quantiles reported for the (pre-clip) ratio metrics (q = 0 and 1 are the min and the max).
_RATIO_QUANTILES = ((0.0, "min"), (0.01, "p01"), (0.5, "p50"), (0.99, "p99"), (1.0, "max"))


# ------------------------------------------------------------------------------------------------
# Validation helpers (trace time; every message names the offending argument).
# ------------------------------------------------------------------------------------------------


def _check_array(x, name: str) -> jax.Array:
    if x is None:
        raise ValueError(f"`{name}` must be an array, got None.")
    try:
        return jnp.asarray(x)
    except TypeError as e:
        raise ValueError(f"`{name}` must be an array, got {type(x).__name__}.") from e


def _check_rank(x: jax.Array, rank: int, name: str, layout: str) -> None:
    try:
        chex.assert_rank(x, rank)
    except AssertionError as e:
        raise ValueError(
            f"`{name}` must have rank {rank} (shape {layout}), "
            f"got shape {tuple(x.shape)}.") from e


def _check_float(x: jax.Array, name: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"`{name}` must be a floating-point array, got dtype {x.dtype}.")


def _check_same_shape(x: jax.Array, ref_shape, name: str, ref_name: str) -> None:
    try:
        chex.assert_shape(x, tuple(ref_shape))
    except AssertionError as e:
        raise ValueError(
            f"`{name}` must have the same shape as `{ref_name}` {tuple(ref_shape)}, "
            f"got {tuple(x.shape)}.") from e


def _check_choice(value, choices, name: str) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; valid values are {list(choices)}.")


def _is_static_number(x) -> bool:
    return isinstance(x, numbers.Number) and not isinstance(x, bool)


def _check_number(x, name: str, *, low=None, low_inclusive=True, allow_none=False) -> None:
    """Checks a Python-number option; traced/array values are accepted without a value check."""
    if x is None:
        if allow_none:
            return
        raise ValueError(f"`{name}` must be a number, got None.")
    if isinstance(x, bool) or not (_is_static_number(x) or isinstance(x, (jax.Array, np.ndarray))):
        raise ValueError(f"`{name}` must be a number, got {x!r}.")
    if not _is_static_number(x):
        return
    if math.isnan(x):
        raise ValueError(f"`{name}` must not be NaN.")
    if low is not None:
        if (low_inclusive and x < low) or (not low_inclusive and x <= low):
            op = ">=" if low_inclusive else ">"
            raise ValueError(f"`{name}` must be {op} {low}, got {x}.")


def _check_group_size(group_size, batch: int, *, min_size: int, name: str = "group_size",
                      why: str = "") -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise ValueError(
            f"`{name}` must be a Python int (a static value under jit), got {group_size!r}.")
    group_size = int(group_size)
    if group_size < min_size:
        raise ValueError(f"`{name}` must be >= {min_size}{why}, got {group_size}.")
    if batch % group_size != 0:
        raise ValueError(
            f"`{name}`={group_size} must divide the batch size B={batch} "
            f"(groups are contiguous rows).")
    return group_size


def _float_dtype(*xs) -> jnp.dtype:
    """Computation dtype: at least float32 (bf16/fp16 inputs are upcast)."""
    return jnp.result_type(jnp.float32, *[x.dtype for x in xs if x is not None])


def _prepare_mask(mask, shape, name: str = "mask") -> jax.Array:
    mask = _check_array(mask, name)
    _check_rank(mask, 2, name, "[B, T]")
    _check_same_shape(mask, shape, name, "logp")
    return mask != 0  # bool: nonzero / True marks a real token.


def _prepare_token_array(x, shape, name: str, m: jax.Array, dtype, required: bool = True):
    """Validates a [B, T] per-token float array and zeroes its masked positions."""
    if x is None and not required:
        return None
    x = _check_array(x, name)
    _check_rank(x, 2, name, "[B, T]")
    _check_same_shape(x, shape, name, "logp")
    _check_float(x, name)
    return jnp.where(m, x.astype(dtype), jnp.zeros((), dtype))


# ------------------------------------------------------------------------------------------------
# Masked reductions, aggregation, quantiles.
# ------------------------------------------------------------------------------------------------


def _masked_sum(x: Array, m: Array, axis=None) -> Array:
    return jnp.sum(jnp.where(m, x, jnp.zeros((), x.dtype)), axis=axis)


def _masked_mean(x: Array, m: Array, axis=None, empty_value: float = 0.0) -> Array:
    n = jnp.sum(m, axis=axis)
    s = _masked_sum(x, m, axis=axis)
    return jnp.where(n > 0, s / jnp.maximum(n, 1), jnp.asarray(empty_value, x.dtype))


def _masked_max(x: Array, m: Array, empty_value: float = 0.0) -> Array:
    lowest = jnp.finfo(x.dtype).min
    empty = jnp.asarray(empty_value, x.dtype)
    return jnp.where(jnp.any(m), jnp.max(jnp.where(m, x, lowest)), empty)


def _masked_min(x: Array, m: Array, empty_value: float = 0.0) -> Array:
    highest = jnp.finfo(x.dtype).max
    empty = jnp.asarray(empty_value, x.dtype)
    return jnp.where(jnp.any(m), jnp.min(jnp.where(m, x, highest)), empty)


def masked_quantiles(x: Array, mask: Array, quantiles, empty_value: float = 0.0) -> Array:
    """Quantiles of the masked entries of `x`, jit-friendly (static shapes, one sort).

    Uses linear interpolation between order statistics, like `numpy.quantile`'s default
    ("linear", position q·(n−1) among the n masked values). Masked-out entries are sorted to the end
    and never indexed. If no entry is selected every quantile is `empty_value`.

    Args:
        x: array of any shape.
        mask: boolean or 0/1 array of the same shape; nonzero selects an entry.
        quantiles: a sequence of Python floats in [0, 1].
        empty_value: value returned when the mask selects nothing.

    Returns:
        Array of shape [len(quantiles)].
    """
    x = jnp.asarray(x)
    m = jnp.asarray(mask) != 0
    flat, mflat = x.reshape(-1), m.reshape(-1)
    n = jnp.sum(mflat)
    highest = jnp.finfo(x.dtype).max
    s = jnp.sort(jnp.where(mflat, flat, highest))
    q = jnp.asarray(quantiles, x.dtype)
    pos = jnp.clip(q * (n - 1).astype(x.dtype), 0.0, None)
    lo = jnp.floor(pos).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, jnp.maximum(n - 1, 0))
    frac = pos - lo.astype(x.dtype)
    s_lo, s_hi = s[lo], s[hi]
    val = s_lo + frac * (s_hi - s_lo)
    return jnp.where(n > 0, val, jnp.asarray(empty_value, x.dtype))


def aggregate(per_token: Array, mask: Array, aggregation: str = "seq-mean-token-mean",
              normalizer: Numeric | None = None) -> Array:
    """Reduces a per-token [B, T] quantity to a scalar; masked tokens count nowhere.

    With m the (boolean) mask, n_i = Σ_t m_{i,t} and V = {i : n_i > 0} the rows with a real token:

    * ``"token-mean"`` (DAPO, https://arxiv.org/abs/2503.14476): Σ_{i,t} m x / Σ_{i,t} m.
    * ``"seq-mean-token-mean"`` (GRPO, https://arxiv.org/abs/2402.03300):
      (1/|V|) Σ_{i∈V} (1/n_i) Σ_t m x.
    * ``"seq-mean-token-sum"``: (1/|V|) Σ_{i∈V} Σ_t m x.
    * ``"seq-mean-token-sum-norm"`` (Dr. GRPO, https://arxiv.org/abs/2503.20783):
      (1/|V|) Σ_{i∈V} (1/normalizer) Σ_t m x, a constant normalizer (the generation budget; the
      padded length T when `normalizer` is None, which is only right if the arrays are padded
      exactly to the budget: pass it explicitly otherwise, or the loss scales with the padding).

    All-masked rows contribute to neither the numerator nor the denominator (they are outside V),
    exactly like masked tokens; this is what makes sequence-level rejection (MIS) drop a sequence
    from the mean instead of counting it as a zero (slime PR 657). If nothing is unmasked the result
    is 0.

    Args:
        per_token: [B, T] values.
        mask: [B, T] boolean or 0/1 mask (nonzero = counts).
        aggregation: one of `AGGREGATIONS`.
        normalizer: positive constant for "seq-mean-token-sum-norm" (default T).

    Returns:
        A scalar.
    """
    _check_choice(aggregation, AGGREGATIONS, "aggregation")
    x = jnp.asarray(per_token)
    m = jnp.asarray(mask) != 0
    if aggregation == "token-mean":
        return _masked_mean(x, m)
    row_n = jnp.sum(m, axis=-1)
    row_sum = _masked_sum(x, m, axis=-1)
    if aggregation == "seq-mean-token-mean":
        row = row_sum / jnp.maximum(row_n, 1).astype(x.dtype)
    elif aggregation == "seq-mean-token-sum":
        row = row_sum
    else:
        if normalizer is None:
            normalizer = x.shape[-1]
        _check_number(normalizer, "normalizer", low=0, low_inclusive=False)
        row = row_sum / jnp.asarray(normalizer, x.dtype)
    return _masked_mean(row, row_n > 0)


# ------------------------------------------------------------------------------------------------
# Advantages.
# ------------------------------------------------------------------------------------------------


def group_advantages(rewards: Array, group_size: int, *, std_normalize: bool = True,
                     leave_one_out: bool = False, eps: float = 1e-6,
                     std_ddof: int = 1) -> Array:
    """Group-relative advantages for outcome rewards (GRPO, Dr. GRPO, RLOO).

    For a group r_1..r_G (contiguous rows of `rewards`):

    * GRPO (Shao et al. 2024, https://arxiv.org/abs/2402.03300):
      A_i = (r_i − mean(r)) / (std(r) + eps).
    * Dr. GRPO (Liu et al. 2025, https://arxiv.org/abs/2503.20783), ``std_normalize=False``:
      A_i = r_i − mean(r).
    * RLOO (Kool et al. 2019; Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740),
      ``leave_one_out=True``: A_i = r_i − (1/(G−1)) Σ_{j≠i} r_j = G/(G−1)·(r_i − mean(r)); if
      `std_normalize` is also True it is further divided by (std(r) + eps).

    std convention: by default the *sample* standard deviation (``std_ddof=1``, divisor G−1), which
    is what `torch.std` (used by the TRL and verl GRPO implementations) computes; pass
    ``std_ddof=0`` for the population std (divisor G).

    A group whose rewards are all exactly equal gets advantage exactly 0 (no NaN, no 0/eps blow-up);
    this is decided by an exact max == min test, not by the (rounded) std.

    Args:
        rewards: [B] sequence rewards, B = (number of groups)·group_size.
        group_size: G >= 2, a Python int.
        std_normalize: divide by the group std (GRPO) or not (Dr. GRPO, RLOO).
        leave_one_out: use the leave-one-out mean as baseline (RLOO).
        eps: added to the std in the denominator.
        std_ddof: 1 (sample std, default) or 0 (population std).

    Returns:
        [B] advantages (stop-gradient is not applied; rewards are normally constants).
    """
    rewards = _check_array(rewards, "rewards")
    _check_rank(rewards, 1, "rewards", "[B]")
    batch = rewards.shape[0]
    g = _check_group_size(group_size, batch, min_size=2,
                          why=" (a group of one sample has no baseline)")
    _check_number(eps, "eps", low=0)
    if std_ddof not in (0, 1):
        raise ValueError(f"`std_ddof` must be 0 or 1, got {std_ddof!r}.")
    dtype = _float_dtype(rewards)
    r = rewards.astype(dtype).reshape(batch // g, g)
    all_equal = jnp.max(r, axis=1, keepdims=True) == jnp.min(r, axis=1, keepdims=True)
    mean = jnp.mean(r, axis=1, keepdims=True)
    centered = r - mean
    if leave_one_out:
        adv = centered * (g / (g - 1))
    else:
        adv = centered
    if std_normalize:
        var = jnp.sum(centered**2, axis=1, keepdims=True) / (g - std_ddof)
        # sqrt'(0) is inf: keep gradients w.r.t. rewards finite.
        safe_var = jnp.where(all_equal, jnp.ones_like(var), var)
        adv = adv / (jnp.sqrt(safe_var) + eps)
    adv = jnp.where(all_equal, jnp.zeros_like(adv), adv)
    return adv.reshape(batch)


def group_advantage_stats(rewards: Array, group_size: int) -> dict[str, Array]:
    """Per-batch statistics of the groups (for logging; all scalars, stop-gradient).

    Args:
        rewards: [B] sequence rewards in contiguous groups.
        group_size: G >= 1, a Python int dividing B.

    Returns:
        dict with
            ``zero_adv_group_frac``: fraction of groups whose rewards are all equal (they get zero
                advantage under every baseline here, so they carry no learning signal; DAPO's
                dynamic sampling drops them),
            ``num_groups``, ``reward_mean``, ``reward_std`` (population std over the batch),
            ``group_reward_std_mean`` (mean over groups of the within-group sample std; 0 when
                G = 1).
    """
    rewards = _check_array(rewards, "rewards")
    _check_rank(rewards, 1, "rewards", "[B]")
    batch = rewards.shape[0]
    g = _check_group_size(group_size, batch, min_size=1)
    dtype = _float_dtype(rewards)
    r = _sg(rewards.astype(dtype)).reshape(batch // g, g)
    all_equal = jnp.max(r, axis=1) == jnp.min(r, axis=1)
    if g > 1:
        gstd = jnp.sqrt(jnp.sum((r - r.mean(axis=1, keepdims=True))**2, axis=1) / (g - 1))
    else:
        gstd = jnp.zeros((batch // g,), dtype)
    return {
        "zero_adv_group_frac": jnp.mean(all_equal.astype(dtype)),
        "num_groups": jnp.asarray(batch // g, dtype),
        "reward_mean": jnp.mean(r),
        "reward_std": jnp.std(r),
        "group_reward_std_mean": jnp.mean(gstd),
    }


def _zero_adv_group_frac(adv_tok: Array, m: Array, group_size: int) -> Array:
    """Fraction of groups whose (masked) advantages are all exactly zero."""
    batch = adv_tok.shape[0]
    nonzero_row = jnp.any(jnp.logical_and(m, adv_tok != 0), axis=-1)
    groups = nonzero_row.reshape(batch // group_size, group_size)
    return jnp.mean(jnp.logical_not(jnp.any(groups, axis=1)).astype(adv_tok.dtype))


# ------------------------------------------------------------------------------------------------
# KL estimators.
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# Ratios and the GRPO-family surrogate.
# ------------------------------------------------------------------------------------------------


def _level_log_ratio(log_ratio_tok: Array, m: Array, level: str) -> Array:
    """Per-token log-ratio → log-ratio at `level`, [B, T] (broadcast for sequence levels)."""
    if level == "token":
        return log_ratio_tok
    row_sum = _masked_sum(log_ratio_tok, m, axis=-1)
    if level in ("sequence", "sequence_product"):
        row = row_sum
    else:  # "sequence_geomean" / "geometric"
        row = row_sum / jnp.maximum(jnp.sum(m, axis=-1), 1).astype(log_ratio_tok.dtype)
    return jnp.broadcast_to(row[:, None], log_ratio_tok.shape)


def _log_ess_frac(log_w: Array, valid: Array) -> Array:
    """Kish ESS / n of weights exp(log_w) over `valid` rows, in log space: (Σw)²/(n Σw²)."""
    very_negative = jnp.asarray(-1e30, log_w.dtype)
    lw = jnp.where(valid, log_w, very_negative)
    n = jnp.sum(valid)
    log_ess = (2.0 * jax.nn.logsumexp(lw) - jax.nn.logsumexp(2.0 * lw)
               - jnp.log(jnp.maximum(n, 1).astype(log_w.dtype)))
    return jnp.where(n > 0, jnp.clip(jnp.exp(log_ess), 0.0, 1.0), jnp.ones((), log_w.dtype))


def _masked_means(values: dict[str, tuple[Array, float]], m: Array, out: dict) -> None:
    """out[k] = masked mean of values[k][0] over m (values[k][1] if m is empty), in one pass."""
    if not values:
        return
    stacked = jnp.stack([v for v, _ in values.values()])
    n = jnp.sum(m)
    means = jnp.sum(jnp.where(m, stacked, 0.0), axis=(1, 2)) / jnp.maximum(n, 1)
    empty = jnp.asarray([e for _, e in values.values()], stacked.dtype)
    means = jnp.where(n > 0, means, empty)
    for i, k in enumerate(values):
        out[k] = means[i]


def _ratio_quantile_metrics(prefix: str, ratio: Array, m: Array, out: dict) -> None:
    qs = masked_quantiles(ratio, m, [q for q, _ in _RATIO_QUANTILES], empty_value=1.0)
    for i, (_, name) in enumerate(_RATIO_QUANTILES):
        out[f"{prefix}_{name}"] = qs[i]


def _behavior_token_metrics(lp: Array, blp: Array, log_ratio_clip: float) -> dict:
    """Per-token k1 and k3 estimates of KL(π_b‖π_θ) on the behavior samples (r = π_θ/π_b)."""
    d = lp - blp  # log π_θ/π_b per token, 0 on masked tokens.
    dc = jnp.clip(d, -log_ratio_clip, log_ratio_clip)
    return {"kl_behavior_k1": (-d, 0.0), "kl_behavior_k3": (jnp.exp(dc) - 1.0 - d, 0.0)}


def _ess_metric(lp: Array, blp: Array, m: Array, out: dict) -> None:
    """Kish ESS/B of the sequence weights π_θ(y_i)/π_b(y_i) over rows with a real token."""
    out["ess_frac"] = _log_ess_frac(jnp.sum(lp - blp, axis=-1), jnp.any(m, axis=-1))


def grpo_surrogate(
    logp: Array,
    behavior_logp: Array,
    advantages: Array,
    mask: Array,
    *,
    clip_eps: Numeric = 0.2,
    clip_eps_high: Numeric | None = None,
    clip_mode: str = "ppo",
    dual_clip_c: Numeric = 3.0,
    ratio_level: str = "token",
    aggregation: str = "seq-mean-token-mean",
    normalizer: Numeric | None = None,
    proximal_logp: Array | None = None,
    tis_cap: Numeric | None = None,
    tis_level: str = "token",
    mis_low: Numeric | None = None,
    mis_high: Numeric | None = None,
    mis_level: str = "token",
    mis_veto: Numeric | None = None,
    ref_logp: Array | None = None,
    kl_coef: Numeric = 0.0,
    kl_estimator: str = "k3",
    log_ratio_clip: float = 20.0,
    group_size: int | None = None,
) -> tuple[Array, dict[str, Array]]:
    """The GRPO-family importance-weighted surrogate loss (to MINIMIZE) and its metrics.

    **Ratio.** The trust-region ratio is ρ = π_θ/π_anchor with anchor = π_prox if `proximal_logp`
    is given (decoupled PPO) and π_b otherwise. Per token, d_t = log π_θ(y_t) − log π_anchor(y_t);
    `ratio_level` selects

    * ``"token"`` (PPO/GRPO): log ρ_t = d_t;
    * ``"sequence_geomean"`` (GSPO, Zheng et al. 2025, https://arxiv.org/abs/2507.18071):
      log s_i = (1/|y_i|) Σ_t d_t, shared by all tokens of row i;
    * ``"sequence"`` (sequence-level IS): log ρ_i = Σ_t d_t, shared by all tokens of row i.

    Every log-ratio is clamped to ±`log_ratio_clip` (default 20, ratio ∈ [2e-9, 4.9e8]) before
    exp, so ratios are always finite; beyond the clamp the ratio's gradient is 0. This never binds
    in sane training and is a NaN guard, not a tuning knob.

    **Clipping** (ε_low = `clip_eps`, ε_high = `clip_eps_high` or `clip_eps`; A = advantage):

    * ``"ppo"``: f = min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A) (Schulman et al. 2017,
      https://arxiv.org/abs/1707.06347; asymmetric ε is DAPO's clip-higher,
      https://arxiv.org/abs/2503.14476).
    * ``"dual"``: f = max(f_ppo, c·A) for A < 0, f_ppo otherwise, c = `dual_clip_c` > 1
      (Ye et al. 2020, https://arxiv.org/abs/1912.09729).
    * ``"none"``: f = ρA (plain importance-weighted policy gradient).
    * ``"cispo"``: f = sg(clip(ρ, 1−ε_low, 1+ε_high)) · A · log π_θ (MiniMax-M1,
      https://arxiv.org/abs/2506.13585): no token loses its gradient; only the weight is clipped.
      Its value is not a surrogate of J (it contains log π_θ); its gradient is.

    **Off-policy corrections.** The IS-correction ratio is ρ_b = π_c/π_b with π_c = π_prox when
    `proximal_logp` is given and π_c = sg(π_θ) (the *current* policy) otherwise; the level of the
    weight is `tis_level` (token: per-token ratio; sequence: product over the row).

    * Decoupled PPO (`proximal_logp` given; Hilton et al. 2022, https://arxiv.org/abs/2110.00641;
      AReaL, https://arxiv.org/abs/2505.24298): per-token objective sg(w)·f(u), u = π_θ/π_prox,
      w = π_prox/π_b, truncated to min(w, C) if `tis_cap` = C is set.
    * TIS without `proximal_logp` (Yao et al. 2025, https://fengyao.notion.site/off-policy-rl;
      "bypass" mode): ρ = π_θ/π_b already carries the IS weight, so the objective is
      multiplied by sg(min(ρ_b, C)/ρ) (computed in log space). The per-token gradient is then
      min(ρ_b, C)·A·∇log π wherever f = ρA (unclipped side), i.e. the truncated-IS policy
      gradient; with C >= 1 it is exactly PPO when π_θ = π_b. Not available with clip_mode
      "cispo" (which already truncates its weight via ε_high) unless `proximal_logp` is given.
    * MIS / rejection (Liu, Li et al. 2025, "When Speed Kills Stability"; IcePop): tokens
      (`mis_level="token"`) or whole sequences ("sequence": Π_t ρ_b,t; "geometric":
      (Π_t ρ_b,t)^{1/|y|}, Geo-RS) whose ρ_b leaves [`mis_low`, `mis_high`] are dropped;
      `mis_veto` = v additionally drops any sequence containing a token with ρ_b,t < v.
      Dropped tokens leave BOTH the numerator and the denominator of the aggregation (slime
      PR 657, https://github.com/THUDM/slime/pull/657), and
      fully-dropped rows leave the sequence mean. The KL term uses the same (reduced) mask.

    **Aggregation** of the per-token loss ℓ = −(weights)·f + β·k over the (post-MIS) mask: see
    `aggregate` ("token-mean" DAPO, "seq-mean-token-mean" GRPO, "seq-mean-token-sum",
    "seq-mean-token-sum-norm" Dr. GRPO with constant `normalizer`, default T). Rows with no real
    token are excluded from the sequence mean; if nothing is real the loss is 0.

    **KL in the loss.** With `ref_logp` and β = `kl_coef` > 0, β·k_t (`kl_estimate`, default k3
    as in DeepSeekMath, log r = ref_logp − logp) is added per token before aggregation. The
    tokens come from π_b, so off-policy the term is not importance-weighted (as in DeepSeekMath
    and the usual implementations): it estimates KL(π_θ‖π_ref) only approximately.

    Args:
        logp: [B, T] log π_θ of the sampled tokens (differentiated).
        behavior_logp: [B, T] log π_b of the same tokens (stop-gradient).
        advantages: [B] (broadcast over tokens) or [B, T] (stop-gradient).
        mask: [B, T] response mask, bool or float (nonzero = real token).
        clip_eps: ε_low >= 0.
        clip_eps_high: ε_high >= 0, default ε_low.
        clip_mode: "ppo", "dual", "none" or "cispo".
        dual_clip_c: dual-clip constant c > 1 (clip_mode "dual").
        ratio_level: "token", "sequence_geomean" or "sequence".
        aggregation: one of `AGGREGATIONS`.
        normalizer: constant for "seq-mean-token-sum-norm" (default T).
        proximal_logp: optional [B, T] log π_prox (decoupled PPO; stop-gradient).
        tis_cap: optional truncation C > 0 of the IS weight.
        tis_level: "token" or "sequence" (level of the TIS / decoupled IS weight).
        mis_low, mis_high: optional bounds of the MIS acceptance window (0 <= low < high).
        mis_level: "token", "sequence" or "geometric".
        mis_veto: optional per-token veto threshold (> 0) for whole sequences.
        ref_logp: optional [B, T] log π_ref (stop-gradient).
        kl_coef: β >= 0; > 0 requires `ref_logp`.
        kl_estimator: "k1", "k2" or "k3".
        log_ratio_clip: NaN-guard clamp on every log-ratio before exp.
        group_size: optional Python int; enables the `zero_adv_group_frac` metric.

    Returns:
        (loss, metrics): scalar loss to minimize and a dict of finite scalar metrics
        (stop-gradient): ``loss_pg``, ``loss_kl``; pre-clip ratio
        ``ratio_{mean,max,min,p01,p50,p99}`` (over real tokens; sequence-level ratios are
        repeated per token); ``clip_frac_low`` / ``clip_frac_high`` / ``clip_frac`` (ppo/dual:
        fraction of kept tokens whose gradient the clip zeroes, i.e.
        A<0 & ρ<1−ε_low, resp. A>0 & ρ>1+ε_high; cispo: fraction whose weight is clipped);
        ``dual_clip_frac``; ``is_weight_{mean,max}`` (ρ_b before truncation), ``tis_frac`` (fraction
        of kept tokens with a truncated weight); ``pad_frac`` (masked share of the [B, T] array),
        ``mis_masked_frac`` (fraction of real tokens dropped by MIS incl. veto), ``veto_seq_frac``;
        ``kl_behavior_k1`` / ``kl_behavior_k3`` (token-mean estimates of KL(π_b‖π_θ) on the sampled
        tokens), ``ess_frac`` (Kish ESS/B of the sequence weights π_θ(y_i)/π_b(y_i), in log space,
        over rows with a real token), ``kl_ref`` (token-mean of the chosen estimator, when
        `ref_logp` is given), ``adv_mean``, and ``zero_adv_group_frac`` when `group_size` is given.
    """
    # ---- validation (trace time) ----
    logp = _check_array(logp, "logp")
    _check_rank(logp, 2, "logp", "[B, T]")
    _check_float(logp, "logp")
    shape = logp.shape
    _check_choice(clip_mode, CLIP_MODES, "clip_mode")
    _check_choice(ratio_level, RATIO_LEVELS, "ratio_level")
    _check_choice(aggregation, AGGREGATIONS, "aggregation")
    _check_choice(tis_level, TIS_LEVELS, "tis_level")
    _check_choice(mis_level, MIS_LEVELS, "mis_level")
    _check_choice(kl_estimator, KL_ESTIMATORS, "kl_estimator")
    _check_number(clip_eps, "clip_eps", low=0)
    _check_number(clip_eps_high, "clip_eps_high", low=0, allow_none=True)
    _check_number(dual_clip_c, "dual_clip_c", low=1, low_inclusive=False)
    _check_number(normalizer, "normalizer", low=0, low_inclusive=False, allow_none=True)
    _check_number(tis_cap, "tis_cap", low=0, low_inclusive=False, allow_none=True)
    _check_number(mis_low, "mis_low", low=0, allow_none=True)
    _check_number(mis_high, "mis_high", low=0, low_inclusive=False, allow_none=True)
    _check_number(mis_veto, "mis_veto", low=0, low_inclusive=False, allow_none=True)
    _check_number(kl_coef, "kl_coef", low=0)
    _check_number(log_ratio_clip, "log_ratio_clip", low=0, low_inclusive=False)
    if _is_static_number(mis_low) and _is_static_number(mis_high) and mis_low >= mis_high:
        raise ValueError(f"`mis_low` ({mis_low}) must be < `mis_high` ({mis_high}).")
    if clip_mode == "cispo" and tis_cap is not None and proximal_logp is None:
        raise ValueError("`tis_cap` cannot be combined with clip_mode 'cispo' without "
                         "`proximal_logp`: CISPO already truncates its IS weight "
                         "(use `clip_eps_high`).")
    kl_active = ref_logp is not None and not (_is_static_number(kl_coef) and kl_coef == 0)
    if ref_logp is None and not (_is_static_number(kl_coef) and kl_coef == 0):
        raise ValueError(f"`kl_coef`={kl_coef!r} requires `ref_logp` (the reference log-probs).")

    m = _prepare_mask(mask, shape)
    advantages = _check_array(advantages, "advantages")
    if behavior_logp is None:
        raise ValueError("`behavior_logp` must be an array, got None.")
    dtype = _float_dtype(logp, jnp.asarray(behavior_logp))
    lp = jnp.where(m, logp.astype(dtype), jnp.zeros((), dtype))
    blp = _sg(_prepare_token_array(behavior_logp, shape, "behavior_logp", m, dtype))
    plp = _prepare_token_array(proximal_logp, shape, "proximal_logp", m, dtype, required=False)
    plp = None if plp is None else _sg(plp)
    ref = _prepare_token_array(ref_logp, shape, "ref_logp", m, dtype, required=False)
    ref = None if ref is None else _sg(ref)
    if advantages.ndim == 1:
        if advantages.shape[0] != shape[0]:
            raise ValueError(f"`advantages` of rank 1 must have shape [B]=({shape[0]},), "
                             f"got {tuple(advantages.shape)}.")
        adv = jnp.broadcast_to(advantages.astype(dtype)[:, None], shape)
    elif advantages.ndim == 2:
        _check_same_shape(advantages, shape, "advantages", "logp")
        adv = advantages.astype(dtype)
    else:
        raise ValueError(f"`advantages` must have rank 1 ([B]) or 2 ([B, T]), "
                         f"got shape {tuple(advantages.shape)}.")
    adv = _sg(jnp.where(m, adv, jnp.zeros((), dtype)))
    if group_size is not None:
        group_size = _check_group_size(group_size, shape[0], min_size=1)

    eps_low = clip_eps
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    lo, hi = 1.0 - eps_low, 1.0 + eps_high
    lrc = log_ratio_clip

    # ---- trust-region ratio ρ (vs proximal if given, else vs behavior) ----
    anchor = plp if plp is not None else blp
    log_rho = jnp.clip(_level_log_ratio(lp - anchor, m, ratio_level), -lrc, lrc)
    rho = jnp.exp(log_rho)

    if clip_mode in ("ppo", "dual"):
        unclipped = rho * adv
        clipped = jnp.clip(rho, lo, hi) * adv
        f = jnp.minimum(unclipped, clipped)
        if clip_mode == "dual":
            f = jnp.where(adv < 0, jnp.maximum(f, dual_clip_c * adv), f)
        clip_low_tok = jnp.logical_and(adv < 0, rho < lo)
        clip_high_tok = jnp.logical_and(adv > 0, rho > hi)
    elif clip_mode == "none":
        f = rho * adv
        clip_low_tok = clip_high_tok = jnp.zeros(shape, bool)
    else:  # cispo
        f = _sg(jnp.clip(rho, lo, hi)) * adv * lp
        clip_low_tok, clip_high_tok = rho < lo, rho > hi
    if clip_mode == "dual":
        dual_tok = jnp.logical_and(adv < 0, rho > dual_clip_c)
    else:
        dual_tok = jnp.zeros(shape, bool)

    # ---- IS-correction ratio ρ_b = π_c/π_b (π_c = π_prox if given, else sg(π_θ)) ----
    corr = plp if plp is not None else _sg(lp)
    log_isw_tok = corr - blp  # 0 on masked tokens.
    log_isw = jnp.clip(_level_log_ratio(log_isw_tok, m, tis_level), -lrc, lrc)
    if tis_cap is not None:
        log_cap = jnp.log(jnp.asarray(tis_cap, dtype))
        log_w = jnp.minimum(log_isw, log_cap)
        tis_tok = log_isw > log_cap
    else:
        log_w = log_isw
        tis_tok = jnp.zeros(shape, bool)
    if plp is not None:
        weight = _sg(jnp.exp(log_w))                     # decoupled PPO (optionally truncated).
    elif tis_cap is not None:
        # Bypass TIS: replaces the weight ρ carried by f with min(ρ_b, C).
        weight = _sg(jnp.exp(log_w - log_rho))
    else:
        weight = None

    # ---- MIS (masking / rejection) ----
    keep = m
    mis_drop_tok = jnp.zeros(shape, bool)
    if mis_low is not None or mis_high is not None:
        lvl = {"token": "token", "sequence": "sequence", "geometric": "sequence_geomean"}[mis_level]
        log_mis = _level_log_ratio(log_isw_tok, m, lvl)
        out_of_window = jnp.zeros(shape, bool)
        if mis_low is not None:
            out_of_window |= log_mis < jnp.log(jnp.asarray(mis_low, dtype))
        if mis_high is not None:
            out_of_window |= log_mis > jnp.log(jnp.asarray(mis_high, dtype))
        mis_drop_tok |= out_of_window
    veto_row = jnp.zeros((shape[0],), bool)
    if mis_veto is not None:
        veto_row = jnp.any(jnp.logical_and(m, log_isw_tok < jnp.log(jnp.asarray(mis_veto, dtype))),
                           axis=-1)
        mis_drop_tok |= veto_row[:, None]
    mis_drop_tok = jnp.logical_and(mis_drop_tok, m)
    keep = jnp.logical_and(m, jnp.logical_not(mis_drop_tok))

    # ---- per-token loss and aggregation ----
    pg_tok = -f if weight is None else -(weight * f)
    loss_pg = aggregate(pg_tok, keep, aggregation, normalizer)
    if ref is not None:
        kl_tok = kl_estimate(lp, ref, kl_estimator, lrc)
    if kl_active:
        loss_kl = aggregate(kl_tok, keep, aggregation, normalizer)
        loss = loss_pg + kl_coef * loss_kl
    else:
        loss_kl = jnp.zeros((), dtype)
        loss = loss_pg

    # ---- metrics (stop-gradient, all finite) ----
    met: dict[str, Array] = {"loss_pg": loss_pg, "loss_kl": loss_kl}
    isw = jnp.exp(log_isw)
    over_real = {"ratio_mean": (rho, 1.0), "is_weight_mean": (isw, 1.0),
                 "mis_masked_frac": (mis_drop_tok.astype(dtype), 0.0), "adv_mean": (adv, 0.0)}
    over_real.update(_behavior_token_metrics(lp, blp, lrc))
    if ref is not None:
        over_real["kl_ref"] = (kl_tok, 0.0)
    _masked_means(over_real, m, met)
    _masked_means({"clip_frac_low": (clip_low_tok.astype(dtype), 0.0),
                   "clip_frac_high": (clip_high_tok.astype(dtype), 0.0),
                   "dual_clip_frac": (dual_tok.astype(dtype), 0.0),
                   "tis_frac": (tis_tok.astype(dtype), 0.0)}, keep, met)
    met["clip_frac"] = met["clip_frac_low"] + met["clip_frac_high"]
    _ratio_quantile_metrics("ratio", rho, m, met)
    met["is_weight_max"] = _masked_max(isw, m, empty_value=1.0)
    met["pad_frac"] = 1.0 - jnp.mean(m.astype(dtype))
    met["veto_seq_frac"] = _masked_mean(veto_row.astype(dtype), jnp.any(m, axis=-1))
    _ess_metric(lp, blp, m, met)
    if group_size is not None:
        met["zero_adv_group_frac"] = _zero_adv_group_frac(adv, m, group_size)
    met = {k: _sg(v.astype(dtype)) for k, v in met.items()}
    return loss, met


# ------------------------------------------------------------------------------------------------
# Total-derivative surrogate.
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# Registry.
# ------------------------------------------------------------------------------------------------

# Settings each kind of variant accepts (= the valid `make_loss` override keys).
_ADV_KEYS = ("std_normalize", "leave_one_out", "adv_eps", "std_ddof")
_SURROGATE_KEYS = _ADV_KEYS + (
    "clip_eps", "clip_eps_high", "clip_mode", "dual_clip_c", "ratio_level", "aggregation",
    "normalizer", "tis_cap", "tis_level", "mis_low", "mis_high", "mis_level", "mis_veto",
    "kl_coef", "kl_estimator", "kl_placement", "log_ratio_clip", "requires_proximal")
_TOTAL_DERIVATIVE_KEYS = ("truncation", "self_normalize", "baseline", "kl_coef", "kl_estimator",
                          "kl_placement", "log_ratio_clip")

_SURROGATE_DEFAULTS: dict[str, Any] = dict(
    std_normalize=True, leave_one_out=False, adv_eps=1e-6, std_ddof=1,
    clip_eps=0.2, clip_eps_high=None, clip_mode="ppo", dual_clip_c=3.0, ratio_level="token",
    aggregation="seq-mean-token-mean", normalizer=None, tis_cap=None, tis_level="token",
    mis_low=None, mis_high=None, mis_level="token", mis_veto=None,
    kl_coef=0.0, kl_estimator="k3", kl_placement="loss", log_ratio_clip=20.0,
    requires_proximal=False)
_TOTAL_DERIVATIVE_DEFAULTS: dict[str, Any] = dict(
    truncation=None, self_normalize=False, baseline="leave_one_out", kl_coef=0.0,
    kl_estimator="k1", kl_placement="reward", log_ratio_clip=20.0)

# name -> zero-argument function returning {"kind": "surrogate" | "total_derivative", **settings}.
LOSSES: dict[str, Callable[[], dict[str, Any]]] = {}


def register(name: str) -> Callable:
    """Decorator registering a loss variant under `name` (tunix `algo_core` style).

    The decorated function takes no arguments and returns the variant's settings: a dict with
    ``"kind"`` ("surrogate" → `grpo_surrogate`, or "total_derivative" →
    `total_derivative_surrogate`) and any subset of that kind's settings (the rest take the
    library defaults). Example::

            @register("grpo_eps01")
            def _():
                return dict(kind="surrogate", clip_eps=0.1)
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string, got {name!r}.")

    def deco(fn):
        if name in LOSSES:
            raise ValueError(f"A loss named {name!r} is already registered.")
        LOSSES[name] = fn
        return fn

    return deco


def list_losses() -> list[str]:
    """Names of all registered loss variants, sorted."""
    return sorted(LOSSES)


def loss_config(name: str, **overrides) -> dict[str, Any]:
    """The full settings `make_loss(name, **overrides)` uses (defaults + variant + overrides)."""
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; valid names are {list_losses()}.")
    spec = dict(LOSSES[name]())
    kind = spec.pop("kind", None)
    if kind == "surrogate":
        cfg, valid = dict(_SURROGATE_DEFAULTS), _SURROGATE_KEYS
    elif kind == "total_derivative":
        cfg, valid = dict(_TOTAL_DERIVATIVE_DEFAULTS), _TOTAL_DERIVATIVE_KEYS
    else:
        raise ValueError(f"Registered loss {name!r} has unknown kind {kind!r}; "
                         f"valid kinds are ['surrogate', 'total_derivative'].")
    for source, settings in (("registered variant", spec), ("override", overrides)):
        unknown = sorted(set(settings) - set(valid))
        if unknown:
            raise ValueError(f"Unknown {source} setting(s) {unknown} for loss {name!r}; "
                             f"valid settings are {sorted(valid)}.")
        cfg.update(settings)
    _check_choice(cfg["kl_placement"], KL_PLACEMENTS, "kl_placement")
    if kind == "total_derivative" and cfg["kl_placement"] != "reward":
        raise ValueError("`kl_placement` must be 'reward' for the total_derivative loss.")
    cfg["kind"] = kind
    return cfg


def make_loss(name: str, **overrides) -> Callable[..., tuple[Array, dict[str, Array]]]:
    """Builds the loss function of a registered variant.

    Returns ``loss_fn(logp, behavior_logp, rewards, mask, *, group_size, proximal_logp=None,
    ref_logp=None) -> (loss, metrics)``, which computes the group advantages with the variant's
    settings and calls `grpo_surrogate` (or `total_derivative_surrogate`). `overrides` replace any
    setting (see `loss_config`); unknown names or settings raise ValueError listing the valid ones.
    The returned function is pure and jittable with `group_size` static; its settings are in
    ``loss_fn.config``.

    KL: with ``kl_coef > 0`` the caller must pass `ref_logp`. ``kl_placement="loss"`` adds
    β·k per token to the loss (DeepSeekMath); ``"reward"`` subtracts β Σ_t k from the rewards
    before the advantages, computed on the *behavior* log-probs (fixed at rollout time, as in
    AReaL; `kl_penalized_rewards`). The estimator is the variant's `kl_estimator` (k3 for the
    surrogate variants, k1 for total_derivative); override it with kl_estimator="k1" for
    AReaL-style KL-in-reward.

    `proximal_logp` is used by the surrogate variants (decoupled PPO; TIS/MIS weights vs
    π_prox) and ignored by ``total_derivative`` (its weights are π_θ/π_b by construction).

    Metrics: everything the underlying surrogate reports plus ``reward_mean``, ``reward_std`` and
    ``zero_adv_group_frac`` (computed from the rewards actually used).
    """
    cfg = loss_config(name, **overrides)
    kind = cfg["kind"]

    def loss_fn(logp, behavior_logp, rewards, mask, *, group_size, proximal_logp=None,
                ref_logp=None):
        kl_coef = cfg["kl_coef"]
        kl_on = not (_is_static_number(kl_coef) and kl_coef == 0)
        if kl_on and ref_logp is None:
            raise ValueError(
                f"Loss {name!r} has kl_coef={kl_coef!r} and needs `ref_logp`; pass it, or "
                f"build the loss with make_loss({name!r}, kl_coef=0.0).")
        r = rewards
        if kl_on and cfg["kl_placement"] == "reward":
            r = kl_penalized_rewards(rewards, behavior_logp, ref_logp, mask, kl_coef,
                                     cfg["kl_estimator"])
        if kind == "total_derivative":
            loss, met = total_derivative_surrogate(
                logp, behavior_logp, r, mask, group_size, truncation=cfg["truncation"],
                self_normalize=cfg["self_normalize"], baseline=cfg["baseline"],
                log_ratio_clip=cfg["log_ratio_clip"])
        else:
            if cfg["requires_proximal"] and proximal_logp is None:
                raise ValueError(f"Loss {name!r} requires `proximal_logp` (the proximal policy's "
                                 f"log-probs).")
            adv = group_advantages(r, group_size, std_normalize=cfg["std_normalize"],
                                   leave_one_out=cfg["leave_one_out"], eps=cfg["adv_eps"],
                                   std_ddof=cfg["std_ddof"])
            in_loss = kl_on and cfg["kl_placement"] == "loss"
            loss, met = grpo_surrogate(
                logp, behavior_logp, adv, mask,
                clip_eps=cfg["clip_eps"], clip_eps_high=cfg["clip_eps_high"],
                clip_mode=cfg["clip_mode"], dual_clip_c=cfg["dual_clip_c"],
                ratio_level=cfg["ratio_level"], aggregation=cfg["aggregation"],
                normalizer=cfg["normalizer"], proximal_logp=proximal_logp,
                tis_cap=cfg["tis_cap"],
                tis_level=cfg["tis_level"], mis_low=cfg["mis_low"], mis_high=cfg["mis_high"],
                mis_level=cfg["mis_level"], mis_veto=cfg["mis_veto"],
                ref_logp=ref_logp if in_loss else None, kl_coef=kl_coef if in_loss else 0.0,
                kl_estimator=cfg["kl_estimator"], log_ratio_clip=cfg["log_ratio_clip"],
                group_size=group_size)
        met = dict(met)
        stats = group_advantage_stats(r, group_size)
        met["reward_mean"] = stats["reward_mean"]
        met["reward_std"] = stats["reward_std"]
        met["zero_adv_group_frac"] = stats["zero_adv_group_frac"]
        return loss, met

    loss_fn.config = dict(cfg)
    loss_fn.name = name
    loss_fn.__name__ = f"loss_{name}"
    loss_fn.__doc__ = f"Loss variant {name!r} with settings {cfg}. See `make_loss`."
    return loss_fn


@register("grpo")
def _grpo():
    """GRPO, DeepSeekMath (Shao et al. 2024, https://arxiv.org/abs/2402.03300): group mean/std
    advantage, token ratio, PPO clip ε = 0.2, per-sequence token mean, k3 KL in the loss with
    β = 0.04 (needs `ref_logp`; override kl_coef=0.0 to drop it)."""
    return dict(kind="surrogate", std_normalize=True, clip_eps=0.2, clip_mode="ppo",
                ratio_level="token", aggregation="seq-mean-token-mean", kl_coef=0.04,
                kl_estimator="k3", kl_placement="loss")


@register("dapo")
def _dapo():
    """DAPO (Yu et al. 2025, https://arxiv.org/abs/2503.14476): clip-higher ε_low = 0.2,
    ε_high = 0.28, token-level mean over the batch, no KL. (Dynamic sampling and overlong reward
    shaping are data/reward-side and not part of the loss.)"""
    return dict(kind="surrogate", std_normalize=True, clip_eps=0.2, clip_eps_high=0.28,
                clip_mode="ppo", aggregation="token-mean", kl_coef=0.0)


@register("dr_grpo")
def _dr_grpo():
    """Dr. GRPO (Liu et al. 2025, https://arxiv.org/abs/2503.20783): advantage without std
    normalisation, per-sequence token *sum* divided by a constant (the generation budget; default
    the padded length T, override `normalizer`), PPO clip 0.2, no KL."""
    return dict(kind="surrogate", std_normalize=False, clip_eps=0.2, clip_mode="ppo",
                aggregation="seq-mean-token-sum-norm", normalizer=None, kl_coef=0.0)


@register("gspo")
def _gspo():
    """GSPO (Zheng et al. 2025, https://arxiv.org/abs/2507.18071): length-normalised sequence
    ratio s_i = (π_θ(y_i)/π_old(y_i))^{1/|y_i|}, clipped to [1 − 3e-4, 1 + 4e-4], GRPO
    advantage, sequence-level objective (seq mean of a per-row constant), no KL."""
    return dict(kind="surrogate", std_normalize=True, ratio_level="sequence_geomean",
                clip_eps=3e-4, clip_eps_high=4e-4, clip_mode="ppo",
                aggregation="seq-mean-token-mean", kl_coef=0.0)


@register("rloo")
def _rloo():
    """RLOO (Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740): leave-one-out baseline, no
    std normalisation, REINFORCE on the whole sequence (token sum) without clipping (the paper is
    on-policy; off-policy the token ratio is applied unclipped). The paper's KL-in-reward is
    available with kl_coef > 0, kl_placement="reward"."""
    return dict(kind="surrogate", std_normalize=False, leave_one_out=True, clip_mode="none",
                aggregation="seq-mean-token-sum", kl_coef=0.0)


@register("cispo")
def _cispo():
    """CISPO (MiniMax-M1, https://arxiv.org/abs/2506.13585): sg(clip(ρ)) · A · log π_θ, token-level
    normalisation, no KL. The paper imposes no lower bound (ε_low = 1 here, i.e. weight >= 0) and
    tunes only ε_high; it does not state one value, 0.28 is the Trinity-RFT default [unverified
    against the paper]."""
    return dict(kind="surrogate", std_normalize=True, clip_mode="cispo", clip_eps=1.0,
                clip_eps_high=0.28, aggregation="token-mean", kl_coef=0.0)


@register("tis")
def _tis():
    """Truncated IS (Yao et al. 2025, https://fengyao.notion.site/off-policy-rl) on the DAPO recipe
    they used: token-level weight min(ρ_b, C) with C = 2 (verl / ms-swift example value), clip
    0.2 / 0.28, token-mean. With `proximal_logp` it is their formulation (PPO vs π_prox, weight
    π_prox/π_b); without it the weight is computed vs the current policy (bypass)."""
    return dict(kind="surrogate", std_normalize=True, clip_eps=0.2, clip_eps_high=0.28,
                clip_mode="ppo", aggregation="token-mean", tis_cap=2.0, tis_level="token",
                kl_coef=0.0)


@register("mis")
def _mis():
    """Masked IS (Liu, Li et al. 2025, "When Speed Kills Stability"): sequence-level rejection of
    sequences whose ρ_b = Π_t π_c/π_b leaves [0.5, 2] (window assumed: upper 2 as the usual TIS/
    verl threshold, lower its reciprocal [unverified]), on GRPO (clip 0.2, seq-mean-token-mean, no
    KL). Use mis_level="geometric" with a tight window (e.g. 0.999–1.001) and mis_veto=1e-4 for
    Geo-RS (see also the `geo_rs` variant)."""
    return dict(kind="surrogate", std_normalize=True, clip_eps=0.2, clip_mode="ppo",
                aggregation="seq-mean-token-mean", mis_low=0.5, mis_high=2.0,
                mis_level="sequence", kl_coef=0.0)


@register("geo_rs")
def _geo_rs():
    """Geometric-mean sequence rejection (Geo-RS) with token veto, per the verl rollout-correction
    doc (§3.3–3.5): keep sequences with (Π_t ρ_b,t)^{1/|y|} ∈ [1/1.001, 1.001] and no token with
    ρ_b,t < 1e-4; GRPO clip 0.2, seq-mean-token-mean, no KL."""
    return dict(kind="surrogate", std_normalize=True, clip_eps=0.2, clip_mode="ppo",
                aggregation="seq-mean-token-mean", mis_low=1.0 / 1.001, mis_high=1.001,
                mis_level="geometric", mis_veto=1e-4, kl_coef=0.0)


@register("decoupled_ppo")
def _decoupled_ppo():
    """Decoupled PPO (Hilton et al. 2022, https://arxiv.org/abs/2110.00641; AReaL,
    https://arxiv.org/abs/2505.24298): clip u = π_θ/π_prox at ε = 0.2, times the untruncated
    stop-gradient weight π_prox/π_b (set tis_cap to truncate), token-mean (AReaL removes the
    per-sequence length normalisation), no KL. Requires `proximal_logp`."""
    return dict(kind="surrogate", std_normalize=True, clip_eps=0.2, clip_mode="ppo",
                aggregation="token-mean", kl_coef=0.0, requires_proximal=True)


@register("pg")
def _pg():
    """Plain importance-weighted policy gradient, no clipping: ρ·A with token ratio π_θ/π_b, GRPO
    advantage, token-mean (the Qwen formulation's "PG + IS", https://arxiv.org/abs/2512.01374)."""
    return dict(kind="surrogate", std_normalize=True, clip_mode="none", aggregation="token-mean",
                kl_coef=0.0)


@register("total_derivative")
def _total_derivative():
    """`total_derivative_surrogate` with the leave-one-out baseline, no truncation, no
    self-normalisation: an unbiased estimate of ∇J from behavior samples."""
    return dict(kind="total_derivative", truncation=None, self_normalize=False,
                baseline="leave_one_out", kl_coef=0.0)


__all__ = [
    "AGGREGATIONS", "BASELINES", "CLIP_MODES", "KL_ESTIMATORS", "KL_PLACEMENTS", "LOSSES",
    "MIS_LEVELS", "RATIO_LEVELS", "TIS_LEVELS", "aggregate", "grpo_surrogate",
    "group_advantage_stats", "group_advantages", "kl_estimate", "kl_penalized_rewards",
    "list_losses", "loss_config", "make_loss", "masked_quantiles", "register",
    "total_derivative_surrogate",
]
