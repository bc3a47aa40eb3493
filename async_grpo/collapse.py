"""The project's one collapse definition: configurable rules over a metric trace.

A run *collapses* at the first step where one of these holds (each rule off when its threshold is
0 or its metric is ""):

* **non-finite** (always on): the step's ``finite`` flag is false (a non-finite loss, gradient or
  parameter) or the tracked metric is NaN/±inf. It counts at once, whatever the patience.
* **drop**: after `warmup` steps the tracked `metric` v_t (smoothed by an EMA with coefficient
  `ema`, 0 = raw) falls below a threshold between a baseline and its running best b_t (the best
  finite value seen so far, the initial value included):
      ``baseline="zero"``: v_t < f·b_t;   ``baseline="init"``: v_t < v_0 + f·(b_t − v_0),
  with f = `drop_frac`. "init" measures the drop against the progress made (J_0 may be far from
  zero); "zero" suits metrics that start near 0 (a reward).
* **ceiling**: after warm-up, `max_metric` > `max_value` (e.g. KL(behavior‖current) exploding).
* **floor**: after warm-up, `min_metric` < `min_value` (e.g. entropy collapse).

The drop, ceiling and floor rules must hold for `patience` consecutive steps; the collapse step
is then the first step of that streak (patience separates a sustained drop from the period-2
zig-zag that stale clipped updates show while still improving).

What a collapse is, and what it is not. A collapse is a *sustained* loss of the progress a run
has made (or a non-finite step): the run does not come back by itself. The drop rule sees only
the past, so what it flags is a *candidate*: a dip of the tracked metric that lasts `patience`
steps. Some dips recover. Gradient descent with a fixed delay S on a quadratic, run below its
exact stability bound ηλ < 2·sin(π/(2(2S + 1))), makes one large first swing (the S + 1 updates
computed at the starting point overshoot) and then converges; at 0.8× the bound and S = 4, 8,
16 the drop rule (baseline "init", drop 0.5, patience 1) flags that swing at step 7, 14 or 26,
and the run ends within 1 % of the optimum (tests/test_collapse.py). Such a run is a
*transient*, not a collapse. `recovered` tells the two apart after the fact, on a recorded
trace that goes on past the flag (the simulator's scan always does; a learner with `stop`
does not, and its flags stay candidates). The default rule is unchanged, so every stored
result keeps its numbers; an analysis that cares reports both counts: flagged, and flagged and
not recovered.

One implementation serves everyone: `update` is a pure jnp function of a small state pytree and
one step's metrics, so it runs inside the learner's jitted step (the asynchronous pipeline never
syncs the host for it), inside the stale-gradient simulator's `lax.scan`, and over a recorded
trace (`detect`, for analysis). `CollapseRules.describe()` names the rules; every output that
reports a collapse also reports it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

BASELINES = ("zero", "init")
# Reason codes stored in the state (int32); index into REASONS for the name.
REASONS = ("none", "non_finite", "drop", "ceiling", "floor")
_NONE, _NON_FINITE, _DROP, _CEILING, _FLOOR = range(len(REASONS))


@dataclasses.dataclass(frozen=True)
class CollapseRules:
    """The rules of the module docstring. Defaults: non-finite only."""

    metric: str = "reward"
    drop_frac: float = 0.0
    baseline: str = "zero"
    ema: float = 0.0
    warmup: int = 10
    patience: int = 1
    max_metric: str = ""
    max_value: float = 0.0
    min_metric: str = ""
    min_value: float = 0.0
    stop: bool = True

    def __post_init__(self):
        def bad(key, allowed):
            raise ValueError(f"collapse.{key}={getattr(self, key)!r}: must be {allowed}.")
        if not isinstance(self.metric, str) or not self.metric:
            bad("metric", "a non-empty metric name")
        if not (_is_number(self.drop_frac) and 0 <= self.drop_frac < 1):
            bad("drop_frac", "in [0, 1) (0 turns the drop rule off)")
        if self.baseline not in BASELINES:
            bad("baseline", f"one of {list(BASELINES)}")
        if not (_is_number(self.ema) and 0 <= self.ema < 1):
            bad("ema", "in [0, 1) (0: no smoothing)")
        if not (_is_int(self.warmup) and self.warmup >= 0):
            bad("warmup", "an integer >= 0")
        if not (_is_int(self.patience) and self.patience >= 1):
            bad("patience", "an integer >= 1")
        for key in ("max_value", "min_value"):
            if not (_is_number(getattr(self, key)) and math.isfinite(getattr(self, key))):
                bad(key, "a finite number")
        for key in ("max_metric", "min_metric"):
            if not isinstance(getattr(self, key), str):
                bad(key, "a metric name ('' turns the rule off)")

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metric names the active rules read (besides the ``finite`` flag)."""
        out = [self.metric]
        out += [m for m, on in ((self.max_metric, self.ceiling_on), (self.min_metric,
                                                                     self.floor_on)) if on]
        return tuple(out)

    @property
    def ceiling_on(self) -> bool:
        return bool(self.max_metric)

    @property
    def floor_on(self) -> bool:
        return bool(self.min_metric)

    def describe(self) -> str:
        """The active rules in words, e.g. for a summary file or a log line."""
        v = self.metric if self.ema == 0 else f"EMA_{self.ema:g}({self.metric})"
        parts = [f"non-finite, or {v} non-finite"]
        after = f"for {self.patience} step(s) after step {self.warmup}"
        if self.drop_frac > 0:
            thr = (f"{self.drop_frac:g}·best" if self.baseline == "zero" else
                   f"v_0 + {self.drop_frac:g}·(best − v_0)")
            parts.append(f"{v} < {thr} {after}")
        if self.ceiling_on:
            parts.append(f"{self.max_metric} > {self.max_value:g} {after}")
        if self.floor_on:
            parts.append(f"{self.min_metric} < {self.min_value:g} {after}")
        return " | ".join(parts)

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]]) -> "CollapseRules":
        d = dict(d or {})
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"Unknown collapse setting(s) {unknown}; valid: {sorted(fields)}.")
        return cls(**d)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def init_state(initial_value=None, dtype=jnp.float32) -> dict[str, jax.Array]:
    """The state before the first step. `initial_value` (optional) is v_0 observed beforehand
    (e.g. J(θ_0)): it starts the EMA, the baseline and the best."""
    seen = initial_value is not None
    v0 = jnp.asarray(initial_value if seen else 0.0, dtype)
    return {"value": v0, "init": v0, "best": v0 if seen else jnp.asarray(-jnp.inf, dtype),
            "seen": jnp.asarray(seen), "streak": jnp.asarray(0, jnp.int32),
            "collapse_step": jnp.asarray(-1, jnp.int32), "reason": jnp.asarray(0, jnp.int32)}


def update(rules: CollapseRules, state: Mapping[str, jax.Array], step,
           metrics: Mapping[str, Any]) -> dict[str, jax.Array]:
    """One step of the detector (pure, jittable). `metrics` must hold `rules.metric`, the
    ceiling/floor metrics of the active rules and, optionally, a boolean ``finite``."""
    step = jnp.asarray(step, jnp.int32)
    dtype = state["value"].dtype
    raw = jnp.asarray(metrics[rules.metric], dtype)
    finite = jnp.isfinite(raw)
    if "finite" in metrics:
        finite = finite & jnp.asarray(metrics["finite"], bool)
    seen = state["seen"]
    value = raw if rules.ema == 0 else jnp.where(
        seen, rules.ema * state["value"] + (1 - rules.ema) * raw, raw)
    init = jnp.where(seen, state["init"], value)
    best = jnp.where(jnp.isfinite(value), jnp.maximum(state["best"], value), state["best"])
    after = step >= rules.warmup
    drop = ceiling = floor = jnp.asarray(False)
    if rules.drop_frac > 0:
        thr = (rules.drop_frac * best if rules.baseline == "zero"
               else init + rules.drop_frac * (best - init))
        drop = after & (value < thr)
    if rules.ceiling_on:
        ceiling = after & (jnp.asarray(metrics[rules.max_metric]) > rules.max_value)
    if rules.floor_on:
        floor = after & (jnp.asarray(metrics[rules.min_metric]) < rules.min_value)
    low = drop | ceiling | floor
    streak = jnp.where(low, state["streak"] + 1, 0).astype(jnp.int32)
    trigger = (streak >= rules.patience) | ~finite
    first_bad = jnp.where(finite, step - rules.patience + 1, step)
    why = jnp.where(~finite, _NON_FINITE, jnp.where(drop, _DROP, jnp.where(
        ceiling, _CEILING, _FLOOR)))
    new = (state["collapse_step"] < 0) & trigger
    return {"value": value, "init": init, "best": best, "seen": jnp.asarray(True),
            "streak": streak,
            "collapse_step": jnp.where(new, first_bad, state["collapse_step"]).astype(jnp.int32),
            "reason": jnp.where(new, why, state["reason"]).astype(jnp.int32)}


def detect(rules: CollapseRules, trace: Mapping[str, Any], *, steps=None,
           initial_value=None) -> dict[str, jax.Array]:
    """Runs `update` over a recorded trace ({name: [T] array}); `steps` defaults to 0..T−1.

    Returns the final state: ``collapse_step`` (−1 if none) and ``reason`` (a code; see
    `reason_name`). vmap it over cells for a whole grid.
    """
    trace = {k: jnp.asarray(v) for k, v in trace.items()
             if k in rules.metrics or k == "finite"}
    n = jnp.shape(trace[rules.metric])[0]
    steps = jnp.arange(n, dtype=jnp.int32) if steps is None else jnp.asarray(steps, jnp.int32)
    dtype = jnp.result_type(trace[rules.metric].dtype, jnp.float32)

    def body(state, xs):
        step, metrics = xs
        return update(rules, state, step, metrics), None

    state, _ = jax.lax.scan(body, init_state(initial_value, dtype), (steps, trace))
    return state


def reason_name(code) -> str:
    return REASONS[int(code)]


def explain(rules: CollapseRules, state: Mapping[str, Any]) -> Optional[str]:
    """A host-side sentence for a collapsed state (None if the run has not collapsed)."""
    step = int(state["collapse_step"])
    if step < 0:
        return None
    why = reason_name(state["reason"])
    return f"collapse at step {step}: {why} (rules: {rules.describe()})"


def recovered(rules: CollapseRules, values, collapse_step: int, *, hold: int = 20,
              initial_value=None) -> bool:
    """Whether a run the drop rule flagged at `collapse_step` came back: a transient, not a
    collapse (see the module docstring).

    `values` is the run's recorded metric [T] (`rules.metric`), continuing past the flag. The
    run recovered when its last `hold` steps (all after the flag) are finite and the rule's own
    smoothed value is at or above the rule's own threshold at every one of them (the running
    best keeps updating, as in `update`): the drop rule would no longer fire. Runs that never
    collapsed (−1), traces too short to judge (fewer than `hold` steps after the flag) and
    rules without a drop rule give False. Host-side numpy, for analysis."""
    v = np.asarray(values, float).ravel()
    if collapse_step < 0 or rules.drop_frac <= 0 or v.size - collapse_step - 1 < hold:
        return False
    if not np.all(np.isfinite(v[collapse_step:])):
        return False
    seen = initial_value is not None
    value = float(initial_value) if seen else 0.0
    init = value
    best = value if seen else -math.inf
    ok = []
    for t, raw in enumerate(v):
        value = raw if (rules.ema == 0 or not seen) else rules.ema * value + (1 - rules.ema) * raw
        if not seen:
            init = value
        seen = True
        best = max(best, value)
        thr = rules.drop_frac * best if rules.baseline == "zero" else \
            init + rules.drop_frac * (best - init)
        if t >= v.size - hold:
            ok.append(value >= thr)
    return bool(all(ok))
