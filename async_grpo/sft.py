"""Supervised warm start: teacher-forced cross entropy on reference answers, from scratch.

The SFT set is a fixed list of `config.sft.num_examples` train-split problems (seed
`config.sft.data_seed`; 0 examples = a fresh sample every step). Sequences are
`bos + prompt + answer + eos`, right-padded; the loss (`objectives.SFTObjective`) covers the
answer and eos tokens only. Updates go through the same `Learner` (and its one `update`) as
GRPO, on the mesh of `config.mesh`. Checkpoints go to `<workdir>/checkpoints/<step>/` (items
"params" and "opt_state", JSON item "meta" with the data generator's state) every
`sft.checkpoint_every` steps and at the end; `experiments/train.py` loads the newest one's params
through `config.init_from`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Iterable

import jax
import numpy as np
from absl import logging

from async_grpo import checkpoint as ckpt_lib
from async_grpo import metrics as metrics_lib
from async_grpo import models
from async_grpo import sharding as sharding_lib
from async_grpo import workdir as workdir_lib
from async_grpo.config import RunConfig
from async_grpo.rl.components import Components, build_sft
from async_grpo.rl.learner import Learner
from async_grpo.signals import StopOnSignal
from async_grpo.tasks import TRAIN, CharTokenizer, Problem


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


def run_sft(config: RunConfig, workdir: str, *, comps: Components | None = None,
            devices=None, allow_changed: Iterable[str] = ()) -> dict[str, float]:
    """Trains from scratch (or resumes), evaluates on the held-out set, saves the policy.

    -> the last metrics record. The workdir belongs to this run (`async_grpo.workdir.claim`). A
    checkpoint (params, optimizer state, the data generator's state) is written every
    `sft.checkpoint_every` steps and at the end, and on SIGINT/SIGTERM; a rerun resumes from the
    newest one bit-identically, and a finished run returns at once. `comps` defaults to
    `build_sft(config)`."""
    workdir_lib.claim(workdir, "sft", config.record("sft"), allow_changed,
                      defaults=RunConfig().record("sft"))
    sc = config.sft
    comps = build_sft(config) if comps is None else comps
    logging.info("model %s: %d params", config.model.preset, models.param_count(comps.init_params))
    devices = list(jax.devices() if devices is None else devices)
    devices = devices[:config.mesh.num_devices or len(devices)]
    mesh = sharding_lib.make_mesh(sharding_lib.parse_mesh_spec(config.mesh.axes), devices)
    learner = Learner(comps.objective, comps.optimizer, comps.init_params, mesh=mesh,
                      track_cosines=False, micro_batches=config.learner.micro_batches)
    params = learner.place_params(comps.init_params)
    opt_state, aux = learner.init_opt_state(params), learner.init_aux(params)
    seq_len = comps.max_prompt_len + comps.task.max_answer_chars + 1   # + eos
    data_rng = np.random.default_rng(sc.data_seed)
    pool: list[Problem] | None = None
    if sc.num_examples > 0:
        pool = comps.task.fixed_set(sc.num_examples, split=TRAIN, seed=sc.data_seed)
    manager = ckpt_lib.make_manager(os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR),
                                    max_to_keep=config.keep_checkpoints)
    start, t_before = 0, 0.0
    if manager.latest_step() is not None:
        start, items = ckpt_lib.restore(manager, {"params": params, "opt_state": opt_state},
                                        with_meta=True)
        params, opt_state, meta = items["params"], items["opt_state"], items["meta"]
        data_rng.bit_generator.state = meta["data_rng"]
        t_before = meta.get("wall_s", 0.0)
        logging.info("resuming SFT from step %d of %d", start, sc.steps)
    if start >= sc.steps:
        manager.close()
        records = metrics_lib.read_metrics(workdir)
        logging.info("sft already finished (step %d) in %s", start, workdir)
        return dict(records[-1]) if records else {}
    metrics_lib.truncate_after(workdir, start)
    writer = metrics_lib.MetricsWriter(workdir, purge_step=start + 1,
                                       tensorboard=config.diagnostics.tensorboard)
    progress = metrics_lib.Progress(sc.steps, start)
    t0 = time.time() - t_before
    final: dict[str, float] = {}

    def save(step):
        writer.flush()
        ckpt_lib.save(manager, step, {"params": params, "opt_state": opt_state}, meta={
            "kind": "sft", "step": step, "data_rng": data_rng.bit_generator.state,
            "model_config": _jsonable(comps.model_config),
            "task": dataclasses.asdict(config.task),
            "heldout_accuracy": final.get("heldout/accuracy"),
            "heldout_sampled_accuracy": final.get("heldout_sampled/accuracy"),
            "wall_s": time.time() - t0})

    step = start
    try:
        with StopOnSignal() as stop:
            for step in range(start + 1, sc.steps + 1):
                if stop.requested:
                    step -= 1
                    if manager.latest_step() != step:
                        save(step)
                    break
                if pool is not None:
                    batch = [pool[int(i)] for i in data_rng.integers(len(pool), size=sc.batch_size)]
                else:
                    batch = comps.task.sample_batch(data_rng, sc.batch_size, TRAIN)
                tokens, mask = encode_sft(batch, comps.tokenizer, seq_len)
                params, opt_state, aux, m = learner.step(params, opt_state, aux,
                                                         {"tokens": tokens, "mask": mask},
                                                         step=step)
                do_eval = step == sc.steps or (sc.eval_every and step % sc.eval_every == 0)
                if do_eval or step % config.log_every == 0:
                    rec = metrics_lib.to_scalars(m)
                    if do_eval:
                        rec.update(comps.evaluator(params))
                    rec["wall_s"] = time.time() - t0
                    writer.write(step, rec)
                    logging.info("sft %s", progress.line(step, rec, keys=(
                        "loss", "token_accuracy", "heldout/accuracy",
                        "heldout_sampled/accuracy")))
                    final = rec
                if step == sc.steps or (sc.checkpoint_every and step % sc.checkpoint_every == 0):
                    save(step)
    finally:
        manager.close()
        writer.close()
    logging.info("sft %s at step %d in %.1fs: held-out accuracy %.3f; checkpoints in %s",
                 "done" if step == sc.steps else "stopped", step, time.time() - t0,
                 final.get("heldout/accuracy", float("nan")),
                 os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR))
    return final


def _jsonable(model_cfg) -> dict:
    d = dataclasses.asdict(model_cfg)
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
            for k, v in d.items()}
