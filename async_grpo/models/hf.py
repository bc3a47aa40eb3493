"""Hugging Face checkpoints in and out: Llama 3.x and Qwen2/2.5, as split state.

    cfg, graphdef, params = from_pretrained("/path/to/Llama-3.2-1B-Instruct")
    logits = forward(graphdef, params, tokens)
    save_pretrained(params, cfg, "/path/to/out")        # HF layout: config.json + *.safetensors

Reading uses `safetensors` with the numpy framework (no torch); bfloat16 tensors come back as
`ml_dtypes.bfloat16`. Supported (everything else is refused by name with a ValueError):

* `model_type` "llama" (LlamaForCausalLM): RoPE "default" or "llama3" scaling, tied or untied
  embeddings, grouped-query attention, no attention/MLP biases;
* `model_type` "qwen2" (Qwen2ForCausalLM): q/k/v biases (`LlamaConfig.qkv_bias`), tied or untied
  embeddings, sliding window only when disabled (`use_sliding_window: false`, as in every
  published Qwen2.5 checkpoint).

Refused: sliding-window attention when enabled, mixture-of-experts fields, rope types other than
default/llama3, hidden_act other than silu, Llama attention_bias/mlp_bias, other model types.

`config.json` is read in both layouts: published checkpoints carry `rope_theta` and
`rope_scaling`; current `transformers` writes `rope_parameters` (holding `rope_theta` and the
`rope_type` with its factors). `save_pretrained` writes the published layout, which every
`transformers` version reads.

Weight layout: HF `nn.Linear` weights are [out, in]; ours are einsum kernels [in, ...out] (see
`async_grpo.models.llama`). HF checkpoints of Llama and Qwen2 already use the "rotate_half" RoPE
convention that `llama.apply_rope` implements, so q/k need no permutation (the parity tests in
tests/test_hf.py check logits to 1e-4 against `transformers`).

With a `mesh`, every tensor is read, converted and placed straight into its `NamedSharding`
(from `logical_axes` and `async_grpo.sharding`) with `jax.make_array_from_callback`, one tensor at
a time: the host never holds more than one full tensor.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors import safe_open
from safetensors.numpy import save_file

from async_grpo import sharding as sharding_lib
from async_grpo.models.config import LlamaConfig, RopeScaling
from async_grpo.models.llama import _path_names, abstract_model, logical_axes

Params = Any

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "llama3")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_MOE_KEYS = ("num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
             "n_routed_experts")
SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"


# ----------------------------------------------------------------------------------------------
# config.json <-> LlamaConfig.
# ----------------------------------------------------------------------------------------------


def _rope(hf: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
    """(rope_theta, rope_scaling) from either config.json layout."""
    params = hf.get("rope_parameters")
    if isinstance(params, Mapping) and params:
        if "full_attention" in params and isinstance(params["full_attention"], Mapping):
            params = params["full_attention"]  # per-layer-type form
        theta = params.get("rope_theta", hf.get("rope_theta", 10_000.0))
        scaling = params
    else:
        theta = hf.get("rope_theta", 10_000.0)
        scaling = hf.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"config.json: rope_type={rope_type!r} is not supported; supported rope "
                         f"types: {list(SUPPORTED_ROPE_TYPES)}")
    if rope_type == "default":
        return float(theta), None
    try:
        rs = RopeScaling(
            factor=float(scaling["factor"]), low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_position_embeddings=int(scaling["original_max_position_embeddings"]))
    except KeyError as e:
        raise ValueError(f"config.json: llama3 rope scaling is missing {e.args[0]!r} "
                         f"(got {dict(scaling)})") from None
    return float(theta), rs


def config_from_hf(hf: Mapping[str, Any], *, dtype: Any = "float32",
                   param_dtype: Any = None) -> LlamaConfig:
    """Maps a Hugging Face config.json dict onto `LlamaConfig` (see config.py), refusing by name
    what our model does not implement. `dtype`/`param_dtype`: names ("bfloat16") or jnp dtypes."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"config.json: model_type={model_type!r} is not supported; supported: "
                         f"{list(SUPPORTED_MODEL_TYPES)}")
    for key in _MOE_KEYS:
        if hf.get(key):
            raise ValueError(f"config.json: {key}={hf[key]!r}: mixture-of-experts models are not "
                             "supported (dense Llama/Qwen2 only)")
    if hf.get("use_sliding_window") or (model_type == "llama" and hf.get("sliding_window")):
        raise ValueError(f"config.json: sliding-window attention is not supported "
                         f"(use_sliding_window={hf.get('use_sliding_window')!r}, sliding_window="
                         f"{hf.get('sliding_window')!r}); only full causal attention is")
    layer_types = hf.get("layer_types") or []
    bad = sorted({t for t in layer_types if t != "full_attention"})
    if bad:
        raise ValueError(f"config.json: layer_types {bad} are not supported; only "
                         "'full_attention' is (sliding-window attention is refused)")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"config.json: hidden_act={act!r} is not supported; only 'silu' (SwiGLU)")
    if model_type == "llama":
        for key in ("attention_bias", "mlp_bias"):
            if hf.get(key):
                raise ValueError(f"config.json: {key}=True is not supported for llama (our "
                                 "Llama has no o_proj/MLP biases; Qwen2 q/k/v biases are)")
    theta, scaling = _rope(hf)
    n_heads = int(hf["num_attention_heads"])
    head_dim = hf.get("head_dim") or int(hf["hidden_size"]) // n_heads
    return LlamaConfig(
        vocab_size=int(hf["vocab_size"]), d_model=int(hf["hidden_size"]),
        n_layers=int(hf["num_hidden_layers"]), n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads), head_dim=int(head_dim),
        mlp_dim=int(hf["intermediate_size"]), max_seq_len=int(hf["max_position_embeddings"]),
        rope_theta=theta, norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), dtype=dtype,
        param_dtype=dtype if param_dtype is None else param_dtype, rope_scaling=scaling,
        init_std=float(hf.get("initializer_range", 0.02)), qkv_bias=model_type == "qwen2")


def config_to_hf(cfg: LlamaConfig, *, torch_dtype: str = "float32") -> dict[str, Any]:
    """The config.json of `cfg` (published layout: rope_theta + rope_scaling). Qwen2 iff
    `cfg.qkv_bias`."""
    model_type = "qwen2" if cfg.qkv_bias else "llama"
    out: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[model_type]], "model_type": model_type,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "intermediate_size": cfg.mlp_dim, "max_position_embeddings": cfg.max_seq_len,
        "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu",
        "initializer_range": cfg.init_std, "torch_dtype": torch_dtype, "use_cache": True,
        "rope_scaling": None,
    }
    if cfg.rope_scaling is not None:
        rs = cfg.rope_scaling
        out["rope_scaling"] = {
            "rope_type": "llama3", "factor": rs.factor, "low_freq_factor": rs.low_freq_factor,
            "high_freq_factor": rs.high_freq_factor,
            "original_max_position_embeddings": rs.original_max_position_embeddings}
    if model_type == "llama":
        out.update(attention_bias=False, mlp_bias=False)
    else:
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
    return out


# ----------------------------------------------------------------------------------------------
# Parameter names and layouts.
# ----------------------------------------------------------------------------------------------


def _hf_name(names: list[str]) -> str:
    """Our parameter path (as names) -> the HF tensor name."""
    if names == ["embed_tokens", "embedding"]:
        return "model.embed_tokens.weight"
    if names == ["norm", "scale"]:
        return "model.norm.weight"
    if names == ["lm_head", "kernel"]:
        return "lm_head.weight"
    if len(names) >= 4 and names[0] == "layers":
        i, rest = names[1], names[2:]
        leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[rest[-1]]
        return f"model.layers.{i}." + ".".join(rest[:-1]) + "." + leaf
    raise ValueError(f"no Hugging Face name for parameter {'/'.join(names)}")


def _to_ours(names: list[str], w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """HF tensor -> our layout of `shape` (HF Linear weights are [out, in])."""
    if names[-1] == "kernel":   # [out, in].T = [in, out], reshaped (o_proj: [H*Dh, D] -> [H, Dh, D])
        return w.T.reshape(shape)
    return w.reshape(shape)


def _to_hf(names: list[str], x: np.ndarray) -> np.ndarray:
    """Our array -> the HF tensor ([out, in] for Linear weights, flat biases)."""
    if names[-1] == "kernel":
        if names[-2] == "o_proj":                  # [H, Dh, D] -> [D, H*Dh]
            return np.ascontiguousarray(x.reshape(-1, x.shape[-1]).T)
        return np.ascontiguousarray(x.reshape(x.shape[0], -1).T)   # [D, ...out] -> [out, D]
    if names[-1] == "bias":                        # [H|K, Dh] -> [(H|K)*Dh]
        return np.ascontiguousarray(x.reshape(-1))
    return np.ascontiguousarray(x)                 # embedding [V, D], norm scales [D]


# ----------------------------------------------------------------------------------------------
# Reading.
# ----------------------------------------------------------------------------------------------


def _tensor_files(path: str) -> dict[str, str]:
    """{tensor name: safetensors file} of a checkpoint directory (sharded or single file)."""
    index = os.path.join(path, SAFE_INDEX)
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        return {name: os.path.join(path, fname) for name, fname in weight_map.items()}
    single = os.path.join(path, SAFE_SINGLE)
    if not os.path.exists(single):
        found = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"{path}: no {SAFE_INDEX} and no {SAFE_SINGLE}; found {found or 'no'} "
                "*.safetensors files (only safetensors checkpoints are read, not *.bin)")
        single = os.path.join(path, found[0])
    with safe_open(single, framework="np") as f:
        return {name: single for name in f.keys()}


def read_config(path: str) -> dict[str, Any]:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{path}: no config.json (is this a Hugging Face model directory?)")
    with open(cfg_path, encoding="utf-8") as f:
        return json.load(f)


def from_pretrained(path: str, *, dtype: Any = "float32", param_dtype: Any = None,
                    mesh: Mesh | None = None, rules: Mapping[str, Any] | None = None,
                    max_seq_len: int | None = None) -> tuple[LlamaConfig, Any, Params]:
    """Loads a local Hugging Face Llama-3.x / Qwen2 directory as `(config, graphdef, params)`.

    Args:
      path: directory with config.json and model.safetensors (or sharded files + index).
      dtype: compute dtype of the model: "float32" or "bfloat16", or the jnp dtype
        (`jnp.bfloat16`).
      param_dtype: storage dtype of the parameters (default: `dtype`); tensors are cast from the
        checkpoint's dtype (bfloat16 -> float32 is exact).
      mesh: place every tensor straight into its sharding on this mesh (logical axes of
        `llama.PARAM_AXES` through `rules`, default `sharding.DEFAULT_RULES`); None: default device.
      max_seq_len: override the context length (default: max_position_embeddings).

    Raises:
      ValueError: an unsupported architecture/feature (named), a missing, unexpected or
        mis-shaped tensor (named).
    """
    cfg = config_from_hf(read_config(path), dtype=dtype, param_dtype=param_dtype)
    if max_seq_len:
        cfg = dataclasses.replace(cfg, max_seq_len=int(max_seq_len))
    graphdef, params = load_params(path, cfg, mesh=mesh, rules=rules)
    return cfg, graphdef, params


# Fields of LlamaConfig that do not change the weights (a loaded checkpoint may differ in them).
_NUMERICS_FIELDS = ("dtype", "param_dtype", "max_seq_len", "attention_impl", "init_std",
                    "decode_attention", "remat")


def load_params(path: str, cfg: LlamaConfig, *, mesh: Mesh | None = None,
                rules: Mapping[str, Any] | None = None) -> tuple[Any, Params]:
    """The weights of the checkpoint at `path` as `(graphdef, params)` of `cfg`, whose architecture
    must be the checkpoint's (it may differ in dtype, param_dtype, max_seq_len, attention_impl).
    See `from_pretrained`."""
    theirs = config_from_hf(read_config(path))
    keep = {f: getattr(cfg, f) for f in _NUMERICS_FIELDS}
    if dataclasses.replace(theirs, **keep) != cfg:
        diff = {f: (getattr(cfg, f), getattr(theirs, f)) for f in cfg.__dataclass_fields__
                if f not in _NUMERICS_FIELDS and getattr(cfg, f) != getattr(theirs, f)}
        raise ValueError(f"{path}: the checkpoint's architecture differs from the model config "
                         f"in {{field: (config, checkpoint)}} = {diff}")
    files = _tensor_files(path)
    graphdef, abstract = abstract_model(cfg)
    shardings = None
    if mesh is not None:
        shardings = sharding_lib.logical_to_shardings(abstract, logical_axes(abstract), mesh, rules)
    expected = set()
    handles: dict[str, Any] = {}

    def read(name: str) -> np.ndarray:
        if name not in files:
            raise ValueError(f"{path}: tensor {name!r} is missing from the checkpoint (config: "
                             f"{'qwen2' if cfg.qkv_bias else 'llama'}, tie_word_embeddings="
                             f"{cfg.tie_embeddings})")
        fname = files[name]
        if fname not in handles:
            handles[fname] = safe_open(fname, framework="np")
        return handles[fname].get_tensor(name)

    def load(kpath, leaf, sharding=None):
        names = [n for n in _path_names(kpath) if n != "value"]
        name = _hf_name(names)
        expected.add(name)
        w = read(name)
        want = _hf_shape(names, leaf.shape)
        if tuple(w.shape) != want:
            raise ValueError(f"{path}: tensor {name!r} has shape {tuple(w.shape)}, expected {want} "
                             "from config.json")
        x = _to_ours(names, w, leaf.shape).astype(leaf.dtype)
        del w
        if sharding is None:
            return jnp.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    try:
        if shardings is None:
            params = jax.tree_util.tree_map_with_path(load, abstract)
        else:
            params = jax.tree_util.tree_map_with_path(load, abstract, shardings)
        ignorable = {n for n in files if n.endswith("rotary_emb.inv_freq")}
        if cfg.tie_embeddings:
            ignorable.add("lm_head.weight")   # some tied checkpoints store the copy
        unexpected = sorted(set(files) - expected - ignorable)
        if unexpected:
            raise ValueError(f"{path}: unexpected tensors {unexpected[:8]}"
                             f"{' ...' if len(unexpected) > 8 else ''}: this checkpoint has parts "
                             "our model does not implement")
    finally:
        handles.clear()
    return graphdef, params


def _hf_shape(names: list[str], ours: tuple[int, ...]) -> tuple[int, ...]:
    if names[-1] == "kernel":
        if names[-2] == "o_proj":
            return (ours[-1], math.prod(ours[:-1]))
        return (math.prod(ours[1:]), ours[0])
    if names[-1] == "bias":
        return (math.prod(ours),)
    return tuple(ours)


# ----------------------------------------------------------------------------------------------
# Writing.
# ----------------------------------------------------------------------------------------------

_NP_DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def save_pretrained(params: Params | nnx.Module, config: LlamaConfig, path: str, *,
                    max_shard_bytes: int = 5 * 2**30,
                    dtype: str | None = None) -> list[str]:
    """Writes `params` (or a merged `Llama` module) of `config` as a Hugging Face checkpoint: config.json and
    model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json when
    larger than `max_shard_bytes`. Tensors are written in their own dtype (or `dtype`), fetched to
    the host one at a time (sharded `jax.Array`s are gathered per tensor). Returns the written safetensors files."""
    if isinstance(params, nnx.Module):     # a merged model: take its parameters
        params = nnx.to_pure_dict(nnx.state(params, nnx.Param))
    if not isinstance(params, Mapping):
        raise ValueError(f"save_pretrained needs the params pytree (nested dict) or the model, "
                         f"got {type(params).__name__}")
    os.makedirs(path, exist_ok=True)
    entries: list[tuple[str, list[str], Any]] = []
    for kpath, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [n for n in _path_names(kpath) if n != "value"]
        entries.append((_hf_name(names), names, leaf))
    order = {n: i for i, n in enumerate(_canonical_order(config))}
    entries.sort(key=lambda e: order.get(e[0], len(order)))

    def nbytes(leaf):
        return math.prod(leaf.shape) * np.dtype(dtype or leaf.dtype).itemsize

    shards: list[list] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + nbytes(e[2]) > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += nbytes(e[2])
    names_out = ([SAFE_SINGLE] if len(shards) == 1 else
                 [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map, total = {}, 0
    for fname, shard in zip(names_out, shards):
        tensors = {}
        for name, names, leaf in shard:
            x = _to_hf(names, np.asarray(jax.device_get(leaf)))
            if dtype is not None:
                x = x.astype(jnp.dtype(dtype))
            tensors[name] = x
            weight_map[name] = fname
            total += x.nbytes
        save_file(tensors, os.path.join(path, fname), metadata={"format": "pt"})
        del tensors
    if len(shards) > 1:
        with open(os.path.join(path, SAFE_INDEX), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    first = jax.tree_util.tree_leaves(params)[0]
    stored = str(np.dtype(dtype or first.dtype))
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config_to_hf(config, torch_dtype=_NP_DTYPE_NAMES.get(stored, stored)), f,
                  indent=2)
    return [os.path.join(path, n) for n in names_out]


def _canonical_order(cfg: LlamaConfig) -> list[str]:
    names = ["model.embed_tokens.weight"]
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight"]
        for proj in ("q_proj", "k_proj", "v_proj"):
            names += [p + f"self_attn.{proj}.weight", p + f"self_attn.{proj}.bias"]
        names += [p + "self_attn.o_proj.weight", p + "post_attention_layernorm.weight"]
        names += [p + f"mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")]
    return names + ["model.norm.weight", "lm_head.weight"]


def tensor_names(path: str) -> list[str]:
    """Names of the tensors stored in a checkpoint directory (for tests and inspection)."""
    return sorted(_tensor_files(path))

