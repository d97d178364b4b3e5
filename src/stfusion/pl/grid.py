"""Figures of super-resolved grid predictions: per-gene previews (mean and SD) and the metagene
summary map, on one set of axes: µm from the image's top-left corner, with a scale bar.

The functions take arrays (the grid's images and its origin), so they import no model code;
``stfusion predict --grid-um`` draws its PNG previews and ``summary.png`` with them.
"""

from __future__ import annotations

import numpy as np

from stfusion.pl.style import (
    EXPRESSION_CMAP,
    UNCERTAINTY_CMAP,
    add_colorbar,
    add_scale_bar,
    colour_limits,
    plt,
    styled,
)


def _extent(shape: tuple[int, ...], um: float, origin: tuple[int, int]) -> tuple[float, float, float, float]:
    r0, c0 = origin
    return (c0 * um, (c0 + shape[1]) * um, (r0 + shape[0]) * um, r0 * um)


def _frame(ax, um_per_unit: float = 1.0) -> None:
    ax.set_xlabel("µm from the image's left edge")
    ax.set_ylabel("µm from the top")
    add_scale_bar(ax, um_per_unit)


@styled
def grid_preview(mean: np.ndarray, sd: np.ndarray | None, gene: str, um: float, origin: tuple[int, int] = (0, 0)):
    """The mean map of one gene (and its SD map) over a grid of ``um``-µm cells whose top-left cell
    is (row, col) ``origin`` of the grid; NaN cells (off tissue) are blank. Colour bars show plain
    numbers; a nearly constant map is one colour (see :func:`stfusion.pl.style.colour_limits`)."""
    panels = [("mean", mean, EXPRESSION_CMAP)] + ([("SD", sd, UNCERTAINTY_CMAP)] if sd is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4), squeeze=False)
    for ax, (label, img, cmap) in zip(axes[0], panels, strict=True):
        lo, hi = colour_limits(img)
        art = ax.imshow(img, cmap=cmap, extent=_extent(img.shape, um, origin), interpolation="nearest", vmin=lo, vmax=hi)
        ax.set_title(f"{gene}: {label}")
        _frame(ax)
        add_colorbar(fig, art, ax, f"{gene} ({label})")
    fig.tight_layout()
    return fig


def stretch(rgb: np.ndarray, tissue: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """Each channel of ``rgb`` (uint8) stretched from its ``low`` to its ``high`` percentile over
    the ``tissue`` pixels, so small differences between metagenes show as colour, not grey."""
    out = rgb.astype(float)
    for ch in range(out.shape[2]):
        values = out[..., ch][tissue]
        if values.size:
            lo, hi = np.percentile(values, [low, high])
            out[..., ch] = np.where(tissue, (out[..., ch] - lo) / max(hi - lo, 1.0) * 255.0, 255.0)
    return np.clip(out, 0, 255).astype(np.uint8)


@styled
def summary_map(rgb: np.ndarray, um: float):
    """The metagene summary (an RGB image of ``um``-µm pixels from the image's corner), cropped to
    the tissue (non-white pixels), contrast-stretched per channel, on µm axes with a scale bar."""
    tissue = (rgb != 255).any(axis=2)
    rows, cols = np.nonzero(tissue)
    if not len(rows):
        rows, cols = np.array([0, rgb.shape[0] - 1]), np.array([0, rgb.shape[1] - 1])
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crop = stretch(rgb[r0:r1, c0:c1], tissue[r0:r1, c0:c1])
    fig, ax = plt.subplots(figsize=(5, 5 * crop.shape[0] / max(crop.shape[1], 1) + 0.6))
    ax.imshow(crop, extent=_extent(crop.shape, um, (r0, c0)), interpolation="nearest")
    ax.set_title("Metagene summary: C, M, Y = PC1-3 of activities, K = -scale\n(each channel stretched 2-98%)",
                 fontsize=9)
    _frame(ax)
    fig.tight_layout()
    return fig
