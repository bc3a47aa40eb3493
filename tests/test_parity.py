"""Sampler-vs-learner log-prob parity: the metric, float32 and bfloat16 bounds, what the loss gets
under top-k/top-p, and the `parity/*` metrics of a GRPO run."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from async_grpo import config as config_lib
from async_grpo import models, sampling
from async_grpo.rl import rollout
from tests import helpers

P, N = 7, 12
LENGTHS = np.array([7, 3, 1, 5, 6, 2], np.int32)
# Tolerances of the bf16 sampler (KV-cache decode) vs the bf16 learner (one teacher-forced pass),
# on the tiny model with init_std 0.1 (non-uniform logits). Measured on the CPU: mean |Δ| ≈ 0.005,
# max |Δ| ≈ 0.03 (docs/benchmarks.md, "The sampler: decode and log-prob parity").
BF16_MEAN_ABS, BF16_MAX_ABS = 0.02, 0.1


def _prompts(vocab):
    tokens = np.random.default_rng(0).integers(1, vocab, (len(LENGTHS), P))
    tokens[np.arange(P)[None, :] >= LENGTHS[:, None]] = 0
    return tokens.astype(np.int32), LENGTHS


@functools.lru_cache(maxsize=None)
def _model(dtype):
    cfg = models.get_config("tiny", init_std=0.1, dtype=dtype, max_seq_len=P + N)
    return models.init_model(cfg, 0)


@functools.lru_cache(maxsize=None)
def _parity(dtype, top_k=None, top_p=None, temperature=1.0):
    graphdef, params = _model(dtype)
    tokens, lengths = _prompts(256)
    sb = sampling.sample(graphdef, params, tokens, lengths, jax.random.key(3), max_new_tokens=N,
                         eos_id=None, pad_id=0, temperature=temperature, top_k=top_k, top_p=top_p,
                         num_samples=2)
    par = rollout.logprob_parity_of(graphdef, params, sb, jnp.float32(temperature))
    return sb, {k: float(v) for k, v in par.items()}


# ------------------------------------------------------------------------------------------------
# The metric.
# ------------------------------------------------------------------------------------------------


def test_logprob_parity_small_example():
    sampler = jnp.asarray([[-1.0, -2.0, -3.0], [-0.5, -9.0, 0.0]])
    learner = jnp.asarray([[-1.0, -2.0 + math.log(1.3), -3.0 - 0.1], [-0.5 + math.log(0.75), 7.0,
                                                                     0.0]])
    mask = jnp.asarray([[1, 1, 1], [1, 0, 0]], jnp.float32)   # the 7.0 is masked out
    out = {k: float(v) for k, v in sampling.logprob_parity(sampler, learner, mask).items()}
    deltas = np.abs([0.0, math.log(1.3), 0.1, math.log(0.75)])
    assert out["tokens"] == 4
    np.testing.assert_allclose(out["mean_abs"], deltas.mean(), rtol=1e-6)
    np.testing.assert_allclose(out["max_abs"], deltas.max(), rtol=1e-6)
    # ratios 1, 1.3 (out), e^-0.1 = 0.905 (in), 0.75 (out)
    assert out["ratio_out_frac"] == 0.5
    wide = sampling.logprob_parity(sampler, learner, mask, band=(0.7, 1.4))
    assert float(wide["ratio_out_frac"]) == 0.0


def test_logprob_parity_nan_never_passes_and_empty_mask():
    nan = sampling.logprob_parity(jnp.zeros((1, 2)), jnp.asarray([[0.0, jnp.nan]]),
                                  jnp.ones((1, 2)))
    assert math.isnan(float(nan["mean_abs"])) and math.isnan(float(nan["max_abs"]))
    assert float(nan["ratio_out_frac"]) == 0.5
    empty = sampling.logprob_parity(jnp.zeros((1, 2)), jnp.ones((1, 2)), jnp.zeros((1, 2)))
    assert {k: float(v) for k, v in empty.items()} == {
        "mean_abs": 0.0, "max_abs": 0.0, "ratio_out_frac": 0.0, "tokens": 0.0}
    with pytest.raises(ValueError, match="band"):
        sampling.logprob_parity(jnp.zeros(1), jnp.zeros(1), jnp.ones(1), band=(1.2, 1.5))


# ------------------------------------------------------------------------------------------------
# float32 and bfloat16.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_float32_sampler_and_learner_agree_to_1e5(temperature):
    sb, par = _parity("float32", temperature=temperature)
    assert par["tokens"] == 2 * len(LENGTHS) * N
    assert par["max_abs"] <= 1e-5 and par["mean_abs"] <= 1e-5, par
    assert par["ratio_out_frac"] == 0.0 and par["behavior_gap"] == 0.0
    assert float(jnp.min(sb.model_logp)) < -1.0   # real log-probs, not all ~0


def test_bfloat16_sampler_and_learner_within_stated_tolerance():
    """bf16 compute (params stored in float32): the sampler's KV-cache decode and the learner's
    one-pass forward round differently; the gap is bounded by BF16_MEAN_ABS / BF16_MAX_ABS and no
    token's ratio leaves [0.8, 1.25]. It is not zero, i.e. this is not a float32 path."""
    sb, par = _parity("bfloat16")
    assert _model("bfloat16")[0] is not None and par["tokens"] == 2 * len(LENGTHS) * N
    assert par["mean_abs"] <= BF16_MEAN_ABS and par["max_abs"] <= BF16_MAX_ABS, par
    assert par["ratio_out_frac"] == 0.0, par
    assert par["max_abs"] > 1e-4, par
    # The bf16 and float32 models (same stored parameters) sample from nearby distributions.
    assert np.isfinite(np.asarray(sb.model_logp)).all()


# ------------------------------------------------------------------------------------------------
# What the loss receives under top-k / top-p.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("trunc", [dict(top_k=5), dict(top_p=0.7)])
def test_truncation_behavior_logp_is_the_truncated_distribution(trunc):
    """The sampler's behavior_logp is log μ of the truncated, renormalised distribution it drew
    from (what `Rollouts` hands to the losses as π_b); the learner recomputes the untruncated
    log π_τ, which equals `model_logp` to 1e-5; the gap log μ − log π_τ = −log(kept mass) ≥ 0 is
    reported as parity/behavior_gap."""
    temperature = 0.8
    sb, par = _parity("float32", temperature=temperature, **trunc)
    assert par["max_abs"] <= 1e-5, par   # parity is measured against the untruncated log-prob
    gap = np.asarray((sb.behavior_logp - sb.model_logp) * sb.response_mask)
    assert gap.min() >= -1e-6 and gap.max() > 0.05
    np.testing.assert_allclose(par["behavior_gap"], gap.sum() / sb.response_mask.sum(), rtol=1e-5)
    # Independent reference: the truncated distribution from a full forward pass's logits.
    graphdef, params = _model("float32")
    seq = jnp.concatenate([sampling.left_align(sb.prompt_tokens, sb.prompt_lengths)[0],
                           sb.response_tokens], axis=1)
    pos = jnp.concatenate([sampling.left_align(sb.prompt_tokens, sb.prompt_lengths)[1],
                           sb.prompt_lengths[:, None] + jnp.arange(N)[None]], axis=1)
    valid = jnp.concatenate([sampling.left_align(sb.prompt_tokens, sb.prompt_lengths)[2],
                             jnp.ones((seq.shape[0], N), bool)], axis=1)
    logits = models.forward(graphdef, params, seq, pos, input_mask=valid)[:, P - 1:P + N - 1]
    mu = jax.nn.log_softmax(sampling.truncate_logits(logits / temperature, **trunc), axis=-1)
    ref = jnp.take_along_axis(mu, sb.response_tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(sb.behavior_logp, ref, atol=2e-5)


@pytest.mark.slow  # ~14 s; the truncated distribution itself: test_truncation_behavior_logp_is_...
def test_rollouts_hand_the_truncated_behavior_logp_to_the_loss():
    """`Rollouts.generate_batch` puts `behavior_logp` = log μ (truncated) in the batch, and on a
    parity step reports parity/* with the gap."""
    tok, graphdef, params = _tiny_char_model()
    from async_grpo.tasks import get_task  # pylint: disable=import-outside-toplevel
    task = get_task("addition", num_digits=2)
    problems = task.sample_batch(np.random.default_rng(0), 3)
    kw = dict(group_size=4, max_prompt_len=7, max_new_tokens=6, temperature=0.9)
    plain = rollout.Rollouts(graphdef, task, tok, **kw).generate_batch(
        params, 0, jax.random.key(0), problems, parity=True)
    topk = rollout.Rollouts(graphdef, task, tok, top_k=4, **kw).generate_batch(
        params, 0, jax.random.key(0), problems, parity=True)
    for b in (plain, topk):
        assert b.stats["parity/max_abs"] <= 1e-5 and b.stats["parity/ratio_out_frac"] == 0.0
    assert plain.stats["parity/behavior_gap"] == 0.0 and topk.stats["parity/behavior_gap"] > 0.05
    a = topk.arrays
    learner = sampling.score_responses(graphdef, params, a["prompt_tokens"], a["prompt_lengths"],
                                       a["response_tokens"], a["response_mask"], temperature=0.9)
    gap = np.asarray(a["behavior_logp"] - learner)[np.asarray(a["response_mask"]) == 1]
    assert gap.min() > 0   # log μ > log π_τ wherever top-k dropped mass
    no_parity = rollout.Rollouts(graphdef, task, tok, **kw).generate_batch(
        params, 0, jax.random.key(0), problems)
    assert not any(k.startswith("parity/") for k in no_parity.stats)


def _tiny_char_model():
    from async_grpo.tasks import CharTokenizer  # pylint: disable=import-outside-toplevel
    tok = CharTokenizer()
    cfg = models.get_config("tiny", vocab_size=tok.vocab_size, max_seq_len=16, init_std=0.1)
    graphdef, params = models.init_model(cfg, 0)
    return tok, graphdef, params


# ------------------------------------------------------------------------------------------------
# Config and pipeline.
# ------------------------------------------------------------------------------------------------


def test_parity_every_is_validated():
    assert config_lib.RunConfig().diagnostics.parity_every == 10
    with pytest.raises(config_lib.ConfigError, match=r"diagnostics.parity_every=-1"):
        helpers.tiny_config(**{"diagnostics.parity_every": -1})
    with pytest.raises(ValueError, match="parity_every"):
        rollout.RolloutSource(None, None, prompts_per_step=1, seed=0, parity_every=-2)


@pytest.mark.slow  # ~13 s; the rollouts' parity statistics: test_rollouts_hand_the_truncated_behavior_logp_to_the_loss
def test_pipeline_logs_parity_every_k_steps(tmp_path):
    helpers.random_init(tmp_path / "init")
    cfg = helpers.pipeline_config(tmp_path, **{"rl.steps": 3, "diagnostics.parity_every": 2,
                                               "log_every": 3})
    _, _, recs = helpers.run(cfg, tmp_path / "run")
    # Batches 0 and 2 are parity steps: logged at steps 1 and 3 although log_every = 3.
    assert [r["step"] for r in recs] == [1, 3]
    for r in recs:
        assert r["parity/max_abs"] <= 1e-5 and r["parity/ratio_out_frac"] == 0.0, r
        assert r["parity/mean_abs"] <= r["parity/max_abs"] and r["parity/behavior_gap"] == 0.0
        assert not any(k.startswith("rollout/parity") for k in r)
