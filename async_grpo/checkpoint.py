"""Orbax checkpoint helpers: atomic saves, keep the newest N, restore by abstract template.

A checkpoint is an orbax step directory `<directory>/<step>/` holding named items: pytrees
(params, opt_state, ...) saved with `StandardSave`, plus an optional JSON item "meta" (config,
RNG seeds, counters). Orbax writes each step into a temporary directory and renames it when
complete, so a crash mid-save never leaves a half-written step that `latest_step` would pick.
Restores take a template pytree (concrete arrays or `jax.ShapeDtypeStruct`s) so the restored
structure, dtypes and shardings match what the caller expects.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

META = "meta"
# A run's checkpoints live in <workdir>/checkpoints (SFT and GRPO alike).
CHECKPOINT_DIR = "checkpoints"


def make_manager(directory: str, *, max_to_keep: int | None = 3,
                 save_interval_steps: int = 1) -> ocp.CheckpointManager:
    directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True,
        enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory, options=options)


def abstract(tree: Any) -> Any:
    """Concrete arrays -> ShapeDtypeStructs (with their shardings); passes structs through."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def save(manager: ocp.CheckpointManager, step: int, items: Mapping[str, Any], *,
         meta: Mapping[str, Any] | None = None, force: bool = True) -> bool:
    """Saves pytrees `items` (name -> pytree) and optional JSON `meta` as step `step`; blocks."""
    if META in items:
        raise ValueError(f"item name {META!r} is reserved for the JSON metadata")
    args = {k: ocp.args.StandardSave(v) for k, v in items.items()}
    if meta is not None:
        args[META] = ocp.args.JsonSave(dict(meta))
    saved = manager.save(int(step), args=ocp.args.Composite(**args), force=force)
    manager.wait_until_finished()
    return saved


def latest_step(directory: str) -> int | None:
    """Newest complete step in `directory`, or None if there is none (or no directory)."""
    if not os.path.isdir(directory):
        return None
    with make_manager(directory, max_to_keep=None) as m:
        return m.latest_step()


def restore(manager: ocp.CheckpointManager, templates: Mapping[str, Any], *,
            step: int | None = None, with_meta: bool = False) -> tuple[int, dict[str, Any]]:
    """Restores the items named in `templates` (name -> template pytree) at `step` (default latest).

    -> (step, {name: pytree, ... , "meta": dict if with_meta}). Raises FileNotFoundError if the
    directory holds no checkpoint.
    """
    if step is None:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    args = {k: ocp.args.StandardRestore(abstract(v)) for k, v in templates.items()}
    if with_meta:
        args[META] = ocp.args.JsonRestore()
    out = manager.restore(int(step), args=ocp.args.Composite(**args))
    return int(step), {k: out[k] for k in args}


def load_latest(directory: str, templates: Mapping[str, Any], *, with_meta: bool = False,
                what: str = "checkpoint") -> tuple[int, dict[str, Any]]:
    """One-shot restore of the newest step in `directory`, with a clear error if there is none."""
    if latest_step(directory) is None:
        raise FileNotFoundError(f"no {what} found in {os.path.abspath(directory)!r} (expected orbax "
                                "step directories there; run the binary that writes it first)")
    with make_manager(directory, max_to_keep=None) as m:
        return restore(m, templates, with_meta=with_meta)


def params_digest(tree: Any) -> str:
    """sha256 of a pytree's leaves (path, dtype, shape and bytes, in flattening order): equal iff
    the parameters are bit-identical, whatever file format or orbax version stored them."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arr = jax.device_get(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{arr.dtype}|{tuple(arr.shape)}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()
