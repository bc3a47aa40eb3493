"""Shared test helpers: a tiny GRPO config, a random "SFT checkpoint", dense rewards, runs."""

from __future__ import annotations

import os

import jax
import numpy as np

from async_grpo import config as config_lib
from async_grpo import metrics as metrics_lib
from async_grpo.rl import components, pipeline
from experiments.configs import addition

# A tiny, fast version of the addition config (2-digit numbers, tiny model, a few steps).
TINY = {
    "task.kwargs.num_digits": 2, "model.preset": "tiny", "model.max_seq_len": 24,
    "sft.steps": 12, "sft.batch_size": 16, "sft.eval_every": 6, "sft.optimizer.warmup_steps": 2,
    "eval.num_problems": 16, "eval.batch_size": 16, "rl.steps": 3, "rl.prompts_per_step": 4,
    "rl.group_size": 4, "rl.eval_every": 2, "rl.checkpoint_every": 2,
    "rl.optimizer.warmup_steps": 1, "rl.loss_kwargs.kl_coef": 0.04,
}
# What the pipeline tests add: no evaluation or checkpoints, a larger learning rate.
PIPELINE = {"rl.eval_every": 0, "rl.steps": 4, "rl.checkpoint_every": 0,
            "rl.optimizer.lr": 3e-3}


def set_keys(c, overrides):
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def tiny_config_dict(**overrides):
    """The addition ConfigDict with TINY and `overrides` ("a.b": value) applied."""
    return set_keys(addition.get_config(), {**TINY, **overrides})


def tiny_config(**overrides) -> config_lib.RunConfig:
    return config_lib.RunConfig.from_config(tiny_config_dict(**overrides))


def pipeline_config(tmp_path, **overrides) -> config_lib.RunConfig:
    """A tiny GRPO config starting from `tmp_path/init` (see `random_init`)."""
    return tiny_config(**{"init_from": str(tmp_path / "init"), **PIPELINE, **overrides})


def random_init(path) -> str:
    """A random tiny model saved as the "SFT checkpoint" (matches TINY's model)."""
    return components.save_random_init(tiny_config(), str(path))


def dense_rewards(comps):
    """Replaces the task reward by a dense one (fraction of '1' characters) so that a random
    model gets a nonzero GRPO signal."""
    score_batch = comps.task.score_batch

    def scored(problems, responses):
        _, stats = score_batch(problems, responses)
        dense = np.asarray([r.count("1") / max(len(r), 1) for r in responses], np.float32)
        return dense, stats

    comps.task.score_batch = scored
    return comps


def run(config, workdir, wrap=None, **kwargs):
    """pipeline.run with dense rewards; `wrap(comps)` may alter the components first.
    -> (RunResult, components, metric records)."""
    comps = dense_rewards(components.build_grpo(config))
    if wrap is not None:
        wrap(comps)
    result = pipeline.run(config, comps, str(workdir), **kwargs)
    return result, comps, metrics_lib.read_metrics(str(workdir))


def wrap_generate(comps, fn):
    """Replaces `comps.source.generate` by `fn(original, params, version, step)`."""
    original = comps.source.generate
    comps.source.generate = lambda p, v, s: fn(original, p, v, s)


def trees_equal(a, b) -> bool:
    a, b = jax.device_get(a), jax.device_get(b)
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))


def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
