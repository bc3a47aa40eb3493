"""Hand-computed values, registry and input validation of `async_grpo.losses`.

Every expected number below is worked out by hand in the comment next to it (not by calling the
library). Each function is exercised eagerly and under `jax.jit` (the `jit` parametrization).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import async_grpo.losses as L

JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
LOG = math.log


def _maybe_jit(fn, jit):
    return jax.jit(fn) if jit else fn


def _loss_only(fn, jit):
    """fn(*arrays, **kw) -> (loss, metrics); returns a (possibly jitted) loss-only function."""
    return _maybe_jit(lambda *a, **kw: fn(*a, **kw)[0], jit)


def _close(x, y, tol=1e-5):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------------
# Advantages.
# ------------------------------------------------------------------------------------------------

# Group 0 = [1, 2, 3, 6]: mean 3, deviations [-2, -1, 0, 3], Σdev² = 14.
#   sample std  = sqrt(14/3) = 2.1602469 → GRPO A = dev/(2.1602469 + 1e-6)
#                                          = [-0.9258197, -0.4629099, 0, 1.3887296]
#   population  = sqrt(14/4) = 1.8708287 → A = [-1.0690444, -0.5345222, 0, 1.6035666]
#   Dr. GRPO    = dev = [-2, -1, 0, 3]
#   RLOO        = r_i − mean(others): 1 − 11/3 = −8/3, 2 − 10/3 = −4/3, 3 − 3 = 0, 6 − 2 = 4
# Group 1 = [0.1, 0.1, 0.1, 0.1]: all equal → exactly 0 in every mode.
REWARDS = [1.0, 2.0, 3.0, 6.0, 0.1, 0.1, 0.1, 0.1]
ADV_CASES = {
    "grpo": (dict(), [-0.9258197, -0.4629099, 0.0, 1.3887296]),
    "grpo_pop": (dict(std_ddof=0), [-1.0690444, -0.5345222, 0.0, 1.6035666]),
    "dr_grpo": (dict(std_normalize=False), [-2.0, -1.0, 0.0, 3.0]),
    "rloo": (dict(std_normalize=False, leave_one_out=True), [-8 / 3, -4 / 3, 0.0, 4.0]),
}


@JIT
@pytest.mark.parametrize("case", list(ADV_CASES))
def test_group_advantages_hand(case, jit):
    kw, expected = ADV_CASES[case]
    f = _maybe_jit(functools.partial(L.group_advantages, group_size=4, **kw), jit)
    adv = np.asarray(f(jnp.asarray(REWARDS)))
    _close(adv[:4], expected, 1e-5)
    assert np.all(adv[4:] == 0.0)  # exactly zero, not ~1e-9 / eps.


@JIT
def test_group_advantage_stats_hand(jit):
    # Groups [1,2,3,6] (varied) and [0.1]*4 (all equal) → zero_adv_group_frac = 1/2.
    # reward_mean = (12 + 0.4)/8 = 1.55.
    f = _maybe_jit(functools.partial(L.group_advantage_stats, group_size=4), jit)
    s = f(jnp.asarray(REWARDS))
    _close(s["zero_adv_group_frac"], 0.5)
    _close(s["reward_mean"], 1.55)
    _close(s["num_groups"], 2.0)
    # within-group sample std: 2.1602469 and 0 → mean 1.0801235
    _close(s["group_reward_std_mean"], 1.0801235)


def test_group_advantages_zero_std_gradient_finite():
    g = jax.grad(lambda r: jnp.sum(L.group_advantages(r, 2) ** 2))(jnp.array([1.0, 1.0, 0.0, 2.0]))
    assert np.all(np.isfinite(np.asarray(g)))


# ------------------------------------------------------------------------------------------------
# Aggregation and quantiles.
# ------------------------------------------------------------------------------------------------

# x = [[1, 2, 3, X], [4, X, X, X], [X, X, X, X]], X masked garbage (1e9).
#   token-mean           = (1+2+3+4)/4 = 2.5
#   seq-mean-token-mean  = mean(2, 4) = 3        (the all-masked row is excluded)
#   seq-mean-token-sum   = mean(6, 4) = 5
#   seq-mean-token-sum-norm, normalizer 4 (= T, the default) = mean(6/4, 4/4) = 1.25
#                        , normalizer 2 = mean(3, 2) = 2.5
AGG_X = [[1.0, 2.0, 3.0, 1e9], [4.0, 1e9, 1e9, 1e9], [1e9, 1e9, 1e9, 1e9]]
AGG_M = [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
AGG_CASES = [("token-mean", None, 2.5), ("seq-mean-token-mean", None, 3.0),
             ("seq-mean-token-sum", None, 5.0), ("seq-mean-token-sum-norm", None, 1.25),
             ("seq-mean-token-sum-norm", 2.0, 2.5)]


@JIT
@pytest.mark.parametrize("aggregation,normalizer,expected", AGG_CASES)
def test_aggregate_hand(aggregation, normalizer, expected, jit):
    f = _maybe_jit(functools.partial(L.aggregate, aggregation=aggregation, normalizer=normalizer),
                   jit)
    _close(f(jnp.asarray(AGG_X), jnp.asarray(AGG_M)), expected)
    # Nothing unmasked → 0, not NaN.
    _close(f(jnp.asarray(AGG_X), jnp.zeros((3, 4))), 0.0)


@JIT
def test_masked_quantiles_hand(jit):
    # Masked values {1, 2, 3, 4} (garbage 99 and 1e30 masked out). numpy-linear positions q·(n−1):
    # q=0 → 1; q=0.25 → pos 0.75 → 1.75; q=0.5 → pos 1.5 → 2.5; q=1 → 4.
    f = _maybe_jit(functools.partial(L.masked_quantiles, quantiles=[0.0, 0.25, 0.5, 1.0]), jit)
    x = jnp.array([[3.0, 99.0, 1.0], [4.0, 2.0, 1e30]])
    m = jnp.array([[1, 0, 1], [1, 1, 0]])
    _close(f(x, m), [1.0, 1.75, 2.5, 4.0])
    _close(f(x, jnp.zeros_like(m)), [0.0, 0.0, 0.0, 0.0])


# ------------------------------------------------------------------------------------------------
# grpo_surrogate / total_derivative_surrogate: hand-computed values.
#
# Every case is evaluated on a common padded shape [2, 3]: the hand case sits in the top-left
# corner and the rest is masked garbage (logp 7, behavior −3: a ratio e^10 if it leaked). This
# keeps eager mode to one set of compiled primitives and checks, in passing, that padding
# changes nothing and gets zero gradient.
# ------------------------------------------------------------------------------------------------

PAD_SHAPE = (2, 3)


def _run(jit, fn, logp, behavior_logp, third, mask, *, metrics=False, pad_rows=True, **extra):
    """Evaluates fn(logp, behavior_logp, third, mask, **extra) → (loss, metrics) on the padded
    shape; returns (loss, grad w.r.t. logp on the unpadded block, metrics or None)."""
    b, t = np.shape(logp)
    rows = PAD_SHAPE[0] - b if pad_rows else 0
    cols = PAD_SHAPE[1] - t

    def pad(x, value):
        return jnp.pad(jnp.asarray(x, jnp.float32), ((0, rows), (0, cols)), constant_values=value)

    third = jnp.pad(jnp.asarray(third, jnp.float32), (0, rows))
    names = sorted(extra)
    args = [pad(logp, 7.0), pad(behavior_logp, -3.0), third, pad(mask, 0.0)]
    args += [pad(extra[k], 5.0) for k in names]

    def f(lp, blp, th, m, *ex):
        return fn(lp, blp, th, m, **dict(zip(names, ex)))

    if metrics:
        vg = jax.value_and_grad(f, has_aux=True)
    else:
        vg = jax.value_and_grad(lambda *a: f(*a)[0])
    out, grad = _maybe_jit(vg, jit)(*args)
    loss, met = out if metrics else (out, None)
    grad = np.asarray(grad)
    padded = np.ones(grad.shape, bool)
    padded[:b, :t] = False
    assert np.all(grad[padded] == 0.0)
    return loss, grad[:b, :t], met


# Base case: B=2, T=3, A = [+1, -1], behavior log-probs 0 so log ρ = logp.
#   row 0: ρ = [1.5, 0.5, 1.0] (3 tokens);  row 1: ρ = [1.1, 0.9, masked]
# PPO ε=0.2 (band [0.8, 1.2]):
#   row 0 (A=+1): min(1.5, 1.2) = 1.2 (clipped high), min(0.5, 0.8) = 0.5, 1.0 → sum 2.7, mean 0.9
#   row 1 (A=−1): min(−1.1, −1.1) = −1.1, min(−0.9, −0.9) = −0.9 → sum −2.0, mean −1.0
#   token-mean            = (2.7 − 2.0)/5       = 0.14     → loss −0.14
#   seq-mean-token-mean   = (0.9 − 1.0)/2       = −0.05    → loss 0.05
#   seq-mean-token-sum    = (2.7 − 2.0)/2       = 0.35     → loss −0.35
#   seq-mean-token-sum-norm (3) = (0.9 − 2/3)/2 = 0.116667 → loss −0.116667
# clip-higher ε_high = 0.28: row 0 token 0 → 1.28; token-mean = (2.78 − 2.0)/5 = 0.156 → −0.156
# no clip: row 0 sum 3.0; token-mean = (3.0 − 2.0)/5 = 0.2 → loss −0.2
BASE_LOGP = [[LOG(1.5), LOG(0.5), 0.0], [LOG(1.1), LOG(0.9), 123.0]]
BASE_MASK = [[1, 1, 1], [1, 1, 0]]
BASE_ADV = [1.0, -1.0]
BASE = (BASE_LOGP, np.zeros((2, 3)), BASE_ADV, BASE_MASK)

SURROGATE_CASES = [
    ("ppo-token-mean", dict(aggregation="token-mean"), -0.14),
    ("ppo-seq-mean-token-mean", dict(aggregation="seq-mean-token-mean"), 0.05),
    ("ppo-seq-mean-token-sum", dict(aggregation="seq-mean-token-sum"), -0.35),
    ("ppo-sum-norm", dict(aggregation="seq-mean-token-sum-norm", normalizer=3.0), -0.7 / 6),
    ("dapo-clip-higher", dict(aggregation="token-mean", clip_eps_high=0.28), -0.156),
    ("none", dict(aggregation="token-mean", clip_mode="none"), -0.2),
    # dual clip (c=3) is inactive here (no A<0 token with ρ>3): same as PPO.
    ("dual-inactive", dict(aggregation="token-mean", clip_mode="dual"), -0.14),
    # sequence level: row 0 ρ = 1.5·0.5·1 = 0.75 → min(0.75, 0.8) = 0.75 (A=+1);
    #   row 1 ρ = 1.1·0.9 = 0.99 → min(−0.99, −0.99) = −0.99. seq mean = (0.75 − 0.99)/2 = −0.12
    ("sequence", dict(ratio_level="sequence"), 0.12),
    # GSPO geomean: row 0 s = 0.75^(1/3) = 0.9085603 → A=+1, band [0.8,1.2] → 0.9085603;
    #   row 1 s = 0.99^(1/2) = 0.9949874 → −0.9949874. mean = (0.9085603 − 0.9949874)/2 = −0.0432136
    ("geomean", dict(ratio_level="sequence_geomean"), 0.0432136),
]


@JIT
@pytest.mark.parametrize("name,kw,expected", SURROGATE_CASES, ids=[c[0] for c in SURROGATE_CASES])
def test_grpo_surrogate_hand(name, kw, expected, jit):
    loss, _, _ = _run(jit, functools.partial(L.grpo_surrogate, **kw), *BASE)
    _close(loss, expected)


@JIT
def test_grpo_surrogate_hand_metrics(jit):
    # Base case, PPO, token-mean. Clipped-gradient tokens: row 0 token 0 (A>0, ρ=1.5>1.2) only
    #   → clip_frac_high = 1/5, clip_frac_low = 0.
    # Ratios over the 5 real tokens: {1.5, 0.5, 1.0, 1.1, 0.9} → mean 1.0, max 1.5, min 0.5,
    #   median 1.0. pad_frac = 1/6.
    # KL(π_b‖π_θ) k1 = mean(−log ρ) = −(log 1.5 + log 0.5 + 0 + log 1.1 + log 0.9)/5
    #   = −(0.4054651 − 0.6931472 + 0.0953102 − 0.1053605)/5 = 0.0595465
    # k3 = mean(ρ − 1 − log ρ) = (0 + 0) + k1 = 0.0595465 (mean ρ is exactly 1 here).
    # ESS: sequence log-weights [log 0.75, log 0.99] → w = [0.75, 0.99]:
    #   (1.74)²/(2·(0.5625 + 0.9801)) = 3.0276/3.0852 = 0.9813302
    # Gradient (the mode is token-mean over 5 tokens): −A·ρ/5 except the clipped token:
    #   row 0: [0, −0.5/5, −1/5] = [0, −0.1, −0.2]; row 1: [1.1/5, 0.9/5, 0] = [0.22, 0.18, 0]
    _, grad, met = _run(jit, functools.partial(L.grpo_surrogate, aggregation="token-mean",
                                               group_size=1), *BASE, metrics=True)
    _close(grad, [[0.0, -0.1, -0.2], [0.22, 0.18, 0.0]])
    _close(met["clip_frac_high"], 0.2)
    _close(met["clip_frac_low"], 0.0)
    _close(met["ratio_mean"], 1.0)
    _close(met["ratio_max"], 1.5)
    _close(met["ratio_min"], 0.5)
    _close(met["ratio_p50"], 1.0)
    _close(met["pad_frac"], 1 / 6)
    _close(met["kl_behavior_k1"], 0.0595465)
    _close(met["kl_behavior_k3"], 0.0595465)
    _close(met["ess_frac"], 0.9813302)
    _close(met["zero_adv_group_frac"], 0.0)
    assert all(np.isfinite(np.asarray(v)) for v in met.values())


@JIT
def test_grpo_gradient_hand(jit):
    # Base case, PPO ε=0.2, seq-mean-token-mean (2 rows): ∂loss/∂logp = −A·ρ/(n_i·2) on tokens
    # whose gradient is not clipped; 0 on row 0 token 0 (clipped high), 0 on the masked token.
    #   row 0 (n=3): [0, −0.5/6, −1.0/6] = [0, −0.0833333, −0.1666667]
    #   row 1 (n=2): [+1.1/4, +0.9/4, 0] = [0.275, 0.225, 0]
    _, grad, _ = _run(jit, L.grpo_surrogate, *BASE)
    _close(grad, [[0.0, -0.0833333, -0.1666667], [0.275, 0.225, 0.0]])


@JIT
def test_no_ratio_hand(jit):
    # ratio_level "none": f = A·log π_θ, no ratio. Base case, seq-mean-token-mean:
    #   row 0 (A=+1, n=3): (log 1.5 + log 0.5 + 0)/3 = −0.0958940;  row 1 (A=−1, n=2):
    #   −(log 1.1 + log 0.9)/2 = 0.0050252.  loss = −(−0.0958940 + 0.0050252)/2 = 0.0454344.
    # ∂loss/∂logp = −A/(n_i·2): row 0 −1/6 on its 3 tokens, row 1 +1/4 on its 2 tokens.
    loss, grad, _ = _run(jit, functools.partial(L.grpo_surrogate, ratio_level="none",
                                                clip_mode="none"), *BASE)
    _close(loss, 0.0454344)
    _close(grad, [[-1 / 6, -1 / 6, -1 / 6], [0.25, 0.25, 0.0]])
    # At π_θ = π_b its gradient is the token-ratio one (ρ = 1).
    on = (np.zeros((2, 3)), np.zeros((2, 3)), BASE_ADV, BASE_MASK)
    _, g_none, _ = _run(jit, functools.partial(L.grpo_surrogate, ratio_level="none",
                                               clip_mode="none"), *on)
    _, g_tok, _ = _run(jit, functools.partial(L.grpo_surrogate, clip_mode="none"), *on)
    _close(g_none, g_tok)
    with pytest.raises(ValueError, match="ratio_level 'none'.*clip_mode 'none'"):
        _run(jit, functools.partial(L.grpo_surrogate, ratio_level="none"), *BASE)


@JIT
def test_dual_clip_hand(jit):
    # One row, A = −1, ρ = [4, 2], token-mean, ε = 0.2, c = 3.
    #   PPO : min(−4, −1.2) = −4, min(−2, −1.2) = −2 → loss 3; grad −A·ρ/2 = [2, 1]
    #   dual: max(−4, −3) = −3 (gradient 0), max(−2, −3) = −2 → loss 2.5; grad [0, 1];
    #   dual_clip_frac = 1/2.
    case = ([[LOG(4.0), LOG(2.0)]], [[0.0, 0.0]], [-1.0], [[1, 1]])
    for mode, loss_e, grad_e in (("ppo", 3.0, [2.0, 1.0]), ("dual", 2.5, [0.0, 1.0])):
        f = functools.partial(L.grpo_surrogate, clip_mode=mode, dual_clip_c=3.0,
                              aggregation="token-mean")
        loss, grad, met = _run(jit, f, *case, metrics=mode == "dual")
        _close(loss, loss_e)
        _close(grad, [grad_e])
    _close(met["dual_clip_frac"], 0.5)


@JIT
def test_cispo_hand(jit):
    # One row, A = 2, logp = [−1, −2], ρ = [1.5, 0.5]; CISPO ε_low = 1 (no lower bound),
    # ε_high = 0.28: weights sg(clip(ρ, 0, 1.28)) = [1.28, 0.5].
    #   f = w·A·logp = [1.28·2·(−1), 0.5·2·(−2)] = [−2.56, −2.0]; token-mean −2.28 → loss 2.28.
    #   grad = −w·A/2 = [−1.28, −0.5]. clip_frac_high = 1/2 (weight 1.5 clipped), low = 0.
    lp = [[-1.0, -2.0]]
    blp = [[-1.0 - LOG(1.5), -2.0 - LOG(0.5)]]
    f = functools.partial(L.grpo_surrogate, clip_mode="cispo", clip_eps=1.0, clip_eps_high=0.28,
                          aggregation="token-mean")
    loss, grad, met = _run(jit, f, lp, blp, [2.0], [[1, 1]], metrics=True)
    _close(loss, 2.28)
    _close(grad, [[-1.28, -0.5]])
    _close(met["clip_frac_high"], 0.5)
    _close(met["clip_frac_low"], 0.0)


@JIT
def test_gspo_clip_hand(jit):
    # One row, ρ_t = [1.5, 0.5] → s = sqrt(0.75) = 0.8660254; GSPO band [1 − 3e-4, 1 + 4e-4].
    #   A = +1: min(0.8660254, 0.9997) = 0.8660254 → loss −0.8660254 (unclipped side);
    #     grad = −s·(1/2) per token = −0.4330127
    #   A = −1: min(−0.8660254, −0.9997) = −0.9997 → loss 0.9997, all tokens clipped low, grad 0.
    f = functools.partial(L.grpo_surrogate, ratio_level="sequence_geomean", clip_eps=3e-4,
                          clip_eps_high=4e-4)
    lp, blp, m = [[LOG(1.5), LOG(0.5)]], [[0.0, 0.0]], [[1, 1]]
    loss, grad, _ = _run(jit, f, lp, blp, [1.0], m)
    _close(loss, -0.8660254)
    _close(grad, [[-0.4330127, -0.4330127]])
    loss, grad, met = _run(jit, f, lp, blp, [-1.0], m, metrics=True)
    _close(loss, 0.9997)
    _close(grad, [[0.0, 0.0]])
    _close(met["clip_frac_low"], 1.0)


@JIT
def test_sequence_ratio_clamped(jit):
    # Σ log-ratio = 30 > 20: the sequence ratio is exp(20) = 4.8516520e8 (documented clamp), and
    # its gradient is 0 beyond the clamp.
    f = functools.partial(L.grpo_surrogate, ratio_level="sequence", clip_mode="none")
    loss, grad, met = _run(jit, f, [[10.0, 20.0]], [[0.0, 0.0]], [1.0], [[1, 1]], metrics=True)
    _close(loss / -4.8516520e8, 1.0, 1e-5)
    _close(met["ratio_max"] / 4.8516520e8, 1.0, 1e-5)
    _close(grad, [[0.0, 0.0]])


@JIT
def test_tis_bypass_hand(jit):
    # No proximal: ρ = π_θ/π_b = [3, 0.5], A = −1, ε = 0.2, C = 2, token-mean.
    #   PPO f = [min(−3, −1.2), min(−0.5, −0.8)] = [−3, −0.8]; TIS factor min(ρ, C)/ρ = [2/3, 1]
    #   objective = [−2, −0.8] → loss = (2 + 0.8)/2 = 1.4
    #   grad: token 0: −(2/3)·ρ·A/2 = (2/3)·3/2 = 1.0; token 1 clipped low → 0. tis_frac = 1/2.
    f = functools.partial(L.grpo_surrogate, tis_cap=2.0, aggregation="token-mean")
    loss, grad, met = _run(jit, f, [[LOG(3.0), LOG(0.5)]], [[0.0, 0.0]], [-1.0], [[1, 1]],
                           metrics=True)
    _close(loss, 1.4)
    _close(grad, [[1.0, 0.0]])
    _close(met["tis_frac"], 0.5)
    _close(met["is_weight_max"], 3.0)


@JIT
def test_tis_sequence_level_hand(jit):
    # No proximal, clip none, sequence TIS: row ρ_t = [2, 2] → ρ_seq = 4, C = 3:
    #   factor_t = min(4, 3)/ρ_t = 1.5; f_t = ρ_t·A = 2 (A = 1) → objective 3 per token
    #   → token-mean loss −3; grad = −1.5·ρ_t·A/2 = −1.5 per token (= −min(ρ_seq, C)·A/n).
    f = functools.partial(L.grpo_surrogate, tis_cap=3.0, tis_level="sequence", clip_mode="none",
                          aggregation="token-mean")
    loss, grad, _ = _run(jit, f, [[LOG(2.0), LOG(2.0)]], [[0.0, 0.0]], [1.0], [[1, 1]])
    _close(loss, -3.0)
    _close(grad, [[-1.5, -1.5]])


@JIT
def test_decoupled_ppo_hand(jit):
    # u = π_θ/π_prox = [1.1, 1.5], w = π_prox/π_b = [3, 0.5], A = +1, ε = 0.2, token-mean.
    #   f(u) = [min(1.1, 1.1), min(1.5, 1.2)] = [1.1, 1.2]
    #   untruncated: (3·1.1 + 0.5·1.2)/2 = (3.3 + 0.6)/2 = 1.95 → loss −1.95
    #     grad: token 0 −w·u·A/2 = −3·1.1/2 = −1.65; token 1 clipped → 0
    #   tis_cap C = 2: (2·1.1 + 0.6)/2 = 1.4 → loss −1.4; grad token 0 = −2·1.1/2 = −1.1
    prox = [[LOG(3.0), LOG(0.5)]]
    lp = [[LOG(3.0) + LOG(1.1), LOG(0.5) + LOG(1.5)]]
    for cap, loss_e, g0 in ((None, -1.95, -1.65), (2.0, -1.4, -1.1)):
        f = functools.partial(L.grpo_surrogate, tis_cap=cap, aggregation="token-mean")
        loss, grad, _ = _run(jit, f, lp, [[0.0, 0.0]], [1.0], [[1, 1]], proximal_logp=prox)
        _close(loss, loss_e)
        _close(grad, [[g0, 0.0]])


@JIT
def test_mis_excludes_dropped_tokens_from_denominator(jit):
    # slime PR 657. Token MIS window [0.5, 2], clip none, A = +1, one row with ρ_b = [1, 3, 1]:
    #   token 1 (ρ=3) is dropped → loss = −(1 + 1)/2 = −1   (NOT −(1 + 0 + 1)/3 = −0.667)
    #   grad = −ρ·A/2 = [−0.5, 0, −0.5]; mis_masked_frac = 1/3.
    f = functools.partial(L.grpo_surrogate, mis_low=0.5, mis_high=2.0, clip_mode="none",
                          aggregation="token-mean")
    loss, grad, met = _run(jit, f, [[0.0, LOG(3.0), 0.0]], [[0.0, 0.0, 0.0]], [1.0], [[1, 1, 1]],
                           metrics=True)
    _close(loss, -1.0)
    _close(grad, [[-0.5, 0.0, -0.5]])
    _close(met["mis_masked_frac"], 1 / 3)


@JIT
@pytest.mark.parametrize("level,high", [("sequence", 2.0), ("geometric", 1.5)])
def test_mis_sequence_drop_hand(level, high, jit):
    # Row 0 ρ_t = [1, 1] (product 1, geomean 1), row 1 ρ_t = [2, 2] (product 4 > 2, geomean
    # 2 > 1.5) → row 1 dropped entirely; clip none, A = [1, 1], seq-mean-token-mean:
    #   loss = −mean over kept rows = −(1) = −1   (NOT −(1 + 0)/2); grad row 0 = −1/2 per token.
    f = functools.partial(L.grpo_surrogate, mis_low=0.5, mis_high=high, mis_level=level,
                          clip_mode="none")
    loss, grad, met = _run(jit, f, [[0.0, 0.0], [LOG(2.0), LOG(2.0)]], np.zeros((2, 2)),
                           [1.0, 1.0], [[1, 1], [1, 1]], metrics=True)
    _close(loss, -1.0)
    _close(grad, [[-0.5, -0.5], [0.0, 0.0]])
    _close(met["mis_masked_frac"], 0.5)


@JIT
def test_mis_veto_hand(jit):
    # Row 1 contains a token with ρ_b = 1e-5 < veto 1e-4 → row 1 dropped. Row 0 ρ = [1, 1].
    # clip none, A = [1, 1] → loss −1, veto_seq_frac = 1/2.
    f = functools.partial(L.grpo_surrogate, mis_veto=1e-4, clip_mode="none")
    loss, _, met = _run(jit, f, [[0.0, 0.0], [0.0, LOG(1e-5)]], np.zeros((2, 2)), [1.0, 1.0],
                        [[1, 1], [1, 1]], metrics=True)
    _close(loss, -1.0)
    _close(met["veto_seq_frac"], 0.5)


KL_LOGP = [[-1.0, -2.0]]
KL_REF = [[-1.5, -1.0]]
# log r = ref − logp = [−0.5, 1.0]
#   k1 = −log r            = [0.5, −1.0]              mean −0.25
#   k2 = ½ (log r)²         = [0.125, 0.5]             mean 0.3125
#   k3 = r − 1 − log r      = [e^−0.5 − 0.5, e − 2] = [0.1065307, 0.7182818]  mean 0.4124062
# ∂k/∂logp: k1 → +1; k2 → −log r = [0.5, −1]; k3 → 1 − r = [0.3934693, −1.7182818]
KL_CASES = {"k1": (-0.25, [1.0, 1.0]), "k2": (0.3125, [0.5, -1.0]),
            "k3": (0.4124062, [0.3934693, -1.7182818])}


@JIT
@pytest.mark.parametrize("est", list(KL_CASES))
def test_kl_in_loss_hand(est, jit):
    # A = 0 (the policy term vanishes); β = 0.1, token-mean: loss = 0.1·mean(k),
    # grad = 0.1·∂k/∂logp / 2.
    mean_k, dk = KL_CASES[est]
    f = functools.partial(L.grpo_surrogate, kl_coef=0.1, kl_estimator=est,
                          aggregation="token-mean")
    loss, grad, _ = _run(jit, f, KL_LOGP, KL_LOGP, [0.0], [[1, 1]], ref_logp=KL_REF)
    _close(loss, 0.1 * mean_k)
    _close(grad, [[0.05 * dk[0], 0.05 * dk[1]]])


@JIT
def test_kl_penalized_rewards_hand(jit):
    # Row 0 as in KL_CASES with k1 sum = 0.5 − 1 = −0.5; row 1: logp = ref → 0.
    # β = 0.1: r = [1 − 0.1·(−0.5), 0 − 0] = [1.05, 0]; with k3: 1 − 0.1·0.8248125 = 0.9175188
    lp = jnp.array([[-1.0, -2.0, 9.0], [-0.3, -0.7, 9.0]])
    ref = jnp.array([[-1.5, -1.0, -9.0], [-0.3, -0.7, -9.0]])
    mask = jnp.array([[1, 1, 0], [1, 1, 0]])
    for est, r0 in (("k1", 1.05), ("k3", 0.9175188)):
        f = _maybe_jit(functools.partial(L.kl_penalized_rewards, kl_coef=0.1, estimator=est), jit)
        _close(f(jnp.array([1.0, 0.0]), lp, ref, mask), [r0, 0.0])


# G = 2, one token each: π_θ(y) = [0.5, 0.25], π_b(y) = [0.25, 0.25] → w = [2, 1]; r = [1, 0].
#   leave-one-out: b = [0, 1] → r − b = [1, −1]; grad = −w·(r − b)/B = [−1, 0.5]
#   group mean:    b = 0.5    → [0.5, −0.5];    grad = [−0.5, 0.25]
#   none:          b = 0      → [1, 0];         grad = [−1, 0]
#   LOO + truncation C = 1.5: w = [1.5, 1] → grad = [−0.75, 0.5]
#   LOO + self-normalised: w̃ = 2·[2, 1]/3 = [4/3, 2/3] → grad = [−2/3, 1/3]
#   loss (LOO) = −(2·1·log 0.5 + 1·(−1)·log 0.25)/2 = −(−1.3862944 + 1.3862944)/2 = 0
TD_CASES = [
    ("loo", dict(), [-1.0, 0.5]),
    ("group_mean", dict(baseline="group_mean"), [-0.5, 0.25]),
    ("none", dict(baseline="none"), [-1.0, 0.0]),
    ("truncated", dict(truncation=1.5), [-0.75, 0.5]),
    ("self_normalized", dict(self_normalize=True), [-2 / 3, 1 / 3]),
]
TD_CASE = ([[LOG(0.5)], [LOG(0.25)]], [[LOG(0.25)], [LOG(0.25)]], [1.0, 0.0], [[1], [1]])


@JIT
@pytest.mark.parametrize("name,kw,expected", TD_CASES, ids=[c[0] for c in TD_CASES])
def test_total_derivative_hand(name, kw, expected, jit):
    f = functools.partial(L.total_derivative_surrogate, group_size=2, **kw)
    loss, grad, _ = _run(jit, f, *TD_CASE, pad_rows=False)
    _close(grad[:, 0], expected)
    if name == "loo":
        _close(loss, 0.0)


@JIT
def test_total_derivative_metrics_hand(jit):
    # w = [2, 1]: ESS/B = 9/(2·5) = 0.9; weight_max 2; truncated_frac with C = 1.5 is 1/2.
    f = functools.partial(L.total_derivative_surrogate, group_size=2, truncation=1.5)
    _, _, met = _run(jit, f, *TD_CASE, pad_rows=False, metrics=True)
    _close(met["ess_frac"], 0.9)
    _close(met["weight_max"], 2.0)
    _close(met["truncated_frac"], 0.5)


# ------------------------------------------------------------------------------------------------
# Registry.
# ------------------------------------------------------------------------------------------------

REQUIRED = ["grpo", "dapo", "dr_grpo", "gspo", "rloo", "cispo", "tis", "mis", "decoupled_ppo",
            "pg", "total_derivative"]


def test_registry_names_and_defaults():
    names = L.list_losses()
    assert set(REQUIRED) <= set(names)
    assert set(names) == set(L.LOSSES)
    c = L.make_loss("dapo").config
    assert (c["clip_eps"], c["clip_eps_high"], c["aggregation"], c["kl_coef"]) == (
        0.2, 0.28, "token-mean", 0.0)
    c = L.make_loss("gspo").config
    assert (c["ratio_level"], c["clip_eps"], c["clip_eps_high"]) == ("sequence_geomean", 3e-4, 4e-4)
    c = L.make_loss("grpo").config
    assert (c["clip_eps"], c["aggregation"], c["kl_coef"], c["kl_estimator"]) == (
        0.2, "seq-mean-token-mean", 0.04, "k3")
    c = L.make_loss("dr_grpo").config
    assert (c["std_normalize"], c["aggregation"]) == (False, "seq-mean-token-sum-norm")
    c = L.make_loss("rloo").config
    assert (c["leave_one_out"], c["std_normalize"]) == (True, False)
    assert L.make_loss("cispo").config["clip_mode"] == "cispo"
    assert L.make_loss("pg").config["clip_mode"] == "none"
    assert L.make_loss("tis").config["tis_cap"] == 2.0
    assert L.make_loss("mis").config["mis_high"] is not None
    assert L.make_loss("decoupled_ppo").config["requires_proximal"]
    assert L.make_loss("total_derivative").config["baseline"] == "leave_one_out"
    assert L.make_loss("grpo", clip_eps=0.1, kl_coef=0.0).config["clip_eps"] == 0.1


def test_registry_errors():
    with pytest.raises(ValueError, match="valid names are.*grpo"):
        L.make_loss("nope")
    with pytest.raises(ValueError, match="clip_epsilon.*valid settings are.*clip_eps"):
        L.make_loss("dapo", clip_epsilon=0.1)
    with pytest.raises(ValueError, match="valid settings"):
        L.make_loss("total_derivative", clip_eps=0.1)
    with pytest.raises(ValueError, match="already registered"):
        L.register("grpo")(lambda: dict(kind="surrogate"))
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="ref_logp"):
        L.make_loss("grpo")(x, x, jnp.arange(4.0), jnp.ones((4, 2)), group_size=2)
    with pytest.raises(ValueError, match="proximal_logp"):
        L.make_loss("decoupled_ppo")(x, x, jnp.arange(4.0), jnp.ones((4, 2)), group_size=2)


def test_register_custom_variant():
    name = "_test_custom_grpo"

    @L.register(name)
    def _custom():
        return dict(kind="surrogate", clip_eps=0.1, aggregation="token-mean")

    try:
        fn = L.make_loss(name)
        assert fn.config["clip_eps"] == 0.1 and name in L.list_losses()
        loss, _ = fn(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.array([0.0, 1.0]), jnp.ones((2, 3)),
                     group_size=2)
        # On-policy, A = [−0.7071064, 0.7071064] (sample std 0.7071068 + eps): token mean 0.
        _close(loss, 0.0)
    finally:
        del L.LOSSES[name]


@JIT
def test_make_loss_matches_direct_call(jit):
    # make_loss("dapo") = group_advantages (GRPO) + grpo_surrogate(0.2/0.28, token-mean).
    rng = np.random.default_rng(0)
    lp = jnp.asarray(-rng.random((2, 3)), jnp.float32)
    blp = lp + 0.3 * jnp.asarray(rng.standard_normal((2, 3)), jnp.float32)
    r = jnp.array([1.0, 0.0])
    m = jnp.array([[1, 1, 0], [1, 1, 1]])
    f = _loss_only(functools.partial(L.make_loss("dapo"), group_size=2), jit)
    adv = L.group_advantages(r, 2)
    direct = L.grpo_surrogate(lp, blp, adv, m, clip_eps=0.2, clip_eps_high=0.28,
                              aggregation="token-mean")[0]
    _close(f(lp, blp, r, m), direct, 1e-6)


@JIT
def test_make_loss_kl_in_reward_hand(jit):
    # rloo on-policy (ρ = 1, clip none, seq-mean-token-sum), rewards [1, 0], row lengths 3 and 2.
    #   No KL: LOO A = [1 − 0, 0 − 1] = [1, −1] → loss = −(3·1 + 2·(−1))/2 = −0.5
    #   KL in reward, β = 0.5, k1 per token = behavior_logp − ref = 0.2 on row 0 (sum 0.6), 0 on
    #   row 1 → rewards [1 − 0.3, 0] = [0.7, 0] → A = [0.7, −0.7] → loss = −(2.1 − 1.4)/2 = −0.35
    lp = jnp.array([[-0.5, -1.0, -2.0], [-0.3, -0.2, 4.0]])
    ref = lp - jnp.array([[0.2, 0.2, 0.2], [0.0, 0.0, 0.0]])
    r = jnp.array([1.0, 0.0])
    m = jnp.array([[1, 1, 1], [1, 1, 0]])
    f = _loss_only(functools.partial(L.make_loss("rloo", kl_coef=0.5, kl_placement="reward",
                                                 kl_estimator="k1"), group_size=2), jit)
    g = _loss_only(functools.partial(L.make_loss("rloo"), group_size=2), jit)
    _close(g(lp, lp, r, m), -0.5)
    _close(f(lp, lp, r, m, ref_logp=ref), -0.35)


# ------------------------------------------------------------------------------------------------
# Input validation: clear ValueErrors naming the argument, at trace time (also under jit).
# ------------------------------------------------------------------------------------------------

X = jnp.zeros((4, 3))
M = jnp.ones((4, 3))
A = jnp.zeros((4,))
P = functools.partial


def _surr(**kw):
    """(fn, arrays) for grpo_surrogate with the four array arguments replaceable."""
    names = ("logp", "behavior_logp", "advantages", "mask")
    arrays = tuple(kw.pop(k, v) for k, v in zip(names, (X, X, A, M)))
    extra = {k: kw.pop(k) for k in ("proximal_logp", "ref_logp") if k in kw}
    extra_names = tuple(extra)

    def fn(lp, blp, adv, m, *extras):
        return L.grpo_surrogate(lp, blp, adv, m, **dict(zip(extra_names, extras)), **kw)

    return fn, arrays + tuple(extra.values())


BAD_CASES = [
    ("logp-rank", *_surr(logp=jnp.zeros((4,))), "`logp` must have rank 2"),
    ("behavior-shape", *_surr(behavior_logp=jnp.zeros((4, 2))),
     "`behavior_logp` must have the same"),
    ("mask-shape", *_surr(mask=jnp.ones((3, 3))), "`mask` must have the same"),
    ("adv-shape", *_surr(advantages=jnp.zeros((3,))), "`advantages`"),
    ("adv-rank", *_surr(advantages=jnp.zeros((4, 3, 1))), "`advantages` must have rank 1"),
    ("logp-int", *_surr(logp=jnp.zeros((4, 3), jnp.int32)), "`logp` must be a floating"),
    ("prox-shape", *_surr(proximal_logp=jnp.zeros((4, 2))), "`proximal_logp`"),
    ("ref-shape", *_surr(ref_logp=jnp.zeros((4, 2))), "`ref_logp`"),
    ("clip-neg", *_surr(clip_eps=-0.1), "`clip_eps` must be >= 0"),
    ("clip-high-neg", *_surr(clip_eps_high=-0.1), "`clip_eps_high`"),
    ("dual-c", *_surr(clip_mode="dual", dual_clip_c=1.0), "`dual_clip_c` must be > 1"),
    ("aggregation", *_surr(aggregation="mean"), "Unknown aggregation 'mean'; valid"),
    ("ratio-level", *_surr(ratio_level="seq"), "Unknown ratio_level 'seq'"),
    ("clip-mode", *_surr(clip_mode="clip"), "Unknown clip_mode 'clip'"),
    ("estimator", *_surr(ref_logp=X, kl_estimator="k4"), "Unknown kl_estimator 'k4'"),
    ("kl-no-ref", *_surr(kl_coef=0.1), "`kl_coef`=0.1 requires `ref_logp`"),
    ("mis-window", *_surr(mis_low=2.0, mis_high=1.0), "`mis_low`"),
    ("tis-cap", *_surr(tis_cap=0.0), "`tis_cap` must be > 0"),
    ("normalizer", *_surr(aggregation="seq-mean-token-sum-norm", normalizer=0.0), "`normalizer`"),
    ("group-size-divide", *_surr(group_size=3), "`group_size`=3 must divide"),
    ("cispo-tis", *_surr(clip_mode="cispo", tis_cap=2.0), "`tis_cap` cannot be combined"),
    ("adv-group-size", P(L.group_advantages, group_size=4), (jnp.zeros(6),),
     "`group_size`=4 must divide"),
    ("adv-group-1", P(L.group_advantages, group_size=1), (jnp.zeros(6),),
     "`group_size` must be >= 2"),
    ("adv-group-int", P(L.group_advantages, group_size=2.0), (jnp.zeros(6),),
     "`group_size` must be a"),
    ("adv-rank", P(L.group_advantages, group_size=2), (jnp.zeros((6, 1)),),
     "`rewards` must have rank 1"),
    ("td-baseline", P(L.total_derivative_surrogate, group_size=2, baseline="mean"), (X, X, A, M),
     "Unknown baseline 'mean'"),
    ("td-trunc", P(L.total_derivative_surrogate, group_size=2, truncation=-1.0), (X, X, A, M),
     "`truncation` must be > 0"),
    ("td-group-1", P(L.total_derivative_surrogate, group_size=1), (X, X, A, M),
     "`group_size` must be >= 2"),
    ("td-rewards", P(L.total_derivative_surrogate, group_size=2), (X, X, jnp.zeros(3), M),
     "`rewards`"),
    ("td-mask", P(L.total_derivative_surrogate, group_size=2), (X, X, A, jnp.ones(4)),
     "`mask` must have rank 2"),
    ("kl-rewards-mask", P(L.kl_penalized_rewards, kl_coef=0.1), (A, X, X, jnp.ones((4, 2))),
     "`mask`"),
    ("kl-rewards-ref", P(L.kl_penalized_rewards, kl_coef=0.1), (A, X, jnp.zeros((4, 2)), M),
     "`ref_logp`"),
    ("make-loss-group", P(L.make_loss("dapo"), group_size=3), (X, X, A, M), "`group_size`"),
    ("make-loss-mask", P(L.make_loss("dapo"), group_size=2), (X, X, A, jnp.ones((4, 2))),
     "`mask`"),
]


@JIT
@pytest.mark.parametrize("name,fn,args,match", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_raises_at_trace_time(name, fn, args, match, jit):
    # Under jit the arrays are traced arguments: the error must come from tracing, before any
    # computation runs.
    f = _maybe_jit(fn, jit)
    pattern = match.replace("(", r"\(").replace("[", r"\[")
    with pytest.raises(ValueError, match=pattern):
        f(*args)
