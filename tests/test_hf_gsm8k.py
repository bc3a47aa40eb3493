"""GSM8K end to end with a Hugging Face model: a tiny random Llama-3 checkpoint written by
`save_pretrained` plus a tiny BPE tokenizer trained here, `experiments.sft` then `experiments.train`
(async, fixed staleness S = 2) on a small GSM8K-format JSONL; and the config checks.

  PYTHONPATH=. python -m pytest -q tests/test_hf_gsm8k.py              # config checks (fast)
  PYTHONPATH=. python -m pytest -q -m slow tests/test_hf_gsm8k.py      # + the binaries (~2 min)
"""

import importlib
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from async_grpo import config as config_lib
from async_grpo import metrics as metrics_lib
from async_grpo import models
from async_grpo.models import hf
from async_grpo.rl import components
from async_grpo.tasks import TRAIN, HFTokenizer, hf_tokenizer
from tests import helpers, make_hf_fixtures

REPO = helpers.repo_root()
CONFIG = "experiments/configs/gsm8k_llama.py"


def _gsm8k_jsonl(path, n=40):
    rng = np.random.default_rng(0)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            a, b = (int(x) for x in rng.integers(1, 50, size=2))
            f.write(json.dumps({
                "question": f"Sam has {a} pens and gets {b} more. How many pens now? ({i})",
                "answer": f"{a}+{b}={a + b}\n#### {a + b}"}) + "\n")
    return str(path)


def _hf_model(path, seed=0):
    """A tiny random Llama-3 (llama3 rope scaling, untied) with the trained BPE in the same dir."""
    make_hf_fixtures.train_tokenizer(str(path))
    vocab = HFTokenizer(str(path)).vocab_size
    cfg = models.LlamaConfig(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                             head_dim=16, mlp_dim=128, max_seq_len=256, rope_theta=10000.0,
                             tie_embeddings=False,
                             rope_scaling=models.RopeScaling(8.0, 1.0, 4.0, 64))
    _, params = models.init_model(cfg, seed)
    models.save_pretrained(params, cfg, str(path))
    return str(path), cfg


def _overrides(model_dir, data):
    return {"model.hf_path": model_dir, "task.path": data, "task.prompt_format": "plain",
            "precision.compute_dtype": "float32", "model.overrides.attention_impl": "einsum",
            "model.overrides.remat": "none", "learner.micro_batches": 1,
            "max_new_tokens": 24, "eval.num_problems": 2, "eval.batch_size": 2,
            "sft.steps": 3, "sft.batch_size": 4, "sft.eval_every": 0, "sft.checkpoint_every": 0,
            "sft.optimizer.warmup_steps": 1, "rl.steps": 4, "rl.prompts_per_step": 2,
            "rl.group_size": 2, "rl.eval_every": 0, "rl.checkpoint_every": 0,
            "rl.optimizer.lr": 1e-4, "rl.optimizer.warmup_steps": 1,
            "staleness.policy": "fixed", "staleness.max_lag": 2, "staleness.queue_size": 2}


def _config(model_dir, data, **extra):
    c = importlib.import_module("experiments.configs.gsm8k_llama").get_config()
    return config_lib.RunConfig.from_config(
        helpers.set_keys(c, {**_overrides(model_dir, data), **extra}))


@pytest.mark.parametrize("name", ["gsm8k_llama", "gsm8k_qwen"])
def test_gsm8k_configs_carry_launch_command_and_refuse_missing_paths(name, tmp_path):
    mod = importlib.import_module(f"experiments.configs.{name}")
    assert "python -m experiments.train" in mod.__doc__ and "--config.model.hf_path" in mod.__doc__
    assert "GB" in mod.__doc__ and mod.SWEEP["staleness.max_lag"] == [8, 16, 32]
    with pytest.raises(config_lib.ConfigError, match=r"task.path='': task 'gsm8k' needs a data "
                                                     "file"):
        config_lib.RunConfig.from_config(mod.get_config())
    data = _gsm8k_jsonl(tmp_path / "train.jsonl")
    c = mod.get_config()
    c.task.path = data
    with pytest.raises(config_lib.ConfigError, match="model.hf_path=.*must be a directory with a "
                                                     "config.json"):
        config_lib.RunConfig.from_config(helpers.set_keys(c, {"model.hf_path": str(tmp_path)}))
    with pytest.raises(config_lib.ConfigError, match="task.path=.*no such file"):
        config_lib.RunConfig.from_config(helpers.set_keys(mod.get_config(),
                                                          {"task.path": str(tmp_path / "x")}))


def test_gsm8k_llama_memory_settings_and_plan_flags_follow_the_config():
    """The settings that make GSM8K fit one GPU (docs/benchmarks.md, "GSM8K configs"), and the
    memory plan's flags read from the same config."""
    mod = importlib.import_module("experiments.configs.gsm8k_llama")
    c = mod.get_config()
    rows = c.rl.prompts_per_step * c.rl.group_size
    assert rows % c.learner.micro_batches == 0 and rows // c.learner.micro_batches == 2
    assert c.model.overrides.to_dict() == {"attention_impl": "cudnn", "remat": "full"}
    assert (c.precision.snapshot_memory, c.precision.snapshot_dtype) == ("host", "compute")
    assert not c.diagnostics.cosines and not c.rl.log_ref_kl and c.rl.loss_kwargs.kl_coef == 0
    assert "about 60 GB" not in mod.__doc__ and "80 GB" in mod.__doc__
    flags = mod.memory_plan_flags(32)
    assert "--batch=512" in flags and "--micro_batch=2" in flags and "--max_lag=32" in flags
    assert f"--seq_len={mod.PLAN_PROMPT_LEN + 512}" in flags and "--nocosines" in flags
    assert "--snapshot_memory=host" in flags and "--kl_coef=0.0" in flags
    assert mod.PLAN_PROMPT_LEN % 64 == 0


def test_hf_components_and_bad_values(tmp_path):
    model_dir, cfg = _hf_model(tmp_path / "model")
    data = _gsm8k_jsonl(tmp_path / "train.jsonl")
    rc = _config(model_dir, data)
    assert rc.model.resolved_tokenizer_path() == model_dir
    comps = components.build_sft(rc)
    assert isinstance(comps.tokenizer, HFTokenizer)
    assert comps.model_config == cfg   # the checkpoint's architecture and context, float32
    _, _, params = hf.from_pretrained(model_dir)
    for a, b in zip(jax.tree.leaves(comps.init_params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # GRPO straight from the checkpoint (no init_from).
    grpo = components.build_grpo(rc)
    assert grpo.init_dir == "" and grpo.max_new_tokens == 24
    with pytest.raises(config_lib.ConfigError, match=r"model.overrides=.*only \['attention_impl', "
                                                     r"'remat'\].*n_layers"):
        _config(model_dir, data, **{"model.overrides.n_layers": 1})
    with pytest.raises(config_lib.ConfigError, match="task.prompt_format='html'"):
        _config(model_dir, data, **{"task.prompt_format": "html"})
    with pytest.raises(ValueError, match="model.max_seq_len=16 is shorter"):
        components.build_sft(_config(model_dir, data, **{"model.max_seq_len": 16}))
    with pytest.raises(config_lib.ConfigError, match="task.path=.*only file-based tasks"):
        config_lib.RunConfig.from_config(helpers.tiny_config_dict(**{"task.path": data}))


@pytest.mark.skipif(hf_tokenizer.jinja2 is None, reason="jinja2 is not installed")
def test_chat_prompts_through_components_and_a_rollout(tmp_path):
    model_dir, _ = _hf_model(tmp_path / "model")
    data = _gsm8k_jsonl(tmp_path / "train.jsonl")
    comps = components.build_grpo(_config(model_dir, data, **{"task.prompt_format": "chat"}))
    tok = comps.tokenizer
    problems = comps.task.pool(TRAIN)
    assert all(p.prompt.startswith("<|user|>Question:") and p.prompt.endswith("<|assistant|>")
               for p in problems)
    assert comps.max_prompt_len == max(len(tok.encode(p.prompt, add_bos=True)) for p in problems)
    batch = comps.source.rollouts.generate_batch(comps.init_params, 0, jax.random.key(0),
                                                 problems[:2])
    assert len(batch.responses) == 4 and np.isfinite(np.asarray(batch.arrays["behavior_logp"])).all()


def _run(module, workdir, model_dir, data, *extra):
    args = [f"--config.{k}={v}" for k, v in _overrides(model_dir, data).items()] + list(extra)
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", module, f"--config={CONFIG}",
                           f"--workdir={workdir}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout


@pytest.mark.slow
def test_gsm8k_sft_then_async_grpo_end_to_end(tmp_path):
    model_dir, _ = _hf_model(tmp_path / "model")
    data = _gsm8k_jsonl(tmp_path / "train.jsonl")
    sft_dir, rl_dir = str(tmp_path / "sft"), str(tmp_path / "grpo")
    out = _run("experiments.sft", sft_dir, model_dir, data)
    print(out)
    assert out.startswith("sft: step 3")
    recs = metrics_lib.read_metrics(sft_dir)
    assert recs[-1]["step"] == 3 and math.isfinite(recs[-1]["loss"])
    assert "heldout/accuracy" in recs[-1]
    out = _run("experiments.train", rl_dir, model_dir, data, f"--config.init_from={sft_dir}")
    print(out)
    recs = metrics_lib.read_metrics(rl_dir)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert [r["lag"] for r in recs] == [0, 1, 2, 2]   # async, S = 2
    for r in recs:
        for k in ("loss", "grad_norm", "rollout/reward", "rollout/response_length"):
            assert math.isfinite(r[k]), (k, r)
