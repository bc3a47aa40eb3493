"""The asynchronous engine in-process: S = 0 ≡ sync, exact lags, faults, gradient modes."""

import math
import os
import time

import jax
import numpy as np
import pytest

from async_grpo import checkpoint as ckpt_lib
from async_grpo import metrics as metrics_lib
from async_grpo import models
from async_grpo.generator import GeneratorError
from async_grpo.rl import engine
from async_grpo.staleness import StalenessPolicy
from async_grpo.tasks import CharTokenizer
from tests.test_train import tiny_config


def make_init(path: str) -> str:
    """A random tiny model saved as the "SFT checkpoint" the trainer starts from."""
    tok = CharTokenizer()
    _, params = models.init_model(models.get_config("tiny", vocab_size=tok.vocab_size,
                                                    max_seq_len=24), 0)
    with ckpt_lib.make_manager(os.path.join(path, "checkpoints")) as m:
        ckpt_lib.save(m, 1, {"params": params})
    return path


def dense_rewards(trainer):
    """Replaces the task reward by a dense one (fraction of '1' characters) so that a random
    model gets a nonzero GRPO signal; optional `fail_at`/`nan_at` steps inject faults."""
    score_batch = trainer.task.score_batch

    def scored(problems, responses):
        rewards, stats = score_batch(problems, responses)
        dense = np.asarray([r.count("1") / max(len(r), 1) for r in responses], np.float32)
        return dense, stats

    trainer.task.score_batch = scored
    return trainer


def config(tmp_path, **kw):
    base = {"init_from": str(tmp_path / "init"), "rl.eval_every": 0, "rl.steps": 4,
            "rl.checkpoint_every": 0, "rl.optimizer.lr": 3e-3}
    base.update(kw)
    c = tiny_config()
    engine.add_engine_defaults(c)
    for key, value in base.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


@pytest.fixture(name="init_dir")
def _init_dir(tmp_path):
    return make_init(str(tmp_path / "init"))


def run_engine(cfg, workdir, wrap=None):
    trainer = dense_rewards(engine.build_trainer(cfg, str(workdir)))
    if wrap is not None:
        wrap(trainer)
    eng = engine.AsyncEngine(trainer)
    out = eng.run()
    return eng, out, metrics_lib.read_metrics(str(workdir))


def _equal(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))


def test_s0_matches_synchronous_trainer(tmp_path, init_dir):
    """S = 0 through the generator thread, sharded donated learner and diagnostics equals the
    synchronous loop (generate with θ_t, then update) of GRPOTrainer bit for bit."""
    steps = 3
    sync = dense_rewards(engine.build_trainer(config(tmp_path, **{"rl.steps": steps}),
                                              str(tmp_path / "sync")))
    params, opt_state = sync.ref_params, sync.optimizer.init(sync.ref_params)
    for t in range(steps):
        batch = sync.generate_fn(params, t, t)
        params, opt_state, _ = sync.train_step(params, opt_state, batch.arrays, sync.ref_params)
    for policy in ("fixed", "bounded_async"):
        cfg = config(tmp_path, **{"rl.steps": steps, "staleness.policy": policy,
                                  "staleness.max_lag": 0, "diagnostics.bias_every": 2})
        eng, _, recs = run_engine(cfg, tmp_path / f"async_{policy}")
        assert [r["lag"] for r in recs] == [0] * steps
        assert _equal(jax.device_get(eng.params), jax.device_get(params)), policy


@pytest.mark.parametrize("policy,max_lag,expected", [
    ("fixed", 2, [0, 1, 2, 2, 2]),
    ("sync_interval", 2, [0, 1, 0, 1, 0]),
])
def test_exact_lag_logging(tmp_path, init_dir, policy, max_lag, expected):
    cfg = config(tmp_path, **{"rl.steps": 5, "staleness.policy": policy,
                              "staleness.max_lag": max_lag, "staleness.queue_size": 2})
    _, _, recs = run_engine(cfg, tmp_path / "run")
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    assert [r["lag"] for r in recs] == expected
    for r, lag in zip(recs, expected):
        assert r["version"] == r["step"] - 1 - lag
        assert r["lag/min"] == r["lag/max"] == lag and r["lag/mean"] == lag
        assert r[f"lag/frac_{lag}"] == 1.0 and r["lag/frac_over"] == 0.0
        assert r["drift/version_gap"] == lag
        if lag == 0:
            assert r["drift/within_cycle"] == 0.0
    assert max(r["drift/within_cycle"] for r in recs) > 0.0 and recs[-1]["drift/cumulative"] > 0
    keys = {"loss/ratio_mean", "loss/ratio_max", "loss/clip_frac", "loss/kl_behavior_k1",
            "loss/kl_behavior_k3", "loss/ess_frac", "grad_norm", "update_norm",
            "drift/cumulative", "cos/consecutive_grads", "cos/consecutive_updates", "entropy",
            "reward", "response_length", "generator/dropped"}
    assert keys <= set(recs[-1]), keys - set(recs[-1])


@pytest.mark.parametrize("policy,max_lag", [("sync", 0), ("fixed", 2), ("sync_interval", 3)])
def test_held_snapshots_are_only_those_still_needed(tmp_path, init_dir, policy, max_lag):
    """After step t the store (and so the checkpoint's history) holds exactly the versions a
    later batch can be generated by: one snapshot with S = 0, S + 1 with `fixed`."""
    steps = 6
    cfg = config(tmp_path, **{"rl.steps": steps, "rl.checkpoint_every": 1, "keep_checkpoints": 100,
                              "staleness.policy": policy, "staleness.max_lag": max_lag,
                              "staleness.queue_size": 2})
    run_engine(cfg, tmp_path / "run")
    p = StalenessPolicy(policy, max_lag)
    with ckpt_lib.make_manager(str(tmp_path / "run" / "checkpoints"), max_to_keep=None) as m:
        assert m.all_steps() == list(range(1, steps + 1))
        for done in m.all_steps():
            _, items = ckpt_lib.restore(m, {}, step=done, with_meta=True)
            oldest = p.required_version(done)    # these policies' versions are deterministic
            expected = list(range(oldest, done + 1)) if done < steps else list(range(oldest, done))
            assert items["meta"]["history_versions"] == expected, (done, expected)


def test_bounded_async_lag_bound_and_determinism_of_fixed(tmp_path, init_dir):
    cfg = config(tmp_path, **{"rl.steps": 6, "staleness.policy": "bounded_async",
                              "staleness.max_lag": 1, "staleness.queue_size": 3})
    _, _, recs = run_engine(cfg, tmp_path / "ba")
    assert all(0 <= r["lag"] <= 1 and r["lag/frac_over"] == 0.0 for r in recs)
    assert all(r["generator/dropped"] == 0 for r in recs)
    # fixed: two runs give bit-identical parameters whatever the thread timing (slow one).
    cfg = config(tmp_path, **{"rl.steps": 4, "staleness.policy": "fixed",
                              "staleness.max_lag": 1, "staleness.queue_size": 2})
    e1, _, _ = run_engine(cfg, tmp_path / "f1")

    def slow(trainer):
        gen = trainer.generate_fn
        trainer.generate_fn = lambda p, v, s: (time.sleep(0.05 * (s % 2)), gen(p, v, s))[1]

    e2, _, _ = run_engine(cfg, tmp_path / "f2", wrap=slow)
    assert _equal(jax.device_get(e1.params), jax.device_get(e2.params))


def test_generator_exception_stops_learner_with_traceback(tmp_path, init_dir):
    def failing(trainer):
        gen = trainer.generate_fn

        def generate(params, version, step):
            if step == 2:
                raise RuntimeError("reward function exploded")
            return gen(params, version, step)

        trainer.generate_fn = generate

    cfg = config(tmp_path, **{"rl.steps": 6, "staleness.policy": "fixed",
                              "staleness.max_lag": 1})
    t0 = time.time()
    with pytest.raises(GeneratorError, match="(?s)Traceback.*in generate.*reward function exploded"):
        run_engine(cfg, tmp_path / "run", wrap=failing)
    assert time.time() - t0 < 60


def test_non_finite_marks_collapse_and_keeps_last_finite_checkpoint(tmp_path, init_dir):
    def poison(trainer):
        gen = trainer.generate_fn

        def generate(params, version, step):
            batch = gen(params, version, step)
            if step == 2:
                batch.arrays["rewards"] = batch.arrays["rewards"] * np.nan
            return batch

        trainer.generate_fn = generate

    cfg = config(tmp_path, **{"rl.steps": 6, "rl.checkpoint_every": 1,
                              "staleness.policy": "fixed", "staleness.max_lag": 1})
    eng, out, recs = run_engine(cfg, tmp_path / "run", wrap=poison)
    assert out["collapsed"] and out["collapse_step"] == 3
    assert recs[-1]["step"] == 3 and recs[-1]["finite"] is False and recs[-1]["collapsed"]
    assert ckpt_lib.latest_step(str(tmp_path / "run" / "checkpoints")) == 2
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(eng.params)))


@pytest.mark.parametrize("mode", ["corrected"])
def test_gradient_modes_and_bias_diagnostics(tmp_path, init_dir, mode):
    cfg = config(tmp_path, **{"rl.steps": 2, "staleness.policy": "fixed",
                              "staleness.max_lag": 1, "rl.grad_mode": mode, "rl.td_coef": 0.5,
                              "diagnostics.bias_every": 1})
    _, _, recs = run_engine(cfg, tmp_path / "run")
    for key in ("bias/norm", "bias/rel", "bias/cos_surrogate_td", "bias/cos_stale_fresh"):
        assert math.isfinite(recs[-1][key]), key
    assert any(k.startswith("loss/td/") for k in recs[-1]) == (mode == "corrected")
    assert recs[-1]["finite"]


def test_publish_every_validation():
    check = engine.check_publish_every
    check(StalenessPolicy("bounded_async", 3), 4)
    check(StalenessPolicy("sync_interval", 4), 2)
    with pytest.raises(ValueError, match="exactly"):
        check(StalenessPolicy("fixed", 2), 2)
    with pytest.raises(ValueError, match="<= S \\+ 1"):
        check(StalenessPolicy("bounded_async", 1), 3)
    with pytest.raises(ValueError, match="must divide"):
        check(StalenessPolicy("sync_interval", 3), 2)
