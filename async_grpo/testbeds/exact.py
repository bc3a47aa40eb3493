r"""Exact testbed for asynchronous GRPO: every response is enumerated, every expectation is a sum.

Setting and notation (the names in parentheses are the ones used in code)
------------------------------------------------------------------------
* Prompts x ∈ {0, …, P−1} (`num_prompts`), drawn uniformly. Responses y = (y_0, …, y_{L−1}) are
  all sequences of FIXED length L (`seq_len`) over a vocabulary of V tokens (`vocab_size`); there
  is no EOS token, so every response has exactly L tokens, the mask is all ones, and the GRPO
  aggregations (seq-mean-token-mean, token-mean, Dr. GRPO's token-sum / L_max) differ only by
  constant factors. Length normalization therefore has no effect in this testbed (documented
  limitation). N = V^L responses per prompt (`num_responses`), at most
  `MAX_RESPONSES_PER_PROMPT` = 1024, so π_θ(y|x) is known for every y.
* Policy π_θ(y|x) = Π_l π_θ(y_l | x, y_{<l}), autoregressive over the N_pref = Σ_{l<L} V^l
  prefixes. Families (`policy`):
    - ``tabular``: one logit vector per (prompt, prefix); no parameter sharing, so prompts never
      interfere.
    - ``linear``: logits = W^T f(x, y_{<l}) + b with FIXED random features f ∈ R^d
      (`feature_dim`), iid N(0, 1/d) per (prompt, prefix) context, drawn from `feature_seed`.
      All contexts share W, so prompts interfere.
    - ``mlp``: a tanh MLP on a one-hot encoding of (prompt, tokens of the prefix by position,
      prefix length); shared weights, prompts interfere.
* Rewards r(x, y) ∈ [0, 1] (`reward`): ``exact`` (1 iff y equals a per-prompt target),
  ``partial`` (fraction of positions equal to the target), ``sum_mod`` (1 iff
  (x + Σ_l y_l) mod m = 0, m = `sum_modulus` or V). Targets come from `reward_seed`.

Learner, behavior policy and staleness
* Learner parameters θ_t; behavior parameters φ_t = θ_{t−s_t} with lag 0 ≤ s_t ≤ S. A *cycle* is
  the span between two refreshes of the behavior policy. Staleness models (`staleness`):
  ``fixed`` s_t = min(t, S); ``sync_interval`` behavior refreshed every S steps, s_t = t mod S
  (lag cycles 0…S−1; S ∈ {0, 1} is synchronous); ``random_uniform`` s_t ~ U{0..S} and
  ``random_geometric`` P(s_t = k) ∝ (1−p)^k, both capped at min(t, S) and seeded.

Objects
* Population objective J(θ) := (1/P) Σ_x Σ_y π_θ(y|x) r(x, y) − β KL(π_θ(·|x) ‖ π_ref(·|x))
  (`objective`; β = `kl_coef`, default 0, π_ref = θ_0 in training). Its total derivative ∇J(θ)
  (`grad_objective`) is autodiff through the enumeration, i.e. through the sampling distribution.
* GRPO surrogate with the sampling distribution frozen at π_φ, in POPULATION mode
  (`population_loss`):
      L(θ; φ) = −(1/P) Σ_x Σ_y π_φ(y|x) · (1/L) Σ_l min(ρ_l A, clip(ρ_l, 1−ε, 1+ε_high) A)
                + β KL(π_θ ‖ π_ref),
  ρ_l = π_θ(y_l | x, y_{<l}) / π_φ(y_l | x, y_{<l}) (``ratio_level="token"``; ``"sequence_geomean"``
  uses the GSPO ratio exp(mean_l log ρ_l); ``"no_ratio"`` is a population-only ablation,
  A·(1/L)Σ_l log π_θ, i.e. a plain stale policy gradient with no importance ratio;
  ``clip_mode="none"`` drops the clip, ρ·A) and A = (r − μ_φ(x)) / (σ_φ(x) + eps) with μ_φ, σ_φ the
  mean and std of r under π_φ(·|x) (``std_normalize=False``: A = r − μ_φ(x)).
  In SAMPLED mode (`sampled_loss`) the same surrogate is evaluated on G responses per prompt drawn
  from π_φ, exactly as the learner sees them, through `async_grpo.losses.group_advantages` and
  `async_grpo.losses.grpo_surrogate` with the same settings.
* Surrogate-gradient mapping H(θ, φ) := ∇_θ L(θ; φ) (`population_H`, `sampled_H`), φ held fixed.
  SIGN CONVENTION: L is a loss to MINIMIZE, so H points uphill on the loss and −H is the ascent
  direction on J. Every cosine against ∇J in this module is taken with −H:
  cos_stale = cos(−H(θ_t, φ_t), ∇J(θ_t)) and cos_onpolicy = cos(−H(θ_t, θ_t), ∇J(θ_t)).
  The on-policy mapping is NOT ∇J: unclipped, −H(θ, θ) = (1/(P·L)) Σ_x ∇J_x(θ) / (σ_θ(x) + eps),
  a per-prompt reweighting of ∇J by 1/σ (and by 1/L, a constant here); cos_onpolicy < 1 shows it.
* Staleness bias δ_t := H(θ_t, φ_t) − H(θ_t, θ_t) (population mode, also when training uses
  sampled mode). Drifts: within-cycle ‖θ_t − φ_t‖, cumulative ‖θ_t − θ_0‖, update size
  ‖θ_{t+1} − θ_t‖ = ‖u_t‖ (the paper's G_upd·η), consecutive-update cosine cos(u_t, u_{t−1}).
  Norms are Euclidean norms over all parameters (the flattened pytree).

Why staleness can be benign here (measured, not assumed; see docs/exact_testbed.md): with a token
ratio and no clipping, −H(θ, φ) = E_{π_θ}[A_φ ∇ log π_θ]/L, the ON-policy gradient with stale
advantage statistics, so δ comes only from σ_φ ≠ σ_θ (linear in ‖θ − φ‖) until ratios leave the
clip band, after which the clip removes gradient terms. The ratio-free ablation is the classic
delayed gradient.

Training (`make_train`): the whole run is one jitted program: `lax.scan` over T steps, a ring
buffer of the last S_max + 1 iterates for the behavior policy (S is a traced value ≤ S_max), optax
SGD(momentum b1) or Adam(b1) through `optax.inject_hyperparams` with traced η and b1. The same
function is `vmap`ped over cells (η, seed, S, b1) so a whole grid compiles once (`run_grid`).
The seed sets θ_0's initialization, the random lags and the sampled-mode draws; the random
features and reward targets are fixed by `feature_seed` / `reward_seed` in the config.
Collapse: after `collapse_warmup` steps, J_t < thr for `collapse_patience` consecutive steps
(thr = J_0 + frac·(max_{s≤t} J_s − J_0) with ``collapse_baseline="init"``, the default, or
frac·max_{s≤t} J_s with ``"zero"``), or any non-finite J or θ; the collapse step is the first
step of that streak. Patience separates a sustained drop from the period-2 zig-zag that stale
clipped updates often show while J still improves.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

MAX_RESPONSES_PER_PROMPT = 1024
MAX_PROMPTS = 512
MAX_LAG_CAP = 256
MAX_STEPS = 1_000_000

POLICIES = ("tabular", "linear", "mlp")
REWARDS = ("exact", "partial", "sum_mod")
RATIO_LEVELS = ("token", "sequence_geomean", "no_ratio")
CLIP_MODES = ("ppo", "none")
STALENESS_MODELS = ("fixed", "sync_interval", "random_uniform", "random_geometric")
OPTIMIZERS = ("sgd", "adam")
MODES = ("population", "sampled")
COLLAPSE_BASELINES = ("zero", "init")

Params = Any


# ----------------------------------------------------------------------------------------------
# Configuration and validation (pure Python: runs before anything is traced or compiled).
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TestbedConfig:
    """Static description of an exact testbed (task, policy family, surrogate settings)."""

    num_prompts: int = 8
    vocab_size: int = 4
    seq_len: int = 3
    policy: str = "linear"
    feature_dim: int = 16
    hidden_dim: int = 32
    feature_seed: int = 0
    init_scale: float = 0.5
    reward: str = "partial"
    reward_seed: int = 0
    sum_modulus: int = 0
    # Surrogate settings, shared by population and sampled mode.
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    std_normalize: bool = True
    leave_one_out: bool = False
    adv_eps: float = 1e-6
    std_ddof: int = 1              # sampled mode only (the population std has no ddof).
    ratio_level: str = "token"
    clip_mode: str = "ppo"
    kl_coef: float = 0.0

    def __post_init__(self):
        validate_testbed_config(self)

    @property
    def num_responses(self) -> int:
        return self.vocab_size ** self.seq_len


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def validate_testbed_config(cfg: TestbedConfig) -> None:
    """Raises ValueError with a clear message for an invalid or non-enumerable testbed."""
    for name in ("num_prompts", "vocab_size", "seq_len", "feature_dim", "hidden_dim"):
        v = getattr(cfg, name)
        if not _is_int(v) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}.")
    if cfg.vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {cfg.vocab_size}.")
    n = cfg.vocab_size ** cfg.seq_len
    if n > MAX_RESPONSES_PER_PROMPT:
        raise ValueError(
            f"vocab_size**seq_len = {cfg.vocab_size}**{cfg.seq_len} = {n} responses per prompt is too "
            f"many to enumerate; at most {MAX_RESPONSES_PER_PROMPT} are allowed (e.g. V=4,L<=5; "
            f"V=8,L<=3; V=32,L<=2).")
    if cfg.num_prompts > MAX_PROMPTS:
        raise ValueError(f"num_prompts must be <= {MAX_PROMPTS}, got {cfg.num_prompts}.")
    if cfg.policy not in POLICIES:
        raise ValueError(f"Unknown policy {cfg.policy!r}; valid: {list(POLICIES)}.")
    if cfg.reward not in REWARDS:
        raise ValueError(f"Unknown reward {cfg.reward!r}; valid: {list(REWARDS)}.")
    if cfg.ratio_level not in RATIO_LEVELS:
        raise ValueError(f"Unknown ratio_level {cfg.ratio_level!r}; valid: {list(RATIO_LEVELS)}.")
    if cfg.clip_mode not in CLIP_MODES:
        raise ValueError(f"Unknown clip_mode {cfg.clip_mode!r}; valid: {list(CLIP_MODES)}.")
    if cfg.std_ddof not in (0, 1):
        raise ValueError(f"std_ddof must be 0 or 1, got {cfg.std_ddof!r}.")
    if not _is_int(cfg.sum_modulus) or cfg.sum_modulus < 0 or cfg.sum_modulus == 1:
        raise ValueError(f"sum_modulus must be 0 (use vocab_size) or >= 2, got {cfg.sum_modulus!r}.")
    if not 0 < cfg.clip_eps < 1:
        raise ValueError(f"clip_eps must be in (0, 1), got {cfg.clip_eps}.")
    if cfg.clip_eps_high is not None and not cfg.clip_eps_high > 0:
        raise ValueError(f"clip_eps_high must be > 0 or None, got {cfg.clip_eps_high}.")
    if not cfg.adv_eps >= 0:
        raise ValueError(f"adv_eps must be >= 0, got {cfg.adv_eps}.")
    if not cfg.kl_coef >= 0:
        raise ValueError(f"kl_coef must be >= 0, got {cfg.kl_coef}.")
    if not (math.isfinite(cfg.init_scale) and cfg.init_scale >= 0):
        raise ValueError(f"init_scale must be finite and >= 0, got {cfg.init_scale}.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Static settings of a training run (everything that fixes shapes or control flow)."""

    num_steps: int = 300
    staleness: str = "fixed"
    max_lag_cap: int = 16          # S_max: ring-buffer size S_max + 1; every cell needs S <= S_max.
    geometric_p: float = 0.5       # for random_geometric: P(s = k) ∝ (1 − p)^k.
    optimizer: str = "adam"
    b2: float = 0.999
    opt_eps: float = 1e-8
    mode: str = "population"       # which H drives training; δ etc. are always population-exact.
    group_size: int = 8            # G for sampled mode.
    diagnostics: bool = True       # compute H(θ,θ), ∇J, δ and the cosines each step.
    collapse_frac: float = 0.5
    collapse_warmup: int = 10
    collapse_baseline: str = "init"
    collapse_patience: int = 1     # consecutive bad steps needed (non-finite counts at once).

    def __post_init__(self):
        validate_train_config(self)


def validate_train_config(tc: TrainConfig) -> None:
    if not _is_int(tc.num_steps) or not 1 <= tc.num_steps <= MAX_STEPS:
        raise ValueError(f"num_steps must be an integer in [1, {MAX_STEPS}], got {tc.num_steps!r}.")
    if tc.staleness not in STALENESS_MODELS:
        raise ValueError(f"Unknown staleness model {tc.staleness!r}; valid: {list(STALENESS_MODELS)}.")
    if not _is_int(tc.max_lag_cap) or not 0 <= tc.max_lag_cap <= MAX_LAG_CAP:
        raise ValueError(f"max_lag_cap (S_max) must be an integer in [0, {MAX_LAG_CAP}], "
                         f"got {tc.max_lag_cap!r}.")
    if not 0 < tc.geometric_p <= 1:
        raise ValueError(f"geometric_p must be in (0, 1], got {tc.geometric_p}.")
    if tc.optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {tc.optimizer!r}; valid: {list(OPTIMIZERS)}.")
    if tc.mode not in MODES:
        raise ValueError(f"Unknown mode {tc.mode!r}; valid: {list(MODES)}.")
    if not _is_int(tc.group_size) or tc.group_size < 2:
        raise ValueError(f"group_size must be an integer >= 2, got {tc.group_size!r}.")
    if not 0 < tc.collapse_frac < 1:
        raise ValueError(f"collapse_frac must be in (0, 1), got {tc.collapse_frac}.")
    if not _is_int(tc.collapse_warmup) or tc.collapse_warmup < 0:
        raise ValueError(f"collapse_warmup must be an integer >= 0, got {tc.collapse_warmup!r}.")
    if not _is_int(tc.collapse_patience) or tc.collapse_patience < 1:
        raise ValueError(f"collapse_patience must be an integer >= 1, got {tc.collapse_patience!r}.")
    if tc.collapse_baseline not in COLLAPSE_BASELINES:
        raise ValueError(f"Unknown collapse_baseline {tc.collapse_baseline!r}; "
                         f"valid: {list(COLLAPSE_BASELINES)}.")
    if not 0 <= tc.b2 < 1:
        raise ValueError(f"b2 must be in [0, 1), got {tc.b2}.")


def validate_grid(lrs: Sequence[float], seeds: Sequence[int], lags: Sequence[int],
                  b1s: Sequence[float] = (0.9,), *, max_lag_cap: int | None = None) -> None:
    """Checks a (η, seed, S, b1) grid before anything is compiled; raises ValueError."""
    for name, vals in (("learning rates", lrs), ("seeds", seeds), ("lags S", lags), ("b1", b1s)):
        if len(vals) == 0:
            raise ValueError(f"The grid is empty: no {name} given.")
    for lr in lrs:
        if not (isinstance(lr, (int, float, np.floating, np.integer)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"Every learning rate η must be finite and > 0, got {lr!r}.")
    for s in seeds:
        if not _is_int(s) or s < 0:
            raise ValueError(f"Seeds must be integers >= 0, got {s!r}.")
    for s in lags:
        if not _is_int(s) or s < 0:
            raise ValueError(f"Staleness S must be an integer >= 0, got {s!r}.")
        if max_lag_cap is not None and s > max_lag_cap:
            raise ValueError(f"S = {s} exceeds the ring-buffer cap S_max = {max_lag_cap}; raise "
                             "max_lag_cap.")
    for b in b1s:
        if not 0 <= b < 1:
            raise ValueError(f"b1 must be in [0, 1), got {b!r}.")


# ----------------------------------------------------------------------------------------------
# The testbed: enumeration tables and policy families.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Testbed:
    """Constant tables of an exact testbed. Hashable by identity, so usable as a static arg.

    Attributes (numpy, float64 where real):
      seqs: [N, L] int, every response in lexicographic order.
      prefix_index: [N, L] int, index of the prefix y_{<l} among the N_pref prefixes.
      prefix_tokens: [N_pref, L−1] int, tokens of each prefix, −1 past its length.
      prefix_len: [N_pref] int.
      rewards: [P, N] float64.
      targets: [P, L] int (reward targets; used by ``exact``/``partial``).
      features: [P, N_pref, d] float64 (``linear``) or [P, N_pref, D_in] one-hot (``mlp``) or None.
    """

    cfg: TestbedConfig
    seqs: np.ndarray
    prefix_index: np.ndarray
    prefix_tokens: np.ndarray
    prefix_len: np.ndarray
    rewards: np.ndarray
    targets: np.ndarray
    features: np.ndarray | None

    @property
    def num_prefixes(self) -> int:
        return int(self.prefix_len.shape[0])


def make_testbed(cfg: TestbedConfig) -> Testbed:
    """Builds the enumeration tables, rewards and fixed features of `cfg`."""
    validate_testbed_config(cfg)
    v, length, p = cfg.vocab_size, cfg.seq_len, cfg.num_prompts
    seqs = np.array(list(itertools.product(range(v), repeat=length)), dtype=np.int32).reshape(-1, length)
    offsets = [sum(v ** j for j in range(l)) for l in range(length + 1)]
    num_pref = offsets[length]
    prefix_index = np.zeros_like(seqs)
    for l in range(length):
        code = np.zeros(seqs.shape[0], dtype=np.int64)
        for j in range(l):
            code = code * v + seqs[:, j]
        prefix_index[:, l] = offsets[l] + code
    prefix_tokens = -np.ones((num_pref, max(length - 1, 1)), dtype=np.int32)
    prefix_len = np.zeros(num_pref, dtype=np.int32)
    for l in range(length):
        for code, toks in enumerate(itertools.product(range(v), repeat=l)):
            idx = offsets[l] + code
            prefix_len[idx] = l
            prefix_tokens[idx, :l] = toks

    rng = np.random.default_rng(cfg.reward_seed)
    targets = rng.integers(0, v, size=(p, length)).astype(np.int32)
    match = (seqs[None, :, :] == targets[:, None, :])  # [P, N, L]
    if cfg.reward == "exact":
        rewards = match.all(-1).astype(np.float64)
    elif cfg.reward == "partial":
        rewards = match.mean(-1).astype(np.float64)
    else:
        m = cfg.sum_modulus or v
        total = seqs.sum(-1)[None, :] + np.arange(p)[:, None]
        rewards = ((total % m) == 0).astype(np.float64)

    features = None
    if cfg.policy == "linear":
        frng = np.random.default_rng(cfg.feature_seed)
        features = frng.normal(size=(p, num_pref, cfg.feature_dim)) / math.sqrt(cfg.feature_dim)
    elif cfg.policy == "mlp":
        d_in = p + (length - 1) * v + length
        features = np.zeros((p, num_pref, d_in))
        for x in range(p):
            features[x, :, x] = 1.0
            for idx in range(num_pref):
                l = prefix_len[idx]
                for j in range(l):
                    features[x, idx, p + j * v + prefix_tokens[idx, j]] = 1.0
                features[x, idx, p + (length - 1) * v + l] = 1.0
    return Testbed(cfg=cfg, seqs=seqs, prefix_index=prefix_index, prefix_tokens=prefix_tokens,
                   prefix_len=prefix_len, rewards=rewards, targets=targets, features=features)


def _fdtype():
    return jnp.result_type(float)


def init_params(tb: Testbed, key: jax.Array) -> Params:
    """θ_0 for the policy family of `tb`; the key is the only source of randomness."""
    cfg, v, dt = tb.cfg, tb.cfg.vocab_size, _fdtype()
    s = cfg.init_scale
    if cfg.policy == "tabular":
        return {"logits": s * jax.random.normal(key, (cfg.num_prompts, tb.num_prefixes, v), dt)}
    if cfg.policy == "linear":
        return {"w": s * jax.random.normal(key, (cfg.feature_dim, v), dt), "b": jnp.zeros((v,), dt)}
    d_in, h = tb.features.shape[-1], cfg.hidden_dim
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (d_in, h), dt) / math.sqrt(d_in), "b1": jnp.zeros((h,), dt),
            "w2": s * jax.random.normal(k2, (h, v), dt) / math.sqrt(h), "b2": jnp.zeros((v,), dt)}


def prefix_logits(tb: Testbed, params: Params) -> jax.Array:
    """Next-token logits for every (prompt, prefix): [P, N_pref, V]."""
    pol = tb.cfg.policy
    if pol == "tabular":
        return params["logits"]
    feats = jnp.asarray(tb.features, _fdtype())
    if pol == "linear":
        return feats @ params["w"] + params["b"]
    hidden = jnp.tanh(feats @ params["w1"] + params["b1"])
    return hidden @ params["w2"] + params["b2"]


def token_logp(tb: Testbed, params: Params) -> jax.Array:
    """log π_θ(y_l | x, y_{<l}) for every prompt, response and position: [P, N, L]."""
    logp = jax.nn.log_softmax(prefix_logits(tb, params), axis=-1)  # [P, N_pref, V]
    return logp[:, jnp.asarray(tb.prefix_index), jnp.asarray(tb.seqs)]


def seq_logp(tb: Testbed, params: Params) -> jax.Array:
    """log π_θ(y|x): [P, N]."""
    return token_logp(tb, params).sum(-1)


def probs(tb: Testbed, params: Params) -> jax.Array:
    """π_θ(y|x): [P, N]; each row sums to one."""
    return jnp.exp(seq_logp(tb, params))


def entropy(tb: Testbed, params: Params) -> jax.Array:
    """Mean over prompts of the sequence-level entropy H(π_θ(·|x)) in nats."""
    lp = seq_logp(tb, params)
    return -(jnp.exp(lp) * lp).sum(-1).mean()


def kl_to_ref(tb: Testbed, params: Params, ref: Params) -> jax.Array:
    """Mean over prompts of the exact KL(π_θ(·|x) ‖ π_ref(·|x))."""
    lp, lr = seq_logp(tb, params), seq_logp(tb, ref)
    return (jnp.exp(lp) * (lp - lr)).sum(-1).mean()


def rewards(tb: Testbed) -> jax.Array:
    return jnp.asarray(tb.rewards, _fdtype())


def objective(tb: Testbed, params: Params, ref: Params | None = None) -> jax.Array:
    """J(θ) = (1/P) Σ_x Σ_y π_θ(y|x) r(x, y) − β KL(π_θ ‖ π_ref) (β = cfg.kl_coef, if ref given)."""
    j = (probs(tb, params) * rewards(tb)).sum(-1).mean()
    if ref is not None and tb.cfg.kl_coef > 0:
        j = j - tb.cfg.kl_coef * kl_to_ref(tb, params, ref)
    return j


def grad_objective(tb: Testbed, params: Params, ref: Params | None = None) -> Params:
    """∇J(θ): the total derivative, differentiating through the sampling distribution π_θ."""
    return jax.grad(objective, argnums=1)(tb, params, ref)


# ----------------------------------------------------------------------------------------------
# Population-mode surrogate and H(θ, φ).
# ----------------------------------------------------------------------------------------------


def population_advantages(tb: Testbed, weights: jax.Array) -> jax.Array:
    """A(x, y) from the reward distribution under `weights` = π_φ(·|x): [P, N]."""
    cfg, r = tb.cfg, rewards(tb)
    mu = (weights * r).sum(-1, keepdims=True)
    centered = r - mu
    if not cfg.std_normalize:
        return centered
    sd = jnp.sqrt((weights * centered ** 2).sum(-1, keepdims=True))
    return centered / (sd + cfg.adv_eps)


def per_sequence_objective(cfg: TestbedConfig, logp: jax.Array, behavior_logp: jax.Array,
                           adv: jax.Array, log_weight: jax.Array | None = None
                           ) -> tuple[jax.Array, jax.Array]:
    """Clipped per-sequence objective w·(1/L) Σ_l min(ρ_l A, clip(ρ_l) A) and the clip indicator.

    logp, behavior_logp: [..., L]; adv: [...]; log_weight: [...] (log w, default 0 i.e. w = 1).
    The weight enters in log space, w·ρ = exp(log w + log ρ), and the clip acts on log ρ, so a
    token with π_φ ≈ 0 and π_θ ≫ π_φ contributes its finite value π_θ·A instead of 0·∞ = NaN.
    Returns (weighted objective [...], clipped fraction [...]); a token counts as clipped when the
    clip branch is active (its gradient is zero).
    """
    lo, hi = 1.0 - cfg.clip_eps, 1.0 + (cfg.clip_eps_high if cfg.clip_eps_high is not None
                                       else cfg.clip_eps)
    a = adv[..., None]
    lw = jnp.zeros(adv.shape, logp.dtype) if log_weight is None else log_weight
    w = jnp.exp(lw)[..., None]
    if cfg.ratio_level == "no_ratio":
        return (w * a * logp).mean(-1), jnp.zeros(adv.shape, logp.dtype)
    log_ratio = logp - behavior_logp
    if cfg.ratio_level == "sequence_geomean":
        log_ratio = jnp.broadcast_to(log_ratio.mean(-1, keepdims=True), log_ratio.shape)
    w_ratio = jnp.exp(lw[..., None] + log_ratio)
    w_clipped = w * jnp.exp(jnp.clip(log_ratio, math.log(lo), math.log(hi)))
    if cfg.clip_mode == "none":
        return (w_ratio * a).mean(-1), jnp.zeros(adv.shape, logp.dtype)
    obj = jnp.minimum(w_ratio * a, w_clipped * a)
    is_clipped = jnp.where(a > 0, log_ratio > math.log(hi),
                           jnp.where(a < 0, log_ratio < math.log(lo), False))
    return obj.mean(-1), is_clipped.astype(logp.dtype).mean(-1)


def population_loss(tb: Testbed, theta: Params, phi: Params,
                    ref: Params | None = None) -> tuple[jax.Array, dict]:
    """L(θ; φ) in population mode (exact π_φ weights, φ frozen); returns (loss, aux)."""
    lp_theta = token_logp(tb, theta)
    lp_phi = jax.lax.stop_gradient(token_logp(tb, phi))
    lw = lp_phi.sum(-1)
    w = jnp.exp(lw)
    adv = jax.lax.stop_gradient(population_advantages(tb, w))
    obj, clip_frac = per_sequence_objective(tb.cfg, lp_theta, lp_phi, adv, lw)
    loss = -obj.sum(-1).mean()
    if ref is not None and tb.cfg.kl_coef > 0:
        loss = loss + tb.cfg.kl_coef * kl_to_ref(tb, theta, ref)
    return loss, {"clip_frac": (w * clip_frac).sum(-1).mean()}


def population_H(tb: Testbed, theta: Params, phi: Params, ref: Params | None = None) -> Params:
    """H(θ, φ) = ∇_θ L(θ; φ) in population mode."""
    return jax.grad(lambda th: population_loss(tb, th, phi, ref)[0])(theta)


def population_loss_and_H(tb, theta, phi, ref=None):
    """((loss, aux), H) in one pass."""
    return jax.value_and_grad(lambda th: population_loss(tb, th, phi, ref), has_aux=True)(theta)


# ----------------------------------------------------------------------------------------------
# Sampled mode: G responses per prompt from π_φ, through the loss library.
# ----------------------------------------------------------------------------------------------


def sample_responses(tb: Testbed, key: jax.Array, phi: Params, group_size: int) -> jax.Array:
    """Draws G responses per prompt from π_φ(·|x): response indices [P, G] (exact sampling)."""
    lp = seq_logp(tb, phi)
    return jax.random.categorical(key, lp[:, None, :], axis=-1, shape=(lp.shape[0], group_size))


def sampled_batch(tb: Testbed, theta: Params, phi: Params, idx: jax.Array):
    """The learner's batch for responses `idx` [P, G]: (logp, behavior_logp, rewards, mask)."""
    p, g = idx.shape
    rows = jnp.arange(p)[:, None]
    lp_theta = token_logp(tb, theta)[rows, idx].reshape(p * g, -1)
    lp_phi = jax.lax.stop_gradient(token_logp(tb, phi))[rows, idx].reshape(p * g, -1)
    r = rewards(tb)[rows, idx].reshape(p * g)
    return lp_theta, lp_phi, r, jnp.ones_like(lp_theta)


def library_surrogate(cfg: TestbedConfig, logp, behavior_logp, rewards_, mask, group_size: int,
                      advantages=None):
    """The loss library's GRPO surrogate with the testbed's settings: (loss, metrics)."""
    from async_grpo import losses  # pylint: disable=g-import-not-at-top
    if advantages is None:
        advantages = losses.group_advantages(rewards_, group_size, std_normalize=cfg.std_normalize,
                                             leave_one_out=cfg.leave_one_out, eps=cfg.adv_eps,
                                             std_ddof=cfg.std_ddof)
    advantages = jax.lax.stop_gradient(advantages)
    return losses.grpo_surrogate(logp, behavior_logp, advantages, mask, clip_eps=cfg.clip_eps,
                                 clip_eps_high=cfg.clip_eps_high, clip_mode=cfg.clip_mode,
                                 ratio_level=cfg.ratio_level, aggregation="seq-mean-token-mean")


def sampled_loss(tb: Testbed, theta: Params, phi: Params, idx: jax.Array,
                 ref: Params | None = None) -> jax.Array:
    """L(θ; φ) on the sampled groups `idx` [P, G], computed by the loss library."""
    if tb.cfg.ratio_level == "no_ratio":
        raise ValueError("ratio_level='no_ratio' is a population-mode ablation only.")
    logp, beh, r, mask = sampled_batch(tb, theta, phi, idx)
    loss, _ = library_surrogate(tb.cfg, logp, beh, r, mask, idx.shape[1])
    if ref is not None and tb.cfg.kl_coef > 0:
        loss = loss + tb.cfg.kl_coef * kl_to_ref(tb, theta, ref)
    return loss


def sampled_H(tb: Testbed, theta: Params, phi: Params, idx: jax.Array,
              ref: Params | None = None) -> Params:
    """H(θ, φ) in sampled mode: the gradient the learner follows on the groups `idx`."""
    return jax.grad(lambda th: sampled_loss(tb, th, phi, idx, ref))(theta)


MAX_ENUMERATED_GROUPS = 1 << 20


def expected_sampled_H(tb: Testbed, theta: Params, phi: Params, group_size: int) -> Params:
    """E[H_sampled(θ, φ)] over every ordered group of G responses per prompt, by exact enumeration.

    Prompts are independent and the sampled loss is a mean over prompts, so
    E[H] = Σ_x Σ_{y_1..y_G} Π_i π_φ(y_i|x) · ∇_θ (1/P)·L_x(θ; y_1..y_G). Needs N^G ≤ 2^20.
    Comparing it with `population_H` isolates the finite-G bias of the group statistics.
    """
    p, n = tb.cfg.num_prompts, tb.cfg.num_responses
    if n ** group_size > MAX_ENUMERATED_GROUPS:
        raise ValueError(f"{n}**{group_size} groups is too many to enumerate "
                         f"(max {MAX_ENUMERATED_GROUPS}).")
    groups = jnp.asarray(np.array(list(itertools.product(range(n), repeat=group_size)),
                                  dtype=np.int32))

    def prompt_group_H(x, grp):
        def loss(th):
            lp = token_logp(tb, th)[x, grp]
            blp = jax.lax.stop_gradient(token_logp(tb, phi))[x, grp]
            r = rewards(tb)[x, grp]
            return library_surrogate(tb.cfg, lp, blp, r, jnp.ones_like(lp), group_size)[0] / p
        return jax.grad(loss)(theta)

    w = jnp.exp(seq_logp(tb, phi)[:, groups].sum(-1))  # [P, #groups]: P(ordered group | x)
    hs = jax.vmap(jax.vmap(prompt_group_H, (None, 0)), (0, None))(jnp.arange(p), groups)
    return jax.tree.map(lambda h: jnp.tensordot(w, h, axes=2), hs)


def surrogate_settings_from_loss(name: str) -> dict:
    """TestbedConfig surrogate fields equivalent to the library variant `name` (KL dropped).

    Raises ValueError for variants the population mode cannot express exactly (TIS, MIS, dual
    clip, CISPO, decoupled PPO, total_derivative, the product sequence ratio). The aggregation is
    irrelevant here (fixed length L: all aggregations agree up to a constant factor).
    """
    from async_grpo import losses  # pylint: disable=g-import-not-at-top
    c = losses.loss_config(name)
    if c["kind"] != "surrogate":
        raise ValueError(f"Loss {name!r} is not a GRPO-family surrogate.")
    unsupported = [k for k in ("tis_cap", "mis_low", "mis_high", "mis_veto") if c[k] is not None]
    if c["clip_mode"] not in CLIP_MODES or c["ratio_level"] not in RATIO_LEVELS or unsupported \
        or c["requires_proximal"]:
        raise ValueError(f"Loss {name!r} (clip_mode={c['clip_mode']}, ratio_level={c['ratio_level']}"
                         f", {unsupported}) has no exact population form in this testbed.")
    return dict(std_normalize=c["std_normalize"], leave_one_out=c["leave_one_out"],
                adv_eps=c["adv_eps"], std_ddof=c["std_ddof"], clip_eps=c["clip_eps"],
                clip_eps_high=c["clip_eps_high"], clip_mode=c["clip_mode"],
                ratio_level=c["ratio_level"])


# ----------------------------------------------------------------------------------------------
# Pytree algebra.
# ----------------------------------------------------------------------------------------------


def tree_dot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_norm(a) -> jax.Array:
    return jnp.sqrt(tree_dot(a, a))


def tree_sub(a, b):
    return jax.tree.map(jnp.subtract, a, b)


def tree_cos(a, b) -> jax.Array:
    """cos(a, b); 0 when either is zero."""
    den = tree_norm(a) * tree_norm(b)
    return jnp.where(den > 0, tree_dot(a, b) / jnp.where(den > 0, den, 1.0), 0.0)


def tree_neg(a):
    return jax.tree.map(jnp.negative, a)


def bias_diagnostics(tb: Testbed, theta: Params, phi: Params, ref: Params | None = None) -> dict:
    """δ = H(θ,φ) − H(θ,θ) and the cosines with ∇J (signs: −H vs ∇J), population mode."""
    h_stale = population_H(tb, theta, phi, ref)
    h_on = population_H(tb, theta, theta, ref)
    g = grad_objective(tb, theta, ref)
    delta = tree_sub(h_stale, h_on)
    dn, hn = tree_norm(delta), tree_norm(h_on)
    return {"delta_norm": dn, "delta_rel": dn / jnp.maximum(hn, 1e-30),
            "h_on_norm": hn, "h_stale_norm": tree_norm(h_stale), "grad_j_norm": tree_norm(g),
            "cos_stale": tree_cos(tree_neg(h_stale), g), "cos_onpolicy": tree_cos(tree_neg(h_on), g),
            "drift": tree_norm(tree_sub(theta, phi))}


# ----------------------------------------------------------------------------------------------
# Training: one jitted program per run, vmapped over cells.
# ----------------------------------------------------------------------------------------------

CELL_KEYS = ("lr", "seed", "max_lag", "b1")


def lag_at(tc: TrainConfig, t: jax.Array, s_max: jax.Array, key: jax.Array) -> jax.Array:
    """The lag s_t of the staleness model `tc.staleness` (S = `s_max`, traced)."""
    t = jnp.asarray(t, jnp.int32)
    s_max = jnp.asarray(s_max, jnp.int32)
    if tc.staleness == "fixed":
        return jnp.minimum(t, s_max)
    if tc.staleness == "sync_interval":
        return jnp.where(s_max > 0, t % jnp.maximum(s_max, 1), 0)
    if tc.staleness == "random_uniform":
        s = jax.random.randint(key, (), 0, s_max + 1)
    else:
        # Geometric on {0, 1, ...}: floor(log U / log(1 − p)).
        if tc.geometric_p >= 1:
            s = jnp.zeros((), jnp.int32)
        else:
            u = jax.random.uniform(key, (), minval=1e-12, maxval=1.0)
            s = jnp.floor(jnp.log(u) / math.log1p(-tc.geometric_p)).astype(jnp.int32)
    return jnp.minimum(jnp.minimum(s, s_max), t)


def make_optimizer(tc: TrainConfig, lr, b1) -> optax.GradientTransformation:
    if tc.optimizer == "sgd":
        return optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=b1)
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr, b1=b1, b2=tc.b2, eps=tc.opt_eps)


def make_train(tb: Testbed, tc: TrainConfig) -> Callable[[Mapping[str, jax.Array]], tuple]:
    """Returns train(cell) -> (per-step metrics {name: [T]}, summary {name: scalar}).

    `cell` maps "lr", "seed", "max_lag" (S) and "b1" to scalars (traced; vmap over them). For SGD,
    b1 is the heavy-ball momentum (0 = plain SGD); for Adam it is β1.
    """
    validate_train_config(tc)
    if tc.mode == "sampled" and tb.cfg.ratio_level == "no_ratio":
        raise ValueError("ratio_level='no_ratio' is a population-mode ablation; use mode='population'.")
    k_ring = tc.max_lag_cap + 1
    use_ref = tb.cfg.kl_coef > 0

    def train(cell):
        lr = jnp.asarray(cell["lr"], _fdtype())
        b1 = jnp.asarray(cell["b1"], _fdtype())
        s_max = jnp.asarray(cell["max_lag"], jnp.int32)
        key = jax.random.PRNGKey(jnp.asarray(cell["seed"], jnp.uint32))
        k_init, k_run = jax.random.split(key)
        theta0 = init_params(tb, k_init)
        ref = theta0 if use_ref else None
        opt = make_optimizer(tc, lr, b1)
        ring = jax.tree.map(lambda x: jnp.broadcast_to(x, (k_ring,) + x.shape), theta0)
        zeros = jax.tree.map(jnp.zeros_like, theta0)
        j0 = objective(tb, theta0, ref)
        carry0 = dict(theta=theta0, opt_state=opt.init(theta0), ring=ring, key=k_run, prev_u=zeros,
                      jmax=j0, collapse_step=jnp.asarray(-1, jnp.int32),
                      bad_streak=jnp.asarray(0, jnp.int32))

        def step(carry, t):
            theta = carry["theta"]
            key, k_lag, k_samp = jax.random.split(carry["key"], 3)
            ring = jax.tree.map(lambda r, x: r.at[t % k_ring].set(x), carry["ring"], theta)
            lag = lag_at(tc, t, s_max, k_lag)
            phi = jax.tree.map(lambda r: r[(t - lag) % k_ring], ring)
            (loss_pop, aux), h_pop = population_loss_and_H(tb, theta, phi, ref)
            j, g = jax.value_and_grad(lambda th: objective(tb, th, ref))(theta)
            m = {"lag": lag, "J": j, "loss_pop": loss_pop, "clip_frac": aux["clip_frac"],
                 "entropy": entropy(tb, theta), "h_pop_norm": tree_norm(h_pop),
                 "grad_j_norm": tree_norm(g), "cos_stale": tree_cos(tree_neg(h_pop), g)}
            if tc.mode == "sampled":
                idx = sample_responses(tb, k_samp, phi, tc.group_size)
                h_used = sampled_H(tb, theta, phi, idx, ref)
                m["h_used_norm"] = tree_norm(h_used)
                m["cos_sampled_pop"] = tree_cos(h_used, h_pop)
            else:
                h_used = h_pop
            if tc.diagnostics:
                h_on = population_H(tb, theta, theta, ref)
                delta = tree_sub(h_pop, h_on)
                dn, hn = tree_norm(delta), tree_norm(h_on)
                m.update(delta_norm=dn, delta_rel=dn / jnp.maximum(hn, 1e-30), h_on_norm=hn,
                         cos_onpolicy=tree_cos(tree_neg(h_on), g))
            updates, opt_state = opt.update(h_used, carry["opt_state"], theta)
            new_theta = optax.apply_updates(theta, updates)
            u = tree_sub(new_theta, theta)
            m.update(drift_cycle=tree_norm(tree_sub(theta, phi)),
                     drift_cum=tree_norm(tree_sub(theta, theta0)),
                     update_norm=tree_norm(u),
                     cos_update=jnp.where(t > 0, tree_cos(u, carry["prev_u"]), 0.0))
            finite = jnp.isfinite(j) & jnp.isfinite(tree_norm(new_theta))
            jmax = jnp.where(jnp.isfinite(j), jnp.maximum(carry["jmax"], j), carry["jmax"])
            if tc.collapse_baseline == "init":
                thr = j0 + tc.collapse_frac * (jmax - j0)
            else:
                thr = tc.collapse_frac * jmax
            low = (t >= tc.collapse_warmup) & (j < thr)
            streak = jnp.where(low, carry["bad_streak"] + 1, 0)
            bad = (streak >= tc.collapse_patience) | ~finite
            first_bad = jnp.where(finite, t - tc.collapse_patience + 1, t)
            collapse_step = jnp.where((carry["collapse_step"] < 0) & bad, first_bad,
                                      carry["collapse_step"])
            m["collapsed"] = collapse_step >= 0
            new_carry = dict(theta=new_theta, opt_state=opt_state, ring=ring, key=key, prev_u=u,
                             jmax=jmax, collapse_step=collapse_step.astype(jnp.int32),
                             bad_streak=streak.astype(jnp.int32))
            return new_carry, m

        carry, metrics = jax.lax.scan(step, carry0, jnp.arange(tc.num_steps, dtype=jnp.int32))
        j_final = objective(tb, carry["theta"], ref)
        js = metrics["J"]
        best = jnp.max(jnp.where(jnp.isfinite(js), js, -jnp.inf))
        summary = {"J_init": j0, "J_final": j_final, "J_best": jnp.maximum(best, j_final),
                   "collapse_step": carry["collapse_step"],
                   "collapsed": carry["collapse_step"] >= 0,
                   "drift_final": tree_norm(tree_sub(carry["theta"], theta0))}
        return metrics, summary

    return train


def make_cells(lrs: Sequence[float], seeds: Sequence[int], lags: Sequence[int],
               b1s: Sequence[float] = (0.9,), *, max_lag_cap: int | None = None
               ) -> dict[str, np.ndarray]:
    """Flattened Cartesian product of the grid, order (S, η, seed, b1) with b1 fastest."""
    validate_grid(lrs, seeds, lags, b1s, max_lag_cap=max_lag_cap)
    rows = list(itertools.product(lags, lrs, seeds, b1s))
    return {"max_lag": np.array([r[0] for r in rows], np.int32),
            "lr": np.array([r[1] for r in rows], np.float64),
            "seed": np.array([r[2] for r in rows], np.int64),
            "b1": np.array([r[3] for r in rows], np.float64)}


def _cell_arrays(cells: Mapping[str, np.ndarray], sl: slice | None = None) -> dict:
    sl = slice(None) if sl is None else sl
    return {"lr": jnp.asarray(cells["lr"][sl], _fdtype()),
            "b1": jnp.asarray(cells["b1"][sl], _fdtype()),
            "max_lag": jnp.asarray(cells["max_lag"][sl], jnp.int32),
            "seed": jnp.asarray(cells["seed"][sl], jnp.uint32)}


@functools.lru_cache(maxsize=32)
def _compiled_grid(tb: Testbed, tc: TrainConfig, keep_metrics: tuple[str, ...] | None):
    train = make_train(tb, tc)

    def run(cells):
        metrics, summary = jax.vmap(train)(cells)
        if keep_metrics is not None:
            metrics = {k: v for k, v in metrics.items() if k in keep_metrics}
        return metrics, summary

    return jax.jit(run)


def run_cells(tb: Testbed, tc: TrainConfig, cells: Mapping[str, np.ndarray], *,
              keep_metrics: Sequence[str] | None = None) -> tuple[dict, dict]:
    """Runs every cell in one vmapped, jitted program; returns numpy (metrics [C, T], summary [C])."""
    validate_grid(list(cells["lr"]), [int(s) for s in cells["seed"]],
                  [int(s) for s in cells["max_lag"]], list(cells["b1"]), max_lag_cap=tc.max_lag_cap)
    fn = _compiled_grid(tb, tc, None if keep_metrics is None else tuple(keep_metrics))
    metrics, summary = fn(_cell_arrays(cells))
    return jax.tree.map(np.asarray, metrics), jax.tree.map(np.asarray, summary)


def run_cells_chunked(tb: Testbed, tc: TrainConfig, cells: Mapping[str, np.ndarray], *,
                      chunk_size: int, keep_metrics: Sequence[str] | None = None,
                      on_chunk: Callable[[int, dict, dict], None] | None = None,
                      skip_chunk: Callable[[int], dict | None] | None = None) -> tuple[dict, dict]:
    """Like `run_cells` in fixed-size chunks (padded, so it compiles once).

    `skip_chunk(i)` may return saved (metrics, summary) of chunk i to resume; `on_chunk(i, m, s)` is
    called after each computed chunk (for saving).
    """
    n = len(cells["lr"])
    validate_grid(list(cells["lr"]), [int(s) for s in cells["seed"]],
                  [int(s) for s in cells["max_lag"]], list(cells["b1"]), max_lag_cap=tc.max_lag_cap)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    fn = _compiled_grid(tb, tc, None if keep_metrics is None else tuple(keep_metrics))
    outs = []
    for i, start in enumerate(range(0, n, chunk_size)):
        saved = skip_chunk(i) if skip_chunk is not None else None
        if saved is not None:
            outs.append(saved)
            continue
        stop = min(start + chunk_size, n)
        idx = np.arange(start, start + chunk_size).clip(max=n - 1)  # pad by repeating the last cell
        chunk = {k: np.asarray(v)[idx] for k, v in cells.items()}
        m, s = fn(_cell_arrays(chunk))
        m = jax.tree.map(lambda a: np.asarray(a)[: stop - start], m)
        s = jax.tree.map(lambda a: np.asarray(a)[: stop - start], s)
        if on_chunk is not None:
            on_chunk(i, m, s)
        outs.append((m, s))
    metrics = {k: np.concatenate([o[0][k] for o in outs]) for k in outs[0][0]}
    summary = {k: np.concatenate([o[1][k] for o in outs]) for k in outs[0][1]}
    return metrics, summary
