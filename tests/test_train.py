"""SFT -> GRPO end to end through the real binaries (subprocesses), the learner step, bad inputs."""

import glob
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from async_grpo import losses, models
from async_grpo import metrics as metrics_lib
from async_grpo.rl import build
from async_grpo.rl.loop import GRPOTrainer, check_staleness
from async_grpo.rl.rollout import Rollouts
from async_grpo.rl.step import make_train_step
from async_grpo.tasks import CharTokenizer, get_task
from experiments.configs import addition

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "experiments/configs/addition.py"

# A tiny, fast version of the addition config (2-digit numbers, tiny model, a few steps).
TINY = {
    "task.kwargs.num_digits": 2, "model.preset": "tiny", "model.max_seq_len": 24,
    "sft.steps": 12, "sft.batch_size": 16, "sft.eval_every": 6, "sft.optimizer.warmup_steps": 2,
    "eval.num_problems": 16, "eval.batch_size": 16, "rl.steps": 3, "rl.prompts_per_step": 4,
    "rl.group_size": 4, "rl.eval_every": 2, "rl.checkpoint_every": 2,
    "rl.optimizer.warmup_steps": 1, "rl.loss_kwargs.kl_coef": 0.04,
}

SFT_KEYS = {"step", "time", "loss", "token_accuracy", "grad_norm", "heldout/accuracy", "wall_s"}
TRAIN_KEYS = {"step", "time", "loss", "grad_norm", "entropy", "kl_ref_k1", "kl_ref_k3",
              "rollout/reward", "rollout/response_length", "rollout/malformed_frac",
              "loss/clip_frac", "loss/kl_behavior_k3", "loss/ess_frac", "response_length",
              "steps_per_sec", "lag", "version"}


def tiny_config(**extra):
    c = addition.get_config()
    for key, value in {**TINY, **extra}.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def _run(module, workdir, *overrides):
    args = [f"--config.{k}={v}" for k, v in TINY.items()] + list(overrides)
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", module, f"--config={CONFIG}",
                           f"--workdir={workdir}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stderr


def _check_finite(recs, keys):
    for r in recs:
        for k in keys & set(r):
            assert isinstance(r[k], (int, float)) and math.isfinite(r[k]), (k, r[k])


def test_sft_then_grpo_end_to_end(tmp_path):
    sft_dir, rl_dir = str(tmp_path / "sft"), str(tmp_path / "grpo")
    log = _run("experiments.sft", sft_dir)
    assert "steps/s" in log and "ETA" in log
    recs = metrics_lib.read_metrics(sft_dir)
    assert SFT_KEYS <= set(recs[-1]), SFT_KEYS - set(recs[-1])
    _check_finite(recs, SFT_KEYS)
    assert os.path.isdir(os.path.join(sft_dir, "checkpoints", "12"))
    assert glob.glob(os.path.join(sft_dir, "tb", "events.out.tfevents.*"))

    log = _run("experiments.train", rl_dir, f"--config.init_from={sft_dir}")
    assert "steps/s" in log and "ETA" in log
    recs = metrics_lib.read_metrics(rl_dir)
    assert [r["step"] for r in recs] == [0, 1, 2, 3]
    assert "heldout/accuracy" in recs[0] and "heldout/accuracy" in recs[2]
    for r in recs[1:]:
        assert TRAIN_KEYS <= set(r), TRAIN_KEYS - set(r)
        assert r["lag"] == 0 and r["version"] == r["step"] - 1
    _check_finite(recs, TRAIN_KEYS | {"heldout/accuracy"})
    assert sorted(os.listdir(os.path.join(rl_dir, "checkpoints"))) == ["2", "3"]
    assert glob.glob(os.path.join(rl_dir, "tb", "events.out.tfevents.*"))

    # Rerunning with more steps resumes from the newest checkpoint (step 3), no re-evaluation.
    _run("experiments.train", rl_dir, f"--config.init_from={sft_dir}", "--config.rl.steps=4")
    recs = metrics_lib.read_metrics(rl_dir)
    assert [r["step"] for r in recs] == [0, 1, 2, 3, 4]
    assert "4" in os.listdir(os.path.join(rl_dir, "checkpoints"))


def _tiny_model(max_seq_len=24):
    tok = CharTokenizer()
    cfg = models.get_config("tiny", vocab_size=tok.vocab_size, max_seq_len=max_seq_len)
    graphdef, params = models.init_model(cfg, 0)
    return tok, graphdef, params


@pytest.mark.parametrize("loss", ["grpo", "dapo", "rloo", "total_derivative"])
def test_rollout_and_train_step(loss):
    tok, graphdef, params = _tiny_model()
    task = get_task("addition", num_digits=2)
    ro = Rollouts(graphdef, task, tok, group_size=4, max_prompt_len=7, max_new_tokens=5)
    problems = task.sample_batch(np.random.default_rng(0), 3)
    batch = ro.generate_batch(params, 7, jax.random.key(0), problems)
    assert batch.version == 7 and len(batch.responses) == 12
    assert batch.arrays["response_tokens"].shape == (12, 5)
    assert batch.arrays["rewards"].shape == (12,)
    assert 0.0 <= batch.stats["reward"] <= 1.0
    import optax  # pylint: disable=import-outside-toplevel
    opt = optax.adam(1e-3)
    loss_fn = losses.make_loss(loss)
    step = make_train_step(graphdef, optimizer=opt, loss_fn=loss_fn, group_size=4)
    new_params, _, m = step(params, opt.init(params), batch.arrays, params)
    m = metrics_lib.to_scalars(m)
    assert all(math.isfinite(v) for v in m.values()), m
    assert abs(m["kl_ref_k3"]) < 1e-5   # the reference is the current policy
    assert {"grad_norm", "entropy", "response_length", "reward"} <= set(m)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, new_params)
    assert any(jax.tree.leaves(changed)) or m["grad_norm"] == 0.0


def test_group_size_must_be_at_least_two(tmp_path):
    with pytest.raises(ValueError, match=r"group_size must be >= 2.*got 1"):
        GRPOTrainer(tiny_config(**{"rl.group_size": 1}), str(tmp_path))
    tok, graphdef, _ = _tiny_model()
    with pytest.raises(ValueError, match=r"group_size must be >= 2.*got 1"):
        Rollouts(graphdef, get_task("addition"), tok, group_size=1, max_prompt_len=8,
                 max_new_tokens=4)


def test_unknown_task_and_preset(tmp_path):
    with pytest.raises(ValueError, match=r"unknown task 'additon'.*valid tasks: addition"):
        GRPOTrainer(tiny_config(**{"task.name": "additon"}), str(tmp_path))
    with pytest.raises(ValueError, match=r"(?i)unknown model preset 'huge'.*tiny"):
        build.build_model_config(tiny_config(**{"model.preset": "huge"}), CharTokenizer())


def test_prompt_longer_than_context(tmp_path):
    # 3-digit addition: bos + "123+456=" is 9 tokens, + 6 new tokens > 12.
    cfg = tiny_config(**{"task.kwargs.num_digits": 3, "model.max_seq_len": 12})
    with pytest.raises(ValueError, match=r"prompt of 9 tokens \+ max_new_tokens=6 exceeds the "
                                         r"model context max_seq_len=12"):
        GRPOTrainer(cfg, str(tmp_path))
    from async_grpo.sft import run_sft  # pylint: disable=import-outside-toplevel
    with pytest.raises(ValueError, match="max_seq_len=12 is shorter than the 15 tokens needed"):
        run_sft(cfg, str(tmp_path / "sft"))
    tok, graphdef, params = _tiny_model(max_seq_len=24)
    ro = Rollouts(graphdef, get_task("reverse", max_len=30), tok, group_size=2, max_prompt_len=10,
                  max_new_tokens=4)
    p = get_task("reverse", min_len=20, max_len=20).sample(np.random.default_rng(0))
    with pytest.raises(ValueError, match="longer than max_len=10"):
        ro.generate_batch(params, 0, jax.random.key(0), [p])


def test_missing_sft_checkpoint_and_staleness(tmp_path):
    with pytest.raises(ValueError, match="config.init_from is empty"):
        GRPOTrainer(tiny_config(), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no SFT checkpoint found at config.init_from"):
        GRPOTrainer(tiny_config(init_from=str(tmp_path / "nope")), str(tmp_path))
    with pytest.raises(ValueError, match="(?i)unknown staleness policy 'async'"):
        check_staleness(tiny_config(**{"staleness.policy": "async"}))
    assert check_staleness(tiny_config()) == ("sync", 0)
    for policy in ("fixed", "sync_interval", "bounded_async"):
        cfg = tiny_config(**{"staleness.policy": policy, "staleness.max_lag": 4})
        assert check_staleness(cfg) == (policy, 4)
    with pytest.raises(ValueError, match="'sync' policy has max_lag 0"):
        check_staleness(tiny_config(**{"staleness.max_lag": 2}))
    with pytest.raises(ValueError, match="max_lag must be an integer >= 0"):
        check_staleness(tiny_config(**{"staleness.policy": "fixed", "staleness.max_lag": -1}))
    bad_publish = [("fixed", 2, 2, "every version must be published"),
                   ("sync_interval", 4, 3, "must divide it"),
                   ("bounded_async", 1, 3, "must be <= S \\+ 1 = 2")]
    for policy, lag, k, msg in bad_publish:
        with pytest.raises(ValueError, match=msg):
            check_staleness(tiny_config(**{"staleness.policy": policy, "staleness.max_lag": lag,
                                           "staleness.publish_every": k}))
    # The trainer itself accepts every policy (the engine runs them).
    GRPOTrainer(tiny_config(**{"init_from": _random_init(tmp_path / "init"),
                               "staleness.policy": "fixed", "staleness.max_lag": 2}),
                str(tmp_path / "run"))


def _random_init(path) -> str:
    """A random tiny model saved as the "SFT checkpoint" (matches TINY's model)."""
    from async_grpo import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
    _, _, params = _tiny_model()
    with ckpt_lib.make_manager(os.path.join(str(path), "checkpoints")) as m:
        ckpt_lib.save(m, 1, {"params": params})
    return str(path)


def test_train_binary_fixed_staleness_end_to_end(tmp_path):
    """experiments.train with staleness fixed S=2: the engine runs it, lags 0,1,2,2 logged."""
    init, rl_dir = _random_init(tmp_path / "init"), str(tmp_path / "grpo")
    log = _run("experiments.train", rl_dir, f"--config.init_from={init}",
               "--config.staleness.policy=fixed", "--config.staleness.max_lag=2",
               "--config.staleness.queue_size=2", "--config.rl.steps=4",
               "--config.rl.eval_every=0", "--config.diagnostics.bias_every=2")
    assert "steps/s" in log
    recs = metrics_lib.read_metrics(rl_dir)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert [r["lag"] for r in recs] == [0, 1, 2, 2]
    lag_keys = {"lag", "version", "lag/min", "lag/mean", "lag/max", "lag/frac_0", "lag/frac_1",
                "lag/frac_2", "lag/frac_over", "drift/within_cycle", "drift/cumulative",
                "drift/version_gap"}
    for r in recs:
        assert lag_keys <= set(r), lag_keys - set(r)
        assert r["version"] == r["step"] - 1 - r["lag"] and r["lag/max"] == r["lag"]
        assert r[f"lag/frac_{r['lag']}"] == 1.0
    assert {"bias/norm", "bias/rel"} <= set(recs[0]) and {"bias/norm"} <= set(recs[2])
    _check_finite(recs, TRAIN_KEYS | lag_keys | {"bias/norm", "update_norm"})
    assert sorted(os.listdir(os.path.join(rl_dir, "checkpoints"))) == ["2", "4"]


def test_base_config_has_the_engine_defaults():
    from async_grpo.rl import engine  # pylint: disable=import-outside-toplevel
    c = addition.get_config()
    before = c.to_dict()
    engine.add_engine_defaults(c)
    assert c.to_dict() == before   # common.py already holds every engine field
    s = engine.EngineSettings.from_config(c)
    assert s == engine.EngineSettings(policy=s.policy)   # and the same defaults


@pytest.mark.parametrize("name", ["addition", "multiplication", "countdown", "reverse"])
def test_configs_build(name):
    import importlib  # pylint: disable=import-outside-toplevel
    c = importlib.import_module(f"experiments.configs.{name}").get_config()
    assert "python -m experiments.sft" in importlib.import_module(
        f"experiments.configs.{name}").__doc__
    task = build.build_task(c)
    tok = build.build_tokenizer(c)
    mc = build.build_model_config(c, tok)
    build.check_context(mc, build.prompt_budget(task), build.response_budget(c, task))
    assert c.staleness.policy == "sync" and c.staleness.max_lag == 0
