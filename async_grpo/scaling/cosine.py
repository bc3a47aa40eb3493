"""The consecutive-update cosine as an early warning of collapse: per-run scores before
collapse, ROC AUC by lead with intervals, and a running-mean alarm."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats

from async_grpo.scaling._core import _int_array, _quantile_ci


def auc_mann_whitney(pos, neg) -> float:
    """ROC AUC = P(score of a positive > score of a negative) + ½·P(tie), the Mann–Whitney U
    statistic over n_pos·n_neg (equal to the area under the empirical ROC curve). NaN if
    either sample is empty."""
    pos, neg = np.asarray(pos, float).ravel(), np.asarray(neg, float).ravel()
    if np.any(~np.isfinite(pos)) or np.any(~np.isfinite(neg)):
        raise ValueError("scores must be finite")
    if pos.size == 0 or neg.size == 0:
        return math.nan
    ranks = stats.rankdata(np.concatenate([pos, neg]))     # ties get their mean rank
    u = ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def _check_traces(cos, collapse_step):
    x = np.asarray(cos, float)
    c = _int_array(collapse_step, "collapse_step")
    if x.ndim != 2 or c.shape != (x.shape[0],):
        raise ValueError(f"cos must be [runs, T] and collapse_step [runs]; got {x.shape}, "
                         f"{c.shape}")
    if np.any(c < -1) or np.any(c >= x.shape[1]):
        raise ValueError(f"collapse_step must be -1 or in [0, T={x.shape[1]}); got "
                         f"[{c.min()}, {c.max()}]")
    return x, c


def _check_window(window, first_step):
    if int(window) != window or window < 1:
        raise ValueError(f"window must be an integer >= 1; got {window!r}")
    if int(first_step) != first_step or first_step < 0:
        raise ValueError(f"first_step must be an integer >= 0; got {first_step!r}")


def cosine_scores(cos, collapse_step, window: int, lead: int, *, stable_end: str = "matched",
                  first_step: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-run score: the mean consecutive-update cosine over a window before collapse.

    A run that collapsed at step c scores mean(cos[e − w + 1 … e]) with e = c − k: the w =
    `window` steps ending k = `lead` steps before the collapse step. A stable run (c = −1) has no
    collapse to align to; its window ends at e = c* − k with c* a *matched* time:
    ``stable_end="matched"`` (default) draws c* for each stable run from the collapse steps of
    the collapsing runs (seeded by `seed`), so that both classes are scored at the same
    distribution of training times and a cosine that merely drifts with t cannot separate them;
    ``"end"`` takes c* = the run's last step (the whole run was stable; biased when the cosine
    trends with t). Steps before `first_step` are never used (the simulator records cos = 0 at
    t = 0). A run whose window does not fit (e − w + 1 < first_step) or holds a non-finite value
    scores NaN and is left out by `cosine_auc`.

    Returns {"score": [runs], "collapsing": [runs] bool, "end": [runs] window end (−1 when it
    does not fit)}.
    """
    x, c = _check_traces(cos, collapse_step)
    _check_window(window, first_step)
    if int(lead) != lead or lead < 0:
        raise ValueError(f"lead must be an integer >= 0; got {lead!r}")
    if stable_end not in ("matched", "end"):
        raise ValueError(f"stable_end must be 'matched' or 'end'; got {stable_end!r}")
    collapsing = c >= 0
    anchor = c.copy()
    stable = ~collapsing
    if stable_end == "end":
        anchor[stable] = x.shape[1] - 1
    elif stable.any():
        if not collapsing.any():
            raise ValueError("stable_end='matched' needs at least one collapsing run")
        anchor[stable] = np.random.default_rng(seed).choice(c[collapsing], stable.sum())
    end = anchor - int(lead)
    fits = end - window + 1 >= first_step
    score = np.full(x.shape[0], math.nan)
    i = np.nonzero(fits)[0]
    cols = end[i, None] - window + 1 + np.arange(window)[None, :]
    score[i] = x[i[:, None], cols].mean(1)               # NaN iff the window holds a NaN
    return {"score": score, "collapsing": collapsing, "end": np.where(fits, end, -1)}


def cosine_auc(cos, collapse_step, window: int, leads: Sequence[int], *,
               stable_end: str = "matched", first_step: int = 1, n_boot: int = 1000,
               level: float = 0.95, auc_threshold: float = 0.8, seed: int = 0
               ) -> dict[str, Any]:
    """How well, and how far ahead, the consecutive-update cosine separates collapsing runs.

    Pooled over every run: where stable and collapsing runs sit at different η, this AUC is
    confounded by η (issue 20), and picking the best of several leads is not corrected for.
    Claim 5 uses `cosine_auc_stratified` (within-η AUC, ≥ 10 runs per class, a permutation p
    adjusted over the leads; its coverage and error rates are in tests/test_coverage.py).

    For each lead k in `leads`: the ROC AUC (`auc_mann_whitney`) of the `cosine_scores` of
    collapsing (positive) against stable runs, with a percentile bootstrap CI at `level`
    (collapsing and stable runs resampled separately, with replacement; resamples with one
    class empty are skipped). Runs whose window does not fit at that k are left out and
    counted. The stable runs' matched times are drawn once (same `seed`) for every k.

    Lead time: the largest k such that AUC ≥ `auc_threshold` at every listed lead ≤ k
    (``lead_time``), and the same with the CI's lower end ≥ auc_threshold
    (``lead_time_conservative``); NaN, with a `reason`, when even the smallest lead fails.

    Returns {"leads", "auc", "ci" ([lo, hi] per lead), "n_collapsing", "n_stable" (per lead),
    "lead_time", "lead_time_conservative", "window", "stable_end", "auc_threshold", "level"}.
    """
    leads = _int_array(leads, "leads")
    if leads.ndim != 1 or leads.size == 0 or np.any(leads < 0) or np.any(np.diff(leads) <= 0):
        raise ValueError(f"leads must be a non-empty increasing list of integers >= 0; got "
                         f"{leads.tolist()}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level!r}")
    rng = np.random.default_rng(seed + 1)
    out = {"leads": leads.tolist(), "auc": [], "ci": [], "n_collapsing": [], "n_stable": [],
           "window": int(window), "stable_end": stable_end, "auc_threshold": auc_threshold,
           "level": level, "n_boot": n_boot}
    for k in leads:
        sc = cosine_scores(cos, collapse_step, window, int(k), stable_end=stable_end,
                           first_step=first_step, seed=seed)
        ok = np.isfinite(sc["score"])
        pos, neg = sc["score"][ok & sc["collapsing"]], sc["score"][ok & ~sc["collapsing"]]
        out["n_collapsing"].append(int(pos.size))
        out["n_stable"].append(int(neg.size))
        out["auc"].append(auc_mann_whitney(pos, neg))
        boots = [auc_mann_whitney(rng.choice(pos, pos.size), rng.choice(neg, neg.size))
                 for _ in range(n_boot if pos.size and neg.size else 0)]
        out["ci"].append(_quantile_ci(boots, level))

    def lead_time(vals):
        good = np.asarray(vals, float) >= auc_threshold         # NaN counts as failing
        if not good[0]:
            return math.nan
        return int(leads[len(good) - 1 if good.all() else int(np.argmin(good)) - 1])

    out["lead_time"] = lead_time(out["auc"])
    out["lead_time_conservative"] = lead_time([lo for lo, _ in out["ci"]])
    if not math.isfinite(out["lead_time"]):
        out["reason"] = (f"AUC at the smallest lead ({int(leads[0])}) is {out['auc'][0]:.3f} < "
                         f"{auc_threshold} (n = {out['n_collapsing'][0]} collapsing, "
                         f"{out['n_stable'][0]} stable)")
    return out


def running_mean(x, window: int, *, first_step: int = 1) -> np.ndarray:
    """Trailing mean over `window` steps of each row of x [runs, T]; NaN where the window
    starts before `first_step`."""
    x = np.asarray(x, float)
    _check_window(window, first_step)
    if x.ndim != 2:
        raise ValueError(f"x must be [runs, T]; got shape {x.shape}")
    out = np.full(x.shape, math.nan)
    if x.shape[1] - first_step >= window:          # a NaN spoils only the windows holding it
        view = np.lib.stride_tricks.sliding_window_view(x[:, first_step:], window, axis=1)
        out[:, first_step + window - 1:] = view.mean(-1)
    return out


def _alarm_steps(rm, c, thr):
    """First step each run's running mean ≥ thr, before its collapse step (−1: none)."""
    steps = np.arange(rm.shape[1])[None, :]
    limit = np.where(c < 0, rm.shape[1], c)[:, None]
    with np.errstate(invalid="ignore"):
        hit = (rm >= thr) & (steps < limit)
    return np.where(hit.any(1), hit.argmax(1), -1)


def cosine_alarm(cos, collapse_step, window: int, train, *, first_step: int = 1,
                 quantiles: Sequence[float] = (0.16, 0.84)) -> dict[str, Any]:
    """An alarm on the running mean of the consecutive-update cosine, and how early it rings.

    The alarm of run i rings at the first step t with running_mean(cos, window)[i, t] ≥ θ,
    counted only strictly before the collapse step (t < c; for stable runs any step). The
    threshold θ is chosen on the training runs (`train`, bool [runs]) to maximise Youden's J =
    (fraction of collapsing runs alarmed before collapse) − (fraction of stable runs alarmed at
    all), over the candidate values the training runs' running means take (ties: the larger θ).
    It is then applied, unchanged, to the other runs (the test runs): a threshold chosen and
    scored on the same runs flatters itself. Stable runs are watched over their whole length,
    as a monitor would be.

    Returns {"threshold", "train": {tpr, fpr, n_collapsing, n_stable}, "test": {tpr, fpr,
    n_collapsing, n_stable, median_lead, q16_lead, q84_lead (steps c − t_alarm over alarmed
    collapsing test runs)}, "alarm_step": [runs] (−1: none)}; NaNs and a `reason` when either
    class is missing from the training runs.
    """
    x, c = _check_traces(cos, collapse_step)
    train = np.asarray(train)
    if train.dtype != bool or train.shape != c.shape:
        raise ValueError(f"train must be a bool mask [runs={c.size}]; got {train.dtype} "
                         f"{train.shape}")
    q = np.asarray(quantiles, float)
    rm = running_mean(x, window, first_step=first_step)
    coll = c >= 0
    nan = math.nan
    out = {"threshold": nan, "window": int(window),
           "train": {"tpr": nan, "fpr": nan, "n_collapsing": int((train & coll).sum()),
                     "n_stable": int((train & ~coll).sum())},
           "test": {"tpr": nan, "fpr": nan, "n_collapsing": int((~train & coll).sum()),
                    "n_stable": int((~train & ~coll).sum()), "median_lead": nan,
                    "q16_lead": nan, "q84_lead": nan},
           "alarm_step": np.full(c.size, -1)}
    if not (train & coll).any() or not (train & ~coll).any():
        out["reason"] = "the training runs need both collapsing and stable runs"
        return out
    cand = np.unique(rm[train][np.isfinite(rm[train])])
    if cand.size > 512:
        cand = np.unique(np.quantile(cand, np.linspace(0, 1, 512)))
    best = None
    for thr in cand:
        a = _alarm_steps(rm[train], c[train], thr) >= 0
        j = a[coll[train]].mean() - a[~coll[train]].mean()
        if best is None or j >= best[0]:
            best = (j, thr)
    thr = float(best[1])
    alarm = _alarm_steps(rm, c, thr)
    out["threshold"], out["alarm_step"] = thr, alarm

    def rates(m):
        a = alarm[m] >= 0
        cm = coll[m]
        return (float(a[cm].mean()) if cm.any() else nan,
                float(a[~cm].mean()) if (~cm).any() else nan)

    out["train"]["tpr"], out["train"]["fpr"] = rates(train)
    out["test"]["tpr"], out["test"]["fpr"] = rates(~train)
    hit = ~train & coll & (alarm >= 0)
    if hit.any():
        lead = (c[hit] - alarm[hit]).astype(float)
        out["test"]["median_lead"] = float(np.median(lead))
        out["test"]["q16_lead"], out["test"]["q84_lead"] = map(float, np.quantile(lead, q))
    return out


def _window_means(x, ends, window):
    """mean(x[i, e_i − w + 1 … e_i]) for each run i and each column of ends [runs, L] (−1 or a
    window that starts before 0: NaN; a window holding a NaN: NaN)."""
    bad = ~np.isfinite(x)
    c = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(np.where(bad, 0.0, x), 1)], 1)
    nb = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(bad, 1)], 1)
    rows = np.arange(x.shape[0])[:, None]
    start = ends - window + 1
    ok = (ends >= 0) & (start >= 0)
    s_, e_ = np.where(ok, start, 0), np.where(ok, ends + 1, 0)
    mean = (c[rows, e_] - c[rows, s_]) / window
    clean = (nb[rows, e_] - nb[rows, s_]) == 0
    return np.where(ok & clean, mean, np.nan)


def _stratified_auc(score, pos, strata):
    """Σ_h U_h / Σ_h n⁺_h·n⁻_h over strata with both classes (finite scores only), and the
    class counts in those strata. score [runs, L] -> (auc [L], n_pos [L], n_neg [L])."""
    n_l = score.shape[1]
    num, den = np.zeros(n_l), np.zeros(n_l)
    npos, nneg = np.zeros(n_l, int), np.zeros(n_l, int)
    for h in np.unique(strata):
        m = strata == h
        for k in range(n_l):
            s = score[m, k]
            ok = np.isfinite(s)
            a, b = s[ok & pos[m]], s[ok & ~pos[m]]
            if a.size and b.size:
                num[k] += ((a[:, None] > b[None, :]).sum() +
                           0.5 * (a[:, None] == b[None, :]).sum())
                den[k] += a.size * b.size
                npos[k] += a.size
                nneg[k] += b.size
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan), npos, nneg


def cosine_auc_stratified(cos, collapse_step, strata, window: int, leads: Sequence[int], *,
                          first_step: int = 1, min_per_class: int = 10, n_perm: int = 500,
                          n_boot: int = 300, level: float = 0.95, alpha: float = 0.05,
                          seed: int = 0) -> dict[str, Any]:
    """The consecutive-update cosine's ROC AUC for collapse, within strata of η, at several
    leads, with the family of leads tested together.

    Stable and collapsing runs sit at different η, and the cosine moves with η by itself; an
    AUC over all runs measures η as much as the coming collapse. Here every comparison is
    within a stratum (`strata`, e.g. each run's η): AUC = Σ_h U_h / Σ_h n⁺_h·n⁻_h (the
    stratified Mann–Whitney statistic), over the strata holding both classes; a stable run's
    window ends at a collapse step drawn from the collapsing runs of its own stratum (matched
    time, as `cosine_scores`), k = lead steps earlier. Scores start at `first_step`.

    A lead counts only with ≥ `min_per_class` runs of each class in informative strata. The
    leads that count are tested together by a max-statistic permutation test (single-step
    maxT): the cosine traces are permuted among the runs of each stratum (the null: the trace
    is independent of whether and when its run collapses, given η), the statistic is
    max_k |AUC_k − ½| over the counted leads, and each lead's p-value is adjusted for the
    number of leads tried. ``significant`` marks leads with adjusted p < `alpha`. The AUC
    interval is a percentile bootstrap within strata and classes.

    Returns {leads, auc, ci, n_collapsing, n_stable, counted, p_adjusted, significant,
    n_strata, window, level, alpha, min_per_class, n_perm}.
    """
    x, c = _check_traces(cos, collapse_step)
    _check_window(window, first_step)
    leads = _int_array(leads, "leads")
    strata = np.asarray(strata).reshape(-1)
    if strata.shape != c.shape:
        raise ValueError(f"strata must be [runs={c.size}]; got {strata.shape}")
    rng = np.random.default_rng(seed)
    pos = c >= 0
    anchor = c.copy()
    for h in np.unique(strata):
        m = strata == h
        st, co = m & ~pos, m & pos
        if st.any():
            anchor[st] = rng.choice(c[co], st.sum()) if co.any() else -1
    x_use = np.where(np.arange(x.shape[1])[None, :] >= first_step, x, np.nan)
    ends = np.where(anchor[:, None] >= 0, anchor[:, None] - leads[None, :], -1)

    def scores(order):
        return _window_means(x_use[order], ends, int(window))

    ident = np.arange(c.size)
    sc = scores(ident)
    auc, npos, nneg = _stratified_auc(sc, pos, strata)
    counted = (npos >= min_per_class) & (nneg >= min_per_class)
    out: dict[str, Any] = {
        "leads": leads.tolist(), "auc": auc.tolist(), "n_collapsing": npos.tolist(),
        "n_stable": nneg.tolist(), "counted": counted.tolist(),
        "p_adjusted": [math.nan] * leads.size, "significant": [False] * leads.size,
        "ci": [[math.nan, math.nan] for _ in leads], "n_strata": int(np.unique(strata).size),
        "window": int(window), "level": level, "alpha": alpha,
        "min_per_class": int(min_per_class), "n_perm": int(n_perm),
        "method": "AUC within strata of eta, matched times; max-statistic permutation over "
                  "leads; bootstrap within strata"}
    if counted.any() and n_perm > 0:
        groups = [np.nonzero(strata == h)[0] for h in np.unique(strata)]
        obs = np.abs(auc - 0.5)
        exceed = np.zeros(leads.size)
        for _ in range(n_perm):
            order = ident.copy()
            for gi in groups:
                order[gi] = rng.permutation(gi)
            a, _, _ = _stratified_auc(scores(order), pos, strata)
            mx = np.nanmax(np.abs(a[counted] - 0.5))
            exceed += mx >= obs - 1e-12
        p = (1 + exceed) / (1 + n_perm)
        out["p_adjusted"] = [float(v) if k else math.nan for v, k in zip(p, counted)]
        out["significant"] = [bool(k and v < alpha) for v, k in zip(p, counted)]
    if n_boot > 0:
        boots = []
        cells = [np.nonzero((strata == h) & (pos == q))[0] for h in np.unique(strata)
                 for q in (True, False)]
        for _ in range(n_boot):
            idx = np.concatenate([rng.choice(ci, ci.size) for ci in cells if ci.size])
            a, _, _ = _stratified_auc(sc[idx], pos[idx], strata[idx])
            boots.append(a)
        boots = np.array(boots)
        out["ci"] = [_quantile_ci(boots[:, k], level) for k in range(leads.size)]
    return out
