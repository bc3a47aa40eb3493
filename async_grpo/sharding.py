"""Device meshes from config, and parameter shardings from logical-axis rules.

A mesh is described by a list of `(axis_name, size)` pairs, e.g.
`[("data", -1), ("fsdp", 1), ("tensor", 1)]`; one size may be -1 ("all remaining devices").
Parameters carry logical axis names (one per dimension, e.g. `("embed", "mlp")`); a rules table
maps each logical name to a mesh axis (or None), in the style of big_vision's
`logical_partitioning` and flax's logical axis rules. A dimension stays replicated when its rule
is None, its mesh axis has size 1, its size does not divide evenly, or the mesh axis is already
used by an earlier dimension of the same array; `explain_shardings` reports each such fallback, so
nothing is silently ignored.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

# Logical axis -> mesh axis. "batch" may map to several mesh axes (data and fsdp both split it).
DEFAULT_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "q_heads": "tensor",
    "head_dim": None,
    "norm": None,
    "layers": None,
}


def mesh_axis_names(rules: Optional[Mapping[str, Any]] = None) -> tuple[str, ...]:
    """The mesh axes the rules place anything on (a mesh axis outside these holds nothing)."""
    rules = DEFAULT_RULES if rules is None else rules
    out = []
    for target in rules.values():
        for ax in ((target,) if isinstance(target, str) else tuple(target or ())):
            if ax not in out:
                out.append(ax)
    return tuple(out)


def parse_mesh_spec(spec, rules: Optional[Mapping[str, Any]] = None) -> list[tuple[str, int]]:
    """"data=-1,fsdp=1,tensor=1" (or a list of (name, size)) -> [("data", -1), …], checked:
    every name must be a mesh axis of the sharding rules and every size an integer."""
    if isinstance(spec, str):
        pairs = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, size = part.partition("=")
            if not sep:
                raise ValueError(f"mesh.axes={spec!r}: entries look like 'data=-1', got {part!r}.")
            try:
                pairs.append((name.strip(), int(size)))
            except ValueError:
                raise ValueError(f"mesh.axes={spec!r}: the size of {name.strip()!r} must be an "
                                 f"integer (-1: all remaining devices), got {size!r}.") from None
    else:
        pairs = [(str(a), int(s)) for a, s in spec]
    known = mesh_axis_names(rules)
    unknown = [a for a, _ in pairs if a not in known]
    if unknown:
        raise ValueError(f"mesh.axes={spec!r}: unknown axis {unknown[0]!r}; the sharding rules "
                         f"place arrays on {list(known)} (an axis outside them would silently "
                         "replicate everything).")
    if not pairs:
        raise ValueError(f"mesh.axes={spec!r}: the mesh needs at least one axis.")
    return pairs


def batch_axis_size(mesh: Mesh, rules: Optional[Mapping[str, Any]] = None) -> int:
    """How many ways the batch dimension is split on `mesh` (the product of its batch axes)."""
    spec = batch_sharding(mesh, 1, rules).spec[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    return math.prod(mesh.shape[a] for a in axes)


def make_mesh(axes: Sequence[tuple[str, int]], devices: Optional[Sequence[Any]] = None) -> Mesh:
    """Builds a `Mesh` from `[(name, size), …]`; one size may be -1 (fill with the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    names = [str(a) for a, _ in axes]
    sizes = [int(s) for _, s in axes]
    if not names:
        raise ValueError("The mesh needs at least one axis, got an empty list.")
    if len(set(names)) != len(names):
        raise ValueError(f"Mesh axis names must be distinct, got {names}.")
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"Mesh sizes must be positive, with at most one -1, got {dict(axes)}.")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"Cannot fill mesh {dict(axes)}: {len(devices)} devices are not a "
                             f"multiple of {known}.")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"Mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices; "
                         f"{len(devices)} are available.")
    return jax.make_mesh(tuple(sizes), tuple(names), axis_types=(AxisType.Auto,) * len(names),
                         devices=devices)


def _spec_for(shape, logical, mesh: Mesh, rules: Mapping[str, Any], notes: list[str], path: str):
    if logical is None:
        return PartitionSpec()
    if len(logical) != len(shape):
        raise ValueError(f"{path}: logical axes {logical} do not match shape {shape}.")
    used: set[str] = set()
    entries = []
    for dim, name in zip(shape, logical):
        if name is not None and name not in rules:
            raise ValueError(f"{path}: logical axis {name!r} has no rule; known: {sorted(rules)}.")
        target = rules.get(name) if name is not None else None
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        kept = []
        for ax in targets:
            if ax not in mesh.shape:
                continue
            size = mesh.shape[ax]
            if size == 1:
                continue
            if ax in used:
                notes.append(f"{path}: {name!r} not sharded on {ax!r} (used by another dim)")
                continue
            if dim % (math.prod(mesh.shape[a] for a in kept) * size):
                notes.append(f"{path}: {name!r} of size {dim} not divisible by {ax}={size}; "
                             "replicated on that axis")
                continue
            kept.append(ax)
            used.add(ax)
        entries.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*entries)


def logical_to_shardings(shapes: Any, logical_axes: Any, mesh: Mesh,
                         rules: Optional[Mapping[str, Any]] = None) -> Any:
    """Maps a pytree of arrays (or shape structs) and matching logical axes to `NamedSharding`s."""
    shardings, _ = _shardings_and_notes(shapes, logical_axes, mesh, rules)
    return shardings


def explain_shardings(shapes: Any, logical_axes: Any, mesh: Mesh,
                      rules: Optional[Mapping[str, Any]] = None) -> list[str]:
    """The fallbacks (replicated dims) that `logical_to_shardings` made, one line each."""
    _, notes = _shardings_and_notes(shapes, logical_axes, mesh, rules)
    return notes


def _shardings_and_notes(shapes, logical_axes, mesh, rules):
    rules = DEFAULT_RULES if rules is None else rules
    notes: list[str] = []
    is_axes = lambda x: x is None or (isinstance(x, tuple) and all(
        isinstance(n, (str, type(None))) for n in x))
    flat_axes, treedef = jax.tree_util.tree_flatten(logical_axes, is_leaf=is_axes)
    flat_shapes = treedef.flatten_up_to(shapes)
    paths = [jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(logical_axes, is_leaf=is_axes)[0]]
    specs = [NamedSharding(mesh, _spec_for(tuple(np.shape(s)), a, mesh, rules, notes, path))
             for s, a, path in zip(flat_shapes, flat_axes, paths)]
    return jax.tree_util.tree_unflatten(treedef, specs), notes


def batch_sharding(mesh: Mesh, ndim: int, rules: Optional[Mapping[str, Any]] = None) -> NamedSharding:
    """Shards the leading (batch) dimension over the mesh axes the "batch" rule names."""
    rules = DEFAULT_RULES if rules is None else rules
    target = rules.get("batch")
    axes = tuple(a for a in ((target,) if isinstance(target, str) else tuple(target or ()))
                 if a in mesh.shape)
    lead = None if not axes else axes[0] if len(axes) == 1 else axes
    return NamedSharding(mesh, PartitionSpec(lead, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def opt_state_shardings(optimizer, params: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for `optimizer.init(params)`: moments follow their parameter, the rest replicates.

    Use as `jax.jit(optimizer.init, out_shardings=opt_state_shardings(...))(params)`.
    """
    import optax  # local: keep this module importable without optax at import time

    abstract = jax.eval_shape(optimizer.init, params)
    return optax.tree_map_params(optimizer, lambda _, s: s, abstract, param_shardings,
                                 transform_non_params=lambda _: replicated(mesh))
