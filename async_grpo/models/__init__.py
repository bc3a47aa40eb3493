"""Policy models: a Llama-style decoder in Flax NNX, used through split state."""

from async_grpo.models.config import (
    LLAMA3_ROPE_SCALING,
    PRESETS,
    LlamaConfig,
    RopeScaling,
    dtype_name,
    get_config,
)
from async_grpo.models.hf import (
    config_from_hf,
    config_to_hf,
    from_pretrained,
    load_params,
    save_pretrained,
)
from async_grpo.models.llama import (
    PARAM_AXES,
    KVCache,
    Llama,
    abstract_model,
    apply_model,
    forward,
    init_model,
    logical_axes,
    param_count,
)

__all__ = [
    "LLAMA3_ROPE_SCALING", "PRESETS", "LlamaConfig", "RopeScaling", "dtype_name", "get_config",
    "PARAM_AXES", "KVCache", "Llama", "abstract_model", "apply_model", "forward", "init_model", "logical_axes",
    "param_count", "config_from_hf", "config_to_hf", "from_pretrained", "load_params",
    "save_pretrained",
]
