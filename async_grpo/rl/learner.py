"""The learner: the pipeline's and SFT's update, jitted on a `Mesh` with donation.

`update(params, opt_state, aux, batch, ref_params, step, *, objective, optimizer, ...)` is the
update of GRPO (any gradient mode) and SFT alike: it differentiates the objective
(`async_grpo.rl.objectives`, `gradient`) and applies the project's one optimizer update
(`async_grpo.simulate.apply_update`, the same step the engine's scan applies): the optax update,
the last finite state kept when anything is non-finite, and the diagnostics that need the
gradient itself: gradient and update norms, the cosines of consecutive gradients and of
consecutive updates (their previous values carried in `aux`), a finiteness flag, and the collapse
state of `async_grpo.collapse` (also in `aux`, so the host never has to look at a step to detect
one).

`Learner` places parameters and optimizer state on a mesh by the model's logical axes
(`async_grpo.sharding`), shards every batch on the batch rule's mesh axes (data, fsdp), and jits
`update` with explicit in/out shardings, donating the parameters, optimizer state and `aux`.
Donated buffers are invalid after the call, so the pipeline publishes *copies* of the
parameters to the generator (`Learner.snapshot`, which also reshards them for a separate
generator mesh). On a one-device mesh with S = 0 this is plain synchronous training.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from async_grpo import collapse as collapse_lib
from async_grpo import distributed, models, simulate
from async_grpo import sharding as sharding_lib


def split_micro(tree, k: int):
    """Every [B, ...] leaf -> [k, B/k, ...], micro-batch j holding rows j, j + k, j + 2k, ...
    (strided, so a batch sharded in contiguous blocks over devices stays spread over all of them
    in every micro-batch). `merge_micro` is its inverse."""
    def split(x):
        b = x.shape[0]
        if b % k:
            raise ValueError(f"micro_batches={k} must divide the batch of {b} rows")
        return x.reshape(b // k, k, *x.shape[1:]).swapaxes(0, 1)
    return jax.tree.map(split, tree)


def merge_micro(tree):
    """Inverse of `split_micro`: [k, B/k, ...] -> [B, ...] in the original row order."""
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(-1, *x.shape[2:]), tree)


def accumulated_value_and_grad(objective, params, batch, ref_params, micro_batches: int):
    """((loss, metrics), ∇_θ loss) of the FULL batch, holding one micro-batch's activations.

    The objective is `loss(ℓ(θ), s, batch)` with `ℓ(θ)` [B, T] the per-token log-probs (rows
    independent: row b depends only on θ and row b of the batch), `s` a metric-only side output
    and `loss` any function of the whole batch (group advantages, keep masks of MIS/Geo-RS that
    depend on θ through stop-gradient ratios, the denominators of every aggregation mode,
    self-normalised weights). By the chain rule

        ∇_θ loss = Σ_b Σ_t (∂loss/∂ℓ_bt) ∇_θ ℓ_bt = Σ_j J_jᵀ g_j,   g = ∂loss/∂ℓ (a [B, T] array),

    so: (1) score every micro-batch without gradient (`lax.map`, forward only) to get ℓ and s
    for the whole batch; (2) evaluate the loss, its metrics and g = ∂loss/∂ℓ on the whole batch
    (cheap: [B, T] arrays); (3) for each micro-batch j, a forward + backward pass pulls g_j back
    through ℓ_j (`jax.vjp`), summed over j (`lax.scan`). The result equals the full-batch
    gradient up to float summation order, for every loss: no denominator has to be threaded
    through, and micro-batches need not align with groups. The price is one extra forward pass
    (pass 1) over the batch: about 4 instead of 3 forward-equivalents per step.
    """
    k = micro_batches
    micro = split_micro(batch, k)
    extras = merge_micro(jax.lax.map(lambda b: objective.prepare(b, ref_params), micro))
    frozen = jax.lax.stop_gradient(params)
    logp, side = merge_micro(jax.lax.map(lambda b: objective.score(frozen, b), micro))
    (loss, m), g = jax.value_and_grad(
        lambda lp: objective.loss(lp, side, batch, extras), has_aux=True)(logp)

    def pull_back(acc, xs):
        b, g_b = xs
        _, vjp = jax.vjp(lambda p: objective.score(p, b, entropy=False), params)
        return jax.tree.map(jnp.add, acc, vjp(g_b)[0]), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(pull_back, zeros, (micro, split_micro(g, k)))
    return (loss, m), grads


def gradient(objective, params, batch, ref_params, micro_batches: int = 1):
    """((loss, metrics), ∇_θ loss) of the objective on `batch` at `params`; with
    `micro_batches` > 1 the same gradient holding one micro-batch's activations at a time
    (`accumulated_value_and_grad`)."""
    if micro_batches > 1:
        return accumulated_value_and_grad(objective, params, batch, ref_params, micro_batches)
    extras = objective.prepare(batch, ref_params)
    return jax.value_and_grad(objective, has_aux=True)(params, batch, extras)


def update(params, opt_state, aux, batch, ref_params, step, *, objective, optimizer,
           track_cosines: bool, collapse: Optional[collapse_lib.CollapseRules],
           micro_batches: int = 1, opt_extra: Optional[dict] = None):
    """One update. -> (params, opt_state, aux, metrics). See the module docstring.

    The gradient of the objective (`gradient`), then the project's one optimizer update
    (`async_grpo.simulate.apply_update`, which the engine's scan applies too). `step` is the
    number of updates done after this one (the step the metrics are logged at); the collapse
    rules' warm-up counts in it. `opt_extra`: extra arguments of an
    `optax.GradientTransformationExtraArgs` optimizer (e.g. the drift controller's max_lag and
    drifts, `async_grpo.lr_control`).
    """
    (loss, m), grads = gradient(objective, params, batch, ref_params, micro_batches)
    return simulate.apply_update(params, opt_state, aux, grads, step, optimizer=optimizer,
                                 metrics=dict(m, loss=loss), track_cosines=track_cosines,
                                 collapse=collapse, also_finite=(loss,), opt_extra=opt_extra)


class Learner:
    """Parameters, optimizer state and the jitted `update` on a mesh.

    Args:
      objective: what to differentiate (`objectives.GRPOObjective`, `objectives.SFTObjective`).
      optimizer: the optax optimizer.
      params_template: any params of the model (for the shardings of its logical axes).
      mesh: the learner's `Mesh`; `rules`: logical-axis rules (default `sharding.DEFAULT_RULES`).
      gen_mesh: the generator's mesh (None: it shares the learner's); snapshots are resharded to
        it, fully replicated except along the generator mesh's own fsdp/tensor axes.
      track_cosines: carry the previous gradient and update (2 extra parameter copies) to log the
        cosine of consecutive gradients/updates.
      collapse: the collapse rules tracked in `aux` (None: none).
      reshard_drift: with a separate generator mesh (or several processes), copy the behavior
        snapshot back to the learner mesh every step to measure ‖θ − φ‖ exactly (opt-in: a full
        parameter copy per step).
      micro_batches: exact gradient accumulation over this many micro-batches (`update`).
      snapshot_dtype: cast published snapshots to this dtype (None: keep the parameters'). The
        model casts every weight to its compute dtype before use, so snapshots in the compute
        dtype sample exactly as full copies do, at half the bytes under bf16 compute.
      snapshot_memory: "device", or "host" to hold published snapshots in pinned host memory
        (`sharding.with_memory_kind("pinned_host")`); `gen_params` moves one back to the device
        for sampling.
    """

    def __init__(self, objective, optimizer, params_template, *, mesh, gen_mesh=None,
                 rules=None, track_cosines: bool = True,
                 collapse: Optional[collapse_lib.CollapseRules] = None,
                 reshard_drift: bool = False, micro_batches: int = 1,
                 snapshot_dtype=None, snapshot_memory: str = "device"):
        self.objective, self.optimizer = objective, optimizer
        self.mesh, self.rules = mesh, rules
        self.gen_mesh = gen_mesh if gen_mesh is not None else mesh
        self.track_cosines, self.collapse = track_cosines, collapse
        self.multiprocess = len({d.process_index for d in mesh.devices.flat}) > 1
        if self.multiprocess and gen_mesh is not None:
            raise ValueError("A separate generator mesh is not supported with several processes "
                             "(each process generates its share on its own devices).")
        self.separate_gen = gen_mesh is not None or self.multiprocess
        self.reshard_drift = reshard_drift
        if not (isinstance(micro_batches, int) and micro_batches >= 1):
            raise ValueError(f"micro_batches must be an int >= 1, got {micro_batches!r}")
        if snapshot_memory not in ("device", "host"):
            raise ValueError(f"snapshot_memory must be 'device' or 'host', got "
                             f"{snapshot_memory!r}")
        self.micro_batches = micro_batches
        self.snapshot_dtype = None if snapshot_dtype is None else jnp.dtype(snapshot_dtype)
        self.snapshot_memory = snapshot_memory
        self._step_cache: dict[Any, Callable] = {}
        self._fn_cache: dict[Any, Callable] = {}

        axes = models.logical_axes(params_template)
        self.param_shardings = sharding_lib.logical_to_shardings(
            params_template, axes, mesh, rules)
        self.sharding_notes = sharding_lib.explain_shardings(params_template, axes, mesh, rules)
        self.gen_shardings = sharding_lib.logical_to_shardings(
            params_template, axes, self.gen_mesh, rules)
        self.opt_shardings = sharding_lib.opt_state_shardings(
            optimizer, params_template, self.param_shardings, mesh)
        self.replicated = sharding_lib.replicated(mesh)

        # Reshard with device_put (which may alias the source's shards on shared devices), then
        # copy in a jitted computation: the result never shares a buffer with its input.
        def copier(shardings, dtype=None):
            cast = (lambda x: jnp.copy(x)) if dtype is None else (lambda x: x.astype(dtype))
            copy = jax.jit(lambda p: jax.tree.map(cast, p), out_shardings=shardings)
            return lambda p: copy(jax.device_put(p, shardings))
        self._copy_to_gen = copier(self.gen_shardings, self.snapshot_dtype)
        self._copy_to_learner = copier(self.param_shardings)
        self._to_host = self._to_device = None
        if snapshot_memory == "host":
            host = jax.tree.map(lambda s: s.with_memory_kind("pinned_host"), self.gen_shardings)
            to_gen = self._copy_to_gen
            self._copy_to_gen = lambda p: jax.device_put(to_gen(p), host)
            self._to_device = lambda p: jax.device_put(p, self.gen_shardings)
        if self.multiprocess:
            # Several processes: params are placed from full host copies, and each process's
            # generator samples its share of the batch with a process-local copy (a collective:
            # every process publishes the same versions in the same order).
            self._copy_to_learner = lambda p: distributed.to_global(p, self.param_shardings)
            self._copy_to_gen = distributed.to_local
        self._drifts = jax.jit(simulate.drift_metrics)

    # --- placement -------------------------------------------------------------------------------
    def place_params(self, params):
        """A copy of `params` on the learner mesh (never aliases the input)."""
        return self._copy_to_learner(params)

    def init_opt_state(self, params):
        return _distinct(jax.jit(self.optimizer.init, out_shardings=self.opt_shardings)(params))

    def init_aux(self, params):
        init = functools.partial(simulate.init_aux, track_cosines=self.track_cosines,
                                 collapse=self.collapse)
        aux = jax.jit(init, out_shardings=self.aux_shardings())(params)
        return _distinct(aux) if aux else aux

    def aux_shardings(self):
        out = {}
        if self.track_cosines:
            out.update(prev_grad=self.param_shardings, prev_update=self.param_shardings)
        if self.collapse is not None:
            out["collapse"] = jax.tree.map(lambda _: self.replicated, collapse_lib.init_state())
        return out

    def snapshot(self, params):
        """A copy of `params` on the generator's shardings (in `snapshot_dtype`, in host memory
        with snapshot_memory="host"): safe to publish before donation."""
        return self._copy_to_gen(params)

    def gen_params(self, snapshot):
        """A held snapshot ready for the sampler (moved to device memory if held on the host)."""
        return snapshot if self._to_device is None else self._to_device(snapshot)

    def snapshot_bytes(self, params) -> int:
        """Bytes one published snapshot of `params` holds (per the whole mesh, all shards)."""
        dt = self.snapshot_dtype
        return int(sum(np.prod(x.shape) * (dt or jnp.dtype(x.dtype)).itemsize
                       for x in jax.tree.leaves(params)))

    def drifts(self, params, behavior, theta0) -> dict[str, jax.Array]:
        """{"drift/cumulative": ‖θ − θ_0‖, "drift/within_cycle": ‖θ − φ‖} in one jitted call.

        `behavior` (φ, a published snapshot) may be None; when it lives on a separate generator
        mesh (or in process-local copies) it is only used with `reshard_drift`."""
        if behavior is not None and self.separate_gen:
            behavior = self._copy_to_learner(behavior) if self.reshard_drift else None
        return self._drifts(params, behavior, theta0)

    def batch_shardings(self, arrays):
        return {k: sharding_lib.batch_sharding(self.mesh, np.ndim(v), self.rules)
                for k, v in arrays.items()}

    def place_batch(self, arrays):
        """The batch on the mesh's batch axes; with several processes `arrays` holds this
        process's rows and the global batch is their concatenation in process order."""
        arrays = dict(arrays)
        b = next(iter(arrays.values())).shape[0]
        if self.multiprocess:
            b *= jax.process_count()
        n = sharding_lib.batch_axis_size(self.mesh, self.rules)
        if b % n:
            raise ValueError(f"The batch of {b} rows does not divide over the {n} devices of the "
                             f"mesh's batch axes {dict(self.mesh.shape)}; make the batch size "
                             "(rl.prompts_per_step × rl.group_size, or sft.batch_size) a "
                             "multiple of it.")
        if self.multiprocess:
            return distributed.global_batch(arrays, self.batch_shardings(arrays))
        return jax.device_put(arrays, self.batch_shardings(arrays))

    # --- the update ------------------------------------------------------------------------------
    def _compiled(self, params, opt_state, aux, batch, ref_params):
        key = (jax.tree.structure(batch), tuple(np.ndim(v) for v in batch.values()),
               ref_params is None)
        if key not in self._step_cache:
            fn = functools.partial(update, objective=self.objective, optimizer=self.optimizer,
                                   track_cosines=self.track_cosines, collapse=self.collapse,
                                   micro_batches=self.micro_batches)
            self._check_collapse_metrics(params, opt_state, aux, batch, ref_params)
            ref_sh = None if ref_params is None else self.param_shardings
            self._step_cache[key] = jax.jit(
                fn,
                in_shardings=(self.param_shardings, self.opt_shardings, self.aux_shardings(),
                              self.batch_shardings(batch), ref_sh, self.replicated),
                out_shardings=(self.param_shardings, self.opt_shardings, self.aux_shardings(),
                               self.replicated),
                donate_argnums=(0, 1, 2))
        return self._step_cache[key]

    def _check_collapse_metrics(self, params, opt_state, aux, batch, ref_params):
        """Refuses collapse rules on a metric the update does not produce (before compiling)."""
        if self.collapse is None:
            return
        fn = functools.partial(update, objective=self.objective, optimizer=self.optimizer,
                               track_cosines=self.track_cosines, collapse=None)
        shapes = jax.eval_shape(fn, params, opt_state, aux, batch, ref_params, jnp.int32(0))
        names = set(shapes[3])
        missing = [m for m in self.collapse.metrics if m not in names]
        if missing:
            raise ValueError(f"collapse rules track {missing}, which the learner step does not "
                             f"produce; its metrics are {sorted(names)}.")

    def step(self, params, opt_state, aux, batch, ref_params=None, *, step: int = 0):
        """One donated update; `params`, `opt_state`, `aux` are invalid afterwards. `step`: the
        update count after it (the step its metrics are logged at; the collapse warm-up counts in
        it)."""
        batch = self.place_batch(batch)
        fn = self._compiled(params, opt_state, aux, batch, ref_params)
        return fn(params, opt_state, aux, batch, ref_params, jnp.asarray(step, jnp.int32))

    def compile_fn(self, fn: Callable) -> Callable:
        """`fn(params, *batches, ref_params=None)` jitted, with the batches placed on the learner
        mesh's batch axes: for diagnostics that run beside the update."""
        if fn not in self._fn_cache:
            self._fn_cache[fn] = jax.jit(fn)
        jitted = self._fn_cache[fn]

        def run(params, *batches, ref_params=None):
            return jitted(params, *[self.place_batch(b) for b in batches], ref_params)
        return run


def _distinct(tree):
    """Copies every leaf into its own buffer. A jitted init may return one buffer for several
    equal outputs (e.g. zeros of the same shape); donating such a tree would donate a buffer
    twice ("Attempt to use a buffer that was previously donated in the same call")."""
    return jax.jit(lambda t: jax.tree.map(jnp.copy, t),
                   out_shardings=jax.tree.map(lambda x: x.sharding, tree))(tree)
