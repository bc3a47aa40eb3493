"""The sampler's decode loop: the KV cache updated in place, weights and cache in the compute
dtype, and the decode attention implementations (`LlamaConfig.decode_attention`) agreeing."""

import dataclasses
import functools
import re

import jax
import jax.extend.core  # pylint: disable=unused-import
import jax.numpy as jnp
import numpy as np
import pytest

from async_grpo import models, sampling
from async_grpo.models import llama

B, P, N = 4, 16, 16   # S = P + N = 32 cache slots
SAMPLES = 2


def _cfg(**kw):
    return models.get_config("tiny", init_std=0.1, max_seq_len=P + N, **kw)


def _prompts(vocab=256):
    rng = np.random.default_rng(0)
    lengths = np.array([16, 5, 1, 9], np.int32)
    tokens = rng.integers(1, vocab, (B, P)).astype(np.int32)
    tokens[np.arange(P)[None, :] >= lengths[:, None]] = 0
    return tokens, lengths


def _jit_args(cfg, params):
    tokens, lengths = _prompts()
    graphdef, _ = models.abstract_model(cfg)
    args = (graphdef, params, jnp.asarray(tokens), jnp.asarray(lengths), jax.random.key(0),
            jnp.int32(0))
    kw = dict(temperature=jnp.float32(1.0), max_new_tokens=N, eos_id=None, pad_id=0,
              greedy=False, top_k=None, top_p=None, num_samples=SAMPLES, return_logits=False)
    return args, kw


@functools.lru_cache(maxsize=None)
def _params(cfg):
    return models.init_model(cfg, 0)[1]


def _decode_loop(cfg):
    """The decode `while` of `_sample_jit` (the largest while: the cache is in its carry)."""
    args, kw = _jit_args(cfg, _params(cfg))
    closed = jax.make_jaxpr(functools.partial(sampling._sample_jit, **kw))(*args)  # pylint: disable=protected-access
    whiles = []

    def walk(j):
        whiles.extend(e for e in j.eqns if e.primitive.name == "while")
        for sub in jax.extend.core.subjaxprs(j):
            walk(sub)

    walk(closed.jaxpr)
    return max(whiles, key=lambda e: len(e.invars))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decode_loop_carries_weights_and_cache_in_the_compute_dtype(dtype):
    cfg = _cfg(dtype=dtype)
    loop = _decode_loop(cfg)
    cache_shape = (B * SAMPLES, cfg.n_kv_heads, P + N, cfg.head_dim)
    weight_shapes = {tuple(x.shape) for x in jax.tree.leaves(_params(cfg))}
    avals = [v.aval for v in loop.invars]
    caches = [a for a in avals if a.shape == cache_shape]
    assert len(caches) == 2 * cfg.n_layers and {a.dtype for a in caches} == {jnp.dtype(dtype)}
    weights = [a for a in avals if a.shape in weight_shapes]
    assert weights and {a.dtype for a in weights} == {jnp.dtype(dtype)}, \
        sorted({(a.shape, str(a.dtype)) for a in weights})


def test_decode_loop_updates_the_cache_in_place():
    """No instruction of the compiled program copies a cache-sized buffer: the while loop's
    carry is aliased and dynamic_update_slice writes into it."""
    cfg = _cfg()
    args, kw = _jit_args(cfg, _params(cfg))
    compiled = sampling._sample_jit.lower(*args, **kw).compile()  # pylint: disable=protected-access
    text = compiled.as_text()
    shape = f"f32[{B * SAMPLES},{cfg.n_kv_heads},{P + N},{cfg.head_dim}]"
    copies = [l for l in text.splitlines() if re.search(re.escape(shape) + r"\S* copy\(", l)]
    assert not copies, copies[:3]
    assert any("dynamic-update-slice" in l and shape in l for l in text.splitlines())
    # Working memory: a few caches' worth (prefill cache, its repeat), not one per step.
    cache_bytes = 2 * cfg.n_layers * B * SAMPLES * cfg.n_kv_heads * (P + N) * cfg.head_dim * 4
    assert compiled.memory_analysis().temp_size_in_bytes < 6 * cache_bytes + 2 ** 20


def test_compute_dtype_weights_cast_is_bit_identical():
    """bf16 compute from float32-stored weights samples exactly what bf16-stored weights do."""
    cfg = _cfg(dtype="bfloat16")
    graphdef, params = models.init_model(cfg, 0)
    cast = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    tokens, lengths = _prompts()
    kw = dict(max_new_tokens=N, eos_id=None, pad_id=0, num_samples=SAMPLES)
    a = sampling.sample(graphdef, params, tokens, lengths, jax.random.key(1), **kw)
    b = sampling.sample(graphdef, cast, tokens, lengths, jax.random.key(1), **kw)
    np.testing.assert_array_equal(a.response_tokens, b.response_tokens)
    np.testing.assert_array_equal(a.model_logp, b.model_logp)


def test_decode_attention_setting_resolution_and_validation():
    assert llama.decode_attention_impl("auto", jnp.float32) == "reduce"
    assert llama.decode_attention_impl("auto", jnp.bfloat16) == (
        "reduce" if jax.default_backend() == "cpu" else "xla")
    assert llama.decode_attention_impl("pallas", jnp.float32) == "pallas"
    with pytest.raises(ValueError, match=r"decode_attention must be one of .*'pallas'.*got 'flash'"):
        _cfg(decode_attention="flash")
    # pylint: disable=protected-access
    # The smallest split that fills the GPU (rows × KV heads × split ≥ 512 programs) ...
    assert llama._pallas_k_splits(512, programs=4096) == 1
    assert llama._pallas_k_splits(512, programs=64) == 8
    assert llama._pallas_k_splits(512, programs=100) == 8
    # ... the largest accepted one when none does; None when none is accepted.
    assert llama._pallas_k_splits(512) == 16 and llama._pallas_k_splits(64) == 4
    assert llama._pallas_k_splits(48) is None and llama._pallas_k_splits(384) == 1
    assert llama._pallas_k_splits(768, programs=1) == 2      # 384 = 3 blocks; 192 fits no block
    # The sampler's cache under "pallas" always fits: P + N rounded up to 128-slot blocks.
    pallas = _cfg(decode_attention="pallas")
    for slots in (1, 48, 257, 768, 769):
        got = llama.decode_cache_slots(pallas, slots)
        assert got >= slots and got % 128 == 0 and got - slots < 128
        assert llama._pallas_k_splits(got, 1) is not None
    assert llama.decode_cache_slots(_cfg(decode_attention="reduce"), 257) == 257


def test_xla_decode_attention_matches_reduce():
    """decode_attention="xla" (jax.nn.dot_product_attention) gives the same logits as the CPU
    default "reduce" at every decode step (greedy, so the token paths are the same)."""
    tokens, lengths = _prompts()
    out = {}
    for impl in ("reduce", "xla"):
        cfg = _cfg(decode_attention=impl)
        graphdef, params = models.init_model(cfg, 0)
        out[impl] = sampling.sample(graphdef, params, tokens, lengths, jax.random.key(0),
                                    max_new_tokens=N, eos_id=None, pad_id=0, temperature=0.0,
                                    return_logits=True)
    np.testing.assert_array_equal(out["reduce"][0].response_tokens, out["xla"][0].response_tokens)
    np.testing.assert_allclose(out["reduce"][1], out["xla"][1], atol=1e-5, rtol=0)


def _attention_inputs(s=64):
    rng = np.random.default_rng(1)
    cfg = _cfg()
    h, k, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    q = jnp.asarray(rng.normal(size=(3, 1, h, hd)), jnp.float32)
    kk = jnp.asarray(rng.normal(size=(3, k, s, hd)), jnp.float32)
    vv = jnp.asarray(rng.normal(size=(3, k, s, hd)), jnp.float32)
    start, end = np.array([0, 7, 30]), np.array([64, 40, 31])
    mask = (np.arange(s)[None] >= start[:, None]) & (np.arange(s)[None] < end[:, None])
    return cfg, q, kk, vv, jnp.asarray(mask)[:, None]


def _reduce_attention(cfg, q, k, v, mask):
    attn = llama.Attention(dataclasses.replace(cfg, decode_attention="reduce"),
                           rngs=__import__("flax").nnx.Rngs(0))
    return attn._attend(q, k, v, mask)  # pylint: disable=protected-access


def test_pallas_decode_attention_matches_reduce():
    """The Pallas GPU decode kernel (interpreted on the CPU) on contiguous valid slots."""
    cfg, q, k, v, mask = _attention_inputs()
    ref = _reduce_attention(cfg, q, k, v, mask)
    out = llama.pallas_decode_attention(q, k, v, mask)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=0)
    assert llama.pallas_decode_attention(q, k[:, :, :48], v[:, :, :48], mask[..., :48]) is None


def test_pallas_sampler_pads_odd_cache_lengths_and_matches_reduce():
    """P + N = 16 + 9 = 25 slots fit no split: the sampler allocates 128 (the kernel's block)
    and decodes with the kernel, with the same greedy tokens and close logits as "reduce"."""
    tokens, lengths = _prompts()
    out = {}
    for impl in ("reduce", "pallas"):
        graphdef, params = models.init_model(_cfg(decode_attention=impl), 0)
        out[impl] = sampling.sample(graphdef, params, tokens, lengths, jax.random.key(0),
                                    max_new_tokens=9, eos_id=None, pad_id=0, temperature=0.0,
                                    return_logits=True)
    assert llama._pallas_k_splits(tokens.shape[1] + 9) is None  # pylint: disable=protected-access
    np.testing.assert_array_equal(out["reduce"][0].response_tokens,
                                  out["pallas"][0].response_tokens)
    np.testing.assert_allclose(out["reduce"][1], out["pallas"][1], atol=1e-4, rtol=0)
