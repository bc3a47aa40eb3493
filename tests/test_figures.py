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
