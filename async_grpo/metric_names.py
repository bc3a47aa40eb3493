"""The one metric vocabulary: every metric the engine, the learner, the pipeline and the grid
readers share has one name, defined here and documented in one table (docs/metrics.md, which
`tests/test_metric_names.py` holds equal to `TABLE`).

Per-step metrics are written every step (JSONL and TensorBoard in the pipeline, [cells, T] curves
in a grid); summary keys once per run or cell. Names with a slash are namespaced as TensorBoard
groups them; a results file that cannot hold a slash in a key (``.npz``) writes ``__`` for it
(`file_key` / `from_file_key`). Results written before the vocabulary was unified used other
names for five metrics; `canonical` maps them (`LEGACY`), so old results stay readable.
"""

from __future__ import annotations

# --- per-step metrics shared by every testbed -------------------------------------------------
LAG = "lag"                              # realized lag s_t = t − version of the batch trained on
VERSION = "version"                      # the behavior policy's parameter version t − s_t
DRIFT_CYCLE = "drift/within_cycle"       # ‖θ_t − φ_t‖, the within-cycle drift
DRIFT_CUM = "drift/cumulative"           # ‖θ_t − θ_0‖, the cumulative drift
GRAD_NORM = "grad_norm"                  # ‖h_t‖ of the update direction before the optimizer
UPDATE_NORM = "update_norm"              # ‖u_t‖ of the optimizer's update
COS_GRADS = "cos/consecutive_grads"      # cos(h_t, h_{t−1}) (0 at t = 0)
COS_UPDATES = "cos/consecutive_updates"  # cos(u_t, u_{t−1}) (0 at t = 0)
FINITE = "finite"                        # the step's loss, direction and new θ are all finite
COLLAPSED = "collapsed"                  # a collapse rule has fired at or before this step
LR_SCALE = "lr_scale"                    # the LR controller's factor c_t (effective η = c_t·η)
OBJECTIVE = "J"                          # the exact objective J(θ_t) (testbeds that have one)
CLIP_FRAC = "loss/clip_frac"             # fraction of the behavior mass whose ratio is clipped
ESS_FRAC = "loss/ess_frac"               # Kish ESS/B of the sequence importance weights
REWARD = "reward"                        # mean reward of the step's rollouts
COLLAPSE_STEP_NOW = "collapse/step"      # the detector's collapse step so far (−1: none)
COLLAPSE_REASON_NOW = "collapse/reason"  # the detector's reason code so far (0: none)
HELDOUT_ACC = "heldout/accuracy"         # held-out accuracy (greedy unless eval.greedy is off)
HELDOUT_MALFORMED = "heldout/malformed_frac"   # held-out responses that are not an answer

# --- summary keys (one value per run or cell) --------------------------------------------------
COLLAPSE_STEP = "collapse_step"          # the step a collapse rule fired (−1: none)
COLLAPSE_REASON = "collapse_reason"      # which rule fired (collapse.REASONS)
DRIFT_FINAL = "drift_final"              # ‖θ_T − θ_0‖
DRIFT_CYCLE_MAX = "drift/within_cycle_max"   # max over steps of the within-cycle drift (with LR control)
LR_SCALE_MEAN = "lr_scale_mean"          # mean of c_t (with LR control)
LR_LIMITED_FRAC = "lr_limited_frac"      # fraction of steps with c_t < 1 (with LR control)

TABLE = {
    LAG: ("step", "realized lag s_t = t − version of the batch trained on at step t"),
    VERSION: ("step", "parameter version t − s_t of the behavior policy φ_t"),
    DRIFT_CYCLE: ("step", "within-cycle drift ‖θ_t − φ_t‖ (Euclidean, flattened pytree)"),
    DRIFT_CUM: ("step", "cumulative drift ‖θ_t − θ_0‖"),
    GRAD_NORM: ("step", "‖h_t‖, the update direction (gradient of the loss) before the optimizer"),
    UPDATE_NORM: ("step", "‖u_t‖, the optimizer's update applied to θ_t"),
    COS_GRADS: ("step", "cos(h_t, h_{t−1}) of consecutive update directions (0 at t = 0)"),
    COS_UPDATES: ("step", "cos(u_t, u_{t−1}) of consecutive optimizer updates (0 at t = 0)"),
    FINITE: ("step", "the step's loss, direction and new parameters are all finite (a "
                     "non-finite step is not applied)"),
    COLLAPSED: ("step", "a collapse rule (async_grpo.collapse) has fired at or before this step"),
    LR_SCALE: ("step", "the LR controller's factor c_t; the effective learning rate is c_t·η"),
    OBJECTIVE: ("step", "the exact objective J(θ_t) (testbeds with an objective)"),
    ESS_FRAC: ("step", "Kish effective sample size fraction ESS/B = (Σw)²/(B·Σw²) of the "
                       "sequence importance weights w = π_θ(y)/π_φ(y) (1 on-policy)"),
    CLIP_FRAC: ("step", "fraction of the behavior mass (tokens or responses) whose ratio is "
                        "clipped"),
    REWARD: ("step", "mean reward of the rollouts trained on at step t"),
    COLLAPSE_STEP_NOW: ("step", "the collapse detector's state: the step a rule fired at or "
                                "before this step (−1: none); the pipeline stops on it"),
    COLLAPSE_REASON_NOW: ("step", "the collapse detector's state: the rule that fired so far "
                                  "(0: none)"),
    HELDOUT_ACC: ("eval", "accuracy on the fixed held-out set (greedy decoding unless "
                          "eval.greedy is off), at the eval steps; in a grid also the summary "
                          "at the end"),
    HELDOUT_MALFORMED: ("eval", "fraction of held-out responses that are not a well-formed "
                                "answer"),
    COLLAPSE_STEP: ("summary", "the step at which a collapse rule fired (−1: none)"),
    COLLAPSE_REASON: ("summary", "the rule that fired (async_grpo.collapse.REASONS; 0: none)"),
    DRIFT_FINAL: ("summary", "‖θ_T − θ_0‖ at the end of the run"),
    DRIFT_CYCLE_MAX: ("summary", "the largest within-cycle drift of the run (with LR control)"),
    LR_SCALE_MEAN: ("summary", "the mean of c_t over the run (with LR control)"),
    LR_LIMITED_FRAC: ("summary", "the fraction of steps with c_t < 1 (with LR control)"),
}

# Names used by results written before the vocabulary was unified (the simulator's).
LEGACY = {
    "drift_cycle": DRIFT_CYCLE,
    "drift_cum": DRIFT_CUM,
    "cos_grad": COS_GRADS,
    "cos_update": COS_UPDATES,
    "clip_frac": CLIP_FRAC,
    "drift_cycle_max": DRIFT_CYCLE_MAX,
}


def canonical(name: str) -> str:
    """The vocabulary's name for `name` (a legacy name, or a file key with ``__``)."""
    name = from_file_key(name)
    return LEGACY.get(name, name)


def file_key(name: str) -> str:
    """`name` as a key of a file format that cannot hold a slash (``.npz``)."""
    return name.replace("/", "__")


def from_file_key(key: str) -> str:
    """Inverse of `file_key`."""
    return key.replace("__", "/")


def markdown_table() -> str:
    """The vocabulary as the markdown table of docs/metrics.md."""
    rows = ["| name | kind | meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | {kind} | {text} |" for name, (kind, text) in TABLE.items()]
    return "\n".join(rows)
