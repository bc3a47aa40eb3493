"""What the learner differentiates: pure objectives over explicit pytrees.

An objective is a hashable object with two pure methods (the learner's `update` calls them):

* ``prepare(batch, ref_params) -> extras``: the stop-gradient inputs computed once per batch
  (e.g. the reference policy's log-probs);
* ``__call__(params, batch, extras) -> (loss, metrics)``: the scalar loss to minimize and a dict
  of scalar metrics (device arrays).

`GRPOObjective` scores the batch's responses under θ by teacher forcing and evaluates a loss of
`async_grpo.losses` against the batch's behavior log-probs (the lag only enters through
``batch["behavior_logp"]`` and, for decoupled objectives, ``batch["proximal_logp"]``). Its
gradient mode mixes two losses, (1 − c)·L_sur + c·L_td (one backward pass, the gradient being
linear in the loss):

* c = 0 (``surrogate``): ∇ of the configured GRPO-family loss, i.e. the surrogate mapping H(θ, φ)
  evaluated on samples of the behavior policy φ;
* c = 1 (``total_derivative``): ∇ of the total-derivative loss, an importance-weighted estimate
  of ∇J(θ) for the objective J(θ) = E_{π_θ}[r] − β KL(π_θ‖π_ref) with β = the TD loss's own
  `kl_coef` (default 0: J without KL; the KL is evaluated at θ, see `losses.make_loss`). It is
  unbiased under the conditions `losses.total_derivative_surrogate` states (leave-one-out or no
  baseline, no truncation or self-normalisation, exact behavior log-probs of the distribution
  actually sampled, π_b > 0 wherever π_θ > 0);
* 0 < c < 1 (``corrected``).

`SFTObjective` is the supervised cross entropy on reference answers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from async_grpo import models, sampling
from async_grpo.diagnostics import tree_cosine

_sg = jax.lax.stop_gradient


def _masked_mean(x, mask):
    mask = mask.astype(jnp.float32)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _needs_ref(loss_fn) -> bool:
    kl = getattr(loss_fn, "config", {}).get("kl_coef", 0.0)
    return not (isinstance(kl, (int, float)) and kl == 0)


@dataclasses.dataclass(frozen=True)
class GRPOObjective:
    """(1 − c)·L_sur + c·L_td on a rollout batch (see the module docstring).

    Batch keys: prompt_tokens, prompt_lengths, response_tokens, response_mask, behavior_logp,
    rewards (and optionally proximal_logp).
    """

    graphdef: Any
    loss_fn: Callable
    td_loss_fn: Callable
    td_weight: float
    group_size: int
    temperature: float
    logits_chunk: int = 0

    @property
    def needs_ref(self) -> bool:
        """Whether a loss in use has a KL term (so `prepare` needs the reference params)."""
        return ((self.td_weight != 1.0 and _needs_ref(self.loss_fn)) or
                (self.td_weight != 0.0 and _needs_ref(self.td_loss_fn)))

    def score(self, params, batch, *, entropy: bool = True):
        """(log π_θ of the response tokens [B, T], per-position entropy [B, T]); only the
        log-probs with `entropy=False`. The vocabulary projection runs `logits_chunk` positions
        at a time (0: all at once; see `sampling.token_logprobs`)."""
        return sampling.score_responses(
            self.graphdef, params, batch["prompt_tokens"], batch["prompt_lengths"],
            batch["response_tokens"], batch["response_mask"], temperature=self.temperature,
            return_entropy=entropy, chunk_size=self.logits_chunk)

    def prepare(self, batch, ref_params) -> dict:
        if ref_params is None:
            if self.needs_ref:
                raise ValueError("The loss has a KL term and needs the reference policy's params "
                                 "(ref_params).")
            return {}
        return {"ref_logp": _sg(self.score(ref_params, batch, entropy=False))}

    def __call__(self, params, batch, extras):
        logp, entropy = self.score(params, batch)
        return self.loss(logp, entropy, batch, extras)

    def loss(self, logp, entropy, batch, extras):
        """(loss, metrics) from the log-probs `logp` [B, T] (the only input that carries the
        gradient) and the entropy (a metric). A function of the whole batch: advantages, keep
        masks and denominators are batch-global, which is why gradient accumulation differentiates
        this with respect to `logp` (see `learner.update`)."""
        mask = batch["response_mask"]
        ref_logp = extras.get("ref_logp")
        args = (logp, batch["behavior_logp"], batch["rewards"], mask)
        c = self.td_weight
        total, m = 0.0, {}
        if c != 1.0:
            sur, m = self.loss_fn(*args, group_size=self.group_size,
                                  proximal_logp=batch.get("proximal_logp"),
                                  ref_logp=ref_logp if _needs_ref(self.loss_fn) else None)
            total = (1.0 - c) * sur
        if c != 0.0:
            td, m_td = self.td_loss_fn(*args, group_size=self.group_size,
                                       ref_logp=ref_logp if _needs_ref(self.td_loss_fn) else None)
            total = total + c * td
            m = dict(m, **{f"td/{k}": v for k, v in m_td.items()}) if c != 1.0 else m_td
        metrics = {f"loss/{k}": v for k, v in m.items()}
        metrics["entropy"] = _masked_mean(entropy, mask)
        metrics["response_length"] = jnp.mean(jnp.sum(mask, axis=1).astype(jnp.float32))
        metrics["reward"] = jnp.mean(batch["rewards"])
        if ref_logp is not None:
            log_ratio = ref_logp - _sg(logp)     # log pi_ref / pi_theta on the samples
            metrics["kl_ref_k1"] = _masked_mean(-log_ratio, mask)
            metrics["kl_ref_k3"] = _masked_mean(jnp.expm1(log_ratio) - log_ratio, mask)
        return total, metrics

    def with_td_weight(self, c: float) -> "GRPOObjective":
        return dataclasses.replace(self, td_weight=float(c))


def staleness_bias(objective: GRPOObjective, params, stale, fresh,
                   ref_params=None) -> dict[str, jax.Array]:
    """Staleness bias on the same prompts: H(θ, φ) − H(θ, θ), and surrogate vs total derivative.

    `stale` was generated by φ (the batch the learner trains on), `fresh` by θ itself. H is the
    surrogate gradient (the gradient of the loss; the sign changes neither norms nor cosines).
    Both are single-batch estimates, so the bias norm includes sampling noise.
    """
    def grad(batch, weight):
        obj = objective.with_td_weight(weight)
        extras = obj.prepare(batch, ref_params)
        return jax.grad(lambda p: obj(p, batch, extras)[0])(params)

    g_stale, g_fresh = grad(stale, 0.0), grad(fresh, 0.0)
    g_td = grad(stale, 1.0)
    diff = optax.tree.sub(g_stale, g_fresh)
    fresh_norm = optax.tree.norm(g_fresh)
    return {
        "bias/norm": optax.tree.norm(diff),
        "bias/rel": optax.tree.norm(diff) / jnp.maximum(fresh_norm, 1e-30),
        "bias/fresh_grad_norm": fresh_norm,
        "bias/cos_stale_fresh": tree_cosine(g_stale, g_fresh),
        "bias/cos_surrogate_td": tree_cosine(g_stale, g_td),
        "bias/cos_td_fresh": tree_cosine(g_td, g_fresh),
    }


@dataclasses.dataclass(frozen=True)
class SFTObjective:
    """Teacher-forced cross entropy on ``batch["tokens"]`` [B, L] (bos prompt answer eos), over
    the positions ``batch["mask"]`` [B, L−1] marks (the answer and its eos)."""

    graphdef: Any

    def prepare(self, batch, ref_params) -> dict:
        del batch, ref_params
        return {}

    def score(self, params, batch, *, entropy: bool = True):
        """(log π_θ of each target token [B, L−1], whether it is the argmax [B, L−1]); only the
        log-probs with `entropy=False` (the name is `GRPOObjective.score`'s: the second output is
        the metric-only side output)."""
        tokens = batch["tokens"]
        logits = models.forward(self.graphdef, params, tokens[:, :-1]).astype(jnp.float32)
        targets = tokens[:, 1:]
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[..., None],
                                   axis=-1)[..., 0]
        if not entropy:
            return logp
        return logp, (jnp.argmax(logits, -1) == targets).astype(jnp.float32)

    def __call__(self, params, batch, extras):
        return self.loss(*self.score(params, batch), batch, extras)

    def loss(self, logp, correct, batch, extras):
        """Mean negative log-likelihood over the marked positions, and accuracy metrics."""
        del extras
        mask = batch["mask"]
        denom = jnp.maximum(mask.sum(), 1.0)
        loss = -jnp.sum(logp * mask) / denom
        tok_acc = jnp.sum(correct * mask) / denom
        # Whole-answer exact match under teacher forcing.
        wrong = jnp.sum((1.0 - correct) * mask, axis=1)
        seq_acc = jnp.mean(wrong == 0)
        return loss, {"token_accuracy": tok_acc, "teacher_forced_exact": seq_acc}
