"""Synthetic data with known answers for the coverage and power tests (tests/test_coverage.py,
tests/test_claims.py)."""

import numpy as np


def alpha_map(rng, alpha, sigma, ratio, n_seed, lags=(1, 2, 4, 8, 16)):
    """A collapse map whose η_max(S, seed) = c·S^−α·exp(σ·ε), ε ~ N(0, 1) per (S, seed), on a
    geometric η grid of step `ratio`, with c placed at a random point inside a grid step (nature
    does not align with the grid). -> (lags, lrs, collapsed [nS, E, nseed])."""
    lrs = ratio ** np.arange(-30, 31) * 1e-3
    c = 1e-3 * ratio ** rng.uniform(0, 1)
    lags = np.asarray(lags)
    thr = (np.log(c) - alpha * np.log(lags)[:, None]
           + sigma * rng.standard_normal((len(lags), n_seed)))
    return lags, lrs, np.log(lrs)[None, :, None] > thr[:, None, :]


def null_map(rng, eta0, c, lags, ratio, n_seed, sigma):
    """A collapse map from the delayed-gradient null: η_max(S, seed) = η0/(S + c)·exp(σ·ε), on
    a geometric η grid of step `ratio` placed at random. -> (lags, lrs, collapsed)."""
    lrs = ratio ** np.arange(-14, 4) * ratio ** rng.uniform(0, 1)
    lags = np.asarray(lags)
    thr = eta0 / (lags[:, None] + c) * np.exp(sigma * rng.standard_normal((len(lags), n_seed)))
    return lags, lrs, lrs[None, :, None] > thr[:, None, :]


def lm_bias_cells(rng, beta, *, lrs=(3e-5, 1e-4, 3e-4, 1e-3), anchors=(20, 40),
                  lags=(1, 2, 4, 8, 16), level_sd=0.5, slope_sd=0.1, rel_se=0.15,
                  floor_se=0.02, rho=0.5):
    """LM-bias-like cells: ‖δ‖ = L_j·(s·η)^β_j per anchor j = (η, t), with anchor-level
    differences (log L_j ~ N(0, level_sd²), β_j ~ N(β, slope_sd²)), and the U-statistic's
    estimate of ‖δ‖² with se = rel_se·‖δ‖² + floor_se·‖δ_max‖² (so the smallest cells sit at
    the noise floor), errors correlated within an anchor (correlation `rho`: the lags share
    one fresh batch). -> dict of arrays x (= s·η), est, se, anchor, lr, lag."""
    rows = {k: [] for k in ("x", "est", "se", "anchor", "lr", "lag")}
    j = 0
    for lr in lrs:
        for _ in anchors:
            lvl = 1e3 * np.exp(level_sd * rng.standard_normal())
            b = beta + slope_sd * rng.standard_normal()
            x = np.asarray(lags) * lr
            d2 = (lvl * x ** b) ** 2
            se = rel_se * d2 + floor_se * (lvl * (max(lags) * 1e-3) ** b) ** 2
            z = np.sqrt(rho) * rng.standard_normal() + np.sqrt(1 - rho) * rng.standard_normal(
                len(lags))
            for k in range(len(lags)):
                for key, v in (("x", x[k]), ("est", d2[k] + se[k] * z[k]), ("se", se[k]),
                               ("anchor", j), ("lr", lr), ("lag", lags[k])):
                    rows[key].append(v)
            j += 1
    return {k: np.asarray(v) for k, v in rows.items()}


def collapse_times(rng, *, num_steps, warmup=10, k=1000.0, sigma=0.3, ema=0.9,
                   drop_frac=0.5, n_eta=10, n_seed=5, exponent=1.0):
    """Runs whose collapse onset is τ = K·η^−exponent·exp(σ·ε) (t_c·η exactly constant at
    exponent 1), flagged by the drop rule d = `scaling.detection_lag(ema, drop_frac)` steps
    later; the η grid spans onsets from a third of the warm-up to twice the horizon. Collapse
    steps at or before the warm-up end are reported at the warm-up end, and runs not flagged
    within `num_steps` as −1, as the collapse rule does. -> (lrs [runs], collapse_step [runs],
    lag d)."""
    from async_grpo import scaling   # pylint: disable=import-outside-toplevel
    d = scaling.detection_lag(ema, drop_frac)
    etas = np.geomspace(k / (2 * num_steps), k / (warmup / 3), n_eta)
    lrs = np.repeat(etas, n_seed)
    tau = k * lrs ** -exponent * np.exp(sigma * rng.standard_normal(lrs.size))
    c = np.ceil(tau).astype(int) - 1 + d
    c = np.where(c <= warmup, warmup, c)
    c = np.where(c >= num_steps, -1, c)
    return lrs, c, d


def cosine_runs(rng, *, signal=0.0, ramp=50, confound=0.1, noise=0.15, n_seed=12,
                p_collapse=(0.1, 0.3, 0.5, 0.6, 0.8, 0.9), num_steps=300):
    """Cosine traces of runs at 6 η (n_seed runs each) whose collapse probability rises with η
    and whose cosine level rises with η too (`confound`: the confounder an unstratified AUC
    mistakes for a warning); collapsing runs collapse at a step uniform in [100, T − 20) and
    their cosine rises by `signal` over the `ramp` steps before it (0: the null, cosine
    independent of collapse given η). -> (cos [runs, T], collapse_step [runs], eta index)."""
    n_eta = len(p_collapse)
    eta = np.repeat(np.arange(n_eta), n_seed)
    coll = rng.uniform(size=eta.size) < np.asarray(p_collapse)[eta]
    c = np.where(coll, rng.integers(100, num_steps - 20, eta.size), -1)
    level = confound * (eta - (n_eta - 1) / 2) / ((n_eta - 1) / 2)
    cos = level[:, None] + noise * rng.standard_normal((eta.size, num_steps))
    t = np.arange(num_steps)[None, :]
    near = coll[:, None] & (t > c[:, None] - ramp) & (t <= c[:, None])
    cos = cos + signal * near
    cos[:, 0] = 0.0
    return cos, c, eta


def two_constraint_grid(rng, *, exponent=1.0, a=0.5, b=40.0, sigma=0.2, n_seed=3,
                        lags=(0, 1, 2, 4, 8, 16), num_steps=400, ratio=2 ** 0.5,
                        shared_noise=False):
    """A sweep whose run (S, η, seed) collapses at once when η > a·u/(S + 1)^exponent (the
    stale constraint; exponent 1 is the rule's 1/S_eff) and otherwise at step b·v/η (the
    horizon constraint), u, v = exp(σ·ε) per (S, seed), independent, or one draw (u = v: the
    fit's model, one noise term after the min) with `shared_noise`. -> (lags, lrs,
    collapse_step [nS, E, nseed], num_steps)."""
    lrs = ratio ** np.arange(-24, 4) * a * ratio ** rng.uniform(0, 1)
    lags = np.asarray(lags)
    u = np.exp(sigma * rng.standard_normal((len(lags), 1, n_seed)))
    v = u if shared_noise else np.exp(sigma * rng.standard_normal((len(lags), 1, n_seed)))
    eta = lrs[None, :, None]
    stale = eta > a * u / (lags[:, None, None] + 1.0) ** exponent
    t_h = np.ceil(b * v / eta).astype(int) - 1
    c = np.where(stale, 0, np.where(t_h < num_steps, t_h, -1))
    return lags, lrs, c, num_steps
