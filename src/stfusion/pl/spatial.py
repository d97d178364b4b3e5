"""Spot overlays on the H&E image."""

from __future__ import annotations

import anndata as ad
import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Circle, Rectangle  # noqa: E402

from stfusion import _constants as K  # noqa: E402
from stfusion.data.section import microns_per_pixel, spatial_info  # noqa: E402
from stfusion.errors import StfusionError  # noqa: E402
from stfusion.pl.style import add_scale_bar, styled  # noqa: E402


def _spot_values(section: ad.AnnData, gene: str | None) -> tuple[np.ndarray, str]:
    if gene is None:
        return np.asarray(section.X.sum(axis=1)).ravel().astype(float), "total counts"
    if gene not in section.var_names:
        close = [g for g in section.var_names if g.lower().startswith(gene.lower()[:3])][:5]
        raise StfusionError(
            f"Gene {gene!r} is not in the section ({section.n_vars} genes). "
            f"Similar names: {close or 'none'}. Gene names are case-sensitive."
        )
    col = section[:, gene].X
    col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
    return col.ravel().astype(float), f"{gene} counts"


def _best_image(lib: dict) -> tuple[np.ndarray, float]:
    """The stored image with the most detail (largest scale factor) that is not blank."""
    options = []
    for key, sf_key in ((K.HIRES, K.HIRES_SCALEF), (K.LOWRES, K.LOWRES_SCALEF)):
        img = lib.get(K.IMAGES, {}).get(key)
        if img is not None and sf_key in lib[K.SCALEFACTORS]:
            arr = np.asarray(img)
            if arr.std() > 2 or (arr.dtype != np.uint8 and arr.std() > 0.01):
                options.append((lib[K.SCALEFACTORS][sf_key], arr))
    if not options:
        raise StfusionError("The section stores no usable image to draw on. Read it again with its image.")
    scalef, img = max(options, key=lambda t: t[0])
    return img, float(scalef)


def _spot_patches(section: ad.AnnData, xy: np.ndarray, radius: float, scalef: float) -> list:
    """Circles at the spot diameter, or the measurement rectangles when the section stores them."""
    if K.AREA_BBOX in section.obsm:
        boxes = np.asarray(section.obsm[K.AREA_BBOX], dtype=float) * scalef
        return [Rectangle((x0, y0), x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes]
    return [Circle((x, y), radius) for x, y in xy]


@styled
def spot_overlay(
    section: ad.AnnData,
    gene: str | None = None,
    *,
    cmap: str = "viridis",
    alpha: float = 0.8,
    ax: plt.Axes | None = None,
) -> Figure:
    """The H&E with spot circles at their true diameter, coloured by total counts or a gene.

    Adds a colour bar and a physical scale bar. Returns the matplotlib figure.
    """
    lib = spatial_info(section)
    img, scalef = _best_image(lib)
    values, label = _spot_values(section, gene)
    xy = np.asarray(section.obsm[K.SPATIAL], dtype=float) * scalef
    radius = lib[K.SCALEFACTORS][K.SPOT_DIAMETER_FULLRES] * scalef / 2
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 7 * img.shape[0] / img.shape[1] + 0.3))
    else:
        fig = ax.figure
    ax.imshow(img)
    circles = PatchCollection(_spot_patches(section, xy, radius, scalef), cmap=cmap, alpha=alpha, linewidths=0)
    circles.set_array(values)
    ax.add_collection(circles)
    fig.colorbar(circles, ax=ax, fraction=0.046, pad=0.04, label=label)
    add_scale_bar(ax, microns_per_pixel(section) / scalef)
    sid = section.uns.get(K.STFUSION, {}).get(K.SECTION_ID, "")
    ax.set_title(f"{sid}  ({section.n_obs} spots)")
    ax.set_axis_off()
    return fig
