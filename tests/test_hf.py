"""Hugging Face checkpoints: config mapping, refusals, load/save round trip, sharded placement, and
logit/generation/log-prob parity with `transformers` through the committed fixtures of
tests/data/hf/ (made by tests/make_hf_fixtures.py; no torch needed here).

  PYTHONPATH=. python -m pytest -q tests/test_hf.py             # default suite (safetensors+numpy)
  PYTHONPATH=. python -m pytest -q -m hf tests/test_hf.py       # live: regenerate with torch
"""

import dataclasses
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from async_grpo import models, sampling
from async_grpo.models import hf
from tests import _subprocess

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "hf")
FAMILIES = ("llama3_untied", "llama_tied", "qwen2_tied")
LOGIT_TOL = 1e-4
LOGP_TOL = 1e-4


def _random_params(cfg, seed=0, scale=0.05):
    graphdef, params = models.init_model(cfg, seed)
    keys = iter(jax.random.split(jax.random.key(seed + 1), len(jax.tree.leaves(params))))
    return graphdef, jax.tree.map(lambda x: x + scale * jax.random.normal(next(keys), x.shape),
                                  params)


def _cfg(**kw):
    base = dict(rope_scaling=models.RopeScaling(8.0, 1.0, 4.0, 32))
    return dataclasses.replace(models.PRESETS["tiny"], **{**base, **kw})


# ----------------------------------------------------------------------------------------------
# Config mapping and refusals.
# ----------------------------------------------------------------------------------------------


def _hf_llama(**kw):
    return {"model_type": "llama", "vocab_size": 128, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
            "hidden_act": "silu", **kw}


SCALING = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 8192}


def test_config_reads_both_rope_layouts():
    old = hf.config_from_hf(_hf_llama(rope_theta=500000.0, rope_scaling=SCALING))
    new = hf.config_from_hf(_hf_llama(rope_parameters={**SCALING, "rope_theta": 500000.0}))
    assert old == new
    assert old.rope_theta == 500000.0 and old.rope_scaling == models.LLAMA3_ROPE_SCALING
    assert old.head_dim == 8 and old.n_kv_heads == 2 and not old.qkv_bias
    plain = hf.config_from_hf(_hf_llama(rope_parameters={"rope_type": "default",
                                                         "rope_theta": 1e6}))
    assert plain.rope_scaling is None and plain.rope_theta == 1e6
    qwen = hf.config_from_hf(_hf_llama(model_type="qwen2", use_sliding_window=False,
                                       sliding_window=4096, rope_theta=1e6))
    assert qwen.qkv_bias and qwen.rope_scaling is None
    # Our own config.json writer is read back to the same config.
    for cfg in (old, qwen, dataclasses.replace(old, tie_embeddings=False)):
        assert hf.config_from_hf(hf.config_to_hf(cfg)) == cfg


@pytest.mark.parametrize("change, words", [
    (dict(model_type="mistral"), "model_type='mistral'"),
    (dict(model_type="qwen2", use_sliding_window=True, sliding_window=4096), "sliding-window"),
    (dict(sliding_window=4096), "sliding-window"),
    (dict(layer_types=["full_attention", "sliding_attention"]), "sliding_attention"),
    (dict(num_local_experts=8), "mixture-of-experts"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_type='yarn'"),
    (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
     "rope_type='linear'"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(mlp_bias=True), "mlp_bias"),
])
def test_unsupported_features_are_refused_by_name(change, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("[", r"\[")):
        hf.config_from_hf(_hf_llama(**change))


# ----------------------------------------------------------------------------------------------
# Round trip.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qkv_bias, tie", [(False, True), (False, False), (True, True)])
def test_load_save_load_is_bit_identical(tmp_path, qkv_bias, tie):
    cfg = _cfg(qkv_bias=qkv_bias, tie_embeddings=tie)
    graphdef, params = _random_params(cfg)
    models.save_pretrained(params, cfg, str(tmp_path / "a"))
    cfg1, g1, p1 = models.from_pretrained(str(tmp_path / "a"))
    assert cfg1 == cfg
    # Sharded on the way out (with an index), then back in.
    files = models.save_pretrained(p1, cfg1, str(tmp_path / "b"), max_shard_bytes=40_000)
    assert len(files) > 1 and os.path.exists(tmp_path / "b" / hf.SAFE_INDEX)
    cfg2, g2, p2 = models.from_pretrained(str(tmp_path / "b"))
    assert cfg2 == cfg1
    for a, b, c in zip(jax.tree.leaves(params), jax.tree.leaves(p1), jax.tree.leaves(p2)):
        assert a.dtype == b.dtype == c.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(b), np.asarray(c))
    names = hf.tensor_names(str(tmp_path / "b"))
    assert ("lm_head.weight" in names) == (not tie)
    assert ("model.layers.0.self_attn.q_proj.bias" in names) == qkv_bias
    tokens = jnp.arange(24, dtype=jnp.int32)[None] % cfg.vocab_size
    np.testing.assert_array_equal(models.forward(graphdef, params, tokens),
                                  models.forward(g2, p2, tokens))


def test_bfloat16_checkpoint_loads_exactly_into_float32(tmp_path):
    cfg = _cfg(qkv_bias=True)
    _, params = _random_params(cfg)
    models.save_pretrained(params, cfg, str(tmp_path), dtype="bfloat16")
    assert json.load(open(tmp_path / "config.json"))["torch_dtype"] == "bfloat16"
    _, _, p32 = models.from_pretrained(str(tmp_path), dtype="float32")
    _, _, p16 = models.from_pretrained(str(tmp_path), dtype="bfloat16")
    for a, b, c in zip(jax.tree.leaves(params), jax.tree.leaves(p32), jax.tree.leaves(p16)):
        assert b.dtype == jnp.float32 and c.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a.astype(jnp.bfloat16)), np.asarray(c))
        np.testing.assert_array_equal(np.asarray(c.astype(jnp.float32)), np.asarray(b))


def test_missing_unexpected_and_misshaped_tensors_are_named(tmp_path):
    cfg = _cfg()
    _, params = _random_params(cfg)
    models.save_pretrained(params, cfg, str(tmp_path))
    hf_cfg = json.load(open(tmp_path / "config.json"))
    for change, words in [({"tie_word_embeddings": False}, "'lm_head.weight' is missing"),
                          ({"model_type": "qwen2"}, r"'model\.layers\.0\.self_attn\.\w_proj\.bias' "
                                                    "is missing"),
                          ({"intermediate_size": 100}, r"mlp\.\w+_proj\.weight. has shape")]:
        json.dump({**hf_cfg, **change}, open(tmp_path / "config.json", "w"))
        with pytest.raises(ValueError, match=words):
            models.from_pretrained(str(tmp_path))
    json.dump(hf_cfg, open(tmp_path / "config.json", "w"))
    p2 = jax.tree.map(lambda x: x, params)
    p2["layers"][0]["self_attn"]["q_proj"]["bias"] = jnp.zeros((cfg.n_heads, cfg.head_dim))
    models.save_pretrained(p2, cfg, str(tmp_path))   # a bias our llama config does not have
    with pytest.raises(ValueError, match="unexpected tensors.*q_proj.bias"):
        models.from_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.from_pretrained(str(tmp_path / "nowhere"))


def test_mesh_placement_shards_each_tensor(tmp_path):
    """With a mesh the loaded arrays carry the shardings of `logical_axes` (4 CPU devices)."""
    cfg = _cfg(qkv_bias=True, tie_embeddings=False)
    _, params = _random_params(cfg)
    models.save_pretrained(params, cfg, str(tmp_path))
    out = _subprocess.run_with_devices(f"""
        import numpy as np, jax
        from async_grpo import models, sharding
        from async_grpo.models import hf
        mesh = sharding.make_mesh([("fsdp", 2), ("tensor", 2)])
        cfg, g, p = hf.from_pretrained({str(tmp_path)!r}, mesh=mesh)
        _, _, ref = hf.from_pretrained({str(tmp_path)!r})
        want = sharding.logical_to_shardings(p, models.logical_axes(p), mesh)
        for a, s, r in zip(jax.tree.leaves(p), jax.tree.leaves(want), jax.tree.leaves(ref)):
            assert a.sharding == s, (a.sharding, s)
            np.testing.assert_array_equal(np.asarray(a), np.asarray(r))
        q = p["layers"][0]["self_attn"]["q_proj"]["kernel"]
        print("shard", q.addressable_shards[0].data.shape, q.shape)
    """, num_devices=4)
    assert "shard (32, 2, 16) (64, 4, 16)" in out, out
