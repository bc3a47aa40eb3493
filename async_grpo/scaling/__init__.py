"""Scaling-law analysis of staleness grids, for both testbeds (pure numpy/scipy; no JAX).

One module per topic; this package re-exports every name, so ``from async_grpo import scaling as
xa; xa.bootstrap_alpha(...)`` works as it did when this was one file.

* `eta_max` -- η_max of each (S, seed) on a sorted η grid (`eta_max_per_seed`,
  `eta_max_intervals`); α of η_max ∝ S^−α by interval-censored likelihood (`bootstrap_alpha`),
  with its interval over seeds; plain log–log least squares (`fit_power_law`); the
  delayed-gradient null η_max = η0/(S + c) against the power law (`fit_null_model`).
* `bias` -- ‖δ‖ ≈ c·x in the small-drift regime (`fit_through_origin`, `linearity_break`);
  ‖E x‖ from noisy paired draws with the noise floor removed (`mean_norm_sq`, `norm_interval`)
  and its log–log slope with an interval (`loglog_slope_ci`).
* `collapse_time` -- does t_collapse·η stay constant (`collapse_time_law`,
  `collapse_time_per_lag`)?
* `two_constraint` -- η_max at horizon T from one long sweep (`collapsed_at_horizon`,
  `horizon_table`); η_max(S, T) = min{a/S_eff, b/T} fitted, predicted on held-out cells, scored
  (`fit_two_constraint`, `predict_two_constraint`, `heldout_error`, `g_upd_per_cell`, `radii`).
* `drift` -- R_batch from a fixed-η grid (`estimate_r_batch`); which radius each run ran into
  (`classify_regimes`, `drift_bound_traces`).
* `cosine` -- does the consecutive-update cosine separate collapsing from stable runs, and how
  far ahead (`cosine_scores`, `cosine_auc`, `auc_mann_whitney`, `running_mean`,
  `cosine_alarm`).
* `_core` -- the interval-censored likelihood every fit shares (`_censored_nll`, `_mle`) and
  small array helpers.

Every fit is the interval-censored likelihood `_core._censored_nll` with its own mean model; a
fit without enough bracketed η_max returns NaN (or None in `bootstrap_alpha`) and a `reason`.
"""

# Every name the one-module `scaling` had, re-exported (private helpers included: tests and
# notebooks reach for a few of them).
from async_grpo.scaling._core import (  # noqa: F401
    _log_interval_prob, _censored_nll, _interval_nll, _mle, _censored_fit, _int_array,
    _check_rows, _log_intervals, _sigma_floor, _seed_resample, _quantile_ci, _collapse_map,
    _fmt)
from async_grpo.scaling.eta_max import (  # noqa: F401
    eta_max_per_seed, fit_power_law, eta_max_intervals, bootstrap_alpha, alpha_interval,
    format_alpha,
    _lag_rows, _LOG_C_BOUNDS, _null_model, _fit_null_rows, _fit_power_rows, fit_null_model,
    format_null_model)
from async_grpo.scaling.bias import (  # noqa: F401
    fit_through_origin, loglog_slope, mean_norm_sq, norm_interval, loglog_slope_ci, anchored_slope,
    linearity_break)
from async_grpo.scaling.collapse_time import (  # noqa: F401
    collapse_time_law, collapse_time_per_lag, detection_lag, collapse_time_censored)
from async_grpo.scaling.two_constraint import (  # noqa: F401
    collapsed_at_horizon, horizon_table, effective_lag, _two_constraint_model,
    fit_two_constraint, predict_two_constraint, heldout_error, g_upd_per_cell, radii,
    format_two_constraint, heldout_by_seed, _power_model)
from async_grpo.scaling.drift import (  # noqa: F401
    estimate_r_batch, REGIMES, drift_bound_traces, classify_regimes)
from async_grpo.scaling.cosine import (  # noqa: F401
    auc_mann_whitney, _check_traces, _check_window, cosine_scores, cosine_auc, running_mean,
    _alarm_steps, cosine_alarm, cosine_auc_stratified)
