"""Builds exact-testbed configs from the ml_collections configs of the exact binaries.

`VARIANTS` are named surrogate presets (TestbedConfig overrides) used by
`experiments/exact_sweep.py`; "no_ratio" is the population-only ablation without an importance
ratio (a plain stale policy gradient, the classic delayed-gradient null model).
"""

from __future__ import annotations

import numpy as np

from async_grpo.testbeds import exact as ex

VARIANTS = {
    "grpo": {},
    "no_ratio": {"ratio_level": "no_ratio"},
    "pg": {"clip_mode": "none"},
    "dr_grpo": {"std_normalize": False},
    "gspo": {"ratio_level": "sequence_geomean", "clip_eps": 3e-4, "clip_eps_high": 4e-4},
    "dapo": {"clip_eps_high": 0.28},
}


def testbed_config(c, variant: str = "grpo") -> ex.TestbedConfig:
    """TestbedConfig from `c.testbed` (clip_eps_high < 0 means None) plus the variant's overrides."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; valid: {sorted(VARIANTS)}.")
    kw = dict(c.testbed)
    if kw.get("clip_eps_high") is not None and kw["clip_eps_high"] < 0:
        kw["clip_eps_high"] = None
    kw.update(VARIANTS[variant])
    return ex.TestbedConfig(**kw)


def train_config(c, max_lag_cap: int, **overrides) -> ex.TrainConfig:
    """TrainConfig from `c.train` with the ring-buffer cap S_max (diagnostics off by default)."""
    kw = dict(diagnostics=False)
    kw.update(dict(c.train))
    kw.update(overrides)
    return ex.TrainConfig(max_lag_cap=max_lag_cap, **kw)


def parse_list(text: str, typ, name: str) -> list:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        return [typ(t) for t in items]
    except ValueError as e:
        raise ValueError(f"--config.{name}: cannot parse {text!r} as a comma-separated list of "
                         f"{typ.__name__}.") from e


def lr_grid(lr_min: float, lr_max: float, per_octave: int) -> list[float]:
    """Log grid lr_min·2^(k/per_octave) up to lr_max (inclusive within rounding)."""
    if not (np.isfinite(lr_min) and lr_min > 0):
        raise ValueError(f"--config.lr_min must be finite and > 0 (η ≤ 0 is invalid), got {lr_min}.")
    if not (np.isfinite(lr_max) and lr_max >= lr_min):
        raise ValueError(f"--config.lr_max must be finite and >= lr_min, got {lr_max}.")
    if not (isinstance(per_octave, int) and per_octave >= 1):
        raise ValueError(f"--config.lrs_per_octave must be an integer >= 1, got {per_octave}.")
    n = int(np.floor(np.log2(lr_max / lr_min) * per_octave + 1e-9)) + 1
    return [float(lr_min * 2.0 ** (k / per_octave)) for k in range(n)]


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
    tbs = {v: testbed_config(c, v) for v in variants}
    for v, tbc in tbs.items():
        if tcs.mode == "sampled" and tbc.ratio_level == "no_ratio":
            raise ValueError(f"variant {v!r} (no_ratio) needs train.mode='population'.")
    return dict(variants=variants, lags=lags, lrs=lrs, seeds=seeds, b1s=b1s, train=tcs,
                testbeds=tbs)


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
                        opt_eps=c.train.opt_eps, diagnostics=True)
    return dict(testbed=tbc, train=tc, lags=lags, lrs=lrs, seeds=seeds, b1=b1, anchors=anchors)
