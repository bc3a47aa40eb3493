"""Tests of the staleness policies and the host-side rollout generator thread."""

import threading
import time

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
            store.release_below(policy.required_version(t + 1))
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
