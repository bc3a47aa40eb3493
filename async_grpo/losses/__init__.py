# Copyright 2026 The async_grpo Authors.
"""Pure GRPO-family policy losses, group advantages, KL estimators and a registry.

Every function here is pure: arrays in, arrays out, no hidden state. All are jittable (string and
Python-number options are trace-time constants, so bind them with `functools.partial` or mark them
static) and vmappable. Shape and option errors raise `ValueError` naming the argument at trace time.

Notation (per prompt x, a group of G responses y_1..y_G, laid out contiguously in the batch):

* ``logp[b, t]``          log π_θ(y_{b,t} | x, y_{b,<t}): the current policy (differentiated).
* ``behavior_logp[b, t]`` log π_b(y_{b,t} | ...): the policy that generated the tokens (rollout).
  From `async_grpo.rl.rollout` it is the distribution each token was actually drawn from: with
  top-k/top-p the truncated, renormalised μ, so log μ = log π_τ − log π_τ(kept set) ≥ log π_τ,
  while ``logp`` (the learner's `score_responses`) is the untruncated log π_θ,τ. Under truncation
  a zero-lag ratio π_θ/π_b is therefore π_τ(kept set) ≤ 1, not 1 (`async_grpo.sampling`).
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

Layout (each module small and pure; import everything from `async_grpo.losses`):

* `advantages`: `group_advantages`, `group_advantage_stats` (GRPO / Dr. GRPO / RLOO).
* `surrogate`: `grpo_surrogate` composed of the stages `trust_region_log_ratio`,
  `clipped_objective`, `is_correction`, `rejection_mask`.
* `kl`: `kl_estimate`, `kl_penalized_rewards`. `reductions`: `aggregate`, `masked_quantiles`.
* `total_derivative`: `total_derivative_surrogate`.
* `registry`: `make_loss(name, **overrides)`, `loss_config`, `list_losses`, `register`, `LOSSES`.

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

from async_grpo.losses.advantages import group_advantage_stats, group_advantages
from async_grpo.losses.kl import KL_ESTIMATORS, kl_estimate, kl_penalized_rewards
from async_grpo.losses.reductions import AGGREGATIONS, aggregate, masked_quantiles
from async_grpo.losses.registry import (KL_PLACEMENTS, LOSSES, list_losses, loss_config,
                                        make_loss, register)
from async_grpo.losses.surrogate import (CLIP_MODES, MIS_LEVELS, RATIO_LEVELS, TIS_LEVELS,
                                         clipped_objective, grpo_surrogate, is_correction,
                                         rejection_mask, trust_region_log_ratio)
from async_grpo.losses.total_derivative import BASELINES, total_derivative_surrogate

__all__ = [
    "AGGREGATIONS", "BASELINES", "CLIP_MODES", "KL_ESTIMATORS", "KL_PLACEMENTS", "LOSSES",
    "MIS_LEVELS", "RATIO_LEVELS", "TIS_LEVELS", "aggregate", "clipped_objective",
    "grpo_surrogate", "group_advantage_stats", "group_advantages", "is_correction",
    "kl_estimate", "kl_penalized_rewards", "list_losses", "loss_config", "make_loss",
    "masked_quantiles", "register", "rejection_mask", "total_derivative_surrogate",
    "trust_region_log_ratio",
]
