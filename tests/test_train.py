"""SFT -> GRPO end to end through the real binaries (subprocesses), the learner step, bad inputs."""

import glob
import math
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from async_grpo import config as config_lib
from async_grpo import losses, models
from async_grpo import metrics as metrics_lib
from async_grpo.rl import components
from async_grpo.rl.objectives import GRPOObjective
from async_grpo.rl.rollout import Rollouts
from async_grpo.tasks import CharTokenizer, get_task
from experiments.configs import addition
from tests import helpers
from tests._subprocess import run_binary_rows
from tests.helpers import TINY, tiny_config

REPO = helpers.repo_root()
CONFIG = "experiments/configs/addition.py"

SFT_KEYS = {"step", "time", "loss", "token_accuracy", "grad_norm", "heldout/accuracy", "wall_s"}
TRAIN_KEYS = {"step", "time", "loss", "grad_norm", "entropy", "kl_ref_k1", "kl_ref_k3",
              "rollout/reward", "rollout/response_length", "rollout/malformed_frac",
              "loss/clip_frac", "loss/kl_behavior_k3", "loss/ess_frac", "response_length",
              "steps_per_sec", "lag", "version"}


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


@pytest.mark.slow  # ~26 s (two binaries, a resume); in the default suite
# test_train_binary_fixed_staleness_end_to_end runs experiments.train as a process
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
    _run("experiments.train", rl_dir, f"--config.init_from={sft_dir}", "--config.rl.steps=4",
         "--allow_changed=rl.steps")
    recs = metrics_lib.read_metrics(rl_dir)
    assert [r["step"] for r in recs] == [0, 1, 2, 3, 4]
    assert "4" in os.listdir(os.path.join(rl_dir, "checkpoints"))


def _tiny_model(max_seq_len=24):
    tok = CharTokenizer()
    cfg = models.get_config("tiny", vocab_size=tok.vocab_size, max_seq_len=max_seq_len)
    graphdef, params = models.init_model(cfg, 0)
    return tok, graphdef, params


@pytest.mark.parametrize("loss", ["grpo", "dapo", "rloo", "total_derivative"])
def test_rollout_and_one_update(loss):
    tok, graphdef, params = _tiny_model()
    task = get_task("addition", num_digits=2)
    score = task.score_batch   # a dense reward, so that the random model gets a signal
    task.score_batch = lambda ps, rs: (np.asarray([r.count("1") / max(len(r), 1) for r in rs],
                                                  np.float32), score(ps, rs)[1])
    ro = Rollouts(graphdef, task, tok, group_size=4, max_prompt_len=7, max_new_tokens=5)
    problems = task.sample_batch(np.random.default_rng(0), 3)
    batch = ro.generate_batch(params, 7, jax.random.key(0), problems)
    assert batch.version == 7 and len(batch.responses) == 12
    assert batch.arrays["response_tokens"].shape == (12, 5)
    assert batch.arrays["rewards"].shape == (12,)
    assert 0.0 <= batch.stats["reward"] <= 1.0
    obj = GRPOObjective(graphdef, losses.make_loss(loss), losses.make_loss("total_derivative"),
                        0.0, 4, 1.0)
    (value, m), grads = jax.jit(jax.value_and_grad(obj, has_aux=True))(   # jit: eager op
        params, batch.arrays, obj.prepare(batch.arrays, params))          # dispatch is slower
    m = metrics_lib.to_scalars(m)
    assert all(math.isfinite(v) for v in m.values()), m
    assert abs(m["kl_ref_k3"]) < 1e-5   # the reference is the current policy
    assert {"entropy", "response_length", "reward"} <= set(m) and math.isfinite(float(value))
    assert m["loss/zero_adv_group_frac"] < 1          # some group carries a signal …
    assert any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads))   # … so θ moves


# Bad values through each binary: every row fails fast with a message naming the key.
BAD_VALUES = [
    ("rl.optimizer.lr", "-1.0", "rl.optimizer.lr=-1.0: must be a finite number > 0"),
    ("rl.optimizer.name", "lamb", "rl.optimizer.name='lamb': must be one of"),
    ("rl.group_size", "1", "rl.group_size=1: must be an integer >= 2"),
    ("rl.steps", "-5", "rl.steps=-5: must be an integer >= 1"),
    ("rl.temperature", "0.0", "rl.temperature=0.0: must be a finite number > 0"),
    ("rl.top_p", "1.5", r"rl.top_p=1.5: must be a finite number in \[0, 1\]"),
    ("rl.loss", "grpoo", "rl.loss='grpoo'.*Unknown loss 'grpoo'; valid names"),
    ("rl.grad_mode", "both", "rl.grad_mode='both': must be one of"),
    ("sft.steps", "0", "sft.steps=0: must be an integer >= 1"),
    ("sft.batch_size", "0", "sft.batch_size=0: must be an integer >= 1"),
    ("task.name", "additon", "task.name='additon': must be one of"),
    ("model.preset", "huge", "model.preset='huge': must be one of"),
    ("mesh.axes", "foo=-1", "mesh.axes='foo=-1':.*unknown axis 'foo'"),
    ("staleness.policy", "async", "staleness.policy='async'.*Unknown staleness policy 'async'"),
    ("staleness.max_lag", "2", "staleness.policy='sync'.*'sync' policy has max_lag 0"),
    ("staleness.publish_every", "2", "every version must be published"),
    ("collapse.patience", "0", "collapse.patience=0: must be an integer >= 1"),
    ("log_every", "0", "log_every=0: must be an integer >= 1"),
]


@pytest.mark.parametrize("key,value,match", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_values_are_refused_by_the_one_config_parse(key, value, match):
    c = helpers.tiny_config_dict()
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    with c.unlocked():
        node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], str) else value
    with pytest.raises(ValueError, match=match):
        config_lib.RunConfig.from_config(c)


# What the binaries import before they parse their flags (not the binaries themselves).
BINARY_DEPS = ("jax", "async_grpo.distributed", "async_grpo.rl.components",
               "async_grpo.rl.pipeline", "async_grpo.sft", "experiments.run_config")


def _check_refused(code, err, match):
    assert code != 0, (match, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    assert re.search(match, err), (match, err[-2000:])
    assert "config:\n" not in err, (match, err[-2000:])     # refused at the parse


@pytest.mark.parametrize("module", ["experiments.train", "experiments.sft"])
def test_binaries_refuse_bad_values_fast_without_a_traceback(module, tmp_path):
    """Every row of BAD_VALUES, plus a workdir that is a file and one that cannot be written,
    through the binary itself: a non-zero exit at the config parse (before the binary logs its
    parsed config, so before any model, task or run is built), the key named, no traceback.

    Each row runs the binary's __main__ as `python -m` would, in a fork of one interpreter that
    imported the binary's dependencies once (`run_binary_rows`: one start-up instead of 20); the
    first row also runs as a plain `python -m`, so that the forks hide nothing."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    rows = [([f"--workdir={tmp_path / 'w'}", f"--config.{key}={value}"], match)
            for key, value, match in BAD_VALUES]
    rows += [([f"--workdir={a_file}"], "is a file, not a directory"),
             (["--workdir=/proc/async_grpo_test/run"], "cannot be written")]
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    results = run_binary_rows(module, [[f"--config={CONFIG}", *flags] for flags, _ in rows],
                              preload=BINARY_DEPS, env=env, timeout=600)
    assert len(results) == len(rows)
    for (code, err), (_, match) in zip(results, rows):
        _check_refused(code, err, match)
    flags, match = rows[0]
    proc = subprocess.run([sys.executable, "-m", module, f"--config={CONFIG}", *flags], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    _check_refused(proc.returncode, proc.stderr, match)
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_config_defaults_live_in_one_place():
    """experiments/configs start from RunConfig's defaults, and the parse round-trips them."""
    assert config_lib.RunConfig.from_config(config_lib.default_config_dict()) == \
        config_lib.RunConfig()
    c = addition.get_config()
    rc = config_lib.RunConfig.from_config(c)
    assert rc.rl.steps == c.rl.steps == 500 and rc.staleness.policy == "sync"
    assert rc.to_dict() == c.to_dict()           # nothing is added or lost by the parse
    with pytest.raises(ValueError, match=r"rl.optimiser=.*unknown key; valid keys of rl"):
        config_lib.RunConfig.from_config({"rl": {"optimiser": {}}})
    text = config_lib.describe(rc)
    assert "rl.optimizer.lr = 5e-05  # peak learning rate" in text
    assert "staleness.policy = 'sync'" in text and "collapse.metric = 'reward'" in text


def test_components_refuse_a_prompt_longer_than_the_context(tmp_path):
    # 3-digit addition: bos + "123+456=" is 9 tokens, + 6 new tokens = 15 > 12.
    cfg = tiny_config(**{"task.kwargs.num_digits": 3, "model.max_seq_len": 12})
    with pytest.raises(ValueError, match="model.max_seq_len=12 is shorter than the 15 tokens"):
        components.build_sft(cfg)
    tok, graphdef, params = _tiny_model(max_seq_len=24)
    ro = Rollouts(graphdef, get_task("reverse", max_len=30), tok, group_size=2, max_prompt_len=10,
                  max_new_tokens=4)
    p = get_task("reverse", min_len=20, max_len=20).sample(np.random.default_rng(0))
    with pytest.raises(ValueError, match="longer than max_len=10"):
        ro.generate_batch(params, 0, jax.random.key(0), [p])
    with pytest.raises(ValueError, match=r"group_size must be >= 2.*got 1"):
        Rollouts(graphdef, get_task("addition"), tok, group_size=1, max_prompt_len=8,
                 max_new_tokens=4)


def test_missing_sft_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="init_from is empty"):
        components.build_grpo(tiny_config())
    with pytest.raises(FileNotFoundError, match="init_from=.*nope.*no SFT checkpoint found"):
        components.build_grpo(tiny_config(init_from=str(tmp_path / "nope")))
    # Every policy builds (the pipeline runs them).
    init = helpers.random_init(tmp_path / "init")
    for policy in ("fixed", "sync_interval", "random_uniform", "bounded_async"):
        components.build_grpo(tiny_config(**{"init_from": init, "staleness.policy": policy,
                                              "staleness.max_lag": 2}))


def test_train_binary_fixed_staleness_end_to_end(tmp_path):
    """experiments.train with staleness fixed S=2: lags 0,1,2,2 logged."""
    init, rl_dir = helpers.random_init(tmp_path / "init"), str(tmp_path / "grpo")
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


@pytest.mark.parametrize("name", ["addition", "multiplication", "countdown", "reverse"])
def test_configs_parse_and_carry_their_launch_command(name):
    import importlib  # pylint: disable=import-outside-toplevel
    mod = importlib.import_module(f"experiments.configs.{name}")
    assert "python -m experiments.sft" in mod.__doc__
    rc = config_lib.RunConfig.from_config(mod.get_config())
    assert rc.task.name == name and rc.staleness.policy == "sync" and rc.staleness.max_lag == 0
    components._task_and_budgets(rc)   # pylint: disable=protected-access
