"""Validation helpers of the loss library (trace time; every message names the argument)."""

from __future__ import annotations

import math
import numbers

import chex
import jax
import jax.numpy as jnp
import numpy as np


def _check_array(x, name: str) -> jax.Array:
    if x is None:
        raise ValueError(f"`{name}` must be an array, got None.")
    try:
        return jnp.asarray(x)
    except TypeError as e:
        raise ValueError(f"`{name}` must be an array, got {type(x).__name__}.") from e


def _check_rank(x: jax.Array, rank: int, name: str, layout: str) -> None:
    try:
        chex.assert_rank(x, rank)
    except AssertionError as e:
        raise ValueError(
            f"`{name}` must have rank {rank} (shape {layout}), "
            f"got shape {tuple(x.shape)}.") from e


def _check_float(x: jax.Array, name: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"`{name}` must be a floating-point array, got dtype {x.dtype}.")


def _check_same_shape(x: jax.Array, ref_shape, name: str, ref_name: str) -> None:
    try:
        chex.assert_shape(x, tuple(ref_shape))
    except AssertionError as e:
        raise ValueError(
            f"`{name}` must have the same shape as `{ref_name}` {tuple(ref_shape)}, "
            f"got {tuple(x.shape)}.") from e


def _check_choice(value, choices, name: str) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; valid values are {list(choices)}.")


def _is_static_number(x) -> bool:
    return isinstance(x, numbers.Number) and not isinstance(x, bool)


def _check_number(x, name: str, *, low=None, low_inclusive=True, allow_none=False) -> None:
    """Checks a Python-number option; traced/array values are accepted without a value check."""
    if x is None:
        if allow_none:
            return
        raise ValueError(f"`{name}` must be a number, got None.")
    if isinstance(x, bool) or not (_is_static_number(x) or isinstance(x, (jax.Array, np.ndarray))):
        raise ValueError(f"`{name}` must be a number, got {x!r}.")
    if not _is_static_number(x):
        return
    if math.isnan(x):
        raise ValueError(f"`{name}` must not be NaN.")
    if low is not None:
        if (low_inclusive and x < low) or (not low_inclusive and x <= low):
            op = ">=" if low_inclusive else ">"
            raise ValueError(f"`{name}` must be {op} {low}, got {x}.")


def _check_group_size(group_size, batch: int, *, min_size: int, name: str = "group_size",
                      why: str = "") -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise ValueError(
            f"`{name}` must be a Python int (a static value under jit), got {group_size!r}.")
    group_size = int(group_size)
    if group_size < min_size:
        raise ValueError(f"`{name}` must be >= {min_size}{why}, got {group_size}.")
    if batch % group_size != 0:
        raise ValueError(
            f"`{name}`={group_size} must divide the batch size B={batch} "
            f"(groups are contiguous rows).")
    return group_size


def _float_dtype(*xs) -> jnp.dtype:
    """Computation dtype: at least float32 (bf16/fp16 inputs are upcast)."""
    return jnp.result_type(jnp.float32, *[x.dtype for x in xs if x is not None])


def _prepare_mask(mask, shape, name: str = "mask") -> jax.Array:
    mask = _check_array(mask, name)
    _check_rank(mask, 2, name, "[B, T]")
    _check_same_shape(mask, shape, name, "logp")
    return mask != 0  # bool: nonzero / True marks a real token.


def _prepare_token_array(x, shape, name: str, m: jax.Array, dtype, required: bool = True):
    """Validates a [B, T] per-token float array and zeroes its masked positions."""
    if x is None and not required:
        return None
    x = _check_array(x, name)
    _check_rank(x, 2, name, "[B, T]")
    _check_same_shape(x, shape, name, "logp")
    _check_float(x, name)
    return jnp.where(m, x.astype(dtype), jnp.zeros((), dtype))
