r"""The one engine: a stale-gradient run as one scan, whole (η, seed, S, …) grids as one program.

The learner at step t applies an update direction computed from the current parameters θ_t and a
*stale* copy φ_t = θ_{t−s_t}, with the lag s_t from the staleness schedule (`async_grpo.staleness`,
the pipeline's: the lag of step t is drawn with the key `staleness.step_key(seed, t)`) and
0 ≤ s_t ≤ S. This module owns that loop for every testbed (the snapshot ring, the lag, the
drifts, the one optimizer update `apply_update`, the collapse detector and the LR controller);
a testbed supplies

* ``update(theta, phi, key, ctx) -> (h, metrics)``: the update mapping h(θ, φ), a pytree like θ
  that the optimizer treats as a *gradient of a loss to minimize* (for a surrogate loss L(θ; φ),
  h = ∇_θ L), plus a dict of scalar metrics to record. `key` is a fresh PRNG key every step (for
  sampled updates); ``ctx.cell`` holds the grid cell's values (traced scalars), ``ctx.theta0``
  the cell's initial parameters (e.g. a KL reference), ``ctx.step`` and ``ctx.lag`` the step t
  and its lag s_t (so φ has version t − s_t) and ``ctx.data`` the train's second argument;
* ``init(key, cell) -> theta0``;
* ``optimizer(cell) -> optax.GradientTransformation`` (use `optax.inject_hyperparams` to read
  traced hyper-parameters such as ``cell["lr"]``);
* optionally ``objective(theta, ctx) -> scalar``, the objective J logged every step (``"J"``),
  whose initial, final and best values are summarized;
* the staleness policy name, the ring-buffer cap S_max (every cell's S must be ≤ S_max), the
  horizon T and the collapse rules (`async_grpo.collapse`; by default a drop of J).

The exact testbed (`async_grpo.testbeds.exact.make_train`) and the LM population
(`async_grpo.rl.population`, whose update samples a GRPO batch from φ and differentiates the
learner's objective at θ) are two such updates; docs/simulator.md shows a model problem of one's
own. The asynchronous pipeline (`async_grpo.rl.pipeline`) cannot live in a scan (its generator
is a thread), but its learner applies the same `apply_update` with the same drift, collapse and
metric definitions.

`make_train(...)` returns ``train(cell, data=None) -> (metrics {name: [T]}, summary {name:
scalar})``: the whole run as one `lax.scan` over steps with a ring buffer of the last S_max + 1
iterates, so ``jax.jit(jax.vmap(train))`` runs a grid of cells at once (`run_cells`, or
`run_cells_chunked` for grids larger than memory, with hooks to save and skip finished chunks;
both can return block means of the traces over `trace_every` steps for long runs). Every cell
needs ``"seed"`` (θ_0 and every key derive from it) and ``"max_lag"`` (S).

Recorded every step besides the update's own metrics, with the names of the one vocabulary
(`async_grpo.metric_names`, docs/metrics.md): ``lag`` (s_t), ``version`` (t − s_t), ``J`` (with
an objective), ``drift/within_cycle`` ‖θ_t − φ_t‖, ``drift/cumulative`` ‖θ_t − θ_0‖,
``grad_norm`` ‖h_t‖, ``update_norm`` ‖u_t‖ of the optimizer's update, ``cos/consecutive_updates``
cos(u_t, u_{t−1}) and ``cos/consecutive_grads`` cos(h_t, h_{t−1}) of consecutive directions
before the optimizer (equal for plain SGD; under momentum or Adam the β1 average alone makes
consecutive updates correlated, so only the latter tells diffusive from ballistic directions
there; both 0 at t = 0), ``finite`` and ``collapsed`` (and ``lr_scale`` with the optional
learning-rate controller, `async_grpo.lr_control`). Norms are Euclidean over the flattened
pytree. A non-finite step is not applied (`apply_update`). The summary holds ``collapse_step``
(−1: none), ``collapsed``, ``collapse_reason``, ``drift_final`` and, with an objective,
``J_init``, ``J_final``, ``J_best``.
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
from async_grpo import metric_names as mn
from async_grpo import staleness as staleness_lib
from async_grpo.diagnostics import tree_cosine

Params = Any
Cell = Mapping[str, jax.Array]


class Context(NamedTuple):
    """What `update` and `objective` may read besides θ (and φ): the cell, θ_0, the step t, its
    lag s_t and the train's `data` argument (e.g. the LM's prompt tables; None if not given)."""
    cell: Cell
    theta0: Params
    step: Any = 0
    lag: Any = 0
    data: Any = None


UpdateFn = Callable[[Params, Params, jax.Array, Context], tuple[Params, dict]]

MAX_LAG_CAP = 256
EVALS = "evals"      # the summary's key of the in-program evaluations ({name: [n_evals]})
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


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def drift_metrics(params, behavior, theta0) -> dict[str, jax.Array]:
    """{drift/cumulative: ‖θ − θ_0‖, drift/within_cycle: ‖θ − φ‖} (the latter only when the
    behavior parameters φ are given): the drifts of every testbed and of the pipeline."""
    dist = lambda a, b: optax.tree.norm(optax.tree.sub(a, b))  # noqa: E731
    out = {mn.DRIFT_CUM: dist(params, theta0)}
    if behavior is not None:
        out[mn.DRIFT_CYCLE] = dist(params, behavior)
    return out


def init_aux(params, *, track_cosines: bool,
             collapse: Optional[collapse_lib.CollapseRules], initial_value=None,
             dtype=jnp.float32) -> dict:
    """The state `apply_update` carries besides θ and the optimizer's: the previous direction
    and update (for the cosines) and the collapse detector's state."""
    aux = {}
    if track_cosines:
        zeros = jax.tree.map(jnp.zeros_like, params)
        aux.update(prev_grad=zeros, prev_update=jax.tree.map(jnp.zeros_like, params))
    if collapse is not None:
        aux["collapse"] = collapse_lib.init_state(initial_value, dtype)
    return aux


def apply_update(params, opt_state, aux, grads, step, *, optimizer, metrics: Mapping,
                 track_cosines: bool, collapse: Optional[collapse_lib.CollapseRules],
                 also_finite=(), opt_extra: Optional[dict] = None):
    """The project's one optimizer update: θ ← θ + u, u = optimizer(h), for every testbed (the
    engine's scan step) and the learner (RL and SFT). -> (params, opt_state, aux, metrics).

    `grads` is the update direction h (the gradient of a loss to minimize). A step whose h, new θ
    or any of `also_finite` (e.g. the loss, J(θ_t)) is non-finite is not applied: θ, the
    optimizer state and the cosine carries keep their last finite values, and ``finite`` is
    false (so a collapse is recorded at that step and the run never carries NaN). Adds to
    `metrics`: grad_norm ‖h‖, update_norm ‖u‖, finite, the cosines of consecutive directions and
    updates (with `track_cosines`; 0 at the first step, whose carries are zero) and, with
    collapse rules, ``collapsed``, ``collapse/step`` and ``collapse/reason`` (the detector is fed
    the metrics at `step`, the number its warm-up counts in). `opt_extra`: extra arguments of an
    `optax.GradientTransformationExtraArgs` optimizer (the drift controller's S and drifts).
    """
    updates, new_opt_state = optimizer.update(grads, opt_state, params, **(opt_extra or {}))
    new_params = optax.apply_updates(params, updates)
    finite = _all_finite((tuple(also_finite), grads, new_params))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa
    params = keep(new_params, params)
    opt_state = keep(new_opt_state, opt_state)
    metrics = dict(metrics, **{mn.GRAD_NORM: optax.tree.norm(grads),
                               mn.UPDATE_NORM: optax.tree.norm(updates), mn.FINITE: finite})
    new_aux = {}
    if track_cosines:
        metrics[mn.COS_GRADS] = tree_cosine(grads, aux["prev_grad"])
        metrics[mn.COS_UPDATES] = tree_cosine(updates, aux["prev_update"])
        new_aux.update(prev_grad=keep(grads, aux["prev_grad"]),
                       prev_update=keep(updates, aux["prev_update"]))
    if collapse is not None:
        state = collapse_lib.update(collapse, aux["collapse"], step, metrics)
        metrics[mn.COLLAPSED] = state["collapse_step"] >= 0
        metrics[mn.COLLAPSE_STEP_NOW] = state["collapse_step"]
        metrics[mn.COLLAPSE_REASON_NOW] = state["reason"]
        new_aux["collapse"] = state
    return params, opt_state, new_aux, metrics


def _keep_names(keep: Optional[Sequence[str]]) -> Optional[frozenset]:
    if keep is None:
        return None
    bad = [k for k in keep if not isinstance(k, str) or not k]
    if bad:
        raise ValueError(f"keep_metrics must be metric names, got {list(keep)}.")
    return frozenset(mn.canonical(k) for k in keep)


def _ess_frac(metrics: dict, params: lr_control_lib.Params):
    """The step's ESS/B for the controller's ESS scaling: the update's ``loss/ess_frac``, or 1
    where the controller does not use it; an error where it does and the testbed's update has
    none (ess_power must then be a concrete 0)."""
    if mn.ESS_FRAC in metrics:
        return metrics[mn.ESS_FRAC]
    try:
        off = float(params.ess_power) == 0.0
    except (TypeError, jax.errors.ConcretizationTypeError):
        off = False
    if not off:
        raise ValueError(f"lr_control ess_power={params.ess_power!r} scales η by the batch's "
                         f"ESS/B, but this testbed's update returns no {mn.ESS_FRAC!r} metric "
                         f"(it has {sorted(metrics)}); use ess_power=0.")
    return 1.0


def make_train(update: UpdateFn, init: Callable[[jax.Array, Cell], Params],
               optimizer: Callable[[Cell], optax.GradientTransformation], *, num_steps: int,
               staleness: str = "fixed", max_lag_cap: int = 16, geometric_p: float = 0.5,
               objective: Optional[Callable[[Params, Context], jax.Array]] = None,
               collapse: Optional[collapse_lib.CollapseRules] = None,
               lr_control: Optional[Callable[[Cell], lr_control_lib.Params]] = None,
               track_cosines: bool = True, first_step: int = 0,
               keep: Optional[Sequence[str]] = None, return_params: bool = False,
               evaluate: Optional[Callable[[Params, Context], dict]] = None,
               eval_every: int = 0) -> Callable[..., tuple]:
    """Returns ``train(cell, data=None) -> (metrics, summary)``; see the module docstring.

    `lr_control(cell) -> async_grpo.lr_control.Params` (optional) turns on the staleness-aware
    learning-rate controller, chained after the optimizer: each step's update is multiplied by
    c_t (`lr_control.scale`, with S = cell["max_lag"] and, for its lookahead mode, the distance
    ‖θ_t − φ_{t+1}‖ to the next step's behavior policy), so the within-cycle drift stays under
    margin·R_batch; the step then also records ``lr_scale`` (c_t) and the summary
    ``lr_scale_mean``, ``lr_limited_frac`` and ``drift/within_cycle_max``.

    `track_cosines`: record the consecutive cosines (two more parameter copies in the carry).
    `first_step`: the step number the first update's metrics are logged at, which the collapse
    detector's warm-up counts in and `collapse_step` reports: 0 where a step's metrics describe
    θ_t before its update (the simulator's J(θ_t)); 1 in the pipeline's convention, where the
    metrics of update t are logged at step t + 1 (the LM population, whose collapse steps then
    equal the pipeline's). `keep`: the per-step metrics returned (None: all). `return_params`:
    train returns (metrics, summary, θ_T).

    `evaluate(θ, ctx) -> {name: scalar}` (with `eval_every` = k ≥ 1, k dividing T): an
    evaluation inside the program (e.g. held-out greedy accuracy) of θ_0 and of θ after every k
    updates, so at steps `eval_steps(T, k)` = 0, k, …, T; the scan then runs over T / k blocks of
    k steps, so an evaluation costs nothing on the steps between (under `vmap` a `lax.cond` would
    run it every step). The evaluations are the summary's ``"evals"``: {name: [T / k + 1]}.
    """
    _check_int("num_steps", num_steps, 1, MAX_STEPS)
    _check_int("max_lag_cap (S_max)", max_lag_cap, 0, MAX_LAG_CAP)
    _check_int("first_step", first_step, 0, 1)
    staleness_lib.check_policy_name(staleness, scheduled_only=True)
    staleness_lib.check_geometric_p(geometric_p)
    if collapse is None:
        collapse = default_collapse() if objective is not None else None
    if collapse is not None and collapse.metric == "J" and objective is None:
        raise ValueError("The collapse rule tracks 'J' but no objective was given; pass "
                         "objective= or rules on one of the update's metrics.")
    keep = _keep_names(keep)
    if evaluate is not None:
        check_trace_every(num_steps, eval_every)     # an integer k >= 1 dividing T
    elif eval_every:
        raise ValueError(f"eval_every={eval_every!r} needs an evaluate function.")
    k_ring = max_lag_cap + 1

    def lag_of(seed, t, s_max):
        return staleness_lib.scheduled_lag(staleness, t, s_max, staleness_lib.step_key(seed, t),
                                           geometric_p=geometric_p)

    def train(cell, data=None):
        s_max = jnp.asarray(cell["max_lag"], jnp.int32)
        seed = jnp.asarray(cell["seed"], jnp.uint32)
        k_init, k_run = jax.random.split(jax.random.PRNGKey(seed))
        theta0 = init(k_init, cell)
        ctx = Context(cell, theta0, data=data)
        opt = optimizer(cell)
        if lr_control is not None:
            opt = optax.chain(opt, lr_control_lib.scale_by_drift_control(lr_control(cell)))
        j0 = objective(theta0, ctx) if objective is not None else None
        ring = jax.tree.map(lambda x: jnp.broadcast_to(x, (k_ring,) + x.shape), theta0)
        aux = init_aux(theta0, track_cosines=track_cosines, collapse=collapse,
                       initial_value=j0 if collapse is not None and collapse.metric == "J"
                       else None,
                       dtype=j0.dtype if j0 is not None else jnp.result_type(float))
        carry0 = dict(theta=theta0, opt_state=opt.init(theta0), aux=aux, ring=ring, key=k_run)

        def step(carry, t):
            theta = carry["theta"]
            # The update's key is the third of a three-way split of the run's key chain (the
            # second drew the lag before lags were drawn per step, as the pipeline draws them:
            # kept so that sampled runs reproduce earlier results bit for bit).
            key, _, k_h = jax.random.split(carry["key"], 3)
            ring = jax.tree.map(lambda r, x: r.at[t % k_ring].set(x), carry["ring"], theta)
            lag = lag_of(seed, t, s_max)
            phi = jax.tree.map(lambda r: r[(t - lag) % k_ring], ring)
            h, m = update(theta, phi, k_h, ctx._replace(step=t, lag=lag))
            m = dict(m, **{mn.LAG: lag, mn.VERSION: t - lag}, **drift_metrics(theta, phi, theta0))
            also_finite = [m["loss"]] if "loss" in m else []
            if objective is not None:
                m[mn.OBJECTIVE] = objective(theta, ctx)
                also_finite.append(m[mn.OBJECTIVE])
            extra = None
            if lr_control is not None:
                next_lag = lag_of(seed, t + 1, s_max)
                phi_next = jax.tree.map(lambda r: r[(t + 1 - next_lag) % k_ring], ring)
                extra = dict(max_lag=s_max, drift_cycle=m[mn.DRIFT_CYCLE],
                             drift_cum=m[mn.DRIFT_CUM],
                             drift_next=jnp.where(next_lag > 0, optax.tree.norm(
                                 optax.tree.sub(theta, phi_next)), 0.0),
                             ess_frac=_ess_frac(m, lr_control(cell)))
            theta, opt_state, aux, m = apply_update(
                theta, carry["opt_state"], carry["aux"], h, t + first_step, optimizer=opt,
                metrics=m, track_cosines=track_cosines, collapse=collapse,
                also_finite=also_finite, opt_extra=extra)
            if lr_control is not None:
                m[mn.LR_SCALE] = opt_state[-1].last
            return dict(theta=theta, opt_state=opt_state, aux=aux, ring=ring, key=key), m

        steps = jnp.arange(num_steps, dtype=jnp.int32)
        if evaluate is None:
            carry, metrics = jax.lax.scan(step, carry0, steps)
        else:
            def block(carry, ts):                  # k steps, then one evaluation
                carry, m = jax.lax.scan(step, carry, ts)
                return carry, (m, evaluate(carry["theta"], ctx))

            carry, (metrics, evs) = jax.lax.scan(
                block, carry0, steps.reshape(num_steps // eval_every, eval_every))
            metrics = jax.tree.map(lambda x: x.reshape((num_steps,) + x.shape[2:]), metrics)
            evals = jax.tree.map(lambda first, rest: jnp.concatenate([first[None], rest]),
                                 evaluate(theta0, ctx), evs)
        theta = carry["theta"]
        summary = {mn.DRIFT_FINAL: drift_metrics(theta, None, theta0)[mn.DRIFT_CUM]}
        if evaluate is not None:
            summary[EVALS] = evals
        if lr_control is not None:
            cs = carry["opt_state"][-1]
            summary.update({mn.LR_SCALE_MEAN: cs.scale_sum / num_steps,
                            mn.LR_LIMITED_FRAC: cs.limited / num_steps,
                            mn.DRIFT_CYCLE_MAX: cs.max_drift})
        if objective is not None:
            j_final = objective(theta, ctx)
            js = metrics[mn.OBJECTIVE]
            best = jnp.max(jnp.where(jnp.isfinite(js), js, -jnp.inf))
            summary.update(J_init=j0, J_final=j_final, J_best=jnp.maximum(best, j_final))
        if collapse is not None:
            state = carry["aux"]["collapse"]
            summary.update({mn.COLLAPSE_STEP: state["collapse_step"],
                            mn.COLLAPSED: state["collapse_step"] >= 0,
                            mn.COLLAPSE_REASON: state["reason"]})
        if keep is not None:   # under jit, the metrics left out are never computed into traces
            metrics = {k: v for k, v in metrics.items() if k in keep}
        return (metrics, summary, theta) if return_params else (metrics, summary)

    train.collapse = collapse
    train.lr_control = lr_control
    train.eval_steps = eval_steps(num_steps, eval_every) if evaluate is not None else None
    train.max_lag_cap = max_lag_cap
    train.num_steps = num_steps
    return train


# ----------------------------------------------------------------------------------------------
# Grids of cells.
# ----------------------------------------------------------------------------------------------


def eval_steps(num_steps: int, eval_every: int) -> np.ndarray:
    """The steps of `make_train`'s evaluations: 0, k, 2k, …, T (θ after that many updates)."""
    check_trace_every(num_steps, eval_every)
    return np.arange(0, num_steps + 1, eval_every)


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
def _compiled_grid(train, keep_metrics: Optional[frozenset], trace_every: int = 1):
    def run(cells):
        metrics, summary = jax.vmap(train)(cells)
        if keep_metrics is not None:
            metrics = {k: v for k, v in metrics.items() if k in keep_metrics}
        return thin_traces(metrics, trace_every), summary

    return jax.jit(run)


def _check_keep(train, keep_metrics, trace_every):
    _keep_names(keep_metrics)
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
    fn = _compiled_grid(train, _keep_names(keep_metrics),
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
    fn = _compiled_grid(train, _keep_names(keep_metrics),
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
    summary = jax.tree.map(lambda *xs: np.concatenate(xs), *[o[1] for o in outs])
    return metrics, summary
