"""Attention maps of a transformer over a section's spots (HisToGene, Pang et al. Fig. 5)."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from stfusion.data.section import spatial_info, spot_diameter_px  # noqa: E402
from stfusion.pl.spatial import _best_image  # noqa: E402


def attention_map(
    section: ad.AnnData,
    weights: np.ndarray,
    spot: int | str,
    *,
    layers: Sequence[int] | None = None,
    head: int | None = None,
    cmap: str = "magma",
) -> Figure:
    """One panel per layer: the attention of ``spot`` to every spot, drawn over the H&E.

    Parameters
    ----------
    section
        The section whose spots were attended to.
    weights
        ``(n_layers, heads, n_spots)`` attention of the query spot, e.g. from
        :meth:`stfusion.models.histogene.HisToGene.attention`.
    spot
        The query spot (index or name), outlined in cyan.
    layers
        Labels of the panels (default 1, 2, ...).
    head
        Show one head; default: the mean over heads.
    """
    w = np.asarray(weights, dtype=float)
    if w.ndim != 3 or w.shape[2] != section.n_obs:
        raise ValueError(f"weights must be (n_layers, heads, {section.n_obs}), got {w.shape}.")
    values = w.mean(axis=1) if head is None else w[:, head]
    i = section.obs_names.get_loc(spot) if isinstance(spot, str) else int(spot)
    labels = list(layers) if layers is not None else list(range(1, len(values) + 1))
    image, scalef = _best_image(spatial_info(section))
    xy = np.asarray(section.obsm["spatial"], float) * scalef
    size = (spot_diameter_px(section) * scalef) ** 2 * 0.6
    fig, axes = plt.subplots(1, len(values), figsize=(4 * len(values), 4.4), squeeze=False)
    for ax, v, label in zip(axes[0], values, labels, strict=True):
        ax.imshow(image)
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=v, s=size / 40, cmap=cmap, vmin=0, vmax=float(v.max()) or 1.0)
        ax.scatter([xy[i, 0]], [xy[i, 1]], s=size / 15, facecolors="none", edgecolors="cyan", linewidths=1.5)
        pad = 0.05 * np.ptp(xy, axis=0).max()
        ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
        ax.set_ylim(xy[:, 1].max() + pad, xy[:, 1].min() - pad)
        ax.set_axis_off()
        ax.set_title(f"layer {label}" + ("" if head is None else f", head {head}"))
        fig.colorbar(sc, ax=ax, shrink=0.7, label="attention")
    fig.suptitle(f"Attention of spot {section.obs_names[i]}")
    return fig
