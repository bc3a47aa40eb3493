"""Tests of the Llama-style policy model (`async_grpo.models`)."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from async_grpo import models
from async_grpo.models import llama

# A sharper init than the default 0.02 so that attention patterns and logits (std ~0.8, max ~4) are
# far from uniform and the equality tests below are meaningful. (At init_std=0.2, logits up to ~7,
# the float32 error of *either* the cached or the full pass against float64 is already ~1e-5.)
TINY = models.get_config("tiny", init_std=0.1)


@functools.lru_cache(maxsize=None)
def _model(cfg=TINY, seed=0):
    return models.init_model(cfg, seed)


fwd = jax.jit(models.forward)


def _tokens(batch, length, seed=0, vocab=TINY.vocab_size):
    return jnp.asarray(np.random.default_rng(seed).integers(1, vocab, (batch, length)), jnp.int32)


# ---------------------------------------------------------------------------------------------
# Configs and presets.
# ---------------------------------------------------------------------------------------------


def test_get_config_errors_name_value_and_choices():
    with pytest.raises(ValueError, match=r"'nope'.*tiny.*small"):
        models.get_config("nope")
    with pytest.raises(ValueError, match=r"d_modle.*d_model"):
        models.get_config("tiny", d_modle=3)
    with pytest.raises(ValueError, match=r"n_kv_heads=3 must divide n_heads=4"):
        models.get_config("tiny", n_kv_heads=3)
    with pytest.raises(ValueError, match=r"dtype.*float16"):
        models.get_config("tiny", dtype="float16")
    cfg = models.get_config("small", vocab_size=37,
                            rope_scaling={"factor": 8.0, "rope_type": "llama3"})
    assert cfg.vocab_size == 37 and cfg.rope_scaling == models.RopeScaling(factor=8.0)
    hash(cfg)  # static-argument / graphdef friendly


def test_dtypes_accepted_as_jnp_dtypes_or_names_and_stored_by_name():
    for given, name in ((jnp.bfloat16, "bfloat16"), (jnp.dtype("bfloat16"), "bfloat16"),
                        (np.float32, "float32"), (jnp.float32, "float32"), ("float32", "float32")):
        cfg = models.get_config("tiny", dtype=given, param_dtype=given)
        assert cfg.dtype == name and cfg.param_dtype == name, given
        assert cfg == models.get_config("tiny", dtype=name, param_dtype=name)   # same hash/eq
        assert cfg.compute_dtype == jnp.dtype(name)
    for bad in (jnp.float16, "float16", None, 3, "bf16"):
        with pytest.raises(ValueError, match=r"LlamaConfig.dtype must be one of \('float32', "
                                             r"'bfloat16'\).*got"):
            models.get_config("tiny", dtype=bad)
    assert models.dtype_name(jnp.bfloat16, "x") == "bfloat16"
    with pytest.raises(ValueError, match=r"precision.compute_dtype must be one of.*float64"):
        models.dtype_name(jnp.float64, "precision.compute_dtype")


def test_preset_param_counts_without_materializing():
    counts = {}
    for name, cfg in models.PRESETS.items():
        _, abstract = models.abstract_model(cfg)
        assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
        counts[name] = models.param_count(abstract)
        assert counts[name] == cfg.num_params(), name
    assert counts["tiny"] < 1_000_000
    assert 1_000_000 <= counts["small"] <= 3_000_000
    assert 8_000_000 <= counts["medium"] <= 12_000_000
    # Hugging Face: meta-llama/Llama-3.2-1B and -3B (tied embeddings).
    assert counts["llama3.2-1b"] == 1_235_814_400
    assert counts["llama3.2-3b"] == 3_212_749_824
    untied = models.get_config("llama3.2-1b", tie_embeddings=False)
    assert models.param_count(models.abstract_model(untied)[1]) == 1_235_814_400 + 128_256 * 2048
    # The 1B shape traces in bf16 compute with float32 parameters and float32 logits.
    graphdef, abstract = models.abstract_model(models.get_config("llama3.2-1b", dtype="bfloat16"))
    out = jax.eval_shape(models.forward, graphdef, abstract, jax.ShapeDtypeStruct((1, 8), jnp.int32))
    assert out.shape == (1, 8, 128_256) and out.dtype == jnp.float32


@pytest.mark.parametrize("tie", [True, False])
def test_logical_axes_match_params_and_metadata(tie):
    cfg = dataclasses.replace(TINY, tie_embeddings=tie)
    graphdef, params = models.abstract_model(cfg)
    axes = models.logical_axes(params)
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, str) for a in x)  # noqa: E731
    assert (jax.tree.structure(params) ==
            jax.tree.structure(jax.tree.map(lambda _: 0, axes, is_leaf=is_axes)))
    jax.tree.map(lambda p, a: (len(a) == p.ndim) or pytest.fail(f"{a} vs {p.shape}"), params, axes)
    # Same names as the nnx.Param metadata (nnx.get_partition_spec reads `out_sharding`).
    specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(nnx.merge(graphdef, params))))
    jax.tree.map(lambda a, s: tuple(s) == a or pytest.fail(f"{a} vs {s}"), axes, specs,
                 is_leaf=is_axes)
    assert ("lm_head" in params) == (not tie)
    assert axes["layers"][0]["self_attn"]["k_proj"]["kernel"] == ("embed", "kv_heads", "head_dim")


# ---------------------------------------------------------------------------------------------
# Forward pass.
# ---------------------------------------------------------------------------------------------


def test_forward_jit_matches_eager_and_is_float32():
    graphdef, params = _model()
    tokens = _tokens(2, 9)
    eager = models.forward(graphdef, params, tokens)
    jitted = jax.jit(models.forward)(graphdef, params, tokens)
    assert eager.shape == (2, 9, TINY.vocab_size) and eager.dtype == jnp.float32
    np.testing.assert_allclose(eager, jitted, atol=1e-5, rtol=0)
    assert float(jnp.std(eager)) > 0.5  # a non-degenerate model for the equality tests


def test_padding_and_positions():
    """Right padding (causality hides it) and left padding (input_mask + shifted positions) give the
    same logits on real tokens as the unpadded sequence."""
    graphdef, params = _model()
    fwd = jax.jit(models.forward)
    seq = _tokens(1, 6, seed=1)
    ref = fwd(graphdef, params, seq)[0]
    pad = jnp.zeros((1, 4), jnp.int32)
    right = fwd(graphdef, params, jnp.concatenate([seq, pad], 1))[0, :6]
    np.testing.assert_allclose(right, ref, atol=1e-5)
    left_tokens = jnp.concatenate([pad + 7, seq], 1)
    positions = jnp.maximum(jnp.arange(10) - 4, 0)[None]
    mask = (jnp.arange(10) >= 4)[None]
    left = fwd(graphdef, params, left_tokens, positions, input_mask=mask)[0, 4:]
    np.testing.assert_allclose(left, ref, atol=1e-5)
    # Without the mask the pad keys leak into attention.
    leaked = fwd(graphdef, params, left_tokens, positions)[0, 4:]
    assert float(jnp.abs(leaked - ref).max()) > 1e-2


def test_segment_ids_pack_independent_sequences():
    graphdef, params = _model()
    a, b = _tokens(1, 5, seed=2), _tokens(1, 3, seed=3)
    packed = jnp.concatenate([a, b], 1)
    seg = jnp.asarray([[1] * 5 + [2] * 3])
    pos = jnp.asarray([list(range(5)) + list(range(3))])
    out = fwd(graphdef, params, packed, pos, segment_ids=seg)[0]
    np.testing.assert_allclose(out[:5], fwd(graphdef, params, a)[0], atol=1e-5)
    np.testing.assert_allclose(out[5:], fwd(graphdef, params, b)[0], atol=1e-5)


def test_rope_relative_positions():
    """RoPE attention depends on position differences only: a global shift leaves logits unchanged."""
    graphdef, params = _model()
    tokens = _tokens(1, 8, seed=4)
    pos = jnp.arange(8)[None]
    a = fwd(graphdef, params, tokens, pos)
    b = fwd(graphdef, params, tokens, pos + 37)
    np.testing.assert_allclose(a, b, atol=5e-4)


def test_apply_rope_is_rotate_half():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 2, 8)).astype(np.float32)
    pos = np.array([[0, 1, 5]])
    inv = llama.rope_inv_freq(dataclasses.replace(TINY, head_dim=8))
    sin, cos = llama.rope_sin_cos(jnp.asarray(pos), inv)
    out = np.asarray(llama.apply_rope(jnp.asarray(x), sin, cos))
    # HF convention: pair (x_j, x_{j+d/2}) rotated by angle pos * inv_freq[j].
    ang = pos[..., None, None] * inv  # [1, 3, 1, 4]
    x1, x2 = x[..., :4], x[..., 4:]
    expect = np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang),
                             x2 * np.cos(ang) + x1 * np.sin(ang)], -1)
    np.testing.assert_allclose(out, expect, atol=1e-5)


def test_llama3_rope_scaling():
    cfg = models.PRESETS["llama3.2-1b"]
    base = llama.rope_inv_freq(dataclasses.replace(cfg, rope_scaling=None))
    np.testing.assert_allclose(base, 500_000.0 ** (-np.arange(0, 64, 2) / 64), rtol=1e-6)
    scaled = llama.rope_inv_freq(cfg)
    wavelen = 2 * np.pi / base
    high = wavelen < 8192 / 4  # short wavelengths: unchanged
    low = wavelen > 8192 / 1  # long wavelengths: divided by the factor 32
    mid = ~high & ~low
    np.testing.assert_array_equal(scaled[high], base[high])
    np.testing.assert_allclose(scaled[low], base[low] / 32, rtol=1e-6)
    assert mid.any() and np.all((scaled[mid] < base[mid]) & (scaled[mid] > base[mid] / 32))
    # Smooth interpolation: s = (8192/λ - 1) / (4 - 1), f' = (1 - s) f/32 + s f.
    s = (8192 / wavelen[mid] - 1) / 3
    np.testing.assert_allclose(scaled[mid], (1 - s) * base[mid] / 32 + s * base[mid], rtol=1e-5)


def test_gqa_equals_attention_with_repeated_kv_heads():
    """Query head h reads kv head h // (H/K), as HF `repeat_kv`."""
    graphdef, params = _model()
    mha_cfg = dataclasses.replace(TINY, n_kv_heads=TINY.n_heads)
    mha_graphdef, _ = models.abstract_model(mha_cfg)
    rep = TINY.q_per_kv
    mha_params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.repeat(x, rep, axis=1)
        if any(getattr(k, "key", None) in ("k_proj", "v_proj") for k in path) else x, params)
    tokens = _tokens(2, 7, seed=5)
    np.testing.assert_allclose(fwd(graphdef, params, tokens), fwd(mha_graphdef, mha_params, tokens),
                               atol=1e-5)


def test_dot_product_attention_impl_matches_einsum():
    graphdef, params = _model()
    xla_graphdef, _ = models.abstract_model(dataclasses.replace(TINY, attention_impl="xla"))
    tokens = _tokens(2, 7, seed=6)
    mask = jnp.asarray([[True] * 7, [False] * 2 + [True] * 5])
    np.testing.assert_allclose(fwd(graphdef, params, tokens, input_mask=mask),
                               fwd(xla_graphdef, params, tokens, input_mask=mask), atol=1e-4)


@pytest.mark.parametrize("impl", ["einsum", "xla"])
def test_causal_only_equals_the_masked_pass_and_refuses_masks(impl):
    """`causal_only=True` (no dense mask; `is_causal` for xla/cudnn) = the default causal mask
    with every token valid, for the plain and the rematerialised blocks."""
    for remat in ("none", "full"):
        cfg = dataclasses.replace(TINY, attention_impl=impl, remat=remat)
        graphdef, _ = models.abstract_model(cfg)
        _, params = _model()
        model = nnx.merge(graphdef, params)
        tokens = _tokens(2, 9, seed=3)
        a, _ = model.hidden_states(tokens)
        b, _ = model.hidden_states(tokens, causal_only=True)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    with pytest.raises(ValueError, match="causal_only=True takes no cache, segment_ids, "
                                         "attn_mask or input_mask"):
        model.hidden_states(tokens, causal_only=True, input_mask=jnp.ones(tokens.shape, bool))


def test_bf16_compute_keeps_float32_params_and_close_logits():
    bf16 = dataclasses.replace(TINY, dtype="bfloat16")
    _, abstract16 = models.abstract_model(bf16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(abstract16))
    graphdef, params = _model()
    graphdef16, _ = models.abstract_model(bf16)  # same parameter tree, bf16 compute
    tokens = _tokens(2, 8, seed=7)
    out16 = fwd(graphdef16, params, tokens)
    out32 = fwd(graphdef, params, tokens)
    assert out16.dtype == jnp.float32
    scale = float(jnp.abs(out32).max())
    assert float(jnp.abs(out16 - out32).max()) < 0.05 * scale
    grads = jax.jit(jax.grad(lambda p: fwd(graphdef16, p, tokens).mean()))(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


def test_vmap_over_two_parameter_snapshots():
    graphdef, p0 = _model()
    _, p1 = _model(seed=1)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), p0, p1)
    tokens = _tokens(2, 5, seed=8)
    out = jax.jit(jax.vmap(models.forward, in_axes=(None, 0, None)))(graphdef, stacked, tokens)
    np.testing.assert_allclose(out[0], fwd(graphdef, p0, tokens), atol=1e-5)
    np.testing.assert_allclose(out[1], fwd(graphdef, p1, tokens), atol=1e-5)
    assert float(jnp.abs(out[0] - out[1]).max()) > 0.1


def test_gradients_reach_every_parameter():
    graphdef, _ = models.abstract_model(dataclasses.replace(TINY, tie_embeddings=False))
    tied = _model()[1]
    params = dict(tied, lm_head={"kernel": tied["embed_tokens"]["embedding"].T})  # untie
    tokens = _tokens(2, 6, seed=9)

    def loss(p):
        logits = models.forward(graphdef, p, tokens[:, :-1])  # traced inside jax.jit below
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))

    grads = jax.jit(jax.grad(loss))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.isfinite(g).all() and float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)
    assert math.isfinite(float(jax.jit(loss)(params)))
