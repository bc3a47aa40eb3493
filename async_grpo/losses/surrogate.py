"""The GRPO-family importance-weighted surrogate, as a composition of small pure stages.

Stages (each a pure function of [B, T] per-token arrays, usable on its own):

1. `trust_region_log_ratio`: log ρ, the ratio π_θ/π_anchor at token, GSPO or sequence level.
2. `clipped_objective`: the per-token objective f from ρ and A (PPO, dual, none, CISPO, or the
   ratio-free score function).
3. `is_correction`: the off-policy weight that multiplies f (truncated IS, decoupled PPO).
4. `rejection_mask`: masked importance sampling (token/sequence/geometric windows, veto).
5. KL in the loss (`async_grpo.losses.kl.kl_estimate`) and the aggregation
   (`async_grpo.losses.reductions.aggregate`).

`grpo_surrogate` validates its inputs once and composes the stages; its docstring states the
whole objective.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp

from async_grpo.losses._checks import (_check_array, _check_choice, _check_float,
                                       _check_group_size, _check_number, _check_rank,
                                       _check_same_shape, _float_dtype, _is_static_number,
                                       _prepare_mask, _prepare_token_array)
from async_grpo.losses._metrics import _behavior_token_metrics, _ess_metric, _masked_means
from async_grpo.losses.advantages import _zero_adv_group_frac
from async_grpo.losses.kl import KL_ESTIMATORS, kl_estimate
from async_grpo.losses.reductions import (AGGREGATIONS, _masked_max, _masked_mean, _masked_sum,
                                          aggregate, masked_quantiles)

Array = chex.Array
Numeric = chex.Numeric
_sg = jax.lax.stop_gradient

# "none": no importance ratio at all, f = A·log π_θ (a stale policy gradient; needs clip "none").
RATIO_LEVELS = ("token", "sequence_geomean", "sequence", "none")
CLIP_MODES = ("ppo", "dual", "none", "cispo")
TIS_LEVELS = ("token", "sequence")
MIS_LEVELS = ("token", "sequence", "geometric")

# Quantiles reported for the (pre-clip) ratio metrics (q = 0 and 1 are the min and the max).
_RATIO_QUANTILES = ((0.0, "min"), (0.01, "p01"), (0.5, "p50"), (0.99, "p99"), (1.0, "max"))


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


# ------------------------------------------------------------------------------------------------
# Stages.
# ------------------------------------------------------------------------------------------------


def trust_region_log_ratio(lp: Array, anchor_logp: Array, m: Array, ratio_level: str,
                           log_ratio_clip: float = 20.0) -> Array:
    """log ρ per token [B, T]: log π_θ − log π_anchor at `ratio_level`, clamped to ±clip.

    ``"token"``: d_t; ``"sequence_geomean"`` (GSPO): the row mean of d_t; ``"sequence"``: the row
    sum; ``"none"``: the token log-ratio, reported in the metrics only (no ratio enters f).
    """
    level = "token" if ratio_level == "none" else ratio_level
    return jnp.clip(_level_log_ratio(lp - anchor_logp, m, level), -log_ratio_clip,
                    log_ratio_clip)


class Objective(NamedTuple):
    """The per-token objective f and the indicators its metrics report."""
    f: Array
    clip_low: Array
    clip_high: Array
    dual: Array


def clipped_objective(log_rho: Array, adv: Array, lp: Array, *, clip_mode: str,
                      ratio_level: str, eps_low: Numeric, eps_high: Numeric,
                      dual_clip_c: Numeric) -> Objective:
    """f per token (to MAXIMIZE) from the ratio ρ = exp(log ρ) and the advantage A.

    ppo: min(ρA, clip(ρ)A); dual: also max(·, cA) for A < 0; none: ρA; cispo:
    sg(clip(ρ))·A·log π_θ; ratio level "none": A·log π_θ (no ratio).
    """
    shape = lp.shape
    lo, hi = 1.0 - eps_low, 1.0 + eps_high
    none = jnp.zeros(shape, bool)
    rho = jnp.exp(log_rho)
    if ratio_level == "none":
        return Objective(adv * lp, none, none, none)
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
        clip_low_tok = clip_high_tok = none
    else:  # cispo
        f = _sg(jnp.clip(rho, lo, hi)) * adv * lp
        clip_low_tok, clip_high_tok = rho < lo, rho > hi
    dual_tok = jnp.logical_and(adv < 0, rho > dual_clip_c) if clip_mode == "dual" else none
    return Objective(f, clip_low_tok, clip_high_tok, dual_tok)


class ISCorrection(NamedTuple):
    """The stop-gradient weight on f (None: no correction) and what the metrics report."""
    weight: Optional[Array]
    log_isw_tok: Array      # per-token log π_c/π_b (0 on masked tokens)
    log_isw: Array          # at `tis_level`, clamped
    truncated: Array        # tokens whose weight was truncated


def is_correction(lp: Array, blp: Array, plp: Optional[Array], log_rho: Array, m: Array, *,
                  tis_cap: Optional[Numeric], tis_level: str,
                  log_ratio_clip: float = 20.0) -> ISCorrection:
    """The IS-correction ratio ρ_b = π_c/π_b (π_c = π_prox if given, else sg(π_θ)) and the weight.

    Decoupled PPO (`plp` given): weight sg(min(ρ_b, C)) (C = `tis_cap`, or untruncated). Bypass
    TIS (no `plp`, `tis_cap` set): f already carries ρ, so the weight is sg(min(ρ_b, C)/ρ).
    Otherwise no weight.
    """
    shape = lp.shape
    corr = plp if plp is not None else _sg(lp)
    log_isw_tok = corr - blp  # 0 on masked tokens.
    log_isw = jnp.clip(_level_log_ratio(log_isw_tok, m, tis_level), -log_ratio_clip,
                       log_ratio_clip)
    if tis_cap is not None:
        log_cap = jnp.log(jnp.asarray(tis_cap, lp.dtype))
        log_w = jnp.minimum(log_isw, log_cap)
        tis_tok = log_isw > log_cap
    else:
        log_w = log_isw
        tis_tok = jnp.zeros(shape, bool)
    if plp is not None:
        weight = _sg(jnp.exp(log_w))                     # decoupled PPO (optionally truncated).
    elif tis_cap is not None:
        weight = _sg(jnp.exp(log_w - log_rho))           # bypass TIS: min(ρ_b, C) replaces ρ.
    else:
        weight = None
    return ISCorrection(weight, log_isw_tok, log_isw, tis_tok)


def rejection_mask(log_isw_tok: Array, m: Array, *, mis_low: Optional[Numeric],
                   mis_high: Optional[Numeric], mis_level: str,
                   mis_veto: Optional[Numeric]) -> tuple[Array, Array, Array]:
    """MIS: -> (kept tokens, tokens dropped, rows vetoed). Tokens (or whole rows, for the
    sequence levels) whose ρ_b leaves [mis_low, mis_high] are dropped; `mis_veto` = v also drops
    any row holding a token with ρ_b,t < v."""
    shape = log_isw_tok.shape
    dtype = log_isw_tok.dtype
    drop = jnp.zeros(shape, bool)
    if mis_low is not None or mis_high is not None:
        lvl = {"token": "token", "sequence": "sequence", "geometric": "sequence_geomean"}[mis_level]
        log_mis = _level_log_ratio(log_isw_tok, m, lvl)
        if mis_low is not None:
            drop |= log_mis < jnp.log(jnp.asarray(mis_low, dtype))
        if mis_high is not None:
            drop |= log_mis > jnp.log(jnp.asarray(mis_high, dtype))
    veto_row = jnp.zeros((shape[0],), bool)
    if mis_veto is not None:
        veto_row = jnp.any(jnp.logical_and(m, log_isw_tok < jnp.log(jnp.asarray(mis_veto, dtype))),
                           axis=-1)
        drop |= veto_row[:, None]
    drop = jnp.logical_and(drop, m)
    return jnp.logical_and(m, jnp.logical_not(drop)), drop, veto_row


# ------------------------------------------------------------------------------------------------
# The composed loss.
# ------------------------------------------------------------------------------------------------


def _check_surrogate_options(clip_mode, ratio_level, aggregation, tis_level, mis_level,
                             kl_estimator, clip_eps, clip_eps_high, dual_clip_c, normalizer,
                             tis_cap, mis_low, mis_high, mis_veto, kl_coef, log_ratio_clip,
                             proximal_logp, ref_logp):
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
    if ratio_level == "none" and (clip_mode != "none" or (tis_cap is not None
                                                          and proximal_logp is None)):
        raise ValueError("ratio_level 'none' (f = A·log π_θ) has no ratio to clip or to replace "
                         f"by a truncated weight: use clip_mode 'none' (got {clip_mode!r}) and "
                         "`tis_cap` only with `proximal_logp`.")
    if ref_logp is None and not (_is_static_number(kl_coef) and kl_coef == 0):
        raise ValueError(f"`kl_coef`={kl_coef!r} requires `ref_logp` (the reference log-probs).")


def _token_advantages(advantages, shape, m, dtype) -> Array:
    advantages = _check_array(advantages, "advantages")
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
    return _sg(jnp.where(m, adv, jnp.zeros((), dtype)))


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

    **Ratio** (`trust_region_log_ratio`). The trust-region ratio is ρ = π_θ/π_anchor with
    anchor = π_prox if `proximal_logp` is given (decoupled PPO) and π_b otherwise. Per token,
    d_t = log π_θ(y_t) − log π_anchor(y_t); `ratio_level` selects

    * ``"token"`` (PPO/GRPO): log ρ_t = d_t;
    * ``"sequence_geomean"`` (GSPO, Zheng et al. 2025, https://arxiv.org/abs/2507.18071):
      log s_i = (1/|y_i|) Σ_t d_t, shared by all tokens of row i;
    * ``"sequence"`` (sequence-level IS): log ρ_i = Σ_t d_t, shared by all tokens of row i;
    * ``"none"``: no ratio; f = A·log π_θ, the plain (stale) policy gradient on behavior samples,
      whose gradient E_{π_b}[A ∇log π_θ] is a partly delayed gradient (samples and advantages
      from π_b, ∇log π at the current θ; not the pure delayed gradient ∇J(θ_b)) (needs clip_mode
      "none"; at π_θ = π_b its gradient equals the token-ratio one). With `proximal_logp` the
      decoupled weight π_prox/π_b still applies.

    Every log-ratio is clamped to ±`log_ratio_clip` (default 20, ratio ∈ [2e-9, 4.9e8]) before
    exp, so ratios are always finite; beyond the clamp the ratio's gradient is 0. This never binds
    in sane training and is a NaN guard, not a tuning knob.

    **Clipping** (`clipped_objective`; ε_low = `clip_eps`, ε_high = `clip_eps_high` or
    `clip_eps`; A = advantage):

    * ``"ppo"``: f = min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A) (Schulman et al. 2017,
      https://arxiv.org/abs/1707.06347; asymmetric ε is DAPO's clip-higher,
      https://arxiv.org/abs/2503.14476).
    * ``"dual"``: f = max(f_ppo, c·A) for A < 0, f_ppo otherwise, c = `dual_clip_c` > 1
      (Ye et al. 2020, https://arxiv.org/abs/1912.09729).
    * ``"none"``: f = ρA (plain importance-weighted policy gradient).
    * ``"cispo"``: f = sg(clip(ρ, 1−ε_low, 1+ε_high)) · A · log π_θ (MiniMax-M1,
      https://arxiv.org/abs/2506.13585): no token loses its gradient; only the weight is clipped.
      Its value is not a surrogate of J (it contains log π_θ); its gradient is.

    **Off-policy corrections** (`is_correction`, `rejection_mask`). The IS-correction ratio is
    ρ_b = π_c/π_b with π_c = π_prox when `proximal_logp` is given and π_c = sg(π_θ) (the
    *current* policy) otherwise; the level of the weight is `tis_level` (token: per-token ratio;
    sequence: product over the row).

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
        ratio_level: "token", "sequence_geomean", "sequence" or "none".
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
    # ---- validation (trace time) and masking ----
    logp = _check_array(logp, "logp")
    _check_rank(logp, 2, "logp", "[B, T]")
    _check_float(logp, "logp")
    shape = logp.shape
    _check_surrogate_options(clip_mode, ratio_level, aggregation, tis_level, mis_level,
                             kl_estimator, clip_eps, clip_eps_high, dual_clip_c, normalizer,
                             tis_cap, mis_low, mis_high, mis_veto, kl_coef, log_ratio_clip,
                             proximal_logp, ref_logp)
    kl_active = ref_logp is not None and not (_is_static_number(kl_coef) and kl_coef == 0)
    m = _prepare_mask(mask, shape)
    if behavior_logp is None:
        raise ValueError("`behavior_logp` must be an array, got None.")
    dtype = _float_dtype(logp, jnp.asarray(behavior_logp))
    lp = jnp.where(m, logp.astype(dtype), jnp.zeros((), dtype))
    blp = _sg(_prepare_token_array(behavior_logp, shape, "behavior_logp", m, dtype))
    plp = _prepare_token_array(proximal_logp, shape, "proximal_logp", m, dtype, required=False)
    plp = None if plp is None else _sg(plp)
    ref = _prepare_token_array(ref_logp, shape, "ref_logp", m, dtype, required=False)
    ref = None if ref is None else _sg(ref)
    adv = _token_advantages(advantages, shape, m, dtype)
    if group_size is not None:
        group_size = _check_group_size(group_size, shape[0], min_size=1)
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high

    # ---- stages ----
    log_rho = trust_region_log_ratio(lp, plp if plp is not None else blp, m, ratio_level,
                                     log_ratio_clip)
    obj = clipped_objective(log_rho, adv, lp, clip_mode=clip_mode, ratio_level=ratio_level,
                            eps_low=clip_eps, eps_high=eps_high, dual_clip_c=dual_clip_c)
    isc = is_correction(lp, blp, plp, log_rho, m, tis_cap=tis_cap, tis_level=tis_level,
                        log_ratio_clip=log_ratio_clip)
    keep, mis_drop_tok, veto_row = rejection_mask(isc.log_isw_tok, m, mis_low=mis_low,
                                                  mis_high=mis_high, mis_level=mis_level,
                                                  mis_veto=mis_veto)

    # ---- per-token loss and aggregation ----
    pg_tok = -obj.f if isc.weight is None else -(isc.weight * obj.f)
    loss_pg = aggregate(pg_tok, keep, aggregation, normalizer)
    kl_tok = kl_estimate(lp, ref, kl_estimator, log_ratio_clip) if ref is not None else None
    if kl_active:
        loss_kl = aggregate(kl_tok, keep, aggregation, normalizer)
        loss = loss_pg + kl_coef * loss_kl
    else:
        loss_kl = jnp.zeros((), dtype)
        loss = loss_pg

    met = _surrogate_metrics(lp, blp, m, keep, adv, jnp.exp(log_rho), obj, isc, mis_drop_tok,
                             veto_row, kl_tok, group_size, log_ratio_clip, dtype)
    met["loss_pg"], met["loss_kl"] = _sg(loss_pg.astype(dtype)), _sg(loss_kl.astype(dtype))
    return loss, met


def _surrogate_metrics(lp, blp, m, keep, adv, rho, obj: Objective, isc: ISCorrection,
                       mis_drop_tok, veto_row, kl_tok, group_size, log_ratio_clip, dtype):
    """The metrics `grpo_surrogate` documents (stop-gradient, all finite)."""
    met: dict[str, Array] = {}
    isw = jnp.exp(isc.log_isw)
    over_real = {"ratio_mean": (rho, 1.0), "is_weight_mean": (isw, 1.0),
                 "mis_masked_frac": (mis_drop_tok.astype(dtype), 0.0), "adv_mean": (adv, 0.0)}
    over_real.update(_behavior_token_metrics(lp, blp, log_ratio_clip))
    if kl_tok is not None:
        over_real["kl_ref"] = (kl_tok, 0.0)
    _masked_means(over_real, m, met)
    _masked_means({"clip_frac_low": (obj.clip_low.astype(dtype), 0.0),
                   "clip_frac_high": (obj.clip_high.astype(dtype), 0.0),
                   "dual_clip_frac": (obj.dual.astype(dtype), 0.0),
                   "tis_frac": (isc.truncated.astype(dtype), 0.0)}, keep, met)
    met["clip_frac"] = met["clip_frac_low"] + met["clip_frac_high"]
    qs = masked_quantiles(rho, m, [q for q, _ in _RATIO_QUANTILES], empty_value=1.0)
    for i, (_, name) in enumerate(_RATIO_QUANTILES):
        met[f"ratio_{name}"] = qs[i]
    met["is_weight_max"] = _masked_max(isw, m, empty_value=1.0)
    met["pad_frac"] = 1.0 - jnp.mean(m.astype(dtype))
    met["veto_seq_frac"] = _masked_mean(veto_row.astype(dtype), jnp.any(m, axis=-1))
    _ess_metric(lp, blp, m, met)
    if group_size is not None:
        met["zero_adv_group_frac"] = _zero_adv_group_frac(adv, m, group_size)
    return {k: _sg(v.astype(dtype)) for k, v in met.items()}
