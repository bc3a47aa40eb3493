"""Builds the task, tokenizer, model and optimizer that the SFT and GRPO binaries share."""

from __future__ import annotations

from typing import Any

import ml_collections
import optax

from async_grpo import tasks as tasks_lib
from async_grpo.tasks import CharTokenizer


def to_dict(cfg: Any) -> dict:
    if isinstance(cfg, ml_collections.ConfigDict):
        return cfg.to_dict()
    return dict(cfg or {})


def build_task(config) -> tasks_lib.Task:
    return tasks_lib.get_task(config.task.name, **to_dict(config.task.get("kwargs")))


def build_tokenizer(config) -> CharTokenizer:
    return CharTokenizer()


def prompt_budget(task: tasks_lib.Task) -> int:
    """Prompt tokens: bos + prompt characters."""
    return 1 + task.max_prompt_chars


def response_budget(config, task: tasks_lib.Task) -> int:
    """max_new_tokens: config value, or the task's longest reference answer + eos (+ slack)."""
    n = config.get("max_new_tokens", 0) or 0
    return int(n) if n > 0 else task.max_answer_chars + 2


def build_model_config(config, tokenizer: CharTokenizer, *, min_context: int = 0):
    """models.get_config(preset, vocab_size=tokenizer size, max_seq_len=..., **overrides)."""
    from async_grpo import models  # pylint: disable=import-outside-toplevel
    overrides = to_dict(config.model.get("overrides"))
    overrides.setdefault("vocab_size", tokenizer.vocab_size)
    if config.model.get("max_seq_len", 0):
        overrides.setdefault("max_seq_len", int(config.model.max_seq_len))
    presets = getattr(models, "PRESETS", None)
    if presets is not None and config.model.preset not in presets:
        raise ValueError(f"unknown model preset {config.model.preset!r}; valid presets: "
                         f"{', '.join(sorted(presets))}")
    cfg = models.get_config(config.model.preset, **overrides)
    if cfg.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"model vocab_size={cfg.vocab_size} is smaller than the tokenizer's "
                         f"{tokenizer.vocab_size}")
    if min_context and cfg.max_seq_len < min_context:
        raise ValueError(f"model context max_seq_len={cfg.max_seq_len} is shorter than the "
                         f"{min_context} tokens needed (prompt + response); raise "
                         "config.model.max_seq_len")
    return cfg


def check_context(model_cfg, prompt_len: int, max_new_tokens: int, *, what: str = "prompt"):
    if prompt_len + max_new_tokens > model_cfg.max_seq_len:
        raise ValueError(
            f"{what} of {prompt_len} tokens + max_new_tokens={max_new_tokens} exceeds the model "
            f"context max_seq_len={model_cfg.max_seq_len}")


def build_optimizer(opt_cfg, total_steps: int) -> optax.GradientTransformation:
    """AdamW with linear warmup then cosine (or constant) decay, and global-norm clipping."""
    lr = float(opt_cfg.lr)
    warmup = int(opt_cfg.get("warmup_steps", 0))
    decay = opt_cfg.get("schedule", "cosine")
    if decay == "cosine":
        sched = optax.warmup_cosine_decay_schedule(
            0.0, lr, max(warmup, 1), max(total_steps, warmup + 1),
            end_value=lr * float(opt_cfg.get("end_lr_frac", 0.1)))
    elif decay == "constant":
        sched = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)],
            [max(warmup, 1)])
    else:
        raise ValueError(f"unknown lr schedule {decay!r}; valid: cosine, constant")
    chain = []
    if opt_cfg.get("grad_clip", 0):
        chain.append(optax.clip_by_global_norm(float(opt_cfg.grad_clip)))
    chain.append(optax.adamw(sched, b1=float(opt_cfg.get("b1", 0.9)),
                             b2=float(opt_cfg.get("b2", 0.99)),
                             weight_decay=float(opt_cfg.get("weight_decay", 0.0))))
    return optax.chain(*chain)
