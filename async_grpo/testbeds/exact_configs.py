"""Builds exact-testbed configs from the ml_collections configs of the exact binaries.

The surrogate of a sweep's variant is a registered loss of `async_grpo.losses` (e.g. "grpo",
"dapo", "gspo", "pg", "no_ratio"), with the config's `loss_kwargs` overrides (unset fields are
left at each variant's own defaults); the collapse rules are `async_grpo.collapse.CollapseRules`
from the config's `collapse` section.
"""

from __future__ import annotations


from async_grpo import collapse as collapse_lib
from async_grpo import grid_axes
from async_grpo.testbeds import exact as ex


def loss_overrides(c) -> dict:
    """The set fields of `c.loss_kwargs` (unset placeholders are None and left out)."""
    return {k: v for k, v in dict(c.get("loss_kwargs") or {}).items() if v is not None}


def testbed_config(c, variant: str = "grpo") -> ex.TestbedConfig:
    """TestbedConfig from `c.testbed` with the loss `variant` and `c.loss_kwargs`; in sampled
    mode (`c.train.mode`) also variants without an exact population form (`sampled_only`)."""
    sampled = c.get("train") is not None and c.train.get("mode") == "sampled"
    return ex.TestbedConfig(**dict(c.testbed), loss=variant, loss_kwargs=loss_overrides(c),
                            sampled_only=bool(sampled))


def collapse_rules(c) -> collapse_lib.CollapseRules:
    return collapse_lib.CollapseRules.from_dict(dict(c.collapse))


def train_config(c, max_lag_cap: int, **overrides) -> ex.TrainConfig:
    """TrainConfig from `c.train` with the ring-buffer cap S_max (diagnostics off by default)."""
    kw = dict(diagnostics=False, collapse=collapse_rules(c))
    kw.update(dict(c.train))
    kw.update(overrides)
    return ex.TrainConfig(max_lag_cap=max_lag_cap, **kw)


# The grid axes live in `async_grpo.grid_axes` (shared with the LM sweep); kept here by name.
parse_list = grid_axes.parse_list
lr_grid = grid_axes.lr_grid


def sweep_plan(c) -> dict:
    """Parses and validates experiments/exact_sweep.py's config (nothing is compiled here)."""
    variants = parse_list(c.variants, str, "variants")
    if not variants:
        raise ValueError("--config.variants is empty.")
    lags = parse_list(c.lags, int, "lags")
    lrs = lr_grid(float(c.lr_min), float(c.lr_max), int(c.lrs_per_octave))
    if not isinstance(c.num_seeds, int) or c.num_seeds < 1:
        raise ValueError(f"--config.num_seeds must be an integer >= 1, got {c.num_seeds!r}.")
    seeds = list(range(c.num_seeds))
    b1s = parse_list(c.b1s, float, "b1s") or [0.9 if c.train.optimizer == "adam" else 0.0]
    if not isinstance(c.chunk_size, int) or c.chunk_size < 1:
        raise ValueError(f"--config.chunk_size must be an integer >= 1, got {c.chunk_size!r}.")
    cap = max(lags) if lags else 0
    ex.validate_grid(lrs, seeds, lags, b1s, max_lag_cap=None)
    tcs = train_config(c, cap)
    tbs = {}
    for v in variants:
        try:
            tbs[v] = testbed_config(c, v)
        except ValueError as e:
            raise ValueError(f"--config.variants: variant {v!r}: {e}") from e
    keep = tuple(dict.fromkeys(["J"] + parse_list(c.get("keep_metrics", "J"), str,
                                                  "keep_metrics")))
    every = c.get("trace_every", 1)
    if (not isinstance(every, int) or isinstance(every, bool) or every < 1
            or c.train.num_steps % every):
        raise ValueError(f"--config.trace_every must be an integer >= 1 that divides "
                         f"train.num_steps = {c.train.num_steps}, got {every!r}.")
    horizons = parse_list(c.get("horizons", ""), int, "horizons")
    bad = [h for h in horizons if not 1 <= h <= c.train.num_steps]
    if bad:
        raise ValueError(f"--config.horizons {bad}: every horizon T' must be in [1, "
                         f"train.num_steps = {c.train.num_steps}].")
    return dict(variants=variants, lags=lags, lrs=lrs, seeds=seeds, b1s=b1s, train=tcs,
                testbeds=tbs, keep_metrics=keep, trace_every=every, horizons=sorted(set(horizons)))


def bias_plan(c) -> dict:
    """Parses and validates experiments/exact_bias.py's config (nothing is compiled here)."""
    tbc = testbed_config(c, "grpo")
    lags = parse_list(c.traj_lags, int, "traj_lags")
    lrs = parse_list(c.traj_lrs, float, "traj_lrs")
    if not isinstance(c.traj_seeds, int) or c.traj_seeds < 1:
        raise ValueError(f"--config.traj_seeds must be an integer >= 1, got {c.traj_seeds!r}.")
    seeds = list(range(c.traj_seeds))
    b1 = float(c.train.b1)
    ex.validate_grid(lrs, seeds, lags, [b1])
    if not c.anchor_lr > 0:
        raise ValueError(f"--config.anchor_lr must be > 0, got {c.anchor_lr}.")
    anchors = parse_list(c.anchor_steps, int, "anchor_steps")
    if not anchors or min(anchors) < 0:
        raise ValueError(f"--config.anchor_steps must be non-empty integers >= 0, got {anchors}.")
    if not (0 < c.r_min < c.r_max) or c.num_radii < 2 or c.num_directions < 1:
        raise ValueError("Need 0 < r_min < r_max, num_radii >= 2 and num_directions >= 1.")
    tc = ex.TrainConfig(num_steps=c.train.num_steps, staleness=c.train.staleness,
                        max_lag_cap=max(lags), optimizer=c.train.optimizer, b2=c.train.b2,
                        opt_eps=c.train.opt_eps, diagnostics=True, collapse=collapse_rules(c))
    return dict(testbed=tbc, train=tc, lags=lags, lrs=lrs, seeds=seeds, b1=b1, anchors=anchors)
