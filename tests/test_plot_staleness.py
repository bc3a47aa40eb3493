"""experiments/plot_staleness.py on tiny pipeline runs with S in {0, 2, 8}."""

import os

import pytest

from experiments import plot_staleness
from tests import helpers


@pytest.mark.slow       # ~50 s (three pipeline runs); the figure style is tested in test_figures
def test_plot_reward_curves_and_lag_histograms(tmp_path):
    helpers.random_init(tmp_path / "init")
    dirs = []
    for s in (0, 2, 8):
        cfg = helpers.pipeline_config(tmp_path, **{"rl.steps": 4, "staleness.policy": "fixed",
                                                   "staleness.max_lag": s,
                                                   "staleness.queue_size": 2})
        helpers.run(cfg, tmp_path / f"S{s}")
        dirs.append(str(tmp_path / f"S{s}"))
    out = str(tmp_path / "fig.png")
    summaries = plot_staleness.main(["--out", out, "--smooth", "2", *dirs])
    assert os.path.getsize(out) > 1000
    assert list(summaries) == ["S0", "S2", "S8"]
    assert summaries["S0"]["lag_hist"] == {0: 1.0}
    assert summaries["S2"]["lag_hist"] == {0: 0.25, 1: 0.25, 2: 0.5}
    # S = 8 over 4 steps: lags 0..3 realised, frac_4..8 logged as 0.
    assert {k: v for k, v in summaries["S8"]["lag_hist"].items() if v} == {
        0: 0.25, 1: 0.25, 2: 0.25, 3: 0.25}
    assert all(len(s["reward"]) == 4 for s in summaries.values())
    with pytest.raises(SystemExit):
        plot_staleness.main(["--out", out, "--labels", "a", *dirs])
