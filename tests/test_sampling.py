"""Tests of the KV-cache sampler and teacher-forced scoring (`async_grpo.sampling`)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from async_grpo import models
from async_grpo.sampling import SampleBatch, sample, score_responses, truncate_logits

TINY = models.get_config("tiny", init_std=0.1)  # non-uniform logits, see test_model.py
PAD = 0
N = 10
LENGTHS = np.array([7, 3, 1, 5], np.int32)  # mixed lengths, right-padded to P = 7
P = 7


@functools.lru_cache(maxsize=None)
def _model():
    return models.init_model(TINY, 0)


def _prompts():
    tokens = np.random.default_rng(0).integers(1, TINY.vocab_size, (len(LENGTHS), P))
    tokens[np.arange(P)[None, :] >= LENGTHS[:, None]] = PAD
    return tokens.astype(np.int32), LENGTHS


_score = jax.jit(score_responses, static_argnames=("return_entropy",))
_fwd = jax.jit(models.forward)


@functools.lru_cache(maxsize=None)
def _run(seed=1, eos_id=None, **kw):
    graphdef, params = _model()
    tokens, lengths = _prompts()
    return sample(graphdef, params, tokens, lengths, jax.random.key(seed), max_new_tokens=N,
                  eos_id=eos_id, pad_id=PAD, return_logits=True, **kw)


def _scores(batch, temperature):
    graphdef, params = _model()
    return _score(graphdef, params, batch.prompt_tokens, batch.prompt_lengths,
                  batch.response_tokens, batch.response_mask, temperature=temperature,
                  return_entropy=True)


@functools.lru_cache(maxsize=None)
def _eos_id():
    """An EOS id that ends some rows early: the token row 0 drew at step 3."""
    batch, _ = _run()
    return int(batch.response_tokens[0, 3])


# ---------------------------------------------------------------------------------------------
# Log-probabilities: sampler == learner.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logp_equals_teacher_forced_logp(temperature):
    batch, _ = _run(eos_id=_eos_id(), temperature=temperature)
    mask = np.asarray(batch.response_mask)
    assert 0 < mask.sum() < mask.size  # some rows stopped early at EOS
    logp, entropy = _scores(batch, temperature)
    np.testing.assert_allclose(logp, batch.model_logp, atol=1e-5, rtol=0)
    np.testing.assert_allclose(logp, batch.behavior_logp, atol=1e-5, rtol=0)
    assert np.all(np.asarray(logp)[mask == 1] < 0) and np.all(np.asarray(logp)[mask == 0] == 0)
    ent = np.asarray(entropy)
    assert np.all(ent[mask == 1] > 0) and np.all(ent[mask == 1] <= np.log(TINY.vocab_size) + 1e-4)


@pytest.mark.parametrize("trunc", [dict(top_k=5), dict(top_p=0.6), dict(top_k=20, top_p=0.8)])
def test_truncated_sampling_logps(trunc):
    temperature = 0.8
    batch, step_logits = _run(temperature=temperature, **trunc)
    logp, _ = _scores(batch, temperature)
    np.testing.assert_allclose(logp, batch.model_logp, atol=1e-5, rtol=0)
    gap = np.asarray(batch.behavior_logp - batch.model_logp)
    assert np.all(gap >= -1e-6) and gap.max() > 0.05  # log(1 / kept mass) ≥ 0

    # behavior_logp is the log-prob under a normalized truncated distribution that contains the
    # sampled token, and the gap is exactly -log(kept mass) of the full softmax.
    trunc_logp = jax.nn.log_softmax(truncate_logits(step_logits / temperature, **trunc), axis=-1)
    np.testing.assert_allclose(jax.scipy.special.logsumexp(trunc_logp, axis=-1), 0.0, atol=1e-5)
    sampled = jnp.take_along_axis(trunc_logp, batch.response_tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(sampled, batch.behavior_logp, atol=1e-5)
    full = jax.nn.log_softmax(step_logits / temperature, axis=-1)
    kept_mass = jnp.sum(jnp.where(jnp.isfinite(trunc_logp), jnp.exp(full), 0.0), axis=-1)
    np.testing.assert_allclose(gap, -jnp.log(kept_mass), atol=1e-5)
    kept = np.isfinite(np.asarray(trunc_logp)).sum(-1)
    if "top_k" in trunc:
        assert kept.max() <= trunc["top_k"]
    if "top_p" in trunc and "top_k" not in trunc:  # with both, top-p acts on the top-k softmax
        assert np.all(np.asarray(kept_mass) >= trunc["top_p"] - 1e-6)


def test_truncate_logits_small_example():
    logits = jnp.log(jnp.asarray([[0.5, 0.1, 0.3, 0.1]]))
    assert np.isfinite(truncate_logits(logits, top_k=2)).tolist() == [[True, False, True, False]]
    assert np.isfinite(truncate_logits(logits, top_p=0.5)).tolist() == [[True, False, False, False]]
    assert np.isfinite(truncate_logits(logits, top_p=0.55)).tolist() == [[True, False, True, False]]
    np.testing.assert_array_equal(truncate_logits(logits, top_k=4, top_p=1.0), logits)


# ---------------------------------------------------------------------------------------------
# KV cache vs full recomputation; EOS; layout.
# ---------------------------------------------------------------------------------------------


def test_kv_cache_decode_equals_full_forward():
    """The logits every token was drawn from equal a full forward pass over the unpadded
    prompt + response of that row (prefill and all decode steps, mixed prompt lengths)."""
    batch, step_logits = _run(eos_id=_eos_id())
    graphdef, params = _model()
    tokens, lengths = _prompts()
    for i, length in enumerate(lengths):
        n = int(batch.response_lengths[i])
        seq = np.concatenate([tokens[i, :length], np.asarray(batch.response_tokens[i, :n])])
        full = _fwd(graphdef, params, jnp.asarray(seq)[None])[0]
        np.testing.assert_allclose(step_logits[i, :n], full[length - 1:length - 1 + n], atol=1e-5)


def test_eos_padding_mask_and_lengths():
    eos = _eos_id()
    batch, _ = _run(eos_id=eos)
    assert isinstance(batch, SampleBatch)
    toks, mask = np.asarray(batch.response_tokens), np.asarray(batch.response_mask)
    for row, m, length, done in zip(toks, mask, np.asarray(batch.response_lengths),
                                    np.asarray(batch.eos_reached)):
        hits = np.flatnonzero(row == eos)
        expect_len = hits[0] + 1 if len(hits) else N
        assert length == expect_len and done == bool(len(hits))
        np.testing.assert_array_equal(m, np.arange(N) < length)
        assert np.all(row[length:] == PAD)
    assert batch.eos_reached[0] and batch.response_lengths[0] <= 4
    for f in (batch.behavior_logp, batch.model_logp):
        assert np.all(np.asarray(f)[mask == 0] == 0)
    assert batch.response_tokens.dtype == jnp.int32 and batch.response_mask.dtype == jnp.float32
    np.testing.assert_array_equal(batch.prompt_tokens, _prompts()[0])


def test_num_samples_shares_prefill_and_matches_scoring():
    batch, _ = _run(num_samples=3, temperature=1.0)
    assert batch.response_tokens.shape == (3 * len(LENGTHS), N)
    np.testing.assert_array_equal(batch.prompt_lengths, np.repeat(LENGTHS, 3))
    np.testing.assert_array_equal(batch.prompt_tokens, np.repeat(_prompts()[0], 3, axis=0))
    toks = np.asarray(batch.response_tokens)
    assert not np.array_equal(toks[0], toks[1])  # independent samples of one prompt
    logp, _ = _scores(batch, 1.0)
    np.testing.assert_allclose(logp, batch.model_logp, atol=1e-5, rtol=0)


def test_greedy_decoding():
    batch, step_logits = _run(temperature=0.0)
    np.testing.assert_array_equal(batch.response_tokens, jnp.argmax(step_logits, -1))
    assert float(jnp.abs(batch.behavior_logp).max()) == 0.0
    again, _ = _run(seed=7, temperature=0.0)
    np.testing.assert_array_equal(batch.response_tokens, again.response_tokens)
    logp, _ = _scores(batch, 1.0)
    np.testing.assert_allclose(logp, batch.model_logp, atol=1e-5)


def test_params_version_and_traced_arguments_do_not_recompile():
    from async_grpo import sampling  # pylint: disable=g-import-not-at-top
    graphdef, params = _model()
    tokens, lengths = _prompts()
    outs = []
    for version, temperature, top_p in ((4, 1.0, 0.9), (5, 0.5, 0.6)):
        outs.append(sample(graphdef, params, tokens, lengths, jax.random.key(3), max_new_tokens=3,
                           eos_id=None, pad_id=PAD, params_version=version, temperature=temperature,
                           top_p=top_p))
        if version == 4:
            compiled = sampling._sample_jit._cache_size()  # pylint: disable=protected-access
    assert sampling._sample_jit._cache_size() == compiled  # pylint: disable=protected-access
    assert [int(o.params_version) for o in outs] == [4, 5]
    assert outs[0].params_version.dtype == jnp.int32 and outs[0].params_version.shape == ()


def test_score_responses_is_differentiable():
    batch, _ = _run(eos_id=_eos_id())
    graphdef, params = _model()

    def objective(p):
        return score_responses(graphdef, p, batch.prompt_tokens, batch.prompt_lengths,
                               batch.response_tokens, batch.response_mask).sum()

    grads = jax.jit(jax.grad(objective))(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["embed_tokens"]["embedding"]).max()) > 0


@pytest.mark.parametrize("impl", [pytest.param("einsum", marks=pytest.mark.slow), "xla"])
def test_packed_scoring_equals_the_left_aligned_pass(impl):
    """`packed=True` ([prompt | response | pads], plainly causal: the cuDNN layout) gives the
    same log-probs, entropies and gradients as the left-aligned masked pass, with prompts of
    mixed lengths (1 to P) and a masked response tail."""
    batch, _ = _run(eos_id=_eos_id())
    _, params = _model()
    graphdef, _ = models.abstract_model(dataclasses.replace(TINY, attention_impl=impl))
    args = (batch.prompt_tokens, batch.prompt_lengths, batch.response_tokens, batch.response_mask)

    def f(p, packed):
        return score_responses(graphdef, p, *args, packed=packed, return_entropy=True)

    (lp_a, ent_a), (lp_b, ent_b) = f(params, False), f(params, True)
    assert float(jnp.abs(lp_a).max()) > 0.1
    np.testing.assert_allclose(np.asarray(lp_b), np.asarray(lp_a), atol=2e-5)
    np.testing.assert_allclose(np.asarray(ent_b), np.asarray(ent_a), atol=2e-5)
    ga, gb = (jax.grad(lambda p, k=k: f(p, k)[0].sum())(params) for k in (False, True))
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-4)
    # A prompt's first token of a different row must not leak in: perturbing row 1's prompt
    # changes only row 1.
    tokens = np.asarray(batch.prompt_tokens).copy()
    tokens[1, 0] = (tokens[1, 0] % (TINY.vocab_size - 2)) + 1
    moved = score_responses(graphdef, params, tokens, *args[1:], packed=True)
    diff = np.abs(np.asarray(moved) - np.asarray(lp_b)).max(axis=1)
    assert diff[1] > 1e-4 and np.all(np.delete(diff, 1) == 0)


# ---------------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    graphdef, params = _model()
    tokens, lengths = _prompts()
    key = jax.random.key(0)
    kw = dict(max_new_tokens=4, eos_id=1, pad_id=PAD)

    def call(tokens=tokens, lengths=lengths, **over):
        return sample(graphdef, params, tokens, lengths, key, **{**kw, **over})

    with pytest.raises(ValueError, match=r"P=7 \+ max_new_tokens=250 = 257 exceeds .*max_seq_len=256"
                       r".*\[2, 256\]"):
        call(max_new_tokens=250)
    with pytest.raises(ValueError, match=r"prompt_lengths\[1\]=0 is outside \[1, P=7\]"):
        call(lengths=np.array([7, 0, 1, 5]))
    with pytest.raises(ValueError, match=r"prompt_lengths\[0\]=8 is outside \[1, P=7\]"):
        call(lengths=np.array([8, 3, 1, 5]))
    with pytest.raises(ValueError, match=r"eos_id=256 must be an int in \[0, 255\]"):
        call(eos_id=256)
    with pytest.raises(ValueError, match=r"top_k=0 must be None or an int in \[1, 256\]"):
        call(top_k=0)
    with pytest.raises(ValueError, match=r"top_p=1.5"):
        call(top_p=1.5)
    with pytest.raises(ValueError, match=r"temperature"):
        call(temperature=-1.0)
    with pytest.raises(ValueError, match=r"max_new_tokens must be an int >= 1, got 0"):
        call(max_new_tokens=0)
    with pytest.raises(ValueError, match=r"prompt_lengths must have shape \(4,\)"):
        call(lengths=lengths[:2])
    with pytest.raises(ValueError, match=r"P=7 \+ response width N=250 = 257 exceeds"):
        score_responses(graphdef, params, tokens, lengths, np.zeros((4, 250), np.int32),
                        np.zeros((4, 250), np.float32))
