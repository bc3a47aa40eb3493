"""Tests of the staleness policies and the host-side rollout generator thread."""

import threading
import time

import jax
import jax.numpy as jnp
import pytest

from async_grpo import generator as gen
from async_grpo import staleness


@pytest.mark.parametrize("s", [0, 1, 2, 5])
def test_fixed_policy_versions(s):
    p = staleness.get_policy("fixed", s)
    assert [p.required_version(t) for t in range(8)] == [max(t - s, 0) for t in range(8)]
    # The fixed version is used whatever is published.
    assert all(p.choose_version(t, latest=100) == max(t - s, 0) for t in range(8))
    assert p.deterministic


def test_sync_interval_lag_cycles():
    p = staleness.get_policy("sync_interval", 4)
    lags = [t - p.choose_version(t, latest=t) for t in range(12)]
    assert lags == [0, 1, 2, 3] * 3
    for s in (0, 1):
        q = staleness.get_policy("sync_interval", s)
        assert [q.required_version(t) for t in range(5)] == list(range(5))


def test_bounded_async_takes_newest_allowed():
    p = staleness.get_policy("bounded_async", 3)
    assert not p.deterministic
    assert p.required_version(10) == 7
    assert p.choose_version(10, latest=8) == 8
    assert p.choose_version(10, latest=12) == 10  # never newer than the step itself
    with pytest.raises(ValueError, match="Version 7 is required"):
        p.choose_version(10, latest=6)


@pytest.mark.parametrize("name,lag,match", [
    ("fixd", 1, "Unknown staleness policy 'fixd'.*valid policies"),
    ("fixed", -1, "max_lag must be an integer >= 0, got -1"),
    ("fixed", 1.5, "max_lag must be an integer"),
    ("sync", 2, "'sync' policy has max_lag 0"),
])
def test_bad_policy_arguments(name, lag, match):
    with pytest.raises(ValueError, match=match):
        staleness.get_policy(name, lag)


def _run_toy_learner(policy, num_steps, *, queue_size=2, learner_sleep=0.0, gen_sleep=0.0):
    """A learner whose 'parameters' are its version number; returns the lags it saw."""
    store = gen.ParamStore()
    store.publish(0, 0)

    def generate_fn(params, version, step):
        time.sleep(gen_sleep)
        assert params == version
        return {"made_by": params}

    lags = []
    with gen.RolloutGenerator(store, policy, generate_fn, start_step=0, end_step=num_steps,
                              queue_size=queue_size) as g:
        for t in range(num_steps):
            item = g.next(timeout=10)
            assert item.step == t and item.batch["made_by"] == item.version
            lags.append(item.lag)
            time.sleep(learner_sleep)
            store.publish(t + 1, t + 1)
            store.release_below(policy.oldest_needed(t + 1, item.version))
    return lags


@pytest.mark.parametrize("s", [0, 1, 3])
def test_generator_fixed_lags_exact(s):
    lags = _run_toy_learner(staleness.get_policy("fixed", s), 10, queue_size=s + 1)
    assert lags == [min(t, s) for t in range(10)]


def test_generator_sync_interval_lags():
    lags = _run_toy_learner(staleness.get_policy("sync_interval", 3), 9, queue_size=3)
    assert lags == [0, 1, 2] * 3


@pytest.mark.parametrize("learner_sleep,gen_sleep", [(0.0, 0.01), (0.01, 0.0)])
def test_generator_bounded_async_respects_bound(learner_sleep, gen_sleep):
    s = 2
    lags = _run_toy_learner(staleness.get_policy("bounded_async", s), 12, queue_size=s + 1,
                            learner_sleep=learner_sleep, gen_sleep=gen_sleep)
    assert all(0 <= lag <= min(t, s) for t, lag in enumerate(lags))
    if learner_sleep:  # a slow learner lets the generator run ahead: lags reach the bound.
        assert max(lags) == s


def test_generator_exception_reaches_learner_promptly():
    store = gen.ParamStore()
    store.publish(0, 0)

    def generate_fn(params, version, step):
        if step == 2:
            raise RuntimeError("reward function exploded")
        return step

    g = gen.RolloutGenerator(store, staleness.get_policy("fixed", 1), generate_fn,
                             start_step=0, end_step=10, queue_size=4).start()
    t0 = time.monotonic()
    with pytest.raises(gen.GeneratorError, match="(?s)in generate_fn.*RuntimeError: reward function exploded"):
        for t in range(10):
            g.next(timeout=10)
            store.publish(t + 1, t + 1)
    assert time.monotonic() - t0 < 5
    g.close()


def test_learner_exception_stops_generator():
    store = gen.ParamStore()
    store.publish(0, 0)
    g = gen.RolloutGenerator(store, staleness.get_policy("fixed", 0), lambda p, v, s: s,
                             start_step=0, end_step=100)
    with pytest.raises(ZeroDivisionError):
        with g:
            g.next(timeout=10)
            1 / 0  # pylint: disable=pointless-statement
    # The thread was waiting for version 1, which never comes; close() must have ended it.
    assert not g._thread.is_alive()  # pylint: disable=protected-access


def test_generator_resumes_mid_run():
    store = gen.ParamStore()
    store.publish(3, 3)  # a resumed run holds θ_3 (and what its policy still needs)
    store.publish(5, 5)
    g = gen.RolloutGenerator(store, staleness.get_policy("fixed", 2), lambda p, v, s: p,
                             start_step=7, end_step=8).start()
    item = g.next(timeout=10)
    assert (item.step, item.version, item.batch) == (7, 5, 5)
    g.close()


def test_param_store_rejects_old_versions_and_unknown_gets():
    store = gen.ParamStore()
    store.publish(1, "a")
    with pytest.raises(ValueError, match="Versions must increase"):
        store.publish(1, "b")
    with pytest.raises(KeyError, match="Version 0 is not held"):
        store.get(0)
    stop = threading.Event()
    stop.set()
    with pytest.raises(gen.GeneratorStopped):
        store.wait_for(2, stop)


@pytest.mark.parametrize("name", staleness.SCHEDULED)
def test_one_schedule_on_the_host_and_in_jit(name):
    """`scheduled_lag` gives the same lags with Python ints (the threaded pipeline) and traced
    arrays (the simulator's scan, vmapped over S); the policy's host versions follow it."""
    s_values = [0] if name == "sync" else [0, 1, 3]
    keys = jax.random.split(jax.random.PRNGKey(0), 25)
    traced = jax.jit(jax.vmap(jax.vmap(
        lambda t, s, k: staleness.scheduled_lag(name, t, s, k, geometric_p=0.3),
        (0, None, 0)), (None, 0, None)))(jnp.arange(25), jnp.asarray(s_values), keys)
    for i, s in enumerate(s_values):
        host = [staleness.scheduled_lag(name, t, s, keys[t], geometric_p=0.3) for t in range(25)]
        assert host == traced[i].tolist()
        assert all(0 <= lag <= min(t, s) for t, lag in enumerate(host))
        p = staleness.StalenessPolicy(name, s, geometric_p=0.3)
        assert [p.required_version(t) for t in range(25)] == [t - p.lag(t) for t in range(25)]


@pytest.mark.parametrize("name", staleness.RANDOM)
def test_random_policies_are_seeded_schedules(name):
    p = staleness.StalenessPolicy(name, 4, seed=1)
    lags = [p.lag(t) for t in range(40)]
    assert lags == [p.lag(t) for t in range(40)]          # recomputable (resume)
    assert lags != [staleness.StalenessPolicy(name, 4, seed=2).lag(t) for t in range(40)]
    assert all(0 <= lag <= min(t, 4) for t, lag in enumerate(lags)) and len(set(lags)) >= 3
    assert p.deterministic and not p.monotone
    assert p.oldest_needed(10, 9) == 6                       # any of θ_6..θ_9 may come back
    assert p.choose_version(10, latest=10) == 10 - p.lag(10)
    with pytest.raises(ValueError, match="every version must be published"):
        staleness.check_publish_every(p, 2)
    # Through the generator thread: exactly the schedule, whatever the timing.
    got = _run_toy_learner(p, 20, queue_size=3, gen_sleep=0.002)
    assert got == lags[:20]


def test_bounded_async_has_no_schedule():
    with pytest.raises(ValueError, match="bounded_async.*random_uniform"):
        staleness.scheduled_lag("bounded_async", 3, 2)
    with pytest.raises(ValueError, match="bounded_async.*random_uniform"):
        staleness.StalenessPolicy("bounded_async", 2).lag(3)
    with pytest.raises(ValueError, match="geometric_p must be in"):
        staleness.StalenessPolicy("random_geometric", 2, geometric_p=0.0)
