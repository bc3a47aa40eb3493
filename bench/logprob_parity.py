r"""The distribution of the sampler-vs-learner log-prob mismatch, float32 and bfloat16, on this machine.

For each (sampler dtype, learner dtype) pair the sampler (`sampling.sample`: prefill + KV-cache
decode) draws `--steps` GRPO batches of the task's training prompts and the learner's function
(`sampling.score_responses`: one teacher-forced pass) re-scores them with the SAME stored
parameters, so Δ = log π_learner − log π_sampler is numerics only (zero lag). Printed and written
to `<workdir>/parity.json`: quantiles of |Δ| over all response tokens, max |Δ|, the mean signed Δ,
and the share of tokens whose ratio exp(Δ) leaves [0.8, 1.25] (`sampling.logprob_parity`).

The parameters are stored in float32 (the learner's master copy); "bfloat16" is the model's
compute dtype. With `--init_from` (an SFT workdir, e.g. runs/addition/sft written by
experiments/sft.py) the trained model of that run is used with its task, else a random init of
`--preset` on the addition task (near-uniform logits: a weak test of numerics).

  .venv/bin/python -m bench.logprob_parity --init_from=runs/addition/sft --workdir=runs/parity
"""

from __future__ import annotations

import json
import os
import platform
import time

from absl import app
from absl import flags
import jax
import numpy as np

from async_grpo import config as config_lib
from async_grpo import sampling
from async_grpo.rl import components
from async_grpo.tasks import TRAIN
from async_grpo.workdir import machine
from experiments import report

_INIT = flags.DEFINE_string("init_from", "", "An SFT workdir (its run.json config and newest "
                            "checkpoint); empty: a random init of --preset.")
_PRESET = flags.DEFINE_string("preset", "small", "Model preset without --init_from.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/parity", "Where parity.json goes.")
_STEPS = flags.DEFINE_integer("steps", 4, "GRPO batches per setting.")
_PROMPTS = flags.DEFINE_integer("prompts", 64, "Prompts per batch.")
_GROUP = flags.DEFINE_integer("group_size", 8, "Samples per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
_NO_EOS = flags.DEFINE_bool("no_eos", True, "Decode the full response budget (EOS off), so that "
                            "every row contributes max_new_tokens tokens and late positions too.")

_NEW = flags.DEFINE_integer("max_new_tokens", 0, "Response budget (0: the run's); prompt width "
                           "+ budget must fit the model's max_seq_len.")

PAIRS = (("float32", "float32"), ("bfloat16", "bfloat16"), ("bfloat16", "float32"))
QUANTILES = (0.5, 0.9, 0.99, 0.999)


def _run_config(dtype: str) -> config_lib.RunConfig:
    if _INIT.value:
        with open(os.path.join(_INIT.value, "run.json"), encoding="utf-8") as f:
            d = json.load(f)["config"]
        d.pop("sft", None)
        init = _INIT.value
    else:
        d = {"model": {"preset": _PRESET.value}}
        init = os.path.join(_WORKDIR.value, "random_init")
    d["init_from"] = init
    # The compute dtype through the precision policy (θ stays float32, the master copy); a
    # run.json written before the policy may still carry model.overrides.dtype: drop it.
    d.setdefault("model", {}).setdefault("overrides", {}).pop("dtype", None)
    d["precision"] = {**d.get("precision", {}), "compute_dtype": dtype, "param_dtype": "float32"}
    d["rl"] = {**d.get("rl", {}), "prompts_per_step": _PROMPTS.value,
               "group_size": _GROUP.value, "temperature": _TEMPERATURE.value}
    return config_lib.RunConfig.from_config(d)


def _setup(dtype: str):
    cfg = _run_config(dtype)
    if not _INIT.value and not os.path.isdir(os.path.join(cfg.init_from, "checkpoints")):
        components.save_random_init(cfg, cfg.init_from)
    c = components.build_grpo(cfg)
    return (c.graphdef, c.init_params, c.task, c.tokenizer, c.max_prompt_len, c.max_new_tokens,
            cfg)


def measure(sampler_dtype: str, learner_dtype: str) -> dict:
    gs, params, task, tok, max_prompt, max_new, cfg = _setup(sampler_dtype)
    gl = _setup(learner_dtype)[0]
    score = jax.jit(sampling.score_responses)
    deltas, masks, logps = [], [], []
    t0 = time.time()
    for step in range(_STEPS.value):
        rng = np.random.default_rng([cfg.seed, 1, step])
        problems = task.sample_batch(rng, _PROMPTS.value, TRAIN)
        toks, lens = tok.batch_encode([p.prompt for p in problems], max_len=max_prompt,
                                      add_bos=True)
        sb = sampling.sample(gs, params, toks, lens, jax.random.key(step),
                             max_new_tokens=_NEW.value or max_new, eos_id=None if _NO_EOS.value else tok.eos_id,
                             pad_id=tok.pad_id, temperature=_TEMPERATURE.value,
                             num_samples=_GROUP.value)
        lp = score(gl, params, sb.prompt_tokens, sb.prompt_lengths, sb.response_tokens,
                   sb.response_mask, temperature=_TEMPERATURE.value)
        m = np.asarray(sb.response_mask) > 0
        deltas.append(np.asarray(lp - sb.model_logp)[m])
        logps.append(np.asarray(sb.model_logp)[m])
        masks.append(m.sum())
    d = np.concatenate(deltas).astype(np.float64)
    a = np.abs(d)
    out = (np.exp(d) < 0.8) | (np.exp(d) > 1.25) | ~np.isfinite(d)
    return {"sampler": sampler_dtype, "learner": learner_dtype, "tokens": int(d.size),
            "mean_abs": float(a.mean()), "max_abs": float(a.max()), "mean_signed": float(d.mean()),
            "quantiles_abs": {str(q): float(np.quantile(a, q)) for q in QUANTILES},
            "ratio_out_frac": float(out.mean()), "mean_logp": float(np.concatenate(logps).mean()),
            "wall_s": time.time() - t0}


def main(argv):
    del argv
    rows = [measure(s, l) for s, l in PAIRS]
    cfg = _run_config("float32")
    result = {
        "model": (f"{cfg.model.preset} from {_INIT.value}" if _INIT.value else
                  f"{cfg.model.preset}, random init"),
        "task": cfg.task.name, "prompts": _PROMPTS.value, "group_size": _GROUP.value,
        "steps": _STEPS.value, "max_new_tokens": _NEW.value, "temperature": _TEMPERATURE.value, "no_eos": _NO_EOS.value,
        "rows": rows, "machine": machine(), "node": platform.node(),
        "backend": jax.default_backend(),
        "command": "python -m bench.logprob_parity " + " ".join(
            f"--{k}={v}" for k, v in [("init_from", _INIT.value), ("workdir", _WORKDIR.value),
                         ("max_new_tokens", _NEW.value)]
            if v)}
    os.makedirs(_WORKDIR.value, exist_ok=True)
    with open(os.path.join(_WORKDIR.value, "parity.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(report.parity_table(result))


if __name__ == "__main__":
    app.run(main)
