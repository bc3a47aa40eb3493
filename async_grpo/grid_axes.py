"""The axes of a grid of runs, as every testbed's config parses them: comma-separated lists and
the log-spaced learning-rate grid. Neutral ground: the exact testbed's configs
(`async_grpo.testbeds.exact_configs`) and the LM sweep (`experiments.sweep`) both use it, and a
grid's η travel from here as numbers into the GridResult's axes (`async_grpo.results`)."""

from __future__ import annotations

import numpy as np


def parse_list(text: str, typ, name: str) -> list:
    """`text` ("a,b,c") as a list of `typ`; a ValueError names the config key `name`."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        return [typ(t) for t in items]
    except ValueError as e:
        raise ValueError(f"--config.{name}: cannot parse {text!r} as a comma-separated list of "
                         f"{typ.__name__}.") from e


def lr_grid(lr_min: float, lr_max: float, per_octave: int) -> list[float]:
    """Log grid lr_min·2^(k/per_octave) up to lr_max (inclusive within rounding)."""
    if not (np.isfinite(lr_min) and lr_min > 0):
        raise ValueError(f"--config.lr_min must be finite and > 0 (η ≤ 0 is invalid), got "
                         f"{lr_min}.")
    if not (np.isfinite(lr_max) and lr_max >= lr_min):
        raise ValueError(f"--config.lr_max must be finite and >= lr_min, got {lr_max}.")
    if not (isinstance(per_octave, int) and per_octave >= 1):
        raise ValueError(f"--config.lrs_per_octave must be an integer >= 1, got {per_octave}.")
    n = int(np.floor(np.log2(lr_max / lr_min) * per_octave + 1e-9)) + 1
    return [float(lr_min * 2.0 ** (k / per_octave)) for k in range(n)]
