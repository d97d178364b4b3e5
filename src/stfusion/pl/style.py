"""One look for every stfusion figure: fonts, colour maps, method colours, scale bars.

Plot functions create their figures inside :func:`style` so the settings apply to them only
(matplotlib's global ``rcParams`` are left alone).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import patheffects  # noqa: E402

EXPRESSION_CMAP = "viridis"
UNCERTAINTY_CMAP = "magma"
NULL_COLOR = "#b0b0b0"
REFERENCE_LINE = {"color": "grey", "lw": 0.8, "ls": "--"}
PANEL_INCHES = 3.6  # side of one map panel

RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 100,
    "savefig.dpi": 110,
    "image.cmap": EXPRESSION_CMAP,
}

# lengths a scale bar may take, µm
NICE_LENGTHS_UM = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)

F = TypeVar("F", bound=Callable)


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Apply the stfusion look to figures created inside the block."""
    with matplotlib.rc_context(RC):
        yield


def styled(fn: F) -> F:
    """Decorator: run a plot function inside :func:`style`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with style():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def method_colors(methods: Sequence[str]) -> dict[str, tuple]:
    """A stable colour per method name (tab10, in the given order)."""
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


# ----------------------------------------------------------------------------- scale bar
def nice_length_um(span_um: float, fraction: float = 0.2) -> float:
    """The longest 'round' length (1, 2, 5 x 10^k µm) not above ``fraction`` of ``span_um``."""
    if not np.isfinite(span_um) or span_um <= 0:
        raise ValueError(f"span_um must be positive, got {span_um}.")
    target = span_um * fraction
    fitting = [n for n in NICE_LENGTHS_UM if n <= target]
    return float(fitting[-1] if fitting else NICE_LENGTHS_UM[0])


def format_length(length_um: float) -> str:
    return f"{length_um / 1000:g} mm" if length_um >= 1000 else f"{length_um:g} µm"


def add_scale_bar(ax, um_per_px: float, *, length_um: float | None = None, color: str = "black") -> float:
    """Draw a physical scale bar in the lower left of an image axes; return its length in data pixels.

    ``um_per_px`` is the size of one *data* unit of the axes (for a downscaled preview:
    microns per full-resolution pixel divided by the preview's scale factor). Call after the
    axes limits are set. The bar is a line with ``gid="scale_bar"``, its label ``gid="scale_bar_label"``.
    """
    if not um_per_px > 0:
        raise ValueError(f"um_per_px must be positive, got {um_per_px}.")
    x_lo, x_hi = sorted(ax.get_xlim())
    y_lim = ax.get_ylim()
    width, height = x_hi - x_lo, abs(y_lim[1] - y_lim[0])
    length_um = nice_length_um(width * um_per_px) if length_um is None else float(length_um)
    length_px = length_um / um_per_px
    inverted = y_lim[0] > y_lim[1]  # image axes: y grows downwards
    y = max(y_lim) - 0.06 * height if inverted else min(y_lim) + 0.06 * height
    x0 = x_lo + 0.05 * width
    halo = [patheffects.withStroke(linewidth=3, foreground="white")]  # readable on dark maps too
    ax.plot([x0, x0 + length_px], [y, y], color=color, lw=3, solid_capstyle="butt", gid="scale_bar",
            path_effects=[patheffects.withStroke(linewidth=5, foreground="white")])
    ax.annotate(format_length(length_um), (x0 + length_px / 2, y), xytext=(0, 4), textcoords="offset points",
                ha="center", va="bottom", fontsize=8, color=color, gid="scale_bar_label", path_effects=halo)
    return length_px


# ----------------------------------------------------------------------------- colour bars
def colour_limits(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> tuple[float, float]:
    """Colour limits of ``values`` (default: their finite range). A range below 0.1% of the values'
    magnitude (Monte Carlo or float noise on a flat map) is widened to ±0.1% around its middle, so
    a nearly constant map shows one colour instead of stretching the noise over the colour map."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    scale = max(abs(lo), abs(hi))
    if hi - lo < 1e-3 * scale or hi <= lo:
        mid, half = (lo + hi) / 2, max(1e-3 * scale, 1e-9)
        lo, hi = mid - half, mid + half
    return lo, hi


def add_colorbar(fig, mappable, ax, label: str | None = None):
    """A colour bar with plain tick labels: no offset or '1e-7' multiplier above the bar."""
    from matplotlib.ticker import ScalarFormatter

    bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.03, label=label)
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    bar.formatter = formatter
    bar.update_ticks()
    return bar
