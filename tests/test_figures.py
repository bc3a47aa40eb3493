"""The figure style: widths, print-size text, colour-blind-safe palette, enforced on save."""

import os

import matplotlib
import pytest

from async_grpo import figures


def test_style_and_print_check(tmp_path):
    with figures.style():
        fig, ax = figures.figure("column")
        ax.plot([0, 1], [1, 0], label="a")
        ax.set_xlabel("x")
        ax.legend()
        assert abs(fig.get_size_inches()[0] - figures.COLUMN) < 1e-9
        assert matplotlib.rcParams["font.size"] == 8
        figures.save(fig, str(tmp_path / "ok"))
    assert os.path.exists(tmp_path / "ok.png") and os.path.exists(tmp_path / "ok.pdf")
    with figures.style():
        fig, ax = figures.figure("full")
        ax.set_title("tiny", fontsize=5)
        with pytest.raises(ValueError, match="text below 7 pt.*tiny"):
            figures.save(fig, str(tmp_path / "small"))
        fig, _ = matplotlib.pyplot.subplots(figsize=(16, 4.6))
        with pytest.raises(ValueError, match="figure width 16.00 in"):
            figures.save(fig, str(tmp_path / "wide"))
    assert not os.path.exists(tmp_path / "small.png")


def test_palette_is_okabe_ito_and_bounded():
    assert figures.palette(3) == ["#0072B2", "#E69F00", "#009E73"]
    with pytest.raises(ValueError, match="palette has 7 colours"):
        figures.palette(9)


def test_figure_2_draws_each_seeds_eta_max_as_its_bracket(monkeypatch, tmp_path):
    """Each seed's η_max is drawn from its last stable grid η to the next grid η (the first
    collapsed one), and the mean line runs through the brackets' geometric middles, where the
    censored fit puts η_max; a seed where nothing collapsed is a bound, not a bracket."""
    import numpy as np
    from async_grpo import results
    from experiments import study
    lrs, lags, seeds = [1.0, 2.0, 4.0, 8.0], [0, 1, 2], [0, 1]
    first_collapsed = {(0, 0): 8.0, (0, 1): 8.0, (1, 0): 4.0, (1, 1): 8.0, (2, 0): 2.0,
                       (2, 1): 99.0}                  # (2, 1): nothing collapsed
    axes = {"S": [], "lr": [], "seed": []}
    collapsed = []
    for s in lags:
        for lr in lrs:
            for r in seeds:
                collapsed.append(lr >= first_collapsed[(s, r)])
                for k, v in zip(("S", "lr", "seed"), (s, lr, r)):
                    axes[k].append(v)
    gr = results.GridResult("lm", {k: np.asarray(v) for k, v in axes.items()},
                            {"collapsed": np.asarray(collapsed),
                             "collapse_step": np.where(collapsed, 30, -1)},
                            fits={"stability": [results.stability(
                                lags, lrs, np.asarray(collapsed).reshape(3, 4, 2))]})
    kept = {}
    monkeypatch.setattr(study.figures, "save", lambda fig, stem: kept.setdefault("fig", fig))
    study.fig_eta_max({"lm": study._run_of(gr)}, str(tmp_path / "f2"))
    ax = kept["fig"].axes[0]
    segs = [s for c in ax.collections for s in c.get_segments()]
    spans = sorted((round(float(np.exp(np.log(seg[:, 0]).mean()))), float(seg[0, 1]),
                    float(seg[1, 1])) for seg in segs)
    assert spans == [(1, 2.0, 4.0), (1, 4.0, 8.0), (2, 1.0, 2.0)]
    mean = next(line for line in ax.get_lines() if line.get_label().startswith("geo. mean"))
    np.testing.assert_allclose(mean.get_ydata(), [np.sqrt(np.sqrt(8.0) * np.sqrt(32.0)),
                                                  np.sqrt(np.sqrt(2.0) * 8.0)])
    assert any(line.get_label().startswith("seed ≥") for line in ax.get_lines())
