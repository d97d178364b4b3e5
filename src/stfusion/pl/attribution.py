"""Attribution overlays: an H&E patch beside its pixel attribution map."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def attribution_overlay(patch: np.ndarray, attribution: np.ndarray, *, title: str | None = None, alpha: float = 0.55) -> Figure:
    """Three panels: the patch, the attribution map (sum over RGB, diverging colours, red =
    raises the prediction) and the map overlaid on the patch. Returns the figure.

    ``patch``: H x W x 3 uint8; ``attribution``: H x W x 3 or H x W.
    """
    attr = np.asarray(attribution, dtype=float)
    amap = attr.sum(axis=-1) if attr.ndim == 3 else attr
    if amap.shape != patch.shape[:2]:
        raise ValueError(f"attribution {amap.shape} does not match the patch {patch.shape[:2]}.")
    lim = float(np.abs(amap).max()) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    axes[0].imshow(patch)
    axes[0].set_title("H&E patch")
    im = axes[1].imshow(amap, cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[1].set_title("integrated gradients")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    axes[2].imshow(patch)
    axes[2].imshow(amap, cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=alpha)
    axes[2].set_title("overlay")
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
