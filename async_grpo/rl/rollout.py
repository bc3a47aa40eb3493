"""Rollout generation (sampling + host-side rewards), the data schedule, held-out evaluation.

* `Rollouts.generate_batch(params, version, key, problems)`: samples `group_size` responses per
  problem with the KV-cache sampler and scores them on the host. It only reads `params` (never
  the optimizer) and tags the `RolloutBatch` with the `version` of the parameters that produced
  it. Each problem is repeated `group_size` times, contiguously: rows [g*G, (g+1)*G) are group g.
  The batch's `behavior_logp` is `SampleBatch.behavior_logp`: the log-prob of the distribution
  each token was drawn from, i.e. of the top-k/top-p TRUNCATED, renormalised softmax(z/τ) when
  truncation is on (`sampling` module docstring); that is what the losses receive as π_b.
* Log-prob parity (`parity=True`): the same parameter snapshot re-scores the batch teacher-forced
  (`sampling.score_responses`, the learner's function) and `sampling.logprob_parity` compares it
  with the sampler's untruncated `model_logp`: stats `parity/{mean_abs, max_abs,
  ratio_out_frac}` at zero lag, plus `parity/behavior_gap` = mean(log μ − log π_τ) = the mean
  −log(kept mass) of truncation (0 without top-k/top-p).
* `RolloutSource`: which prompts and sampling key each learner step uses. All randomness derives
  from (seed, step), so any version can generate any step's batch deterministically: this is the
  `generate(params, version, step)` the generator thread calls, and `fresh(params, step)` draws
  an on-policy batch of the same prompts with its own key (the staleness-bias diagnostic).
  With several processes each generates its share of the prompts.
* `Evaluator`: held-out accuracy (greedy and/or sampled).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from async_grpo import distributed, sampling
from async_grpo.tasks import TRAIN, CharTokenizer, Problem, Task


@dataclasses.dataclass
class RolloutBatch:
    """A generated, rewarded batch. `arrays` is the pytree `train_step` consumes."""
    arrays: dict[str, Any]          # prompt_tokens, prompt_lengths, response_tokens, response_mask,
                                    # behavior_logp, rewards
    version: int                    # params version that generated it (lag = step - version)
    stats: dict[str, float]         # host-side rollout statistics (reward, lengths, malformed, ...)
    problems: list[Problem]
    responses: list[str]


class Rollouts:
    """Samples `group_size` responses per problem with the policy and scores them with the task."""

    def __init__(self, graphdef, task: Task, tokenizer: CharTokenizer, *, group_size: int,
                 max_prompt_len: int, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None):
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 (GRPO normalizes rewards within a group of "
                             f"responses to the same prompt), got {group_size}")
        self.graphdef = graphdef
        self.task = task
        self.tokenizer = tokenizer
        self.group_size = group_size
        self.max_prompt_len = max_prompt_len
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p

    def encode_prompts(self, problems: Sequence[Problem]):
        texts = [p.prompt for p in problems]
        try:
            return self.tokenizer.batch_encode(texts, max_len=self.max_prompt_len, add_bos=True)
        except ValueError as e:
            raise ValueError(f"prompt too long for the configured prompt budget: {e}") from e

    def generate_batch(self, params, version: int, key: jax.Array,
                       problems: Sequence[Problem], *, parity: bool = False) -> RolloutBatch:
        """Samples, decodes and rewards one batch; with `parity` also the `parity/*` stats."""
        g = self.group_size
        prompt_tokens, prompt_lengths = self.encode_prompts(problems)
        sb = sampling.sample(
            self.graphdef, params, jnp.asarray(prompt_tokens), jnp.asarray(prompt_lengths), key,
            max_new_tokens=self.max_new_tokens, eos_id=self.tokenizer.eos_id,
            pad_id=self.tokenizer.pad_id, temperature=self.temperature, top_k=self.top_k,
            top_p=self.top_p, params_version=version, num_samples=g)
        resp_tokens, resp_lengths, eos = jax.device_get(
            (sb.response_tokens, sb.response_lengths, sb.eos_reached))
        responses = self.tokenizer.batch_decode(resp_tokens, resp_lengths)
        repeated = [p for p in problems for _ in range(g)]
        rewards, score_stats = self.task.score_batch(repeated, responses)
        grouped = rewards.reshape(-1, g)
        stats = {
            "reward": float(rewards.mean()),
            "correct_frac": score_stats["correct_frac"],
            "malformed_frac": score_stats["malformed_frac"],
            "response_length": float(np.mean(resp_lengths)),
            "truncated_frac": float(np.mean(~eos)),
            # Groups whose rewards are all equal carry no GRPO signal.
            "zero_signal_groups": float(np.mean(grouped.max(1) == grouped.min(1))),
            "pass_at_group": float(np.mean(grouped.max(1) > 0)),
        }
        if parity:
            par = jax.device_get(logprob_parity_of(self.graphdef, params, sb,
                                                   jnp.float32(self.temperature)))
            stats.update({f"parity/{k}": float(v) for k, v in par.items() if k != "tokens"})
        arrays = {
            "prompt_tokens": sb.prompt_tokens,
            "prompt_lengths": sb.prompt_lengths,
            "response_tokens": sb.response_tokens,
            "response_mask": sb.response_mask,
            "behavior_logp": sb.behavior_logp,
            "rewards": jnp.asarray(rewards),
        }
        return RolloutBatch(arrays=arrays, version=int(version), stats=stats,
                            problems=list(problems), responses=responses)


@functools.partial(jax.jit, static_argnums=0)
def logprob_parity_of(graphdef, params, sb: sampling.SampleBatch, temperature) -> dict:
    """`sampling.logprob_parity` of a `SampleBatch` against the teacher-forced log-probs of the
    same `params` at `temperature` (> 0), plus `behavior_gap` (see the module docstring)."""
    logp = sampling.score_responses(graphdef, params, sb.prompt_tokens, sb.prompt_lengths,
                                    sb.response_tokens, sb.response_mask, temperature=temperature)
    out = sampling.logprob_parity(sb.model_logp, logp, sb.response_mask)
    mask = sb.response_mask
    out["behavior_gap"] = (jnp.sum((sb.behavior_logp - sb.model_logp) * mask) /
                           jnp.maximum(jnp.sum(mask), 1.0))
    return out


class RolloutSource:
    """The data schedule of a GRPO run: prompts and sampling keys as functions of the step."""

    # Key streams folded into the run key: training samples and fresh (on-policy) samples.
    TRAIN_STREAM, FRESH_STREAM = 2, 3

    def __init__(self, rollouts: Rollouts, task: Task, *, prompts_per_step: int, seed: int,
                 parity_every: int = 0):
        if not isinstance(parity_every, int) or parity_every < 0:
            raise ValueError(f"parity_every={parity_every!r} must be an int >= 0 (0: off)")
        self.rollouts, self.task = rollouts, task
        self.prompts_per_step, self.seed = prompts_per_step, seed
        self.parity_every = parity_every
        self.base_key = jax.random.key(seed)

    def problems(self, step: int) -> list[Problem]:
        """The prompts of learner step `step` (all processes' shares)."""
        rng = np.random.default_rng([self.seed, 1, step])
        return self.task.sample_batch(rng, self.prompts_per_step, TRAIN)

    def _batch(self, params, version: int, step: int, stream: int,
               parity: bool = False) -> RolloutBatch:
        key = jax.random.fold_in(jax.random.fold_in(self.base_key, stream), step)
        problems = self.problems(step)
        if jax.process_count() > 1:
            problems = distributed.process_share(problems)
            key = jax.random.fold_in(key, jax.process_index())
        return self.rollouts.generate_batch(params, version, key, problems, parity=parity)

    def parity_due(self, step: int) -> bool:
        """Whether batch `step` carries the `parity/*` stats (every `parity_every` steps)."""
        return bool(self.parity_every) and step % self.parity_every == 0

    def generate(self, params, version: int, step: int) -> RolloutBatch:
        """Batch `step` generated by θ_version (this process's share of the prompts); on parity
        steps the same θ_version also re-scores it (`parity/*` stats)."""
        return self._batch(params, version, step, self.TRAIN_STREAM, self.parity_due(step))

    def fresh(self, params, step: int) -> RolloutBatch:
        """An on-policy batch of step `step`'s prompts with its own key (never the training
        sample); `params` is θ_step."""
        return self._batch(params, step, step, self.FRESH_STREAM)


def evaluate(graphdef, params, task: Task, tokenizer: CharTokenizer,
             problems: Sequence[Problem], *, max_prompt_len: int, max_new_tokens: int,
             batch_size: int = 256, greedy: bool = True, temperature: float = 1.0,
             key: jax.Array | None = None) -> dict[str, float]:
    """Accuracy of the policy on `problems` (greedy decoding unless greedy=False)."""
    key = jax.random.key(0) if key is None else key
    correct, malformed, lengths = 0.0, 0.0, []
    n = len(problems)
    for i, start in enumerate(range(0, n, batch_size)):
        chunk = list(problems[start:start + batch_size])
        pad = batch_size - len(chunk)      # fixed shapes: one compilation for every chunk
        texts = [p.prompt for p in chunk] + [chunk[0].prompt] * pad
        toks, lens = tokenizer.batch_encode(texts, max_len=max_prompt_len, add_bos=True)
        sb = sampling.sample(
            graphdef, params, jnp.asarray(toks), jnp.asarray(lens), jax.random.fold_in(key, i),
            max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
            temperature=0.0 if greedy else temperature)
        rt, rl = jax.device_get((sb.response_tokens, sb.response_lengths))
        responses = tokenizer.batch_decode(rt[:len(chunk)], rl[:len(chunk)])
        _, st = task.score_batch(chunk, responses)
        correct += st["correct_frac"] * len(chunk)
        malformed += st["malformed_frac"] * len(chunk)
        lengths.extend(np.asarray(rl[:len(chunk)]).tolist())
    return {"accuracy": correct / max(n, 1), "malformed_frac": malformed / max(n, 1),
            "response_length": float(np.mean(lengths)) if lengths else 0.0}


def evaluate_heldout(eval_config, graphdef, params, task: Task, tokenizer: CharTokenizer,
                     problems: Sequence[Problem], *, max_prompt_len: int, max_new_tokens: int,
                     temperature: float = 1.0) -> dict[str, float]:
    """Held-out metrics as `eval_config` (`async_grpo.config.EvalConfig`) asks: "heldout/<k>"
    with greedy decoding if `greedy` (else one sample at `temperature`), and
    "heldout_sampled/<k>" (one sample per problem at `temperature`, fixed key) if `sampled`."""
    ec = eval_config
    kw = dict(max_prompt_len=max_prompt_len, max_new_tokens=max_new_tokens,
              batch_size=int(ec.batch_size), temperature=temperature,
              key=jax.random.key(int(ec.seed)))
    out = {f"heldout/{k}": v for k, v in evaluate(
        graphdef, params, task, tokenizer, problems, greedy=bool(ec.greedy), **kw).items()}
    if ec.sampled and ec.greedy:
        out.update({f"heldout_sampled/{k}": v for k, v in evaluate(
            graphdef, params, task, tokenizer, problems, greedy=False, **kw).items()})
    return out


class Evaluator:
    """`evaluator(params)` -> the held-out metrics of `evaluate_heldout` on a fixed set."""

    def __init__(self, eval_config, graphdef, task: Task, tokenizer: CharTokenizer,
                 problems: Sequence[Problem], *, max_prompt_len: int, max_new_tokens: int,
                 temperature: float):
        self.eval_config, self.graphdef = eval_config, graphdef
        self.task, self.tokenizer = task, tokenizer
        self.problems = list(problems)
        self.max_prompt_len, self.max_new_tokens = max_prompt_len, max_new_tokens
        self.temperature = temperature

    def __call__(self, params) -> dict[str, float]:
        return evaluate_heldout(self.eval_config, self.graphdef, params, self.task, self.tokenizer,
                                self.problems, max_prompt_len=self.max_prompt_len,
                                max_new_tokens=self.max_new_tokens, temperature=self.temperature)
