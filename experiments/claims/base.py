"""What every claim module shares: the three verdicts and the interval rule most claims use.

A verdict is one of SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE (the words a claims table prints
first). Each claim's rule is a pure function of its fit and interval, with its thresholds in its
own module and a power test in tests/test_claims.py (under the claim "supported" in ≥ 80 % of
synthetic draws, under a plausible alternative in ≤ 10 %).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)


def finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def interval_verdict(ci: Optional[Sequence[Optional[float]]], target: float,
                     margin: float) -> str:
    """The equivalence rule for a quantity the claim fixes at `target`.

    * NOT_SUPPORTED: the interval excludes the target;
    * SUPPORTED: the interval contains the target and lies inside [target − margin,
      target + margin] (it rules out every value the margin calls a different law);
    * INCONCLUSIVE: no interval (undetermined), or it contains the target but is too wide to
      rule out a value `margin` away.
    """
    if ci is None or len(ci) != 2 or not (finite(ci[0]) and finite(ci[1])):
        return INCONCLUSIVE
    lo, hi = float(ci[0]), float(ci[1])
    if not lo <= target <= hi:
        return NOT_SUPPORTED
    if target - margin <= lo and hi <= target + margin:
        return SUPPORTED
    return INCONCLUSIVE
