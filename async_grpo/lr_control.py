r"""A staleness-aware learning-rate controller: the within-cycle drift stays under m·R_batch.

Setting (arXiv 2607.01083, docs/exact_testbed.md). The learner at step t updates θ_t with a
batch drawn from the behavior policy φ_t = θ_{t−s_t}, 0 ≤ s_t ≤ S, and applies
u_t = θ_{t+1} − θ_t.
The paper's two-constraint rule asks for

    η ≪ min{ R_batch / (S·G_upd),  R_crit / (T·G_upd) },

where G_upd bounds the update size per unit η, R_batch is the batch-level clipping radius (the
within-cycle drift ‖θ_t − φ_t‖ beyond which the stale surrogate stops being trustworthy) and
R_crit the cumulative radius. This module turns the first constraint (and, optionally, the
second) into a per-step rule that MEASURES the update size instead of assuming a bound.

The rule. Let û_t be the optimizer's proposed update at the base learning rate η (for SGD and
Adam through `optax.inject_hyperparams` it is linear in η: û_t = η·d_t, so G_t = ‖d_t‖ = ‖û_t‖/η
is the measured update size per unit η). The controller applies u_t = c_t·û_t, i.e. the
effective learning rate η_t = c_t·η, with c_t = min{1, w_t, k_t} (c_t = 1 when û_t = 0):

* within-cycle bound w_t, two modes (`Params.lookahead`):
    - rule (lookahead = 0): w_t = m·R_batch / (S·‖û_t‖) when S ≥ 1 (none at S = 0), so
      S·η_t·G_t ≤ m·R_batch at every step: the paper's first constraint with G_upd measured
      online. For ANY lag schedule with 0 ≤ s_t ≤ S (triangle inequality),
          ‖θ_t − φ_t‖ = ‖Σ_{k=t−s_t}^{t−1} u_k‖ ≤ Σ_{k=t−s_t}^{t−1} ‖u_k‖ ≤ s_t·m·R_batch/S
                      ≤ m·R_batch.
    - lookahead (lookahead = 1): w_t = (m·R_batch − D⁺_t)_+ / (√S·‖û_t‖) when S ≥ 1, with the
      MEASURED distance D⁺_t = ‖θ_t − φ_{t+1}‖ from the current iterate to the behavior policy
      of the NEXT batch (known to an asynchronous learner: that batch's rollouts come from a
      stored version). Then ‖θ_{t+1} − φ_{t+1}‖ ≤ D⁺_t + ‖u_t‖ ≤ m·R_batch whenever
      D⁺_t ≤ m·R_batch (always so for the fixed lag with aligned updates; if D⁺_t is already
      larger, which random lags can cause, c_t = 0 until the behavior policy catches up). The
      1/√S spends the remaining budget over the cycle at the diffusive rate. When consecutive
      updates cancel (stale clipped GRPO zig-zags with cos(u_t, u_{t−1}) ≈ −1, so
      ‖θ_t − φ_t‖ ≪ S·‖u‖) it allows larger steps than the rule, at the cost of keeping the
      behavior versions (the simulator's ring buffer has them).
* cumulative bound (only when R_crit > 0): k_t = (m·R_crit − ‖θ_t − θ_0‖)_+ / ‖û_t‖, so
  ‖θ_{t+1} − θ_0‖ ≤ ‖θ_t − θ_0‖ + ‖u_t‖ ≤ max(m·R_crit, ‖θ_t − θ_0‖): the cumulative drift
  never grows past m·R_crit (a trust region around θ_0; learning stops there).

* ESS scaling (only when `ess_power` p > 0; VCPO, Huang et al. 2026, arXiv 2602.17616): the
  factor is multiplied by ρ_t^p, with ρ_t = ESS_t/B = (Σ_i w_i)²/(B·Σ_i w_i²) the Kish effective
  sample size fraction of the step's sequence importance weights w_i = π_θ(y_i)/π_φ(y_i) (the
  loss's ``loss/ess_frac``). VCPO's rule for Adam-style optimizers is p = 1/2 (η_eff = η·√ρ).
  With R_batch = inf (no drift bound) this is the VCPO baseline alone; ρ_t = 1 on-policy, so at
  S = 0 it is the base η.

With a huge R_batch (and R_crit = 0, p = 0) c_t = 1: the controller is the base η. The state records
the measured within-cycle drift ‖θ_t − φ_t‖ (its maximum and how often it exceeded m·R_batch,
which the guarantees make 0 when the lags respect S) so a run shows how tight each bound was.

Use. `scale(params, state, ...)` is a pure, jittable function (vmap it over cells: `Params`
holds traced scalars); `scale_by_drift_control(params)` wraps it as an
`optax.GradientTransformationExtraArgs` to chain after an optimizer (extra args `max_lag`,
`drift_cycle`, `drift_cum`, `drift_next`). `async_grpo.simulate.make_train(..., lr_control=...)`
applies it in the simulator's step; `validate` checks concrete values before anything is
traced. How R_batch is measured, and how the controller compares with the best fixed η on the
exact testbed: docs/lr_controller.md (experiments/lr_controller.py).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


OVER_RTOL = 1e-9   # a drift counts as over m·R_batch beyond this relative rounding slack


class Params(NamedTuple):
    """Controller settings (scalars; traced values are fine, so a grid can vmap over them).

    r_batch: R_batch > 0, the within-cycle drift not to exceed (times `margin`).
    margin: m in (0, 1].
    r_crit: R_crit ≥ 0, the cumulative drift ‖θ_t − θ_0‖ not to exceed (times `margin`);
      0 turns the cumulative bound off.
    lookahead: 0 (the rule m·R_batch/(S·‖û‖)) or 1 (the measured lookahead bound).
    ess_power: p ≥ 0; the factor is multiplied by (ESS/B)^p (0: off; 1/2: VCPO's √ρ for Adam).

    `r_batch` = inf turns the within-cycle bound off (with `ess_power` > 0: the VCPO baseline).
    """
    r_batch: Any
    margin: Any = 0.5
    r_crit: Any = 0.0
    lookahead: Any = 0.0
    ess_power: Any = 0.0


class State(NamedTuple):
    """What the controller has measured so far (all scalars)."""
    steps: jax.Array          # steps seen
    max_drift: jax.Array      # max_t ‖θ_t − φ_t‖ measured
    over: jax.Array           # steps with ‖θ_t − φ_t‖ > m·R_batch·(1 + OVER_RTOL) (0 under the
    #                           guarantee)
    limited: jax.Array        # steps with c_t < 1
    scale_sum: jax.Array      # Σ_t c_t (mean effective η / base η = scale_sum / steps)
    last: jax.Array           # c_t of the latest step


def validate(params: Params, max_lag=None) -> None:
    """Raises ValueError naming the bad value (concrete Python/numpy values only)."""
    def scalar(name, v):
        try:
            return float(v)
        except (TypeError, ValueError) as e:
            raise ValueError(f"lr_control {name} must be a real scalar, got {v!r}.") from e

    r_batch = scalar("r_batch (R_batch)", params.r_batch)
    margin = scalar("margin", params.margin)
    r_crit = scalar("r_crit (R_crit)", params.r_crit)
    if not (r_batch > 0):          # +inf: no within-cycle bound; NaN fails here too
        raise ValueError(f"lr_control r_batch (R_batch) must be > 0 (inf: no within-cycle "
                         f"bound), got {r_batch}.")
    ess_power = scalar("ess_power", params.ess_power)
    if not (math.isfinite(ess_power) and ess_power >= 0):
        raise ValueError(f"lr_control ess_power must be finite and >= 0 (0: off; 0.5: VCPO's "
                         f"sqrt(ESS/B)), got {ess_power}.")
    if not (math.isfinite(margin) and 0 < margin <= 1):
        raise ValueError(f"lr_control margin must be in (0, 1], got {margin}.")
    if not (math.isfinite(r_crit) and r_crit >= 0):
        raise ValueError(f"lr_control r_crit (R_crit) must be finite and >= 0 (0 = off), "
                         f"got {r_crit}.")
    lookahead = scalar("lookahead", params.lookahead)
    if lookahead not in (0.0, 1.0):
        raise ValueError(f"lr_control lookahead must be 0 (rule) or 1 (lookahead), got "
                         f"{params.lookahead!r}.")
    if max_lag is not None:
        if isinstance(max_lag, bool) or not float(max_lag).is_integer() or max_lag < 0:
            raise ValueError(f"lr_control max_lag (S) must be an integer >= 0, got {max_lag!r}.")


def init(dtype=None) -> State:
    dtype = jnp.result_type(float) if dtype is None else dtype
    z = jnp.zeros((), dtype)
    return State(jnp.zeros((), jnp.int32), z, jnp.zeros((), jnp.int32),
                 jnp.zeros((), jnp.int32), z, jnp.ones((), dtype))


def scale(params: Params, state: State, *, update_norm, max_lag, drift_cycle=0.0,
          drift_cum=0.0, drift_next=0.0, ess_frac=1.0) -> tuple[jax.Array, State]:
    """c_t of the module docstring and the new state. Pure and jittable.

    update_norm: ‖û_t‖, the proposed update at the base η; max_lag: S (the bound every lag
    respects); drift_cycle: the measured ‖θ_t − φ_t‖ (recorded); drift_cum: ‖θ_t − θ_0‖ (used
    only when r_crit > 0); drift_next: D⁺_t = ‖θ_t − φ_{t+1}‖ (used only in lookahead mode; 0
    when the next batch is on-policy); ess_frac: ρ_t = ESS/B in (0, 1] of the step's batch (used
    only when ess_power > 0). A NaN update norm gives a NaN scale, so
    a non-finite update stays non-finite (the simulator then flags the run as collapsed).
    """
    dtype = state.max_drift.dtype
    norm = jnp.asarray(update_norm, dtype)
    s = jnp.asarray(max_lag, dtype)
    r_batch = jnp.asarray(params.r_batch, dtype)
    margin = jnp.asarray(params.margin, dtype)
    r_crit = jnp.asarray(params.r_crit, dtype)
    safe = jnp.where(norm > 0, norm, 1.0)
    look = jnp.asarray(params.lookahead, dtype) > 0.5
    budget = margin * r_batch
    w_rule = jnp.where(s >= 1, budget / (jnp.maximum(s, 1.0) * safe), jnp.inf)
    w_look = jnp.where(s >= 1, jnp.maximum(budget - jnp.asarray(drift_next, dtype), 0.0)
                       / (jnp.sqrt(jnp.maximum(s, 1.0)) * safe), jnp.inf)
    c = jnp.minimum(1.0, jnp.where(look, w_look, w_rule)).astype(dtype)
    room = jnp.maximum(margin * r_crit - jnp.asarray(drift_cum, dtype), 0.0)
    c = jnp.where(r_crit > 0, jnp.minimum(c, room / safe), c)
    c = jnp.where(norm > 0, c, 1.0)
    p = jnp.asarray(params.ess_power, dtype)
    c = c * jnp.where(p > 0, jnp.power(jnp.asarray(ess_frac, dtype), p), 1.0)
    c = jnp.where(jnp.isnan(norm), jnp.nan, c)
    d = jnp.asarray(drift_cycle, dtype)
    new = State(steps=state.steps + 1, max_drift=jnp.maximum(state.max_drift, d),
                over=state.over + (d > margin * r_batch * (1 + OVER_RTOL)).astype(jnp.int32),
                limited=state.limited + (c < 1).astype(jnp.int32),
                scale_sum=state.scale_sum + c, last=c)
    return c, new


def scale_by_drift_control(params: Params) -> optax.GradientTransformationExtraArgs:
    """The controller as an optax transformation: chain it AFTER the optimizer (its input is the
    proposed update at the base η). `update(updates, state, params=None, *, max_lag,
    drift_cycle=0., drift_cum=0., drift_next=0., ess_frac=1., **extra)` multiplies every leaf by
    c_t."""

    def init_fn(updates):
        leaves = jax.tree.leaves(updates)
        return init(jnp.result_type(*leaves) if leaves else None)

    def update_fn(updates, state, params_=None, *, max_lag, drift_cycle=0.0, drift_cum=0.0,
                  drift_next=0.0, ess_frac=1.0, **extra_args):
        del params_, extra_args
        c, state = scale(params, state, update_norm=optax.tree.norm(updates), max_lag=max_lag,
                         drift_cycle=drift_cycle, drift_cum=drift_cum, drift_next=drift_next,
                         ess_frac=ess_frac)
        return jax.tree.map(lambda u: (c * u).astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
