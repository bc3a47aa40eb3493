"""A whole (S, η, seed) grid of GRPO runs of the transformer as one compiled program.

The pipeline (`async_grpo.rl.pipeline`) exists for real asynchrony and throughput; this runner
exists for science: `make_population(config, comps, max_lag_cap=...)` returns
``train(cell, tables) -> (metrics {name: [T]}, final params, summary)``, one GRPO run as the
engine's scan over learner steps (`async_grpo.simulate.make_train`, the one engine: this module
supplies only the update h(θ, φ) and its metrics), and `compile_chunk` vmaps it over the cells
of a grid (chunks of cells, sized to a memory budget, compile once). It is the same algorithm as
the pipeline, from the same pieces:

* prompts: `RolloutSource.problems(step)` of the cell's seed, drawn on the host before the
  program runs (they do not depend on θ), so a cell sees exactly the pipeline's prompts;
* the behavior version of step t from the engine: `async_grpo.staleness.scheduled_lag` with the
  pipeline's key `staleness.step_key(seed, t)` (`bounded_async` has no schedule: use
  `random_uniform`), read from the engine's ring buffer of the last S_max + 1 snapshots;
* sampling: `async_grpo.sampling.sample` with the pipeline's key, fold_in(fold_in(key(seed), 2), t);
* rewards: the task's `token_reward`, equal to its Python reward (tasks without one, Countdown
  and GSM8K, are refused);
* the gradient: `async_grpo.rl.learner.gradient` of the config's objective (micro-batches
  included); the engine then applies the one optimizer update (`simulate.apply_update`, which
  the pipeline's learner applies too) with the config's optimizer, cosines and collapse rules,
  and records the drifts (`simulate.drift_metrics`). Metrics are logged in the pipeline's
  convention (update t at step t + 1, the engine's ``first_step=1``).

`tests/test_population.py` checks that a cell and `pipeline.run` with the `fixed` policy agree to
float tolerance over 24 steps. A cell holds the cell's θ, its optimizer state (2θ for Adam),
the cosine carries (2θ), θ_0 and the ring (S_max + 1)θ: about (S_max + 7) parameter copies,
plus the sampler's and learner's activations; `cell_bytes` estimates it (checked against XLA's
memory analysis) and `chunk_size` turns a memory budget into the number of cells per chunk.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from async_grpo import lr_control as lr_control_lib
from async_grpo import metric_names as mn
from async_grpo import models, sampling, simulate
from async_grpo import staleness as staleness_lib
from async_grpo.config import RunConfig
from async_grpo.rl.components import Components, make_optimizer
from async_grpo.rl.learner import gradient
from async_grpo.rl.rollout import RolloutSource

# The per-step curves kept by default (the sweep writes them).
CURVES = ("reward", "rollout/correct_frac", "rollout/malformed_frac", "loss/kl_behavior_k3",
          "loss/clip_frac", "loss/ess_frac", "update_norm", "grad_norm", "drift/within_cycle",
          "drift/cumulative", "cos/consecutive_grads", "entropy", "kl_ref_k3", "lag", "finite",
          "lr_scale")


@dataclasses.dataclass(frozen=True)
class Population:
    """A compiled-program description of a grid's runs (see the module docstring)."""

    train: Callable
    seeds: tuple
    max_lag_cap: int
    tables: dict               # per seed: prompts, lengths, targets for every step, stacked;
                               # "heldout": the held-out set's batches (with eval_every)
    eval_steps: Optional[np.ndarray] = None    # the steps of the in-program evaluations


def _prompt_tables(config: RunConfig, comps: Components, seeds: Sequence[int], steps: int,
                   token_reward) -> dict[str, np.ndarray]:
    """Every step's prompts (encoded) and reward targets, for each seed: [n_seeds, T, P, ...]."""
    rollouts = comps.source.rollouts
    out = []
    for seed in seeds:
        src = RolloutSource(rollouts, comps.task, prompts_per_step=config.rl.prompts_per_step,
                            seed=int(seed))
        toks, lens, tgts = [], [], []
        for t in range(steps):
            problems = src.problems(t)
            tk, ln = rollouts.encode_prompts(problems)
            toks.append(tk)
            lens.append(ln)
            tgts.append(token_reward.targets(problems, comps.max_new_tokens))
        width = max(tg[k].shape[-1] for tg in tgts for k in tg if tg[k].ndim == 2)
        targets = {k: np.stack([_pad_to(tg[k], width) for tg in tgts]) for k in tgts[0]}
        out.append(dict(prompt_tokens=np.stack(toks), prompt_lengths=np.stack(lens), **targets))
    return {k: np.stack([o[k] for o in out]) for k in out[0]}


def _pad_to(x, width):
    if x.ndim < 2 or x.shape[-1] == width:
        return x
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])])


def _heldout_table(config: RunConfig, comps: Components, token_reward) -> dict[str, np.ndarray]:
    """The evaluator's held-out problems as [n_batches, B] arrays (B = eval.batch_size; the last
    batch padded with the first prompt and masked out), encoded as `rollout.evaluate` does."""
    problems = comps.evaluator.problems
    b = int(config.eval.batch_size)
    n_batches = -(-len(problems) // b)
    padded = problems + [problems[0]] * (n_batches * b - len(problems))
    toks, lens = comps.tokenizer.batch_encode([p.prompt for p in padded],
                                              max_len=comps.max_prompt_len, add_bos=True)
    tgts = token_reward.targets(padded, comps.max_new_tokens)
    rows = dict(prompt_tokens=np.asarray(toks), prompt_lengths=np.asarray(lens),
                real=np.arange(len(padded)) < len(problems), **tgts)
    return {k: v.reshape((n_batches, b) + v.shape[1:]) for k, v in rows.items()}


def _heldout_evaluate(config: RunConfig, comps: Components, token_reward) -> Callable:
    """evaluate(θ, ctx) -> {heldout/accuracy, heldout/malformed_frac}: the pipeline's evaluator
    (`rollout.evaluate_heldout`: greedy, or one sample at the RL temperature with the eval key)
    inside the program, scored by the task's token reward (equal to its Python reward)."""
    ec, tok = config.eval, comps.tokenizer
    temperature = 0.0 if ec.greedy else config.rl.temperature
    eval_key = jax.random.key(int(ec.seed))

    def evaluate(theta, ctx):
        def one_batch(xs):
            i, tab = xs
            sb = sampling.sample(comps.graphdef, theta, tab["prompt_tokens"],
                                 tab["prompt_lengths"], jax.random.fold_in(eval_key, i),
                                 max_new_tokens=comps.max_new_tokens, eos_id=tok.eos_id,
                                 pad_id=tok.pad_id, temperature=temperature)
            targets = {k: v for k, v in tab.items()
                       if k not in ("prompt_tokens", "prompt_lengths", "real")}
            reward, malformed = token_reward.reward(sb.response_tokens, sb.response_lengths,
                                                    targets)
            real = tab["real"]
            return jnp.sum(jnp.where(real, reward > 0, False)), jnp.sum(real & malformed)

        tab = ctx.data["heldout"]
        n_batches = tab["real"].shape[0]
        correct, malformed = jax.lax.map(one_batch, (jnp.arange(n_batches), tab))
        n = jnp.sum(tab["real"])
        return {mn.HELDOUT_ACC: jnp.sum(correct) / n, mn.HELDOUT_MALFORMED: jnp.sum(malformed) / n}

    return evaluate


def make_population(config: RunConfig, comps: Components, *, seeds: Sequence[int],
                    max_lag_cap: int, keep: Optional[Sequence[str]] = CURVES,
                    lr_control: Optional[lr_control_lib.Params] = None,
                    eval_every: int = 0) -> Population:
    """The runner for cells whose seeds are among `seeds` and whose S ≤ `max_lag_cap`.

    A cell is {"seed": s, "max_lag": S, "lr": η}. `keep` limits the per-step metrics returned
    (None: all of the learner's, the drifts, the lag and the rollout statistics). `lr_control`:
    the staleness-aware learning-rate controller (`async_grpo.lr_control`) chained after the
    optimizer, with the cell's S and the measured drifts of each step (the engine knows the next
    step's behavior snapshot, so the lookahead mode runs too); its scale c_t is the metric
    "lr_scale" (the effective η is c_t·η). `eval_every` = k ≥ 1: the held-out evaluation of the
    pipeline's evaluator (`heldout/accuracy`, `heldout/malformed_frac`) inside the program at
    steps 0, k, …, T (`Population.eval_steps`; k must divide T), returned in the summary's
    "evals" ({name: [T / k + 1]})."""
    if lr_control is not None:
        lr_control_lib.validate(lr_control, max_lag_cap)
    rc, st = config.rl, config.staleness
    staleness_lib.check_policy_name(st.policy, scheduled_only=True)
    token_reward = comps.task.token_reward(comps.tokenizer)
    if token_reward is None:
        raise ValueError(f"task.name={config.task.name!r} has no reward on tokens, so it cannot "
                         "run inside a compiled program; the population runner supports "
                         "addition, multiplication, reverse and sort (the pipeline runs any "
                         "task).")
    if comps.source is None:
        raise ValueError("the population runner needs GRPO components (components.build_grpo)")
    seeds = tuple(int(s) for s in seeds)
    tables = _prompt_tables(config, comps, seeds, rc.steps, token_reward)
    evaluate = None
    if eval_every:
        tables["heldout"] = _heldout_table(config, comps, token_reward)
        evaluate = _heldout_evaluate(config, comps, token_reward)
    theta0 = comps.init_params
    engine_train = simulate.make_train(
        _grpo_update(config, comps, token_reward), lambda key, cell: theta0,
        lambda cell: make_optimizer(rc.optimizer, rc.steps,
                                    lr=jnp.asarray(cell["lr"], jnp.float32),
                                    mu_dtype=config.precision.opt_state_dtype),
        num_steps=rc.steps, staleness=st.policy, max_lag_cap=max_lag_cap,
        geometric_p=st.geometric_p, collapse=config.collapse,
        lr_control=None if lr_control is None else (lambda cell: lr_control),
        track_cosines=config.diagnostics.cosines, first_step=1, keep=keep, return_params=True,
        evaluate=evaluate, eval_every=eval_every)

    def train(cell, tables):
        metrics, summary, params = engine_train(cell, tables)
        return metrics, params, summary

    return Population(train, seeds, max_lag_cap, tables, engine_train.eval_steps)


def _grpo_update(config: RunConfig, comps: Components, token_reward) -> Callable:
    """The engine's update h(θ, φ) for GRPO: sample the step's prompts from φ (the pipeline's
    key for step t of the cell's seed), score them with the task's token reward, and return the
    learner's gradient of the objective at θ with its metrics and the rollout statistics."""
    rc, tok, g = config.rl, comps.tokenizer, config.rl.group_size
    objective = comps.objective
    use_ref = rc.log_ref_kl or objective.needs_ref

    def update(theta, phi, key, ctx):
        del key            # the sampling key is the pipeline's, from the seed and the step
        t, version = ctx.step, ctx.step - ctx.lag
        tab = jax.tree.map(lambda x: x[ctx.cell["seed_index"]],
                           {k: v for k, v in ctx.data.items() if k != "heldout"})
        seed_key = jax.random.key(jnp.asarray(ctx.cell["seed"], jnp.uint32))
        sb = sampling.sample(
            comps.graphdef, phi, tab["prompt_tokens"][t], tab["prompt_lengths"][t],
            jax.random.fold_in(jax.random.fold_in(seed_key, RolloutSource.TRAIN_STREAM), t),
            max_new_tokens=comps.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id,
            temperature=rc.temperature, top_k=rc.top_k or None, top_p=rc.top_p or None,
            params_version=version, num_samples=g)
        targets = {k: jnp.repeat(v[t], g, axis=0) for k, v in tab.items()
                   if k not in ("prompt_tokens", "prompt_lengths")}
        rewards, malformed = token_reward.reward(sb.response_tokens, sb.response_lengths, targets)
        batch = {"prompt_tokens": sb.prompt_tokens, "prompt_lengths": sb.prompt_lengths,
                 "response_tokens": sb.response_tokens, "response_mask": sb.response_mask,
                 "behavior_logp": sb.behavior_logp, "rewards": rewards}
        (loss, m), grads = gradient(objective, theta, batch, ctx.theta0 if use_ref else None,
                                    config.learner.micro_batches)
        grouped = rewards.reshape(-1, g)
        return grads, dict(m, loss=loss, **{
            "rollout/correct_frac": jnp.mean(rewards > 0),
            "rollout/malformed_frac": jnp.mean(malformed),
            "rollout/response_length": jnp.mean(sb.response_lengths.astype(jnp.float32)),
            "rollout/truncated_frac": jnp.mean(~sb.eos_reached),
            "rollout/zero_signal_groups": jnp.mean(grouped.max(1) == grouped.min(1)),
            "rollout/pass_at_group": jnp.mean(grouped.max(1) > 0)})

    return update


def make_cells(pop: Population, *, lrs: Sequence[float], lags: Sequence[int],
               seeds: Optional[Sequence[int]] = None) -> dict[str, np.ndarray]:
    """The (S, η, seed) product, S slowest and seed fastest, with each cell's seed index."""
    seeds = pop.seeds if seeds is None else tuple(seeds)
    unknown = sorted(set(seeds) - set(pop.seeds))
    if unknown:
        raise ValueError(f"seeds {unknown} have no prompt tables; the population has "
                         f"{list(pop.seeds)}.")
    cells = simulate.make_cells(max_lag=list(lags), lr=list(lrs), seed=list(seeds))
    for s in cells["max_lag"].tolist():
        if not 0 <= s <= pop.max_lag_cap:
            raise ValueError(f"S = {s}: must be in [0, S_max = {pop.max_lag_cap}].")
    for lr in cells["lr"].tolist():
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rate {lr!r}: must be finite and > 0.")
    cells["seed_index"] = np.asarray([pop.seeds.index(int(s)) for s in cells["seed"]], np.int32)
    return cells


def cell_bytes(config: RunConfig, comps: Components, max_lag_cap: int, eval_rows: int = 0) -> int:
    """An estimate of one cell's device memory in bytes (float32), the number that sizes a chunk.

    Two terms. Parameters: (S_max + 7) copies (the ring of S_max + 1 snapshots, θ, θ_0, Adam's two
    moments, the cosine carries); this term is exact. Activations: per batch row and position,
    n_layers·(10·d_model + 5·mlp_dim + 2·n_heads·L) + 6·vocab floats (the learner's saved forward
    and backward buffers, the logits and their softmax and gradients, the sampler's cache),
    fitted to XLA's own count. `tests/test_population.py` holds it within [0.7, 1.5]× of XLA's
    compiled memory analysis (temporaries + outputs) on CPU for two batch sizes and S_max; other
    backends fuse differently, so leave the budget some headroom. `eval_rows`: the batch of an
    in-program held-out evaluation (counted, conservatively, as if it were a training batch
    when it is the larger).
    """
    n = models.param_count(comps.init_params)
    cfg = comps.model_config
    rows = max(config.rl.prompts_per_step * config.rl.group_size, int(eval_rows))
    length = comps.max_prompt_len + comps.max_new_tokens
    per_position = (cfg.n_layers * (10 * cfg.d_model + 5 * cfg.mlp_dim + 2 * cfg.n_heads * length)
                    + 6 * cfg.vocab_size)
    return 4 * ((max_lag_cap + 7) * n + rows * length * per_position)


def chunk_size(config: RunConfig, comps: Components, max_lag_cap: int, budget_bytes: float,
               num_cells: int, eval_rows: int = 0) -> int:
    """Cells per compiled chunk within `budget_bytes` (at least 1)."""
    per = cell_bytes(config, comps, max_lag_cap, eval_rows)
    return int(max(1, min(num_cells, budget_bytes // per)))


BATCHING = ("vmap", "map")


def compile_chunk(pop: Population, batching: str = "vmap") -> Callable:
    """One jitted program over a chunk of cells (the tables are an argument, not a constant).

    ``"vmap"`` batches the cells' computations (what an accelerator wants); the batched matmuls
    round differently from a cell run alone, and since sampling is discontinuous in θ a flipped
    token eventually gives the cell other draws. ``"map"`` runs the cells one after another
    inside the program (`lax.map`): each cell is then bit-identical to the same run through the
    pipeline (`tests/test_population.py`), at the cost of the batching.
    """
    if batching not in BATCHING:
        raise ValueError(f"batching={batching!r}: must be one of {list(BATCHING)}")
    if batching == "vmap":
        return jax.jit(jax.vmap(pop.train, in_axes=(0, None)))
    return jax.jit(lambda cells, tables: jax.lax.map(lambda c: pop.train(c, tables), cells))


def run_chunk(fn, pop: Population, cells: Mapping[str, np.ndarray]):
    """-> numpy (metrics [C, T], final params [C, ...], summary [C])."""
    arrays = {"seed": jnp.asarray(cells["seed"], jnp.uint32),
              "seed_index": jnp.asarray(cells["seed_index"], jnp.int32),
              "max_lag": jnp.asarray(cells["max_lag"], jnp.int32),
              "lr": jnp.asarray(cells["lr"], jnp.float32)}
    metrics, params, summary = fn(arrays, pop.tables)
    return (jax.tree.map(np.asarray, metrics), params, jax.tree.map(np.asarray, summary))

