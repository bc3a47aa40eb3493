"""The sharded learner: a jitted, donated GRPO update on a `Mesh`, with gradient modes.

`Learner` places parameters and optimizer state on a mesh by the model's logical axes
(`async_grpo.sharding`), shards every batch on the batch rule's mesh axes (data, fsdp), and jits
one update with explicit in/out shardings, donating the parameters, optimizer state and the
diagnostic carry. Donated buffers are invalid after the call, so the engine publishes *copies*
of the parameters to the generator (`Learner.snapshot`, which also reshards them for a separate
generator mesh).

Gradient modes (`grad_mode`), all one backward pass because the gradient is linear in the loss:

* ``surrogate`` (default): ∇ of the configured GRPO-family loss, i.e. the surrogate mapping
  H(θ, φ) evaluated on samples of the behavior policy φ.
* ``total_derivative``: ∇ of `losses.total_derivative_surrogate` (an importance-weighted
  estimate of the total derivative ∇J(θ), unbiased with the leave-one-out baseline).
* ``corrected``: the surrogate plus `td_coef` × (total derivative − surrogate), i.e. the gradient
  of (1 − c)·L_sur + c·L_td. c = 0 is ``surrogate``, c = 1 is ``total_derivative``.

The step also returns the diagnostics that need the gradient itself: gradient and update norms,
the cosine of consecutive gradients and of consecutive updates (carried in `aux`), and a
finiteness flag. A non-finite loss, gradient or update leaves parameters and optimizer state
unchanged (selected inside the jitted step, so the donated buffers hold the last finite state).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from async_grpo import distributed
from async_grpo import losses, models
from async_grpo import sharding as sharding_lib
from async_grpo.rl.step import _score, loss_needs_ref, step_metrics

GRAD_MODES = ("surrogate", "total_derivative", "corrected")


def grad_mode_weight(grad_mode: str, td_coef: float) -> float:
    """The weight c of the total-derivative loss in (1 − c)·L_sur + c·L_td."""
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"Unknown grad_mode {grad_mode!r}; valid modes are {list(GRAD_MODES)}.")
    return {"surrogate": 0.0, "total_derivative": 1.0, "corrected": float(td_coef)}[grad_mode]


def parse_mesh_spec(spec) -> list[tuple[str, int]]:
    """"data=-1,fsdp=1,tensor=1" (or a list of (name, size)) -> [("data", -1), …]."""
    if not isinstance(spec, str):
        return [(str(a), int(s)) for a, s in spec]
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ValueError(f"Mesh spec entries look like 'data=-1', got {part!r} in {spec!r}.")
        name, size = part.split("=", 1)
        out.append((name.strip(), int(size)))
    return out


def _cos(a, b):
    num = sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    den = optax.tree.norm(a) * optax.tree.norm(b)
    return jnp.where(den > 0, num / jnp.maximum(den, 1e-30), 0.0)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _objective(graphdef, p, batch, ref_logp, *, loss_fn, td_loss_fn, td_weight, group_size,
               temperature):
    """(1 − c)·L_sur + c·L_td, with the surrogate's metrics (the TD loss's if c = 1)."""
    logp, entropy = _score(graphdef, p, batch, temperature)
    mask = batch["response_mask"]
    args = (logp, batch["behavior_logp"], batch["rewards"], mask)
    total, m = 0.0, {}
    if td_weight != 1.0:
        sur, m = loss_fn(*args, group_size=group_size, proximal_logp=batch.get("proximal_logp"),
                         ref_logp=ref_logp if loss_needs_ref(loss_fn) else None)
        total = (1.0 - td_weight) * sur
    if td_weight != 0.0:
        td, m_td = td_loss_fn(*args, group_size=group_size,
                              ref_logp=ref_logp if loss_needs_ref(td_loss_fn) else None)
        total = total + td_weight * td
        m = dict(m, **{f"td/{k}": v for k, v in m_td.items()}) if td_weight != 1.0 else m_td
    return total, (m, logp, entropy)


def _bind_objective(graphdef, batch, ref_params, **kw):
    """-> (objective of params for `batch`, the reference log-probs it uses or None)."""
    ref_logp = None
    if ref_params is not None:
        ref_logp = jax.lax.stop_gradient(_score(graphdef, ref_params, batch, kw["temperature"])[0])
    return functools.partial(_objective, graphdef, batch=batch, ref_logp=ref_logp, **kw), ref_logp


def learner_step(graphdef, params, opt_state, aux, batch, ref_params, *, optimizer, loss_fn,
                 td_loss_fn, td_weight: float, group_size: int, temperature: float,
                 track_cosines: bool):
    """One update. -> (params, opt_state, aux, metrics). See the module docstring."""
    obj, ref_logp = _bind_objective(graphdef, batch, ref_params, loss_fn=loss_fn,
                                    td_loss_fn=td_loss_fn, td_weight=td_weight,
                                    group_size=group_size, temperature=temperature)
    (loss, (m, logp, entropy)), grads = jax.value_and_grad(obj, has_aux=True)(params)
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    finite = _all_finite((loss, grads, new_params))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    params = keep(new_params, params)
    opt_state = keep(new_opt_state, opt_state)

    metrics = step_metrics(m, loss, grads, updates, logp, entropy, batch, ref_logp)
    metrics["finite"] = finite
    if track_cosines:
        metrics["cos/consecutive_grads"] = _cos(grads, aux["prev_grad"])
        metrics["cos/consecutive_updates"] = _cos(updates, aux["prev_update"])
        aux = {"prev_grad": keep(grads, aux["prev_grad"]),
               "prev_update": keep(updates, aux["prev_update"])}
    return params, opt_state, aux, metrics


def gradient_diagnostics(graphdef, params, stale, fresh, ref_params, *, loss_fn, td_loss_fn,
                         group_size, temperature):
    """Staleness bias on the same prompts: H(θ, φ) − H(θ, θ), and surrogate vs total derivative.

    `stale` was generated by φ (the batch the learner trains on), `fresh` by θ itself. H is the
    surrogate gradient (the negative gradient of the loss; the sign does not change the norms or
    cosines). Both are single-batch estimates, so the bias norm includes sampling noise.
    """
    def grad(batch, weight):
        obj, _ = _bind_objective(graphdef, batch, ref_params, loss_fn=loss_fn,
                                 td_loss_fn=td_loss_fn, td_weight=weight,
                                 group_size=group_size, temperature=temperature)
        return jax.grad(lambda p: obj(p)[0])(params)

    g_stale, g_fresh = grad(stale, 0.0), grad(fresh, 0.0)
    g_td = grad(stale, 1.0)
    diff = jax.tree.map(jnp.subtract, g_stale, g_fresh)
    fresh_norm = optax.tree.norm(g_fresh)
    return {
        "bias/norm": optax.tree.norm(diff),
        "bias/rel": optax.tree.norm(diff) / jnp.maximum(fresh_norm, 1e-30),
        "bias/fresh_grad_norm": fresh_norm,
        "bias/cos_stale_fresh": _cos(g_stale, g_fresh),
        "bias/cos_surrogate_td": _cos(g_stale, g_td),
        "bias/cos_td_fresh": _cos(g_td, g_fresh),
    }


class Learner:
    """Parameters, optimizer state and the jitted update on a mesh.

    Args:
      graphdef: the model graph definition.
      optimizer, loss_fn: the optax optimizer and the GRPO-family loss.
      mesh: the learner's `Mesh`; `rules`: logical-axis rules (default `sharding.DEFAULT_RULES`).
      grad_mode, td_coef: see the module docstring; `td_loss_kwargs` configure the TD loss.
      track_cosines: carry the previous gradient and update (2 extra parameter copies) to log the
        cosine of consecutive gradients/updates.
      gen_mesh: the generator's mesh (None: it shares the learner's); snapshots are resharded to
        it, fully replicated except along the generator mesh's own fsdp/tensor axes.
    """

    def __init__(self, graphdef, *, optimizer, loss_fn, group_size: int, temperature: float,
                 mesh, rules=None, grad_mode: str = "surrogate", td_coef: float = 1.0,
                 td_loss_kwargs: Optional[dict] = None, track_cosines: bool = True,
                 gen_mesh=None):
        self.graphdef, self.optimizer, self.loss_fn = graphdef, optimizer, loss_fn
        self.group_size, self.temperature = group_size, temperature
        self.mesh, self.rules = mesh, rules
        self.gen_mesh = gen_mesh if gen_mesh is not None else mesh
        self.td_weight = grad_mode_weight(grad_mode, td_coef)
        self.grad_mode = grad_mode
        self.td_loss_fn = losses.make_loss("total_derivative", **dict(td_loss_kwargs or {}))
        self.track_cosines = track_cosines
        self._step_cache: dict[Any, Callable] = {}
        self.multiprocess = len({d.process_index for d in mesh.devices.flat}) > 1
        if self.multiprocess and gen_mesh is not None:
            raise ValueError("A separate generator mesh is not supported with several processes "
                             "(each process generates its share on its own devices).")
        self._diag = None
        self.param_shardings = None

    # --- placement -------------------------------------------------------------------------------
    def setup(self, params_template):
        """Computes the shardings from the model's logical axes (call once, with any params)."""
        axes = models.logical_axes(params_template)
        self.param_shardings = sharding_lib.logical_to_shardings(
            params_template, axes, self.mesh, self.rules)
        self.sharding_notes = sharding_lib.explain_shardings(
            params_template, axes, self.mesh, self.rules)
        self.gen_shardings = sharding_lib.logical_to_shardings(
            params_template, axes, self.gen_mesh, self.rules)
        self.opt_shardings = sharding_lib.opt_state_shardings(
            self.optimizer, params_template, self.param_shardings, self.mesh)
        self.replicated = sharding_lib.replicated(self.mesh)
        # Reshard with device_put (which may alias the source's shards on shared devices), then
        # copy in a jitted computation: the result never shares a buffer with its input.
        def copier(shardings):
            copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings)
            return lambda p: copy(jax.device_put(p, shardings))
        self._copy_to_gen = copier(self.gen_shardings)
        self._copy_to_learner = copier(self.param_shardings)
        if self.multiprocess:
            # Several processes: params are placed from full host copies, and each process's
            # generator samples its share of the batch with a process-local copy (a collective:
            # every process publishes the same versions in the same order).
            self._copy_to_learner = lambda p: distributed.to_global(p, self.param_shardings)
            self._copy_to_gen = distributed.to_local
        dist = lambda a, b: optax.tree.norm(jax.tree.map(jnp.subtract, a, b))
        self._drifts = jax.jit(lambda p, phi, p0: {
            "drift/cumulative": dist(p, p0),
            **({} if phi is None else {"drift/within_cycle": dist(p, phi)})})
        return self

    def place_params(self, params):
        """A copy of `params` on the learner mesh (never aliases the input)."""
        return self._copy_to_learner(params)

    def init_opt_state(self, params):
        return _distinct(jax.jit(self.optimizer.init, out_shardings=self.opt_shardings)(params))

    def init_aux(self, params):
        if not self.track_cosines:
            return {}
        zeros = jax.jit(lambda p: jax.tree.map(jnp.zeros_like, p),
                        out_shardings=self.param_shardings)
        return _distinct({"prev_grad": zeros(params), "prev_update": zeros(params)})

    def aux_shardings(self):
        if not self.track_cosines:
            return {}
        return {"prev_grad": self.param_shardings, "prev_update": self.param_shardings}

    def snapshot(self, params):
        """A copy of `params` on the generator's shardings: safe to publish before donation."""
        return self._copy_to_gen(params)

    def drifts(self, params, behavior, theta0) -> dict[str, jax.Array]:
        """{"drift/cumulative": ‖θ − θ_0‖, "drift/within_cycle": ‖θ − φ‖} in one jitted call;
        `behavior` (φ) may be None (then only the cumulative drift) or on the generator mesh."""
        if behavior is not None and (self.gen_mesh is not self.mesh or self.multiprocess):
            behavior = self._copy_to_learner(behavior)
        return self._drifts(params, behavior, theta0)

    def batch_shardings(self, arrays):
        return {k: sharding_lib.batch_sharding(self.mesh, np.ndim(v), self.rules)
                for k, v in arrays.items()}

    def place_batch(self, arrays):
        """The batch on the mesh's batch axes; with several processes `arrays` holds this
        process's rows and the global batch is their concatenation in process order."""
        arrays = {k: v for k, v in arrays.items()}
        b = next(iter(arrays.values())).shape[0]
        if self.multiprocess:
            b *= jax.process_count()
        n = math_prod_batch_axes(self.mesh, self.rules)
        if b % n:
            raise ValueError(f"The batch of {b} rows does not divide over the {n} devices of the "
                             f"mesh's batch axes {dict(self.mesh.shape)}; make "
                             "rl.prompts_per_step × rl.group_size a multiple of it.")
        if self.multiprocess:
            return distributed.global_batch(arrays, self.batch_shardings(arrays))
        return jax.device_put(arrays, self.batch_shardings(arrays))

    # --- the update ------------------------------------------------------------------------------
    def _compiled(self, batch, ref_params):
        key = (jax.tree.structure(batch), tuple(np.ndim(v) for v in batch.values()),
               ref_params is None)
        if key not in self._step_cache:
            fn = functools.partial(
                learner_step, self.graphdef, optimizer=self.optimizer, loss_fn=self.loss_fn,
                td_loss_fn=self.td_loss_fn, td_weight=self.td_weight,
                group_size=self.group_size, temperature=self.temperature,
                track_cosines=self.track_cosines)
            ref_sh = None if ref_params is None else self.param_shardings
            self._step_cache[key] = jax.jit(
                fn,
                in_shardings=(self.param_shardings, self.opt_shardings, self.aux_shardings(),
                              self.batch_shardings(batch), ref_sh),
                out_shardings=(self.param_shardings, self.opt_shardings, self.aux_shardings(),
                               self.replicated),
                donate_argnums=(0, 1, 2))
        return self._step_cache[key]

    def step(self, params, opt_state, aux, batch, ref_params=None):
        """One donated update; `params`, `opt_state`, `aux` are invalid afterwards."""
        batch = self.place_batch(batch)
        return self._compiled(batch, ref_params)(params, opt_state, aux, batch, ref_params)

    def diagnostics(self, params, stale, fresh, ref_params=None):
        if self._diag is None:
            self._diag = jax.jit(functools.partial(
                gradient_diagnostics, self.graphdef, loss_fn=self.loss_fn,
                td_loss_fn=self.td_loss_fn, group_size=self.group_size,
                temperature=self.temperature))
        return self._diag(params, self.place_batch(stale), self.place_batch(fresh), ref_params)


def math_prod_batch_axes(mesh, rules=None) -> int:
    spec = sharding_lib.batch_sharding(mesh, 1, rules).spec[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    n = 1
    for a in axes:
        n *= mesh.shape[a]
    return n


def _distinct(tree):
    """Copies every leaf into its own buffer. A jitted init may return one buffer for several
    equal outputs (e.g. zeros of the same shape); donating such a tree would donate a buffer
    twice ("Attempt to use a buffer that was previously donated in the same call")."""
    return jax.jit(lambda t: jax.tree.map(jnp.copy, t),
                   out_shardings=jax.tree.map(lambda x: x.sharding, tree))(tree)
