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
from async_grpo.models.llama import rope_inv_freq
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


def test_qkv_bias_is_counted_and_off_by_default():
    assert not models.PRESETS["tiny"].qkv_bias
    for qkv in (False, True):
        cfg = _cfg(qkv_bias=qkv)
        _, params = models.abstract_model(cfg)
        assert cfg.num_params() == models.param_count(params)
        assert ("bias" in params["layers"][0]["self_attn"]["q_proj"]) == qkv
    with pytest.raises(ValueError, match="qkv_bias must be a bool"):
        _cfg(qkv_bias=1)


# ----------------------------------------------------------------------------------------------
# Round trip.
# ----------------------------------------------------------------------------------------------


# (False, True) ~9 s: tied embeddings round-trip with the bias in the default suite (True, True)
@pytest.mark.parametrize("qkv_bias, tie", [pytest.param(False, True, marks=pytest.mark.slow),
                                           (False, False), (True, True)])
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
    # A merged module saves the same files.
    models.save_pretrained(models.apply_model(graphdef, params), cfg, str(tmp_path / "c"))
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "c" / "model.safetensors").read_bytes()


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
    # JAX dtypes are accepted as well as names, and stored by name (same config, same params).
    cfg16, _, q16 = models.from_pretrained(str(tmp_path), dtype=jnp.bfloat16)
    cfg_mixed, _, q32 = models.from_pretrained(str(tmp_path), dtype=jnp.bfloat16,
                                               param_dtype=np.float32)
    assert (cfg16.dtype, cfg16.param_dtype) == ("bfloat16", "bfloat16")
    assert (cfg_mixed.dtype, cfg_mixed.param_dtype) == ("bfloat16", "float32")
    for a, b, c in zip(jax.tree.leaves(p16), jax.tree.leaves(q16), jax.tree.leaves(q32)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert c.dtype == jnp.float32
    with pytest.raises(ValueError, match=r"LlamaConfig.dtype must be one of .*float16"):
        models.from_pretrained(str(tmp_path), dtype=jnp.float16)


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


# ----------------------------------------------------------------------------------------------
# Parity with transformers, through the committed fixtures (no torch).
# ----------------------------------------------------------------------------------------------


def _load_family(family, root=FIXTURES, dtype="float32"):
    path = os.path.join(root, family)
    cfg, graphdef, params = models.from_pretrained(path, dtype=dtype)
    return cfg, graphdef, params, dict(np.load(os.path.join(path, "reference.npz")))


def parity_numbers(family, root=FIXTURES, dtype="float32", logits_only=False):
    """{logits, greedy_logits, greedy_logp, sample_logp: max abs diff; greedy_match: bool} of our
    model against the transformers reference of `family` (valid positions only)."""
    cfg, graphdef, params, ref = _load_family(family, root, dtype)
    logits = np.asarray(jax.jit(models.forward)(graphdef, params, jnp.asarray(ref["tokens"]),
                                                jnp.asarray(ref["positions"]),
                                                input_mask=jnp.asarray(ref["mask"])))
    assert np.isfinite(logits).all()
    valid = ref["mask"]
    out = {"logits": float(np.max(np.abs(logits - ref["logits"])[valid]))}
    if logits_only:
        return out
    n = ref["greedy_tokens"].shape[1]
    batch, step_logits = sampling.sample(
        graphdef, params, ref["prompt_tokens"], ref["prompt_lengths"], jax.random.key(0),
        max_new_tokens=n, eos_id=None, pad_id=0, temperature=0.0, return_logits=True)
    out["greedy_match"] = bool(np.array_equal(np.asarray(batch.response_tokens),
                                              ref["greedy_tokens"]))
    out["greedy_logits"] = float(np.max(np.abs(np.asarray(step_logits) - ref["greedy_logits"])))
    out["greedy_logp"] = float(np.max(np.abs(np.asarray(batch.model_logp) - ref["greedy_logp"])))
    temperature = float(ref["temperature"])
    logp = sampling.score_responses(graphdef, params, ref["prompt_tokens"], ref["prompt_lengths"],
                                    ref["sample_tokens"], np.ones(ref["sample_tokens"].shape),
                                    temperature=temperature)
    out["sample_logp"] = float(np.max(np.abs(np.asarray(logp) - ref["sample_logp"])))
    # The sampler cannot be made to draw HF's tokens, so its own temperature-0.7 draws are
    # rescored: behavior_logp (KV cache) must equal score_responses (teacher-forced), which the
    # line above ties to HF's scores.
    drawn = sampling.sample(graphdef, params, ref["prompt_tokens"], ref["prompt_lengths"],
                            jax.random.key(1), max_new_tokens=n, eos_id=None, pad_id=0,
                            temperature=temperature)
    rescored = sampling.score_responses(graphdef, params, ref["prompt_tokens"],
                                        ref["prompt_lengths"], drawn.response_tokens,
                                        drawn.response_mask, temperature=temperature)
    out["behavior_vs_score"] = float(np.max(np.abs(np.asarray(drawn.behavior_logp) -
                                                   np.asarray(rescored))))
    for k, v in out.items():
        assert not (isinstance(v, float) and np.isnan(v)), (family, k)
    return out


def _check_parity(nums, tol_logits=LOGIT_TOL, tol_logp=LOGP_TOL):
    assert nums["logits"] <= tol_logits, nums
    assert nums["greedy_match"], nums
    assert nums["greedy_logits"] <= tol_logits, nums
    assert nums["greedy_logp"] <= tol_logp, nums
    assert nums["sample_logp"] <= tol_logp, nums
    assert nums["behavior_vs_score"] <= tol_logp, nums


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_with_transformers_fixtures(family):
    """float32: logits (padded batch, positions past original_max_position_embeddings for
    llama3), the 32-token greedy continuation through our KV-cache sampler, its per-step logits
    and log-probs, and the teacher-forced log-probs of HF's temperature-0.7 samples."""
    _check_parity(parity_numbers(family))


def test_fixtures_cover_what_they_claim():
    cfgs = {f: hf.read_config(os.path.join(FIXTURES, f)) for f in FAMILIES}
    assert "rope_parameters" in cfgs["llama3_untied"] and "rope_scaling" in cfgs["llama_tied"]
    ours = {f: hf.config_from_hf(c) for f, c in cfgs.items()}
    rs = ours["llama3_untied"].rope_scaling
    assert rs is not None and not ours["llama3_untied"].tie_embeddings
    ref = dict(np.load(os.path.join(FIXTURES, "llama3_untied", "reference.npz")))
    assert ref["positions"].max() >= rs.original_max_position_embeddings
    assert (ref["prompt_lengths"].max() + ref["greedy_tokens"].shape[1]
            > rs.original_max_position_embeddings)
    # The three llama3 bands (kept, smoothed, scaled) all occur.
    base = rope_inv_freq(dataclasses.replace(ours["llama3_untied"], rope_scaling=None))
    ratio = rope_inv_freq(ours["llama3_untied"]) / base
    assert np.isclose(ratio, 1.0).any() and np.isclose(ratio, 1 / rs.factor).any()
    assert ((ratio < 1.0) & (ratio > 1 / rs.factor) & ~np.isclose(ratio, 1.0)).any()
    assert ours["llama_tied"].tie_embeddings and ours["qwen2_tied"].tie_embeddings
    assert ours["qwen2_tied"].qkv_bias
    _, _, params = models.from_pretrained(os.path.join(FIXTURES, "qwen2_tied"))
    assert np.abs(np.asarray(params["layers"][0]["self_attn"]["q_proj"]["bias"])).min() > 0
    assert (~ref["mask"][1]).sum() > 0 and (~ref["mask"][2]).sum() > 0   # left + right padding


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_rewrites_the_hf_checkpoint_exactly(tmp_path, family):
    """Our writer reproduces transformers' tensors: same names, shapes, dtypes and bytes."""
    from safetensors.numpy import load_file  # noqa: PLC0415
    src = os.path.join(FIXTURES, family)
    cfg, _, params = models.from_pretrained(src)
    models.save_pretrained(params, cfg, str(tmp_path))
    theirs, ours = load_file(os.path.join(src, "model.safetensors")), load_file(
        str(tmp_path / "model.safetensors"))
    if cfg.tie_embeddings:
        theirs.pop("lm_head.weight", None)
    assert sorted(theirs) == sorted(ours)
    for name, x in theirs.items():
        assert ours[name].dtype == x.dtype and ours[name].shape == x.shape, name
        np.testing.assert_array_equal(ours[name], x, err_msg=name)
    assert hf.config_from_hf(hf.read_config(str(tmp_path))) == cfg


def test_bfloat16_parity_is_reported():
    """bfloat16 compute on the float32 fixture weights: looser, but close and finite."""
    nums = parity_numbers("qwen2_tied", dtype="bfloat16", logits_only=True)
    assert nums["logits"] < 0.1, nums


@pytest.mark.hf
def test_live_regenerated_fixtures_match(tmp_path):
    """Regenerates the fixtures with torch + transformers and checks parity live."""
    for mod in ("torch", "transformers"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed (pip install -e '.[hf]')")
    from tests import make_hf_fixtures  # noqa: PLC0415
    make_hf_fixtures.make_all(str(tmp_path))
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415
    for family in FAMILIES:
        _check_parity(parity_numbers(family, root=str(tmp_path)))
        # Our save_pretrained output loads in transformers with the same logits.
        cfg, graphdef, params, ref = _load_family(family, root=str(tmp_path))
        models.save_pretrained(params, cfg, str(tmp_path / "ours" / family))
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(tmp_path / "ours" / family), attn_implementation="eager").float().eval()
        with torch.no_grad():
            theirs = model(input_ids=torch.tensor(ref["tokens"]).long(),
                           attention_mask=torch.tensor(ref["mask"]).long(),
                           position_ids=torch.tensor(ref["positions"]).long()).logits.numpy()
        diff = np.abs(theirs - ref["logits"])[ref["mask"]].max()
        assert diff <= LOGIT_TOL, (family, diff)


def parity_table() -> str:
    """The markdown table of docs/models.md: every family in float32 and bfloat16 compute."""
    rows = ["| family | compute dtype | max abs logit diff (padded batch) | greedy 32 tokens "
            "identical | max abs diff of greedy-step logits (KV cache) | max abs diff of greedy "
            "log-probs | max abs diff of log-probs of HF's τ=0.7 samples |",
            "|---|---|---|---|---|---|---|"]
    for dt in ("float32", "bfloat16"):
        for fam in FAMILIES:
            n = parity_numbers(fam, dtype=dt)
            rows.append(f"| {fam} | {dt} | {n['logits']:.2e} | {'yes' if n['greedy_match'] else 'no'}"
                        f" | {n['greedy_logits']:.2e} | {n['greedy_logp']:.2e} | "
                        f"{n['sample_logp']:.2e} |")
    return "\n".join(rows)


if __name__ == "__main__":
    # Prints the parity table quoted in docs/models.md:  PYTHONPATH=. python -m tests.test_hf
    print(parity_table())
