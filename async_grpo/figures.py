"""The project's figure style: paper widths, print-size fonts, colour-blind-safe palettes.

Every figure the binaries draw is made inside ``with figures.style():`` with `figure(...)` and
`save(...)`:

* widths of a two-column paper: `COLUMN` = 3.25 in (one column) and `FULL` = 6.75 in (both);
* text at print size: 8 pt labels and titles, 7 pt ticks and legends (readable when the figure
  is printed at its width, never scaled down);
* discrete series in the Okabe–Ito palette (`palette(n)`, distinguishable with the common
  colour-vision deficiencies; Okabe & Ito 2008), continuous values in "cividis";
* every mark explained in a legend or a labelled colour bar (the callers' job; `legend_only`
  adds entries for marks drawn without a label);
* PNG at 300 dpi and a vector PDF with embedded TrueType fonts.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

# The PDF backend's font subsetting logs every table it prunes at INFO: noise in a run's log.
logging.getLogger("fontTools").setLevel(logging.WARNING)

COLUMN = 3.25   # inches
FULL = 6.75
# Okabe–Ito, black last (kept for reference lines); yellow dropped (too light on white).
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000")
SEQUENTIAL = "cividis"

RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.title_fontsize": 7,
    "lines.linewidth": 1.2, "lines.markersize": 3.5, "axes.linewidth": 0.6,
    "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
    "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO), "savefig.dpi": 300,
    "pdf.fonttype": 42, "ps.fonttype": 42, "figure.constrained_layout.use": True,
}


def palette(n: int) -> list[str]:
    """`n` colour-blind-safe colours for discrete series (at most 7)."""
    if not 1 <= n <= len(OKABE_ITO):
        raise ValueError(f"palette({n}): the Okabe–Ito palette has {len(OKABE_ITO)} colours; "
                         "split the series into panels or mark them by line style as well.")
    return list(OKABE_ITO[:n])


@contextlib.contextmanager
def style() -> Iterator[None]:
    with matplotlib.rc_context(RC):
        yield


def figure(width: str = "full", *, ncols: int = 1, nrows: int = 1, aspect: float = 0.62,
           **kw):
    """(fig, axes) of `width` "column" or "full", each panel `aspect` times as high as wide."""
    if width not in ("column", "full"):
        raise ValueError(f"width={width!r}: must be 'column' or 'full'")
    w = COLUMN if width == "column" else FULL
    return plt.subplots(nrows, ncols, figsize=(w, w / ncols * aspect * nrows), **kw)


def legend_only(ax, entries: Sequence[tuple[str, dict]], **kw):
    """A legend that also lists marks drawn without labels: entries are (label, plot kwargs)."""
    own, labels = ax.get_legend_handles_labels()
    handles = [ax.plot([], [], **style_kw)[0] for _, style_kw in entries]
    return ax.legend(own + handles, labels + [e[0] for e in entries], **kw)


MIN_FONT_PT = 7


def check_print_ready(fig) -> None:
    """Raises ValueError unless the figure is a column or full width and no visible text is
    smaller than `MIN_FONT_PT`."""
    width = fig.get_size_inches()[0]
    if min(abs(width - COLUMN), abs(width - FULL)) > 1e-6:
        raise ValueError(f"figure width {width:.2f} in: must be {COLUMN} (column) or {FULL} (full)")
    small = sorted({(t.get_fontsize(), t.get_text()[:30]) for t in fig.findobj(
        matplotlib.text.Text) if t.get_visible() and t.get_text().strip()
        and t.get_fontsize() < MIN_FONT_PT})
    if small:
        raise ValueError(f"text below {MIN_FONT_PT} pt: {small[:5]}")


def save(fig, stem: str) -> None:
    """Checks the figure (`check_print_ready`), writes `stem`.png (300 dpi) and `stem`.pdf,
    then closes it."""
    try:
        check_print_ready(fig)
        fig.savefig(stem + ".png")
        fig.savefig(stem + ".pdf")
    finally:
        plt.close(fig)
