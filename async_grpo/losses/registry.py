"""Named loss variants (`make_loss(name, **overrides)`), tunix `algo_core` style.

Each variant is a function registered under a name that returns its settings; `loss_config`
merges them with the library defaults and the caller's overrides; `make_loss` returns the pure
``loss_fn(logp, behavior_logp, rewards, mask, *, group_size, proximal_logp=None,
ref_logp=None)``. The defaults of each variant follow the paper it names (see each docstring).
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import jax

from async_grpo.losses._checks import _check_choice, _is_static_number
from async_grpo.losses.advantages import group_advantage_stats, group_advantages
from async_grpo.losses.kl import kl_penalized_rewards
from async_grpo.losses.surrogate import grpo_surrogate
from async_grpo.losses.total_derivative import total_derivative_surrogate

Array = chex.Array
_sg = jax.lax.stop_gradient

KL_PLACEMENTS = ("loss", "reward")

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
    if kind == "total_derivative" and cfg["kl_estimator"] != "k1":
        raise ValueError(
            f"`kl_estimator`={cfg['kl_estimator']!r}: the total_derivative loss needs 'k1'. Its KL "
            "term is the exact score-function gradient of KL(π_θ‖π_ref), which weights ∇log π_θ(y) "
            "by the per-sample log π_θ(y)/π_ref(y) (= the k1 sum); other estimators have the "
            "right mean but the wrong per-sample value, so the gradient would be biased.")
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

    KL: with ``kl_coef > 0`` the caller must pass `ref_logp`.

    * Surrogate variants: ``kl_placement="loss"`` adds β·k per token to the loss (DeepSeekMath);
      ``"reward"`` subtracts β Σ_t k from the rewards before the advantages, computed on the
      *behavior* log-probs (fixed at rollout time, as in AReaL; `kl_penalized_rewards`). The
      estimator is the variant's `kl_estimator` (k3 by default; kl_estimator="k1" for AReaL's).
    * ``total_derivative``: the objective is J(θ) = E_{π_θ}[r] − β KL(π_θ‖π_ref), whose gradient
      is E_{π_θ}[(r − β log π_θ(y)/π_ref(y)) ∇log π_θ(y)] (the ∇ of the log-ratio itself has
      mean zero). So the reward is penalised by β Σ_t (log π_θ − log π_ref), evaluated at the
      *current* θ (stop-gradient), with the k1 estimator (required: the per-sample value, not
      just its mean, must be the log-ratio). With the leave-one-out baseline, no truncation and
      no self-normalisation its gradient is an unbiased estimate of ∇J (see
      `total_derivative_surrogate` for the conditions).

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
        if kl_on and kind == "total_derivative":   # KL(π_θ‖π_ref) at θ (see the docstring).
            r = kl_penalized_rewards(rewards, _sg(logp), ref_logp, mask, kl_coef, "k1")
        elif kl_on and cfg["kl_placement"] == "reward":
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


@register("no_ratio")
def _no_ratio():
    """Stale policy gradient without an importance ratio: f = A·log π_θ on the behavior samples
    (ratio_level "none", no clip), GRPO advantage, seq-mean-token-mean, no KL. Off-policy its
    gradient is E_{π_b}[A ∇log π_θ]: only partly delayed (samples and advantages from π_b,
    ∇log π at the current θ), not the pure delayed gradient ∇J(θ_b). The baseline against which
    the ratio and clip of the other variants are measured (docs/exact_testbed.md)."""
    return dict(kind="surrogate", std_normalize=True, ratio_level="none", clip_mode="none",
                aggregation="seq-mean-token-mean", kl_coef=0.0)


@register("total_derivative")
def _total_derivative():
    """`total_derivative_surrogate` with the leave-one-out baseline, no truncation, no
    self-normalisation: an unbiased estimate of ∇J from behavior samples."""
    return dict(kind="total_derivative", truncation=None, self_normalize=False,
                baseline="leave_one_out", kl_coef=0.0)
