"""Supervised warm start: teacher-forced cross-entropy on reference answers, from scratch.

The SFT set is a fixed list of `config.sft.num_examples` train-split problems (seed
`config.sft.data_seed`; 0 examples = a fresh sample every step). Sequences are
`bos + prompt + answer + eos`, right-padded; the loss covers the answer and eos tokens only. The
policy is saved with orbax to `<workdir>/checkpoints/<step>/` (item "params", JSON item "meta"),
which `experiments/train.py` loads through `config.init_from`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from async_grpo import checkpoint as ckpt_lib
from async_grpo import metrics as metrics_lib
from async_grpo import models
from async_grpo.rl import build
from async_grpo.rl.rollout import evaluate_heldout
from async_grpo.tasks import HELDOUT, TRAIN, CharTokenizer, Problem

CHECKPOINT_DIR = "checkpoints"


def encode_sft(problems, tokenizer: CharTokenizer, seq_len: int):
    """-> tokens int32 [B, seq_len] (bos prompt answer eos, right-padded), loss mask [B, seq_len-1].

    mask[b, t] = 1 where target tokens[b, t+1] belongs to the answer or the final eos.
    """
    tokens = np.full((len(problems), seq_len), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(problems), seq_len - 1), np.float32)
    for b, p in enumerate(problems):
        pr = tokenizer.encode(p.prompt, add_bos=True)
        an = tokenizer.encode(p.answer, add_eos=True)
        seq = pr + an
        if len(seq) > seq_len:
            raise ValueError(f"SFT example of {len(seq)} tokens exceeds seq_len={seq_len}: {p.prompt!r}")
        tokens[b, :len(seq)] = seq
        mask[b, len(pr) - 1:len(seq) - 1] = 1.0
    return tokens, mask


def sft_loss(graphdef, params, tokens, mask):
    logits = models.forward(graphdef, params, tokens[:, :-1]).astype(jnp.float32)
    targets = tokens[:, 1:]
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    denom = jnp.maximum(mask.sum(), 1.0)
    loss = jnp.sum(nll * mask) / denom
    tok_acc = jnp.sum((jnp.argmax(logits, -1) == targets) * mask) / denom
    # Whole-answer exact match under teacher forcing.
    wrong = jnp.sum((jnp.argmax(logits, -1) != targets) * mask, axis=1)
    seq_acc = jnp.mean(wrong == 0)
    return loss, {"token_accuracy": tok_acc, "teacher_forced_exact": seq_acc}


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("optimizer",))
def sft_step(graphdef, params, opt_state, tokens, mask, *, optimizer):
    (loss, m), grads = jax.value_and_grad(
        lambda p: sft_loss(graphdef, p, tokens, mask), has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, dict(m, loss=loss, grad_norm=optax.tree.norm(grads))


def run_sft(config, workdir: str) -> dict[str, float]:
    """Trains from scratch, evaluates on the held-out set, saves the policy. -> final metrics."""
    os.makedirs(workdir, exist_ok=True)
    sc = config.sft
    task = build.build_task(config)
    tok = build.build_tokenizer(config)
    max_prompt = build.prompt_budget(task)
    max_new = build.response_budget(config, task)
    seq_len = max_prompt + task.max_answer_chars + 1
    model_cfg = build.build_model_config(config, tok, min_context=max(seq_len, max_prompt + max_new))
    graphdef, params = models.init_model(model_cfg, int(config.seed))
    logging.info("model %s: %d params", config.model.preset, models.param_count(params))
    optimizer = build.build_optimizer(sc.optimizer, int(sc.steps))
    opt_state = optimizer.init(params)

    data_rng = np.random.default_rng(int(sc.data_seed))
    pool: list[Problem] | None = None
    if sc.num_examples > 0:
        pool = task.fixed_set(int(sc.num_examples), split=TRAIN, seed=int(sc.data_seed))
    heldout = task.fixed_set(int(config.eval.num_problems), split=HELDOUT,
                             seed=int(config.eval.seed))
    eval_fn = functools.partial(
        evaluate_heldout, config, graphdef, task=task, tokenizer=tok, problems=heldout,
        max_prompt_len=max_prompt, max_new_tokens=max_new,
        temperature=float(config.rl.get("temperature", 1.0)))

    writer = metrics_lib.MetricsWriter(workdir)
    progress = metrics_lib.Progress(int(sc.steps))
    manager = ckpt_lib.make_manager(os.path.join(workdir, CHECKPOINT_DIR),
                                    max_to_keep=int(config.get("keep_checkpoints", 3)))
    t0 = time.time()
    bs = int(sc.batch_size)
    final: dict[str, float] = {}
    for step in range(1, int(sc.steps) + 1):
        if pool is not None:
            batch = [pool[int(i)] for i in data_rng.integers(len(pool), size=bs)]
        else:
            batch = task.sample_batch(data_rng, bs, TRAIN)
        tokens, mask = encode_sft(batch, tok, seq_len)
        params, opt_state, m = sft_step(graphdef, params, opt_state, jnp.asarray(tokens),
                                        jnp.asarray(mask), optimizer=optimizer)
        last = step == int(sc.steps)
        do_eval = last or (sc.eval_every and step % int(sc.eval_every) == 0)
        if do_eval or step % int(config.log_every) == 0:
            rec = metrics_lib.to_scalars(m)
            if do_eval:
                ev = eval_fn(params=params)
                rec.update(ev)
            rec["wall_s"] = time.time() - t0
            writer.write(step, rec)
            logging.info("sft %s", progress.line(step, rec, keys=(
                "loss", "token_accuracy", "heldout/accuracy", "heldout_sampled/accuracy")))
            final = rec
    meta = {"kind": "sft", "step": int(sc.steps), "model_config": _jsonable(model_cfg),
            "task": build.to_dict(config.task), "heldout_accuracy": final.get("heldout/accuracy"),
            "heldout_sampled_accuracy": final.get("heldout_sampled/accuracy"),
            "wall_s": time.time() - t0}
    ckpt_lib.save(manager, int(sc.steps), {"params": params}, meta=meta)
    manager.close()
    writer.close()
    logging.info("sft done in %.1fs: held-out accuracy %.3f; saved to %s", time.time() - t0,
                 final.get("heldout/accuracy", float("nan")), os.path.join(workdir, CHECKPOINT_DIR))
    return final


def _jsonable(model_cfg) -> dict:
    d = dataclasses.asdict(model_cfg)
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
            for k, v in d.items()}
