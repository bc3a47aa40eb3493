"""Group-relative advantages (GRPO, Dr. GRPO, RLOO) and group statistics."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from async_grpo.losses._checks import (_check_array, _check_group_size, _check_number,
                                       _check_rank, _float_dtype)

Array = chex.Array
_sg = jax.lax.stop_gradient


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
