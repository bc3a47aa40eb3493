r"""Reward curves and realized-lag histograms of several runs, from their metrics.jsonl.

  python -m experiments.plot_staleness --out=staleness.png runs/S0 runs/S2 runs/S8

Three panels (full page width, the project's figure style): (a) `rollout/reward` per step,
smoothed over `--smooth` steps; (b) `heldout/accuracy` where it was logged; (c) each run's
realized lag histogram, the mean over steps of `lag/frac_<k>`.
"""

from __future__ import annotations

import argparse
import os
import re

import numpy as np

from async_grpo import figures
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
    ap.add_argument("--out", default="staleness.png", help="writes this PNG and a PDF beside it")
    ap.add_argument("--smooth", type=int, default=10)
    ap.add_argument("--labels", default="", help="comma-separated labels (default: dir names)")
    args = ap.parse_args(argv)
    labels = args.labels.split(",") if args.labels else [
        os.path.basename(os.path.normpath(wd)) for wd in args.workdirs]
    if len(labels) != len(args.workdirs):
        ap.error(f"{len(labels)} labels for {len(args.workdirs)} workdirs")
    colors = figures.palette(len(labels))
    width = 0.8 / len(args.workdirs)
    out = {}
    with figures.style():
        fig, (ax1, ax2, ax3) = figures.figure("full", ncols=3, aspect=0.9)
        for i, (wd, name) in enumerate(zip(args.workdirs, labels)):
            s = out[name] = summarize(wd)
            if not s["steps"]:
                raise SystemExit(f"{wd}: no rollout/reward records in its metrics.jsonl")
            r = np.asarray(s["reward"])
            k = max(1, min(args.smooth, len(r)))
            ax1.plot(s["steps"][k - 1:], np.convolve(r, np.ones(k) / k, "valid"),
                     color=colors[i], label=name)
            if s["heldout"]:
                ax2.plot(*zip(*s["heldout"]), "o-", color=colors[i], label=name)
            lags = list(s["lag_hist"])
            ax3.bar(np.asarray(lags) + (i - (len(labels) - 1) / 2) * width,
                    list(s["lag_hist"].values()), width, color=colors[i], label=name)
            print(name, "final reward (smoothed)", float(np.mean(r[-k:])), "lag hist",
                  s["lag_hist"])
        ax1.set(xlabel="learner step", ylabel=f"rollout reward (mean of {args.smooth} steps)")
        ax1.set_title("(a) reward of the training rollouts", loc="left")
        ax2.set(xlabel="learner step", ylabel="held-out accuracy")
        ax2.set_title("(b) held-out accuracy", loc="left")
        if not ax2.lines:
            ax2.text(0.5, 0.5, "no held-out evaluation logged", ha="center",
                     transform=ax2.transAxes)
        ax3.set(xlabel="realized lag (learner steps)", ylabel="fraction of steps")
        ax3.set_title("(c) realized lag", loc="left")
        for ax in (ax1, ax2, ax3):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best")
        figures.save(fig, os.path.splitext(args.out)[0])
    print("wrote", args.out)
    return out


if __name__ == "__main__":
    main()
