"""Host-side run diagnostics: realized-lag statistics and a configurable collapse detector.

The gradient-level diagnostics (norms, cosines, staleness bias) are computed inside jitted
functions in `async_grpo.rl.learner`; this module holds what is bookkeeping on the host.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import numpy as np


def lag_stats(step: int, versions, max_lag: int) -> dict[str, float]:
    """Realized lag of the samples trained on at learner step `step`.

    `versions` holds the generating version of every sample (lag = step − version). Returns
    "lag/min", "lag/mean", "lag/max" and the histogram "lag/frac_<k>" (fraction of samples with
    lag k) for k = 0 … max_lag, plus "lag/frac_over" for anything beyond max_lag (always 0 unless
    a policy is broken; logged so a violation cannot go unnoticed).
    """
    lags = step - np.asarray(versions, dtype=np.int64).reshape(-1)
    if lags.size == 0:
        raise ValueError("lag_stats needs at least one sample version.")
    if (lags < 0).any():
        raise ValueError(f"A sample of step {step} has a version newer than the step: "
                         f"{sorted(set(np.asarray(versions).tolist()))}.")
    out = {"lag/min": int(lags.min()), "lag/mean": float(lags.mean()), "lag/max": int(lags.max())}
    counts = np.bincount(np.minimum(lags, max_lag + 1), minlength=max_lag + 2) / lags.size
    for k in range(max_lag + 1):
        out[f"lag/frac_{k}"] = float(counts[k])
    out["lag/frac_over"] = float(counts[max_lag + 1])
    return out


@dataclasses.dataclass
class CollapseConfig:
    """What counts as a collapse (each criterion off when 0 / None).

    * non-finite loss, gradient or parameters (always on);
    * `reward_frac`: after `warmup_steps`, the smoothed reward (EMA with `reward_ema`) falls below
      `reward_frac` × its running best (the best of the EMA since warm-up began);
    * `kl_max`: a KL metric (`kl_key`, default KL(behavior‖current) k3) above this value;
    * `entropy_min`: the policy entropy below this value (after warm-up).
    `stop`: stop the run at the collapse step (else record it and continue).
    """

    warmup_steps: int = 10
    reward_frac: float = 0.0
    reward_ema: float = 0.9
    kl_max: float = 0.0
    kl_key: str = "loss/kl_behavior_k3"
    entropy_min: float = 0.0
    stop: bool = True

    @classmethod
    def from_config(cls, cfg: Optional[Mapping[str, Any]]) -> "CollapseConfig":
        cfg = dict(cfg or {})
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(cfg) - fields
        if unknown:
            raise ValueError(f"Unknown collapse settings {sorted(unknown)}; valid: {sorted(fields)}.")
        return cls(**cfg)


class CollapseDetector:
    """Feeds on per-step metrics; `update` returns the reason of the first collapse, else None."""

    def __init__(self, config: CollapseConfig):
        self.config = config
        self.ema: Optional[float] = None
        self.best: float = -math.inf
        self.collapse_step: Optional[int] = None
        self.reason: Optional[str] = None

    def state(self) -> dict[str, Any]:
        return {"ema": self.ema, "best": self.best if math.isfinite(self.best) else None,
                "collapse_step": self.collapse_step, "reason": self.reason}

    def load_state(self, state: Optional[Mapping[str, Any]]) -> None:
        if not state:
            return
        self.ema = state.get("ema")
        best = state.get("best")
        self.best = -math.inf if best is None else float(best)
        self.collapse_step, self.reason = state.get("collapse_step"), state.get("reason")

    def update(self, step: int, metrics: Mapping[str, Any]) -> Optional[str]:
        c = self.config
        reason = None
        finite = metrics.get("finite", True)
        values = [v for k, v in metrics.items() if k in ("loss", "grad_norm", "update_norm")]
        if not finite or any(not math.isfinite(float(v)) for v in values):
            reason = "non_finite"
        reward = metrics.get("reward")
        if reward is not None and math.isfinite(float(reward)):
            r = float(reward)
            self.ema = r if self.ema is None else c.reward_ema * self.ema + (1 - c.reward_ema) * r
            if step >= c.warmup_steps:
                self.best = max(self.best, self.ema)
                if (reason is None and c.reward_frac > 0 and self.best > 0
                        and self.ema < c.reward_frac * self.best):
                    reason = (f"reward_ema {self.ema:.4g} < {c.reward_frac} x best "
                              f"{self.best:.4g}")
        if reason is None and c.kl_max > 0 and float(metrics.get(c.kl_key, 0.0)) > c.kl_max:
            reason = f"{c.kl_key} {float(metrics[c.kl_key]):.4g} > {c.kl_max}"
        if (reason is None and c.entropy_min > 0 and step >= c.warmup_steps
                and "entropy" in metrics and float(metrics["entropy"]) < c.entropy_min):
            reason = f"entropy {float(metrics['entropy']):.4g} < {c.entropy_min}"
        if reason is not None and self.collapse_step is None:
            self.collapse_step, self.reason = step, reason
        return reason
