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
  the span between two refreshes of the behavior policy. The lag schedule is a staleness policy
  of `async_grpo.staleness` (`TrainConfig.staleness`: ``fixed`` s_t = min(t, S);
  ``sync_interval`` s_t = t mod S; ``random_uniform``, ``random_geometric``; ``sync``), the same
  vocabulary as the asynchronous pipeline.

Objects
* Population objective J(θ) := (1/P) Σ_x Σ_y π_θ(y|x) r(x, y) − β KL(π_θ(·|x) ‖ π_ref(·|x))
  (`objective`; β = `kl_coef`, default 0, π_ref = θ_0 in training). Its total derivative ∇J(θ)
  (`grad_objective`) is autodiff through the enumeration, i.e. through the sampling distribution.
* The surrogate is a registered loss variant of `async_grpo.losses` (`TestbedConfig.loss`, e.g.
  "grpo", "dapo", "gspo", "pg", "no_ratio", plus `loss_kwargs` overrides): the same spelling as
  `make_loss` and the pipeline's `rl.loss`. Its KL settings are not used: the testbed's KL term
  is exact (β = `kl_coef` below). In POPULATION mode (`population_loss`) the sampling
  distribution is frozen at π_φ and every expectation is a sum:
      L(θ; φ) = −(1/P) Σ_x Σ_y π_φ(y|x) · c · (1/L) Σ_l min(ρ_l A, clip(ρ_l, 1−ε, 1+ε_high) A)
                + β KL(π_θ ‖ π_ref),
  ρ_l = π_θ(y_l | x, y_{<l}) / π_φ(y_l | x, y_{<l}) (ratio level "token"; "sequence_geomean"
  uses the GSPO ratio exp(mean_l log ρ_l); "none" (`no_ratio`) is A·(1/L)Σ_l log π_θ, a plain
  stale policy gradient; clip "none" drops the clip, ρ·A), A = (r − μ_φ(x)) / (σ_φ(x) + eps)
  with μ_φ, σ_φ the mean and std of r under π_φ(·|x) (no std normalization: A = r − μ_φ(x);
  leave-one-out has no population form beyond its G/(G−1) factor, which is dropped), and c the
  constant factor of the variant's aggregation at fixed length L (1 for the token means, L for
  a token sum, L/normalizer for Dr. GRPO's). Variants without an exact population form (TIS,
  MIS, dual clip, CISPO, decoupled PPO, the product sequence ratio, total_derivative) are refused
  with a clear error, unless `TestbedConfig.sampled_only`: then they train in sampled mode only
  and no population-mode metric is recorded. In SAMPLED mode (`sampled_loss`) the variant itself
  (`async_grpo.losses.make_loss`) is evaluated on G responses per prompt drawn from π_φ, exactly
  as the learner sees them; a variant needing a proximal policy (decoupled PPO) gets
  π_prox = sg(π_θ), the learner's current policy (one update per batch), which makes its
  gradient that of the unclipped token ratio (`pg`). In
  DELAYED mode training follows the pure delayed gradient H(φ, φ): the on-policy update of the
  stale parameters, every factor evaluated at φ, applied at θ (the classic delayed-gradient
  model; the stale surrogate H(θ, φ) evaluates ∇log π_θ and the KL at the current θ).
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

Where δ comes from. With a token ratio and no clipping, the gradient of position l is
Σ_y π_φ(y_{<l}) π_θ(y_l | y_{<l}) π_φ(y_{>l} | y_{≤l}) A_φ(y) ∇log π_θ(y_l | y_{<l}): the ratio
turns only token l's own factor into π_θ; the prefix y_{<l} and the suffix y_{>l} are still drawn
from π_φ, and the suffix enters through A(y). So −H(θ, φ) is the on-policy gradient with stale
advantage statistics ONLY for one-token responses (L = 1); for L ≥ 2 δ is first order in
‖θ − φ‖ even with the statistics frozen (`population_loss(..., stats_from=θ)`; both facts are
tested in tests/test_exact.py). Past the clip onset the clip removes gradient terms. The
ratio-free ablation (`no_ratio`) is the classic delayed gradient.

Training (`make_train`) is an instance of the generic stale-gradient simulator
(`async_grpo.simulate`): the update mapping is H (population or sampled), the objective is J, and
the whole run is one jitted `lax.scan` with a ring buffer of the last S_max + 1 iterates, optax
SGD(momentum b1) or Adam(b1) through `optax.inject_hyperparams` with traced η and b1, `vmap`ped
over cells (η, seed, S, b1) so a whole grid compiles once (`run_cells`). The seed sets θ_0's
initialization, the random lags and the sampled-mode draws; the random features and reward
targets are fixed by `feature_seed` / `reward_seed`. Collapse is the project's one definition
(`async_grpo.collapse`), by default a sustained drop of J: after `warmup` steps,
J_t < J_0 + ½·(max_{s≤t} J_s − J_0) for `patience` consecutive steps, or any non-finite J or θ.
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

from async_grpo import collapse as collapse_lib
from async_grpo import losses
from async_grpo import lr_control as lr_control_lib
from async_grpo import metric_names as mn
from async_grpo import simulate
from async_grpo import staleness as staleness_lib
from async_grpo.diagnostics import tree_cosine

MAX_RESPONSES_PER_PROMPT = 1024
MAX_PROMPTS = 512

POLICIES = ("tabular", "linear", "mlp")
REWARDS = ("exact", "partial", "sum_mod")
# The loss library's settings that the population mode can express exactly.
POPULATION_RATIO_LEVELS = ("token", "sequence_geomean", "none")
POPULATION_CLIP_MODES = ("ppo", "none")
OPTIMIZERS = ("sgd", "adam")
MODES = ("population", "sampled", "delayed")

Params = Any


# ----------------------------------------------------------------------------------------------
# Configuration and validation (pure Python: runs before anything is traced or compiled).
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TestbedConfig:
    """Static description of an exact testbed (task, policy family, surrogate, KL).

    `loss` names a registered variant of `async_grpo.losses` and `loss_kwargs` overrides its
    settings (a dict or (key, value) pairs; stored as a sorted tuple so the config stays
    hashable). The variant's KL settings are not used (the testbed's KL is exact: `kl_coef`).
    `sampled_only` admits every registered GRPO-family or total-derivative variant, also those
    without an exact population form (TIS, MIS, decoupled PPO, total_derivative, …); such a
    testbed trains only in sampled mode, where the library's loss is evaluated on the samples,
    and records no population-mode metrics (`has_population_form`).
    """

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
    loss: str = "grpo"
    loss_kwargs: Any = ()
    kl_coef: float = 0.0
    sampled_only: bool = False

    def __post_init__(self):
        items = self.loss_kwargs.items() if isinstance(self.loss_kwargs, Mapping) else \
            self.loss_kwargs
        object.__setattr__(self, "loss_kwargs", tuple(sorted(dict(items).items())))
        validate_testbed_config(self)

    @property
    def num_responses(self) -> int:
        return self.vocab_size ** self.seq_len

    @functools.cached_property
    def surrogate(self) -> dict:
        """The loss variant's full settings (`losses.loss_config`), KL turned off."""
        return surrogate_settings(self.loss, dict(self.loss_kwargs),
                                  require_population=not self.sampled_only)

    @property
    def has_population_form(self) -> bool:
        """Whether `population_loss` expresses the variant exactly."""
        return self.surrogate["population_form"]

    # The settings the population mode reads.
    clip_eps = property(lambda self: self.surrogate["clip_eps"])
    clip_eps_high = property(lambda self: self.surrogate["clip_eps_high"])
    clip_mode = property(lambda self: self.surrogate["clip_mode"])
    ratio_level = property(lambda self: self.surrogate["ratio_level"])
    std_normalize = property(lambda self: self.surrogate["std_normalize"])
    adv_eps = property(lambda self: self.surrogate["adv_eps"])

    @property
    def aggregation_scale(self) -> float:
        """The factor c by which the variant's aggregation differs from the per-sequence token
        mean when every response has exactly L real tokens."""
        agg, length = self.surrogate.get("aggregation"), self.seq_len
        if agg == "seq-mean-token-sum":
            return float(length)
        if agg == "seq-mean-token-sum-norm":
            return length / float(self.surrogate["normalizer"] or length)
        return 1.0


def surrogate_settings(loss: str, loss_kwargs: Mapping[str, Any] | None = None, *,
                       require_population: bool = True) -> dict:
    """`losses.loss_config(loss, **loss_kwargs)` with the KL off and ``population_form`` (whether
    the population mode expresses it exactly). With `require_population` (default) a variant
    without an exact population form raises ValueError naming what the population mode cannot
    express; without it, total-derivative variants are admitted too (for sampled mode)."""
    loss_kwargs = dict(loss_kwargs or {})
    kl_keys = sorted(k for k in loss_kwargs if k.startswith("kl_"))
    if kl_keys:
        raise ValueError(f"loss_kwargs {kl_keys}: the testbed's KL term is exact; set the "
                         "testbed's kl_coef instead.")
    c = losses.loss_config(loss, **loss_kwargs)
    if c["kind"] == "total_derivative" and not require_population:
        c["kl_coef"] = 0.0
        c["population_form"] = False
        return c
    if c["kind"] != "surrogate":
        raise ValueError(f"Loss {loss!r} is not a GRPO-family surrogate (kind {c['kind']!r}); "
                         f"the exact testbed needs one of the surrogate variants (or "
                         f"sampled_only=True, sampled mode).")
    unsupported = [k for k in ("tis_cap", "mis_low", "mis_high", "mis_veto") if c[k] is not None]
    if c["requires_proximal"]:
        unsupported.append("requires_proximal")
    c["population_form"] = not (c["clip_mode"] not in POPULATION_CLIP_MODES or c["ratio_level"]
                                not in POPULATION_RATIO_LEVELS or unsupported)
    if not c["population_form"] and require_population:
        raise ValueError(
            f"Loss {loss!r} (clip_mode={c['clip_mode']!r}, ratio_level={c['ratio_level']!r}"
            f"{', ' + ', '.join(unsupported) if unsupported else ''}) has no exact population form "
            f"in this testbed; it supports clip_mode in {list(POPULATION_CLIP_MODES)}, ratio_level "
            f"in {list(POPULATION_RATIO_LEVELS)} and no TIS/MIS/proximal policy (sampled mode "
            f"runs it with sampled_only=True).")
    c["kl_coef"] = 0.0
    return c


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
    if not _is_int(cfg.sum_modulus) or cfg.sum_modulus < 0 or cfg.sum_modulus == 1:
        raise ValueError(f"sum_modulus must be 0 (use vocab_size) or >= 2, got {cfg.sum_modulus!r}.")
    if not isinstance(cfg.sampled_only, bool):
        raise ValueError(f"sampled_only must be a bool, got {cfg.sampled_only!r}.")
    sur = cfg.surrogate   # validates the loss name, overrides and the population form
    if sur["kind"] == "total_derivative":
        pass
    elif not 0 < sur["clip_eps"] < 1:
        raise ValueError(f"clip_eps must be in (0, 1), got {sur['clip_eps']}.")
    elif sur["clip_eps_high"] is not None and not sur["clip_eps_high"] > 0:
        raise ValueError(f"clip_eps_high must be > 0 or None, got {sur['clip_eps_high']}.")
    elif not sur["adv_eps"] >= 0:
        raise ValueError(f"adv_eps must be >= 0, got {sur['adv_eps']}.")
    if not cfg.kl_coef >= 0:
        raise ValueError(f"kl_coef must be >= 0, got {cfg.kl_coef}.")
    if not (math.isfinite(cfg.init_scale) and cfg.init_scale >= 0):
        raise ValueError(f"init_scale must be finite and >= 0, got {cfg.init_scale}.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Static settings of a training run (everything that fixes shapes or control flow)."""

    num_steps: int = 300
    staleness: str = "fixed"       # a scheduled policy of async_grpo.staleness
    max_lag_cap: int = 16          # S_max: ring-buffer size S_max + 1; every cell needs S <= S_max.
    geometric_p: float = 0.5       # for random_geometric: P(s = k) ∝ (1 − p)^k.
    optimizer: str = "adam"
    b2: float = 0.999
    opt_eps: float = 1e-8
    mode: str = "population"       # which H drives training: population H(θ,φ), sampled H(θ,φ),
    #                                or delayed H(φ,φ); δ etc. are always population-exact.
    group_size: int = 8            # G for sampled mode.
    diagnostics: bool = True       # compute H(θ,θ), ∇J, δ and the cosines each step.
    collapse: collapse_lib.CollapseRules = simulate.default_collapse()
    lr_control: bool = False       # the staleness-aware η controller (async_grpo.lr_control);
    #                                every cell then needs CONTROL_KEYS, the base η is cell "lr".

    def __post_init__(self):
        validate_train_config(self)


def validate_train_config(tc: TrainConfig) -> None:
    if not _is_int(tc.num_steps) or not 1 <= tc.num_steps <= simulate.MAX_STEPS:
        raise ValueError(f"num_steps must be an integer in [1, {simulate.MAX_STEPS}], "
                         f"got {tc.num_steps!r}.")
    staleness_lib.check_policy_name(tc.staleness, scheduled_only=True)
    if not _is_int(tc.max_lag_cap) or not 0 <= tc.max_lag_cap <= simulate.MAX_LAG_CAP:
        raise ValueError(f"max_lag_cap (S_max) must be an integer in [0, {simulate.MAX_LAG_CAP}], "
                         f"got {tc.max_lag_cap!r}.")
    staleness_lib.check_geometric_p(tc.geometric_p)
    if tc.optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {tc.optimizer!r}; valid: {list(OPTIMIZERS)}.")
    if tc.mode not in MODES:
        raise ValueError(f"Unknown mode {tc.mode!r}; valid: {list(MODES)}.")
    if not _is_int(tc.group_size) or tc.group_size < 2:
        raise ValueError(f"group_size must be an integer >= 2, got {tc.group_size!r}.")
    if not isinstance(tc.collapse, collapse_lib.CollapseRules):
        raise ValueError(f"collapse must be a CollapseRules, got {tc.collapse!r}.")
    if not 0 <= tc.b2 < 1:
        raise ValueError(f"b2 must be in [0, 1), got {tc.b2}.")
    if not isinstance(tc.lr_control, bool):
        raise ValueError(f"lr_control must be True or False, got {tc.lr_control!r}.")


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
    """Clipped per-sequence objective w·c·(1/L) Σ_l min(ρ_l A, clip(ρ_l) A) and the clip indicator.

    logp, behavior_logp: [..., L]; adv: [...]; log_weight: [...] (log w, default 0 i.e. w = 1);
    c = `cfg.aggregation_scale`. The weight enters in log space, w·ρ = exp(log w + log ρ), and
    the clip acts on log ρ, so a token with π_φ ≈ 0 and π_θ ≫ π_φ contributes its finite value
    π_θ·A instead of 0·∞ = NaN. Returns (weighted objective [...], clipped fraction [...]); a token
    counts as clipped when the clip branch is active (its gradient is zero).
    """
    obj, clipped = _per_sequence_objective(cfg, logp, behavior_logp, adv, log_weight)
    scale = cfg.aggregation_scale
    return (obj if scale == 1.0 else scale * obj), clipped


def _per_sequence_objective(cfg, logp, behavior_logp, adv, log_weight):
    lo, hi = 1.0 - cfg.clip_eps, 1.0 + (cfg.clip_eps_high if cfg.clip_eps_high is not None
                                       else cfg.clip_eps)
    a = adv[..., None]
    lw = jnp.zeros(adv.shape, logp.dtype) if log_weight is None else log_weight
    w = jnp.exp(lw)[..., None]
    if cfg.ratio_level == "none":
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


def population_loss(tb: Testbed, theta: Params, phi: Params, ref: Params | None = None, *,
                    stats_from: Params | None = None) -> tuple[jax.Array, dict]:
    """L(θ; φ) in population mode (exact π_φ weights, φ frozen); returns (loss, aux).

    `stats_from` (default φ) is the policy whose reward mean and std normalize the advantages:
    pass θ to freeze the statistics at the learner's own, which isolates the part of the
    staleness bias that comes from the sampling distribution itself.
    """
    lp_theta = token_logp(tb, theta)
    lp_phi = jax.lax.stop_gradient(token_logp(tb, phi))
    lw = lp_phi.sum(-1)
    w = jnp.exp(lw)
    w_stats = w if stats_from is None else jnp.exp(seq_logp(tb, stats_from))
    adv = jax.lax.stop_gradient(population_advantages(tb, w_stats))
    obj, clip_frac = per_sequence_objective(tb.cfg, lp_theta, lp_phi, adv, lw)
    loss = -obj.sum(-1).mean()
    if ref is not None and tb.cfg.kl_coef > 0:
        loss = loss + tb.cfg.kl_coef * kl_to_ref(tb, theta, ref)
    return loss, {"clip_frac": (w * clip_frac).sum(-1).mean()}


def population_H(tb: Testbed, theta: Params, phi: Params, ref: Params | None = None, *,
                 stats_from: Params | None = None) -> Params:
    """H(θ, φ) = ∇_θ L(θ; φ) in population mode."""
    return jax.grad(lambda th: population_loss(tb, th, phi, ref, stats_from=stats_from)[0])(theta)


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


@functools.lru_cache(maxsize=64)
def library_loss(cfg: TestbedConfig):
    """The testbed's loss variant from the library (KL off: the testbed adds the exact KL)."""
    return losses.make_loss(cfg.loss, **dict(cfg.loss_kwargs), kl_coef=0.0)


def sampled_loss_and_metrics(tb: Testbed, theta: Params, phi: Params, idx: jax.Array,
                             ref: Params | None = None) -> tuple[jax.Array, dict]:
    """(L(θ; φ), the library's metrics) on the sampled groups `idx` [P, G].

    A variant that needs a proximal policy (decoupled PPO) gets π_prox = sg(π_θ): the learner
    takes one step per batch, so the proximal policy is the current θ_t (u = π_θ/π_prox is 1 at
    the evaluation point and the gradient is the untruncated IS one, sg(π_θ/π_b)·A·∇log π_θ)."""
    logp, beh, r, mask = sampled_batch(tb, theta, phi, idx)
    kw = {}
    if tb.cfg.surrogate.get("requires_proximal"):
        kw["proximal_logp"] = jax.lax.stop_gradient(logp)
    loss, met = library_loss(tb.cfg)(logp, beh, r, mask, group_size=idx.shape[1], **kw)
    if ref is not None and tb.cfg.kl_coef > 0:
        loss = loss + tb.cfg.kl_coef * kl_to_ref(tb, theta, ref)
    return loss, met


def sampled_loss(tb: Testbed, theta: Params, phi: Params, idx: jax.Array,
                 ref: Params | None = None) -> jax.Array:
    """L(θ; φ) on the sampled groups `idx` [P, G], computed by the loss library."""
    return sampled_loss_and_metrics(tb, theta, phi, idx, ref)[0]


def sampled_H(tb: Testbed, theta: Params, phi: Params, idx: jax.Array,
              ref: Params | None = None) -> Params:
    """H(θ, φ) in sampled mode: the gradient the learner follows on the groups `idx`."""
    return jax.grad(lambda th: sampled_loss(tb, th, phi, idx, ref))(theta)


MAX_ENUMERATED_GROUPS = 1 << 20


def expected_group_gradient(tb: Testbed, theta: Params, phi: Params, group_size: int,
                            loss_fn: Callable | None = None, ref: Params | None = None) -> Params:
    """E[∇_θ loss] over every ordered group of G responses per prompt from π_φ, enumerated.

    `loss_fn(logp, behavior_logp, rewards, mask, group_size=G, ref_logp=...)` is any library loss
    (default: the testbed's own, `library_loss`); `ref` (optional) gives its `ref_logp`. Prompts
    are independent and the loss is a mean over prompts, so E = Σ_x Σ_{y_1..y_G} Π_i π_φ(y_i|x) ·
    ∇_θ (1/P)·L_x(θ; y_1..y_G). Needs N^G ≤ 2^20.
    """
    p, n = tb.cfg.num_prompts, tb.cfg.num_responses
    if n ** group_size > MAX_ENUMERATED_GROUPS:
        raise ValueError(f"{n}**{group_size} groups is too many to enumerate "
                         f"(max {MAX_ENUMERATED_GROUPS}).")
    loss_fn = library_loss(tb.cfg) if loss_fn is None else loss_fn
    groups = jnp.asarray(np.array(list(itertools.product(range(n), repeat=group_size)),
                                  dtype=np.int32))

    def prompt_group_grad(x, grp):
        def loss(th):
            lp = token_logp(tb, th)[x, grp]
            blp = jax.lax.stop_gradient(token_logp(tb, phi))[x, grp]
            kw = {} if ref is None else {"ref_logp": token_logp(tb, ref)[x, grp]}
            r = rewards(tb)[x, grp]
            return loss_fn(lp, blp, r, jnp.ones_like(lp), group_size=group_size, **kw)[0] / p
        return jax.grad(loss)(theta)

    w = jnp.exp(seq_logp(tb, phi)[:, groups].sum(-1))  # [P, #groups]: P(ordered group | x)
    hs = jax.vmap(jax.vmap(prompt_group_grad, (None, 0)), (0, None))(jnp.arange(p), groups)
    return jax.tree.map(lambda h: jnp.tensordot(w, h, axes=2), hs)


def expected_sampled_H(tb: Testbed, theta: Params, phi: Params, group_size: int) -> Params:
    """E[H_sampled(θ, φ)] (KL off) by exact enumeration; compared with `population_H` it
    isolates the finite-G bias of the group statistics."""
    return expected_group_gradient(tb, theta, phi, group_size)


# ----------------------------------------------------------------------------------------------
# Diagnostics and training (an instance of async_grpo.simulate).
# ----------------------------------------------------------------------------------------------


def _neg(tree):
    return jax.tree.map(jnp.negative, tree)


def bias_diagnostics(tb: Testbed, theta: Params, phi: Params, ref: Params | None = None) -> dict:
    """δ = H(θ,φ) − H(θ,θ) and the cosines with ∇J (signs: −H vs ∇J), population mode."""
    h_stale = population_H(tb, theta, phi, ref)
    h_on = population_H(tb, theta, theta, ref)
    g = grad_objective(tb, theta, ref)
    delta = optax.tree.sub(h_stale, h_on)
    dn, hn = optax.tree.norm(delta), optax.tree.norm(h_on)
    return {"delta_norm": dn, "delta_rel": dn / jnp.maximum(hn, 1e-30),
            "h_on_norm": hn, "h_stale_norm": optax.tree.norm(h_stale),
            "grad_j_norm": optax.tree.norm(g), "cos_stale": tree_cosine(_neg(h_stale), g),
            "cos_onpolicy": tree_cosine(_neg(h_on), g),
            "drift": optax.tree.norm(optax.tree.sub(theta, phi))}


CELL_KEYS = ("lr", "seed", "max_lag", "b1")
# Cell keys of the learning-rate controller (TrainConfig.lr_control): R_batch, the margin m,
# R_crit (0 = no cumulative bound) and the mode (0 rule, 1 lookahead); see async_grpo.lr_control.
CONTROL_KEYS = ("r_batch", "margin", "r_crit", "lookahead")


def make_optimizer(tc: TrainConfig, lr, b1) -> optax.GradientTransformation:
    if tc.optimizer == "sgd":
        return optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=b1)
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr, b1=b1, b2=tc.b2, eps=tc.opt_eps)


def g_dtype(tree) -> Any:
    return jax.tree.leaves(tree)[0].dtype


def update_fn(tb: Testbed, tc: TrainConfig):
    """The testbed's update mapping for the simulator: (θ, φ, key, ctx) -> (H, metrics).

    H is the population H(θ, φ); in sampled mode the sampled H on G fresh responses per prompt
    from π_φ; in delayed mode H(φ, φ), the pure delayed gradient. Metrics: the entropy, ‖∇J‖;
    for a variant with a population form the population loss, its clip fraction, ‖H_pop‖,
    cos(−H_pop, ∇J) and, with diagnostics, δ and cos(−H(θ,θ), ∇J) (module docstring); in
    sampled mode ‖H_used‖, cos(−H_used, ∇J) (`cos_used`), the library's clip fraction on the
    sample (`clip_frac_sampled`) and, with a population form, cos(H_used, H_pop).
    """
    use_ref = tb.cfg.kl_coef > 0
    pop = tb.cfg.has_population_form
    if not pop and tc.mode != "sampled":
        raise ValueError(f"Loss {tb.cfg.loss!r} has no exact population form; it trains only in "
                         f"sampled mode (got mode {tc.mode!r}).")

    def update(theta, phi, key, ctx):
        ref = ctx.theta0 if use_ref else None
        g = grad_objective(tb, theta, ref)
        m = {"entropy": entropy(tb, theta), "grad_j_norm": optax.tree.norm(g)}
        if pop:
            (loss_pop, aux), h_pop = population_loss_and_H(tb, theta, phi, ref)
            m.update({"loss_pop": loss_pop, mn.CLIP_FRAC: aux["clip_frac"]},
                     h_pop_norm=optax.tree.norm(h_pop), cos_stale=tree_cosine(_neg(h_pop), g))
            h_used = h_pop
        if tc.mode == "sampled":
            idx = sample_responses(tb, key, phi, tc.group_size)
            h_used = sampled_H(tb, theta, phi, idx, ref)
            met = sampled_loss_and_metrics(tb, theta, phi, idx, ref)[1]
            m["h_used_norm"] = optax.tree.norm(h_used)
            m["cos_used"] = tree_cosine(_neg(h_used), g)
            # The library's clip fraction on the sample (0 for a loss without a clip).
            m["clip_frac_sampled"] = met.get("clip_frac", jnp.zeros((), g_dtype(g)))
            if pop:
                m["cos_sampled_pop"] = tree_cosine(h_used, h_pop)
        elif tc.mode == "delayed":
            h_used = population_H(tb, phi, phi, ctx.theta0 if use_ref else None)
            m["h_used_norm"] = optax.tree.norm(h_used)
        if tc.diagnostics and pop:
            h_on = population_H(tb, theta, theta, ref)
            dn, hn = optax.tree.norm(optax.tree.sub(h_pop, h_on)), optax.tree.norm(h_on)
            m.update(delta_norm=dn, delta_rel=dn / jnp.maximum(hn, 1e-30), h_on_norm=hn,
                     cos_onpolicy=tree_cosine(_neg(h_on), g))
        return h_used, m

    return update


@functools.lru_cache(maxsize=64)
def make_train(tb: Testbed, tc: TrainConfig) -> Callable[[Mapping[str, jax.Array]], tuple]:
    """Returns train(cell) -> (per-step metrics {name: [T]}, summary {name: scalar}).

    `cell` maps "lr", "seed", "max_lag" (S) and "b1" to scalars (traced; vmap over them). For SGD,
    b1 is the heavy-ball momentum (0 = plain SGD); for Adam it is β1. See `async_grpo.simulate`
    for the metrics every run records (lag, J, drifts, update norm and cosine, collapse).
    """
    validate_train_config(tc)
    fdtype = jnp.result_type(float)
    use_ref = tb.cfg.kl_coef > 0
    control = ((lambda cell: lr_control_lib.Params(*(cell[k] for k in CONTROL_KEYS)))
               if tc.lr_control else None)
    return simulate.make_train(
        update_fn(tb, tc), lambda key, cell: init_params(tb, key),
        lambda cell: make_optimizer(tc, jnp.asarray(cell["lr"], fdtype),
                                    jnp.asarray(cell["b1"], fdtype)),
        num_steps=tc.num_steps, staleness=tc.staleness, max_lag_cap=tc.max_lag_cap,
        geometric_p=tc.geometric_p, collapse=tc.collapse, lr_control=control,
        objective=lambda theta, ctx: objective(tb, theta, ctx.theta0 if use_ref else None))


def make_cells(lrs: Sequence[float], seeds: Sequence[int], lags: Sequence[int],
               b1s: Sequence[float] = (0.9,), *, max_lag_cap: int | None = None
               ) -> dict[str, np.ndarray]:
    """Flattened Cartesian product of the grid, order (S, η, seed, b1) with b1 fastest."""
    validate_grid(lrs, seeds, lags, b1s, max_lag_cap=max_lag_cap)
    return simulate.make_cells(max_lag=lags, lr=lrs, seed=seeds, b1=b1s)


def run_cells(tb: Testbed, tc: TrainConfig, cells: Mapping[str, np.ndarray], *,
              keep_metrics: Sequence[str] | None = None) -> tuple[dict, dict]:
    """Runs every cell in one vmapped, jitted program; returns numpy (metrics [C, T], summary [C])."""
    _validate_cells(tc, cells)
    return simulate.run_cells(make_train(tb, tc), cells, keep_metrics=keep_metrics)


def run_cells_chunked(tb: Testbed, tc: TrainConfig, cells: Mapping[str, np.ndarray], *,
                      chunk_size: int, **kwargs) -> tuple[dict, dict]:
    """`run_cells` in fixed-size chunks (see `async_grpo.simulate.run_cells_chunked`)."""
    _validate_cells(tc, cells)
    return simulate.run_cells_chunked(make_train(tb, tc), cells, chunk_size=chunk_size, **kwargs)


def with_control(cells: Mapping[str, np.ndarray], r_batch: float, margin: float,
                 r_crit: float = 0.0, lookahead: float = 0.0) -> dict[str, np.ndarray]:
    """`cells` plus the controller's keys (CONTROL_KEYS), the same values in every cell."""
    vals = (r_batch, margin, r_crit, lookahead)
    lr_control_lib.validate(lr_control_lib.Params(*vals))
    n = len(cells["lr"])
    return dict(cells, **{k: np.full(n, float(v)) for k, v in zip(CONTROL_KEYS, vals)})


def _validate_cells(tc: TrainConfig, cells: Mapping[str, np.ndarray]) -> None:
    validate_grid(list(cells["lr"]), [int(s) for s in cells["seed"]],
                  [int(s) for s in cells["max_lag"]], list(cells["b1"]), max_lag_cap=tc.max_lag_cap)
    if tc.lr_control:
        missing = [k for k in CONTROL_KEYS if k not in cells]
        if missing:
            raise ValueError(f"TrainConfig.lr_control is on but the cells lack {missing}; add "
                             "them with exact.with_control(cells, r_batch, margin, ...).")
        for vals in zip(*(np.asarray(cells[k]).tolist() for k in CONTROL_KEYS)):
            lr_control_lib.validate(lr_control_lib.Params(*vals))
