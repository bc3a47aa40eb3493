"""The one collapse definition (async_grpo.collapse) against a plain-Python reference."""

import math

import jax
import numpy as np
import pytest

from async_grpo import collapse as C


def reference(rules, trace, initial=None):
    """The module docstring's rules, written out step by step in Python floats."""
    value = init = best = None
    if initial is not None:
        value = init = best = float(initial)
    streak, seen = 0, initial is not None
    for t in range(len(trace[rules.metric])):
        raw = float(trace[rules.metric][t])
        finite = math.isfinite(raw) and bool(trace.get("finite", [True] * (t + 1))[t])
        value = raw if (rules.ema == 0 or not seen) else rules.ema * value + (1 - rules.ema) * raw
        if not seen:
            init = value
            best = -math.inf
        seen = True
        if math.isfinite(value):
            best = max(best, value)
        after = t >= rules.warmup
        drop = ceiling = floor = False
        if rules.drop_frac > 0:
            thr = rules.drop_frac * best if rules.baseline == "zero" else \
                init + rules.drop_frac * (best - init)
            drop = after and value < thr
        if rules.max_metric:
            ceiling = after and float(trace[rules.max_metric][t]) > rules.max_value
        if rules.min_metric:
            floor = after and float(trace[rules.min_metric][t]) < rules.min_value
        streak = streak + 1 if (drop or ceiling or floor) else 0
        if not finite:
            return t, "non_finite"
        if streak >= rules.patience:
            why = "drop" if drop else "ceiling" if ceiling else "floor"
            return t - rules.patience + 1, why
    return -1, "none"


RULES = [
    C.CollapseRules(metric="r", drop_frac=0.5, baseline="zero", warmup=3),
    C.CollapseRules(metric="r", drop_frac=0.6, baseline="init", warmup=0, patience=4),
    C.CollapseRules(metric="r", drop_frac=0.5, baseline="zero", ema=0.8, warmup=5, patience=2),
    C.CollapseRules(metric="r", max_metric="kl", max_value=0.9, min_metric="ent",
                    min_value=0.05, warmup=2, patience=3),
]


@pytest.mark.parametrize("rules", RULES, ids=[f"rules{i}" for i in range(len(RULES))])
def test_detect_equals_the_reference_on_random_traces(rules):
    rng = np.random.default_rng(0)
    n, trials = 40, 60
    walk = np.cumsum(rng.normal(0, 0.15, (trials, n)), axis=1) + 1.0
    traces = {"r": walk.astype(np.float32), "kl": rng.random((trials, n)).astype(np.float32),
              "ent": rng.random((trials, n)).astype(np.float32),
              "finite": rng.random((trials, n)) > np.where(np.arange(trials) % 3 == 0, 0.02,
                                                           0.0)[:, None]}
    state = jax.jit(jax.vmap(lambda tr: C.detect(rules, tr)))(traces)
    found = set()
    for i in range(trials):
        step, why = reference(rules, {k: v[i] for k, v in traces.items()})
        got = (int(state["collapse_step"][i]), C.reason_name(state["reason"][i]))
        assert got == (step, why), i
        found.add(why)
    assert len(found) >= 2, found       # the traces exercise more than one outcome


def test_hand_cases_and_initial_value():
    rules = C.CollapseRules(metric="J", drop_frac=0.5, baseline="init", warmup=2, patience=2)
    # J_0 = −1 (given), best 1 at t=1, threshold 0: below at t=3, 4 -> collapse at 3.
    trace = {"J": np.array([0.0, 1.0, 0.5, -0.2, -0.3, 0.9])}
    s = C.detect(rules, trace, initial_value=-1.0)
    assert int(s["collapse_step"]) == 3 and C.reason_name(s["reason"]) == "drop"
    assert reference(rules, trace, initial=-1.0) == (3, "drop")
    # Non-finite counts at once, whatever the patience and the warm-up.
    s = C.detect(rules, {"J": np.array([0.0, np.nan, 1.0])})
    assert int(s["collapse_step"]) == 1 and C.reason_name(s["reason"]) == "non_finite"
    s = C.detect(rules, {"J": np.zeros(3), "finite": np.array([True, True, False])})
    assert int(s["collapse_step"]) == 2
    # Nothing wrong: no collapse.
    s = C.detect(rules, {"J": np.linspace(0, 1, 20)})
    assert int(s["collapse_step"]) == -1 and C.reason_name(s["reason"]) == "none"
    assert C.explain(rules, {"collapse_step": 3, "reason": 2}).startswith("collapse at step 3: drop")


def test_update_is_jittable_and_vmappable_over_cells():
    rules = RULES[1]
    traces = {"r": np.stack([np.linspace(1, 0, 30), np.linspace(0, 1, 30)]).astype(np.float32)}
    out = jax.jit(jax.vmap(lambda tr: C.detect(rules, tr)))(traces)
    assert out["collapse_step"].tolist() == [
        reference(rules, {"r": traces["r"][0]})[0], reference(rules, {"r": traces["r"][1]})[0]]


def test_describe_names_the_active_rules():
    d = C.CollapseRules(metric="reward", drop_frac=0.5, ema=0.9, max_metric="kl",
                        max_value=1.0, warmup=10, patience=3).describe()
    assert "EMA_0.9(reward) < 0.5·best" in d and "kl > 1" in d and "for 3 step(s)" in d
    assert C.CollapseRules().describe() == "non-finite, or reward non-finite"


@pytest.mark.parametrize("kwargs,match", [
    (dict(drop_frac=1.0), r"collapse.drop_frac=1.0: must be in \[0, 1\)"),
    (dict(baseline="best"), "collapse.baseline='best': must be one of"),
    (dict(patience=0), "collapse.patience=0: must be an integer >= 1"),
    (dict(warmup=-1), "collapse.warmup=-1"),
    (dict(ema=1.5), "collapse.ema=1.5"),
    (dict(metric=""), "collapse.metric=''"),
    (dict(max_value=float("nan")), "collapse.max_value=nan"),
])
def test_bad_rules_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        C.CollapseRules(**kwargs)
    with pytest.raises(ValueError, match="Unknown collapse setting"):
        C.CollapseRules.from_dict({"reward_frac": 0.5})


def _delayed_gd(lag, frac, steps=400):
    """x_{t+1} = x_t − k·x_{t−S} from x = 1 (history included), k = frac × the exact stability
    bound 2·sin(π/(2(2S + 1))); the metric J = −x²."""
    k = frac * 2 * math.sin(math.pi / (2 * (2 * lag + 1)))
    x = np.ones(steps + lag + 1)
    for t in range(lag, steps + lag):
        x[t + 1] = x[t] - k * x[t - lag]
    return -x[lag:] ** 2


@pytest.mark.parametrize("lag", [4, 8, 16])
def test_a_decaying_transient_is_flagged_but_recovered(lag):
    """Below the stability bound the first swing trips the drop rule (a candidate), and the run
    converges: `recovered` says transient. Above the bound it does not."""
    rules = C.CollapseRules(metric="J", drop_frac=0.5, baseline="init", warmup=2, patience=1)
    j = _delayed_gd(lag, 0.8)
    state = C.detect(rules, {"J": j})
    c = int(state["collapse_step"])
    assert c >= 0                                  # the rule flags the first swing ...
    assert abs(j[-1]) < 1e-2 * abs(j[0])           # ... of a run that converges
    assert C.recovered(rules, j, c)
    j_bad = _delayed_gd(4, 1.05)
    c_bad = int(C.detect(rules, {"J": j_bad})["collapse_step"])
    assert c_bad >= 0 and not C.recovered(rules, j_bad, c_bad)
    assert not C.recovered(rules, j, -1)
    assert not C.recovered(rules, j[:c + 5], c)    # too short to judge
