r"""Reward curves and realized-lag histograms of several runs, from their metrics.jsonl.

  python -m experiments.plot_staleness --out=staleness.png runs/S0 runs/S2 runs/S8

Left: `rollout/reward` per step (and `heldout/accuracy` markers where logged). Right: the run's
realized lag histogram, the mean over steps of `lag/frac_<k>`.
"""

from __future__ import annotations

import argparse
import os
import re

import numpy as np

from async_grpo import metrics as metrics_lib


def summarize(workdir: str) -> dict:
    recs = [r for r in metrics_lib.read_metrics(workdir) if "rollout/reward" in r]
    hist = {}
    for r in recs:
        for k, v in r.items():
            m = re.fullmatch(r"lag/frac_(\d+)", k)
            if m:
                hist[int(m.group(1))] = hist.get(int(m.group(1)), 0.0) + v / len(recs)
    return {"steps": [r["step"] for r in recs], "reward": [r["rollout/reward"] for r in recs],
            "lag_hist": dict(sorted(hist.items())),
            "heldout": [(r["step"], r["heldout/accuracy"]) for r in
                        metrics_lib.read_metrics(workdir) if "heldout/accuracy" in r]}


def main(argv=None) -> dict[str, dict]:
    """Draws the figure; returns each run's summary (keyed by its label)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdirs", nargs="+")
    ap.add_argument("--out", default="staleness.png")
    ap.add_argument("--smooth", type=int, default=10)
    ap.add_argument("--labels", default="", help="comma-separated labels (default: dir names)")
    args = ap.parse_args(argv)
    labels = args.labels.split(",") if args.labels else [
        os.path.basename(os.path.normpath(wd)) for wd in args.workdirs]
    if len(labels) != len(args.workdirs):
        ap.error(f"{len(labels)} labels for {len(args.workdirs)} workdirs")
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(args.workdirs)
    out = {}
    for i, (wd, name) in enumerate(zip(args.workdirs, labels)):
        s = out[name] = summarize(wd)
        if not s["steps"]:
            raise SystemExit(f"{wd}: no rollout/reward records in its metrics.jsonl")
        r = np.asarray(s["reward"])
        k = max(1, min(args.smooth, len(r)))
        ax1.plot(s["steps"][k - 1:], np.convolve(r, np.ones(k) / k, "valid"), label=name)
        if s["heldout"]:
            ax1.plot(*zip(*s["heldout"]), "o", ms=3, color=ax1.lines[-1].get_color())
        lags = list(s["lag_hist"])
        ax2.bar(np.asarray(lags) + i * width, list(s["lag_hist"].values()), width, label=name)
        print(name, "final reward (smoothed)", float(np.mean(r[-k:])), "lag hist", s["lag_hist"])
    ax1.set_xlabel("learner step"), ax1.set_ylabel("reward"), ax1.legend()
    ax2.set_xlabel("realized lag (steps)"), ax2.set_ylabel("fraction of steps"), ax2.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    print("wrote", args.out)
    return out


if __name__ == "__main__":
    main()
