"""Independent reference implementation of GRPO, DAPO and Dr. GRPO (plain numpy, float64, loops).

Written from the papers' formulas, sharing no code with `async_grpo.losses`, for cross-checks:

* GRPO (DeepSeekMath, Shao et al. 2024, https://arxiv.org/abs/2402.03300, eq. 3 with outcome
  supervision): J = (1/G) Σ_i (1/|o_i|) Σ_t { min(r_{i,t} Â_i, clip(r_{i,t}, 1−ε, 1+ε) Â_i)
  − β D_KL }, Â_i = (R_i − mean(R)) / std(R), per-token D_KL = π_ref/π_θ − log(π_ref/π_θ) − 1.
* DAPO (Yu et al. 2025, https://arxiv.org/abs/2503.14476, eq. 8): J = (1/Σ_i |o_i|) Σ_i Σ_t
  min(r Â, clip(r, 1−ε_low, 1+ε_high) Â), ε_low = 0.2, ε_high = 0.28, GRPO advantage, no KL.
* Dr. GRPO (Liu et al. 2025, https://arxiv.org/abs/2503.20783): Â_i = R_i − mean(R) (no std),
  and the per-response sum is divided by a constant (the maximum generation length) instead of
  |o_i|; then the mean over responses.

r_{i,t} = exp(logp − old_logp). The batch holds several prompts, each a contiguous group of G
responses; the "(1/G) Σ_i" of one prompt becomes the mean over all responses of the batch. std is
the sample standard deviation (torch.std's default, as in the TRL/verl implementations), with the
1e-6 added to it; a group of equal rewards gets advantage 0. The gradient w.r.t. logp is computed
analytically, token by token, and can be checked by `finite_difference_grad`.
"""

import math

import numpy as np

EPS_STD = 1e-6

SETTINGS = {
    "grpo": dict(eps_low=0.2, eps_high=0.2, std=True, norm="per_response_length"),
    "dapo": dict(eps_low=0.2, eps_high=0.28, std=True, norm="total_tokens"),
    "dr_grpo": dict(eps_low=0.2, eps_high=0.2, std=False, norm="constant"),
}


def advantages(rewards, group_size, std=True):
    """Per-response advantages, one prompt (group) at a time."""
    rewards = [float(x) for x in rewards]
    out = [0.0] * len(rewards)
    for start in range(0, len(rewards), group_size):
        group = rewards[start:start + group_size]
        mean = sum(group) / len(group)
        if max(group) == min(group):
            continue  # zero advantage
        sample_var = sum((x - mean) ** 2 for x in group) / (len(group) - 1)
        for k, x in enumerate(group):
            a = x - mean
            if std:
                a = a / (math.sqrt(sample_var) + EPS_STD)
            out[start + k] = a
    return out


def _token_objective(lp, old, adv, eps_low, eps_high):
    """(value, d value / d lp) of min(r A, clip(r) A) for one token."""
    r = math.exp(lp - old)
    clipped_r = min(max(r, 1.0 - eps_low), 1.0 + eps_high)
    unclipped, clipped = r * adv, clipped_r * adv
    if unclipped <= clipped:
        return unclipped, r * adv  # the unclipped term is the min: gradient r·A
    return clipped, 0.0            # the clipped term is constant in lp


def _k3(lp, ref):
    """(value, d value / d lp) of π_ref/π − log(π_ref/π) − 1."""
    x = math.exp(ref - lp)
    return x - (ref - lp) - 1.0, -x + 1.0


def loss_and_grad(variant, logp, old_logp, rewards, mask, group_size, ref_logp=None, beta=0.0,
                  max_len=None):
    """Loss to minimise (−J) and its gradient w.r.t. logp ([B, T] numpy float64)."""
    cfg = SETTINGS[variant]
    logp = np.asarray(logp, np.float64)
    old_logp = np.asarray(old_logp, np.float64)
    mask = np.asarray(mask) != 0
    n_resp, n_tok = logp.shape
    adv = advantages(rewards, group_size, std=cfg["std"])
    total_tokens = int(mask.sum())
    objective = 0.0
    grad = np.zeros((n_resp, n_tok))
    for i in range(n_resp):
        length = int(mask[i].sum())
        if cfg["norm"] == "per_response_length":
            weight = 1.0 / (n_resp * length)
        elif cfg["norm"] == "total_tokens":
            weight = 1.0 / total_tokens
        else:
            weight = 1.0 / (n_resp * max_len)
        for t in range(n_tok):
            if not mask[i, t]:
                continue
            value, dvalue = _token_objective(logp[i, t], old_logp[i, t], adv[i], cfg["eps_low"],
                                             cfg["eps_high"])
            if beta:
                kl, dkl = _k3(logp[i, t], float(ref_logp[i, t]))
                value, dvalue = value - beta * kl, dvalue - beta * dkl
            objective += weight * value
            grad[i, t] = -weight * dvalue
    return -objective, grad


def finite_difference_grad(variant, logp, *args, h=1e-6, **kwargs):
    """Central finite differences of `loss_and_grad(...)[0]` w.r.t. every entry of logp."""
    logp = np.asarray(logp, np.float64)
    grad = np.zeros_like(logp)
    for idx in np.ndindex(*logp.shape):
        plus, minus = logp.copy(), logp.copy()
        plus[idx] += h
        minus[idx] -= h
        grad[idx] = (loss_and_grad(variant, plus, *args, **kwargs)[0]
                     - loss_and_grad(variant, minus, *args, **kwargs)[0]) / (2 * h)
    return grad
