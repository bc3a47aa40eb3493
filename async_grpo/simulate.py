r"""A generic stale-gradient simulator: whole (η, seed, S, …) grids as one compiled program.

The learner at step t applies an update direction computed from the current parameters θ_t and a
*stale* copy φ_t = θ_{t−s_t}, with the lag s_t from a staleness schedule (`async_grpo.staleness`)
and 0 ≤ s_t ≤ S. This module runs that loop for any model problem: the caller supplies

* ``update(theta, phi, key, ctx) -> (h, metrics)``: the update mapping h(θ, φ), a pytree like θ
  that the optimizer treats as a *gradient of a loss to minimize* (for a surrogate loss L(θ; φ),
  h = ∇_θ L), plus a dict of scalar metrics to record. `key` is a fresh PRNG key every step (for
  sampled updates); ``ctx.cell`` holds the grid cell's values (traced scalars) and
  ``ctx.theta0`` the cell's initial parameters (e.g. a KL reference);
* ``init(key, cell) -> theta0``;
* ``optimizer(cell) -> optax.GradientTransformation`` (use `optax.inject_hyperparams` to read
  traced hyper-parameters such as ``cell["lr"]``);
* optionally ``objective(theta, ctx) -> scalar``, the objective J logged every step (``"J"``),
  whose initial, final and best values are summarized;
* the staleness policy name, the ring-buffer cap S_max (every cell's S must be ≤ S_max), the
  horizon T and the collapse rules (`async_grpo.collapse`; by default a drop of J).

`make_train(...)` returns ``train(cell) -> (metrics {name: [T]}, summary {name: scalar})``: the
whole run as one `lax.scan` over steps with a ring buffer of the last S_max + 1 iterates, so
``jax.jit(jax.vmap(train))`` runs a grid of cells at once (`run_cells`, or `run_cells_chunked` for
grids larger than memory, with hooks to save and skip finished chunks; both can return block
means of the traces over `trace_every` steps for long runs). Every cell needs
``"seed"`` (θ_0 and every key derive from it) and ``"max_lag"`` (S).

Recorded every step besides the update's own metrics: ``lag`` (s_t), ``J`` (with an objective),
``drift_cycle`` ‖θ_t − φ_t‖, ``drift_cum`` ‖θ_t − θ_0‖, ``update_norm`` ‖θ_{t+1} − θ_t‖,
``cos_update`` cos(u_t, u_{t−1}) of consecutive updates and ``cos_grad`` cos(h_t, h_{t−1}) of
consecutive update directions before the optimizer (equal for plain SGD; under momentum or Adam
the β1 average alone makes consecutive updates correlated, so only cos_grad tells diffusive from
ballistic directions there; both 0 at t = 0), ``finite`` and ``collapsed`` (and ``lr_scale``
with the optional learning-rate controller, `async_grpo.lr_control`). Norms are Euclidean over
the flattened pytree. The summary holds ``collapse_step`` (−1: none), ``collapsed``,
``drift_final`` and, with an objective, ``J_init``, ``J_final``, ``J_best``.

See docs/simulator.md for a worked example on a model problem of one's own; the exact testbed
(`async_grpo.testbeds.exact.make_train`) is one instance.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from async_grpo import collapse as collapse_lib
from async_grpo import lr_control as lr_control_lib
from async_grpo import staleness as staleness_lib
from async_grpo.diagnostics import tree_cosine

Params = Any
Cell = Mapping[str, jax.Array]


class Context(NamedTuple):
    """What `update` and `objective` may read besides θ (and φ): the cell and θ_0."""
    cell: Cell
    theta0: Params


UpdateFn = Callable[[Params, Params, jax.Array, Context], tuple[Params, dict]]

MAX_LAG_CAP = 256
MAX_STEPS = 1_000_000
INT_KEYS = {"seed": jnp.uint32, "max_lag": jnp.int32}


def default_collapse() -> collapse_lib.CollapseRules:
    """A drop of J below J_0 + ½·(best − J_0) after step 10 (patience 1), or non-finite."""
    return collapse_lib.CollapseRules(metric="J", drop_frac=0.5, baseline="init", warmup=10,
                                      patience=1)


def _check_int(name, value, low, high=None):
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            and value >= low and (high is None or value <= high)):
        allowed = f"an integer >= {low}" + ("" if high is None else f" and <= {high}")
        raise ValueError(f"{name} must be {allowed}, got {value!r}.")


def make_train(update: UpdateFn, init: Callable[[jax.Array, Cell], Params],
               optimizer: Callable[[Cell], optax.GradientTransformation], *, num_steps: int,
               staleness: str = "fixed", max_lag_cap: int = 16, geometric_p: float = 0.5,
               objective: Optional[Callable[[Params, Context], jax.Array]] = None,
               collapse: Optional[collapse_lib.CollapseRules] = None,
               lr_control: Optional[Callable[[Cell], lr_control_lib.Params]] = None
               ) -> Callable[[Cell], tuple[dict, dict]]:
    """Returns ``train(cell) -> (metrics, summary)``; see the module docstring.

    `lr_control(cell) -> async_grpo.lr_control.Params` (optional) turns on the staleness-aware
    learning-rate controller: each step's optimizer update is multiplied by c_t
    (`lr_control.scale`, with S = cell["max_lag"] and, for its lookahead mode, the distance
    ‖θ_t − φ_{t+1}‖ to the next step's behavior policy), so the within-cycle drift stays under
    margin·R_batch; the step then also records ``lr_scale`` (c_t) and the summary
    ``lr_scale_mean``, ``lr_limited_frac`` and ``drift_cycle_max``.
    """
    _check_int("num_steps", num_steps, 1, MAX_STEPS)
    _check_int("max_lag_cap (S_max)", max_lag_cap, 0, MAX_LAG_CAP)
    staleness_lib.check_policy_name(staleness, scheduled_only=True)
    staleness_lib.check_geometric_p(geometric_p)
    if collapse is None:
        collapse = default_collapse() if objective is not None else None
    if collapse is not None and collapse.metric == "J" and objective is None:
        raise ValueError("The collapse rule tracks 'J' but no objective was given; pass "
                         "objective= or rules on one of the update's metrics.")
    k_ring = max_lag_cap + 1

    def train(cell):
        s_max = jnp.asarray(cell["max_lag"], jnp.int32)
        key = jax.random.PRNGKey(jnp.asarray(cell["seed"], jnp.uint32))
        k_init, k_run = jax.random.split(key)
        theta0 = init(k_init, cell)
        ctx = Context(cell, theta0)
        opt = optimizer(cell)
        j0 = objective(theta0, ctx) if objective is not None else None
        ring = jax.tree.map(lambda x: jnp.broadcast_to(x, (k_ring,) + x.shape), theta0)
        carry0 = dict(theta=theta0, opt_state=opt.init(theta0), ring=ring, key=k_run,
                      prev_u=jax.tree.map(jnp.zeros_like, theta0),
                      prev_h=jax.tree.map(jnp.zeros_like, theta0))
        if lr_control is not None:
            ctl = lr_control_lib.scale_by_drift_control(lr_control(cell))
            carry0["lr_control"] = ctl.init(theta0)
        if collapse is not None:
            initial = j0 if collapse.metric == "J" else None
            dtype = j0.dtype if j0 is not None else jnp.result_type(float)
            carry0["collapse"] = collapse_lib.init_state(initial, dtype)

        def step(carry, t):
            theta = carry["theta"]
            key, k_lag, k_h = jax.random.split(carry["key"], 3)
            ring = jax.tree.map(lambda r, x: r.at[t % k_ring].set(x), carry["ring"], theta)
            lag = staleness_lib.scheduled_lag(staleness, t, s_max, k_lag, geometric_p=geometric_p)
            phi = jax.tree.map(lambda r: r[(t - lag) % k_ring], ring)
            h, m = update(theta, phi, k_h, ctx)
            m = dict(m, lag=lag)
            if objective is not None:
                m["J"] = objective(theta, ctx)
            m.update(drift_cycle=optax.tree.norm(optax.tree.sub(theta, phi)),
                     drift_cum=optax.tree.norm(optax.tree.sub(theta, theta0)))
            updates, opt_state = opt.update(h, carry["opt_state"], theta)
            extra = {}
            if lr_control is not None:
                # The next step's behavior policy φ_{t+1} = θ_{t+1−s_{t+1}}: its lag from the
                # key the next step will draw it with (the key chain is only read here).
                next_lag = staleness_lib.scheduled_lag(staleness, t + 1, s_max,
                                                       jax.random.split(key, 3)[1],
                                                       geometric_p=geometric_p)
                phi_next = jax.tree.map(lambda r: r[(t + 1 - next_lag) % k_ring], ring)
                drift_next = jnp.where(next_lag > 0,
                                       optax.tree.norm(optax.tree.sub(theta, phi_next)), 0.0)
                updates, ctl_state = ctl.update(updates, carry["lr_control"], theta,
                                                max_lag=s_max, drift_cycle=m["drift_cycle"],
                                                drift_cum=m["drift_cum"], drift_next=drift_next)
                m["lr_scale"] = ctl_state.last
                extra["lr_control"] = ctl_state
            new_theta = optax.apply_updates(theta, updates)
            u = optax.tree.sub(new_theta, theta)
            m.update(update_norm=optax.tree.norm(u),
                     cos_update=jnp.where(t > 0, tree_cosine(u, carry["prev_u"]), 0.0),
                     cos_grad=jnp.where(t > 0, tree_cosine(h, carry["prev_h"]), 0.0))
            finite = jnp.isfinite(optax.tree.norm(new_theta))
            if objective is not None:
                finite = finite & jnp.isfinite(m["J"])
            m["finite"] = finite
            new_carry = dict(theta=new_theta, opt_state=opt_state, ring=ring, key=key, prev_u=u,
                             prev_h=h, **extra)
            if collapse is not None:
                state = collapse_lib.update(collapse, carry["collapse"], t, m)
                m["collapsed"] = state["collapse_step"] >= 0
                new_carry["collapse"] = state
            return new_carry, m

        carry, metrics = jax.lax.scan(step, carry0, jnp.arange(num_steps, dtype=jnp.int32))
        summary = {"drift_final": optax.tree.norm(optax.tree.sub(carry["theta"], theta0))}
        if lr_control is not None:
            cs = carry["lr_control"]
            summary.update(lr_scale_mean=cs.scale_sum / num_steps,
                           lr_limited_frac=cs.limited / num_steps, drift_cycle_max=cs.max_drift)
        if objective is not None:
            j_final = objective(carry["theta"], ctx)
            js = metrics["J"]
            best = jnp.max(jnp.where(jnp.isfinite(js), js, -jnp.inf))
            summary.update(J_init=j0, J_final=j_final, J_best=jnp.maximum(best, j_final))
        if collapse is not None:
            summary["collapse_step"] = carry["collapse"]["collapse_step"]
            summary["collapsed"] = carry["collapse"]["collapse_step"] >= 0
            summary["collapse_reason"] = carry["collapse"]["reason"]
        return metrics, summary

    train.collapse = collapse
    train.lr_control = lr_control
    train.max_lag_cap = max_lag_cap
    train.num_steps = num_steps
    return train


# ----------------------------------------------------------------------------------------------
# Grids of cells.
# ----------------------------------------------------------------------------------------------


def make_cells(**axes: Sequence) -> dict[str, np.ndarray]:
    """The flattened Cartesian product of the axes, in the order given (the last varies
    fastest). ``make_cells(max_lag=[0, 4], lr=[0.1, 1.0], seed=range(3))`` has 12 cells."""
    for name, values in axes.items():
        if len(values) == 0:
            raise ValueError(f"The grid is empty: no values for {name!r}.")
    rows = list(itertools.product(*axes.values()))
    return {name: np.array([r[i] for r in rows]) for i, name in enumerate(axes)}


def validate_cells(cells: Mapping[str, np.ndarray], max_lag_cap: int) -> int:
    """Checks the cell arrays before anything is compiled; returns the number of cells."""
    for key in INT_KEYS:
        if key not in cells:
            raise ValueError(f"Every cell needs {key!r}; got keys {sorted(cells)}.")
    sizes = {k: len(np.asarray(v)) for k, v in cells.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"Cell arrays differ in length: {sizes}.")
    for s in np.asarray(cells["seed"]).tolist():
        _check_int("Every seed", s, 0)
    for s in np.asarray(cells["max_lag"]).tolist():
        _check_int("Staleness S", s, 0)
        if s > max_lag_cap:
            raise ValueError(f"S = {s} exceeds the ring-buffer cap S_max = {max_lag_cap}; raise "
                             "max_lag_cap.")
    for k, v in cells.items():
        if k not in INT_KEYS and not np.all(np.isfinite(np.asarray(v, float))):
            raise ValueError(f"Cell values of {k!r} must be finite, got {np.asarray(v)}.")
    return next(iter(sizes.values()))


def cell_arrays(cells: Mapping[str, np.ndarray]) -> dict:
    """Cell values as the arrays `train` takes: seed uint32, max_lag int32, the rest floats."""
    fdtype = jnp.result_type(float)
    return {k: jnp.asarray(v, INT_KEYS.get(k, fdtype)) for k, v in cells.items()}


def check_trace_every(num_steps: int, trace_every: int) -> None:
    """`trace_every` k must be an integer >= 1 that divides the horizon T."""
    _check_int("trace_every", trace_every, 1)
    if num_steps % trace_every:
        raise ValueError(f"trace_every = {trace_every} must divide the number of steps T = "
                         f"{num_steps} (the traces are means over blocks of k steps).")


def thin_traces(metrics: Mapping[str, jax.Array], trace_every: int) -> dict:
    """Block means of per-step traces [..., T] -> [..., T / k], k = `trace_every`: entry i is the
    mean over steps ik, …, ik + k − 1 (booleans become fractions). k = 1 returns them unchanged."""
    if trace_every == 1:
        return dict(metrics)
    out = {}
    for name, v in metrics.items():
        t = v.shape[-1]
        check_trace_every(t, trace_every)
        v = v.astype(jnp.result_type(float)) if not jnp.issubdtype(v.dtype, jnp.floating) else v
        out[name] = v.reshape(v.shape[:-1] + (t // trace_every, trace_every)).mean(-1)
    return out


@functools.lru_cache(maxsize=32)
def _compiled_grid(train, keep_metrics: Optional[tuple[str, ...]], trace_every: int = 1):
    def run(cells):
        metrics, summary = jax.vmap(train)(cells)
        if keep_metrics is not None:
            metrics = {k: v for k, v in metrics.items() if k in keep_metrics}
        return thin_traces(metrics, trace_every), summary

    return jax.jit(run)


def _check_keep(train, keep_metrics, trace_every):
    if keep_metrics is not None:
        bad = [k for k in keep_metrics if not isinstance(k, str) or not k]
        if bad:
            raise ValueError(f"keep_metrics must be metric names, got {list(keep_metrics)}.")
    num_steps = getattr(train, "num_steps", None)
    _check_int("trace_every", trace_every, 1)
    if num_steps is not None:
        check_trace_every(num_steps, trace_every)


def run_cells(train, cells: Mapping[str, np.ndarray], *,
              keep_metrics: Optional[Sequence[str]] = None,
              trace_every: int = 1) -> tuple[dict, dict]:
    """Runs every cell in one vmapped, jitted program; returns numpy (metrics [C, T / k], summary
    [C]). `keep_metrics` limits the per-step metrics returned (memory: C × T per metric);
    `trace_every` = k > 1 returns block means over k steps (`thin_traces`; k must divide T)."""
    validate_cells(cells, train.max_lag_cap)
    _check_keep(train, keep_metrics, trace_every)
    fn = _compiled_grid(train, None if keep_metrics is None else tuple(keep_metrics),
                        int(trace_every))
    metrics, summary = fn(cell_arrays(cells))
    return jax.tree.map(np.asarray, metrics), jax.tree.map(np.asarray, summary)


def run_cells_chunked(train, cells: Mapping[str, np.ndarray], *, chunk_size: int,
                      keep_metrics: Optional[Sequence[str]] = None,
                      trace_every: int = 1,
                      on_chunk: Optional[Callable[[int, dict, dict], None]] = None,
                      skip_chunk: Optional[Callable[[int], Optional[tuple]]] = None
                      ) -> tuple[dict, dict]:
    """Like `run_cells` in fixed-size chunks (the last one padded, so it compiles once).

    `skip_chunk(i)` may return saved (metrics, summary) of chunk i to resume; `on_chunk(i, m, s)`
    is called after each computed chunk (for saving).
    """
    n = validate_cells(cells, train.max_lag_cap)
    _check_int("chunk_size", chunk_size, 1)
    _check_keep(train, keep_metrics, trace_every)
    fn = _compiled_grid(train, None if keep_metrics is None else tuple(keep_metrics),
                        int(trace_every))
    outs = []
    for i, start in enumerate(range(0, n, chunk_size)):
        saved = skip_chunk(i) if skip_chunk is not None else None
        if saved is not None:
            outs.append(saved)
            continue
        stop = min(start + chunk_size, n)
        idx = np.arange(start, start + chunk_size).clip(max=n - 1)  # pad by repeating the last cell
        chunk = {k: np.asarray(v)[idx] for k, v in cells.items()}
        m, s = fn(cell_arrays(chunk))
        m = jax.tree.map(lambda a: np.asarray(a)[: stop - start], m)
        s = jax.tree.map(lambda a: np.asarray(a)[: stop - start], s)
        if on_chunk is not None:
            on_chunk(i, m, s)
        outs.append((m, s))
    metrics = {k: np.concatenate([o[0][k] for o in outs]) for k in outs[0][0]}
    summary = {k: np.concatenate([o[1][k] for o in outs]) for k in outs[0][1]}
    return metrics, summary
