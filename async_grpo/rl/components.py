"""The explicit pieces of a run, built once from a `RunConfig`.

`build_grpo(config)` returns `Components`: the task, tokenizer and model (graphdef + the initial
params θ_0 from the SFT checkpoint, which is also the KL reference), the optimizer, the objective
(`objectives.GRPOObjective` with the configured loss and gradient mode), the rollout source (what
the generator thread calls) and the evaluator. `build_sft(config)` builds the same pieces for the
supervised warm start (θ_0 a fresh init). Every piece is a plain attribute: a test or a user may
replace any of them (e.g. a different reward in `task`, or a wrapped `source.generate`) before
handing the components to `async_grpo.rl.pipeline.run`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import optax

from async_grpo import checkpoint as ckpt_lib
from async_grpo import losses, models
from async_grpo import tasks as tasks_lib
from async_grpo.config import OptimizerConfig, RunConfig
from async_grpo.rl.objectives import GRPOObjective, SFTObjective
from async_grpo.rl.rollout import Evaluator, Rollouts, RolloutSource
from async_grpo.tasks import HELDOUT, CharTokenizer, HFTokenizer


@dataclasses.dataclass
class Components:
    """What a run is made of (see the module docstring)."""

    config: RunConfig
    task: tasks_lib.Task
    tokenizer: CharTokenizer | HFTokenizer
    model_config: models.LlamaConfig
    graphdef: Any
    init_params: Any
    optimizer: optax.GradientTransformation
    objective: Any
    evaluator: Evaluator
    max_prompt_len: int
    max_new_tokens: int
    source: RolloutSource | None = None      # GRPO only
    init_dir: str = ""                       # GRPO: the SFT checkpoint directory


def make_optimizer(opt: OptimizerConfig, total_steps: int,
                   lr=None, mu_dtype: Any = "") -> optax.GradientTransformation:
    """AdamW (or SGD with heavy-ball momentum β1, `opt.name`) with linear warm-up then cosine (or
    constant) decay, and global-norm clipping.

    `lr` (optional, may be a traced scalar: one grid cell's η) replaces `opt.lr`; `mu_dtype`
    ('' or None = the parameters' dtype; a name or a jnp dtype) stores Adam's first moment
    (`precision.opt_state_dtype`)."""
    # A NumPy dtype is falsy (len 0), so `mu_dtype or None` would drop a jnp dtype: name it.
    mu_dtype = None if mu_dtype in ("", None) else models.dtype_name(mu_dtype, "mu_dtype")
    lr = opt.lr if lr is None else lr
    if opt.schedule == "cosine":
        # warm-up 0 means none: optax's warmup_cosine_decay with 0 warm-up steps starts at peak.
        sched = optax.warmup_cosine_decay_schedule(
            0.0, lr, opt.warmup_steps, max(total_steps, opt.warmup_steps + 1),
            end_value=lr * opt.end_lr_frac)
    elif opt.warmup_steps == 0:         # no warm-up: the first step already uses lr
        sched = optax.constant_schedule(lr)
    else:
        sched = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, opt.warmup_steps), optax.constant_schedule(lr)],
            [opt.warmup_steps])
    chain = [optax.clip_by_global_norm(opt.grad_clip)] if opt.grad_clip else []
    if opt.name == "sgd":
        chain.append(optax.sgd(sched, momentum=opt.b1 or None,
                               accumulator_dtype=mu_dtype))
    else:
        chain.append(optax.adamw(sched, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                                 mu_dtype=mu_dtype))
    return optax.chain(*chain)


def make_tokenizer(config: RunConfig) -> CharTokenizer | HFTokenizer:
    """model.tokenizer_path's (or model.hf_path's) Hugging Face tokenizer, else characters."""
    return tasks_lib.load_tokenizer(config.model.resolved_tokenizer_path())


def _task_and_budgets(config: RunConfig, tokenizer=None):
    """(task, max prompt tokens, max new tokens). With the character tokenizer a token is a
    character; with an HF tokenizer a file-based task's prompts and answers are encoded to measure
    them, and a procedural task's (ASCII) text is bounded by one token per character."""
    tokenizer = make_tokenizer(config) if tokenizer is None else tokenizer
    try:
        task = tasks_lib.get_task(config.task.name, **config.task.task_kwargs())
    except ValueError as e:
        raise ValueError(f"task.kwargs={config.task.task_kwargs()!r}: {e}") from None
    task = tasks_lib.format_task(task, tokenizer, config.task.prompt_format)
    max_prompt = 1 + task.max_prompt_chars                 # bos + prompt characters
    answer = task.max_answer_chars
    if not isinstance(tokenizer, CharTokenizer) and hasattr(task, "pool"):
        problems = task.pool(tasks_lib.TRAIN) + task.pool(HELDOUT)
        max_prompt = max(len(tokenizer.encode(p.prompt, add_bos=True)) for p in problems)
        answer = max(len(tokenizer.encode(p.answer)) for p in problems)
    max_new = config.max_new_tokens or answer + 2
    return task, max_prompt, max_new


def _model_config(config: RunConfig, tokenizer, needed: int):
    overrides = dict(config.model.overrides)
    pc = config.precision
    if config.model.hf_path:
        try:
            cfg = models.config_from_hf(models.hf.read_config(config.model.hf_path),
                                        dtype=pc.compute_dtype, param_dtype=pc.param_dtype)
        except ValueError as e:
            raise ValueError(f"model.hf_path={config.model.hf_path!r}: {e}") from None
        if config.model.max_seq_len:
            overrides["max_seq_len"] = config.model.max_seq_len
        cfg = dataclasses.replace(cfg, **overrides)
    else:
        overrides.update(dtype=pc.compute_dtype, param_dtype=pc.param_dtype)
        overrides.setdefault("vocab_size", tokenizer.vocab_size)
        if config.model.max_seq_len:
            overrides.setdefault("max_seq_len", config.model.max_seq_len)
        try:
            cfg = models.get_config(config.model.preset, **overrides)
        except (TypeError, ValueError) as e:
            raise ValueError(f"model.overrides={dict(config.model.overrides)!r}: {e}") from None
    if cfg.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"model vocab_size={cfg.vocab_size} is smaller than the tokenizer's "
                         f"{tokenizer.vocab_size}")
    if cfg.max_seq_len < needed:
        raise ValueError(f"model.max_seq_len={cfg.max_seq_len} is shorter than the {needed} "
                         f"tokens needed by the longest {config.task.name} prompt + response; "
                         "raise model.max_seq_len")
    return cfg


PROMPT_WIDTH_MULTIPLE = 64   # prompt widths under cuDNN attention (T = P + N: block-aligned)


def prompt_width(max_prompt: int, max_new: int, model_cfg) -> int:
    """The sampler's and learner's prompt width P: the longest prompt, rounded up to a multiple
    of `PROMPT_WIDTH_MULTIPLE` under cuDNN attention (as far as max_seq_len allows), so that
    T = P + N is even and block-aligned whatever the longest prompt is."""
    if model_cfg.attention_impl != "cudnn":
        return max_prompt
    m = PROMPT_WIDTH_MULTIPLE
    return max(max_prompt, min(-(-max_prompt // m) * m, model_cfg.max_seq_len - max_new))


def _initial_model(config: RunConfig, model_cfg):
    """θ_0 before any checkpoint: model.hf_path's weights, else a fresh init (seed)."""
    if config.model.hf_path:
        return models.load_params(config.model.hf_path, model_cfg)
    return models.init_model(model_cfg, config.seed)


def _evaluator(config, graphdef, task, tokenizer, max_prompt, max_new) -> Evaluator:
    heldout = task.fixed_set(config.eval.num_problems, split=HELDOUT, seed=config.eval.seed)
    return Evaluator(config.eval, graphdef, task, tokenizer, heldout, max_prompt_len=max_prompt,
                     max_new_tokens=max_new, temperature=config.rl.temperature)


# The repository root (the directory holding async_grpo/): a relative init_from that does not
# exist from the current directory is looked up here, so a config can name a checkpoint shipped
# in the repository (experiments/data/warm_start_*) whatever directory a run starts from.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resolve_init_dir(init_from: str) -> str:
    """An SFT workdir (containing checkpoints/) or a checkpoints directory itself; a relative
    path is tried from the current directory, then from the repository root."""
    if not init_from:
        raise ValueError("init_from is empty: set it to the SFT workdir, e.g. "
                         "--config.init_from=runs/addition/sft (written by experiments/sft.py)")
    bases = [init_from]
    if not os.path.isabs(init_from) and not os.path.exists(init_from):
        bases.append(os.path.join(REPO_ROOT, init_from))
    for base in bases:
        sub = os.path.join(base, ckpt_lib.CHECKPOINT_DIR)
        for d in (sub, base):
            if ckpt_lib.latest_step(d) is not None:
                return d
    raise FileNotFoundError(
        f"init_from={init_from!r}: no SFT checkpoint found (looked in {init_from!r}, its "
        f"{ckpt_lib.CHECKPOINT_DIR}/ and, for a relative path, the same under {REPO_ROOT!r}); "
        f"run experiments/sft.py with --workdir={init_from} first")


def build_grpo(config: RunConfig) -> Components:
    """The GRPO components; θ_0 is loaded from the SFT checkpoint at `config.init_from`, or is
    model.hf_path's weights when init_from is empty."""
    tokenizer = make_tokenizer(config)
    task, max_prompt, max_new = _task_and_budgets(config, tokenizer)
    model_cfg = _model_config(config, tokenizer, max_prompt + max_new)
    max_prompt = prompt_width(max_prompt, max_new, model_cfg)
    if config.model.hf_path and not config.init_from:
        init_dir = ""
        graphdef, params = _initial_model(config, model_cfg)
        items = {"params": params}
    else:
        init_dir = resolve_init_dir(config.init_from)
        graphdef, template = models.init_model(model_cfg, config.seed)
        try:
            _, items = ckpt_lib.load_latest(init_dir, {"params": template}, what="SFT checkpoint")
        except Exception as e:  # structure/shape mismatch: say which config produced it
            raise ValueError(f"could not load the SFT checkpoint in {init_dir!r} into model "
                             f"{config.model.hf_path or config.model.preset!r} ({e}); was it "
                             "trained with the same config.model?") from e
    rc = config.rl
    objective = GRPOObjective(
        graphdef, losses.make_loss(rc.loss, **rc.loss_kwargs),
        losses.make_loss("total_derivative", **rc.td_loss_kwargs), rc.td_weight,
        rc.group_size, rc.temperature, logits_chunk=config.learner.logits_chunk)
    rollouts = Rollouts(graphdef, task, tokenizer, group_size=rc.group_size,
                        max_prompt_len=max_prompt, max_new_tokens=max_new,
                        temperature=rc.temperature, top_k=rc.top_k or None,
                        top_p=rc.top_p or None)
    return Components(
        config=config, task=task, tokenizer=tokenizer, model_config=model_cfg,
        graphdef=graphdef, init_params=items["params"],
        optimizer=make_optimizer(rc.optimizer, rc.steps,
                                 mu_dtype=config.precision.opt_state_dtype),
        objective=objective,
        evaluator=_evaluator(config, graphdef, task, tokenizer, max_prompt, max_new),
        max_prompt_len=max_prompt, max_new_tokens=max_new,
        source=RolloutSource(rollouts, task, prompts_per_step=rc.prompts_per_step,
                             seed=config.seed,
                             parity_every=config.diagnostics.parity_every),
        init_dir=init_dir)


def build_sft(config: RunConfig) -> Components:
    """The SFT components; θ_0 is model.hf_path's weights, else a fresh init (seed
    `config.seed`)."""
    tokenizer = make_tokenizer(config)
    task, max_prompt, max_new = _task_and_budgets(config, tokenizer)
    seq_len = max_prompt + task.max_answer_chars + 1
    model_cfg = _model_config(config, tokenizer, max(seq_len, max_prompt + max_new))
    graphdef, params = _initial_model(config, model_cfg)
    return Components(
        config=config, task=task, tokenizer=tokenizer, model_config=model_cfg,
        graphdef=graphdef, init_params=params,
        optimizer=make_optimizer(config.sft.optimizer, config.sft.steps,
                                 mu_dtype=config.precision.opt_state_dtype),
        objective=SFTObjective(graphdef),
        evaluator=_evaluator(config, graphdef, task, tokenizer, max_prompt, max_new),
        max_prompt_len=max_prompt, max_new_tokens=max_new)


def save_random_init(config: RunConfig, path: str) -> str:
    """Saves a random init of `config.model` (seed `config.seed`) as the SFT checkpoint of
    `path`, for runs, tests and benchmarks that start GRPO without an SFT run. -> `path`."""
    tokenizer = make_tokenizer(config)
    _, max_prompt, max_new = _task_and_budgets(config, tokenizer)
    _, params = models.init_model(_model_config(config, tokenizer, max_prompt + max_new),
                                  config.seed)
    with ckpt_lib.make_manager(os.path.join(path, ckpt_lib.CHECKPOINT_DIR)) as m:
        ckpt_lib.save(m, 1, {"params": params}, meta={"kind": "random_init"})
    return path
