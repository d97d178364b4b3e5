"""Expression maps over the H&E: spots (or super-resolved grid cells) coloured by one gene.

Works on sections and on predictions (``stfusion predict`` copies ``obsm["spatial"]`` and
``uns["spatial"]`` from the section). Each map has a colour bar and a physical scale bar.
"""

from __future__ import annotations

import anndata as ad
import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Circle, Rectangle  # noqa: E402
from scipy import sparse  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from stfusion import _constants as K  # noqa: E402
from stfusion.errors import StfusionError  # noqa: E402
from stfusion.pl.style import (  # noqa: E402
    EXPRESSION_CMAP,
    PANEL_INCHES,
    add_colorbar,
    add_scale_bar,
    colour_limits,
    styled,
)

MAP_GID = "expression_map"  # gid of the coloured spot collection (tests and panels find it by this)


# ----------------------------------------------------------------------------- data access
def gene_values(adata: ad.AnnData, gene: str, layer: str | None = None) -> np.ndarray:
    """Values of one gene over the observations (``X`` or a layer), as float."""
    if gene not in adata.var_names:
        raise StfusionError(
            f"Gene {gene!r} is not among the {adata.n_vars} genes (e.g. {list(adata.var_names[:3])}). "
            "Gene names are case-sensitive."
        )
    if layer is not None and layer not in adata.layers:
        raise StfusionError(f"Layer {layer!r} is not in the AnnData; it has {list(adata.layers.keys()) or 'none'}.")
    j = adata.var_names.get_loc(gene)
    col = (adata.layers[layer] if layer is not None else adata.X)[:, j]
    col = col.toarray() if sparse.issparse(col) else np.asarray(col)
    return col.ravel().astype(float)


def uncertainty_layers(adata: ad.AnnData) -> list[str]:
    """Layers holding a predictive standard deviation: ``sd`` and ``sd_*`` (e.g. ``sd_counts``)."""
    sd = K.LAYER_PRED_SD
    return [k for k in adata.layers.keys() if k == sd or k.startswith(f"{sd}_")]


def superres_info(adata: ad.AnnData) -> dict | None:
    """The grid of a super-resolved prediction, else None.

    HisToGene's sub-patch grid records ``uns["stfusion"]["superres"]`` (``factor``,
    ``subpatch_px``); XFuse's ``predict_grid`` records ``uns["stfusion"]["grid_um"]``. The
    result always has ``subpatch_px`` (the cell side, full-resolution pixels) when the
    scale is known.
    """
    meta = adata.uns.get(K.STFUSION, {})
    if meta.get(K.SUPERRES):
        return dict(meta[K.SUPERRES])
    if K.GRID_UM in meta:
        info = {K.GRID_UM: float(meta[K.GRID_UM])}
        mpp = microns_per_pixel_or_none(adata)
        if mpp:
            info[K.SUPERRES_SUBPATCH_PX] = info[K.GRID_UM] / mpp
        return info
    return None


def grid_label(info: dict) -> str:
    """Short description of a super-resolved grid: ``4× super-res.`` or ``10 µm grid``."""
    if K.SUPERRES_FACTOR in info:
        return f"{info[K.SUPERRES_FACTOR]}× super-res."
    if K.GRID_UM in info:
        return f"{info[K.GRID_UM]:g} µm grid"
    return "super-res."


def _library(adata: ad.AnnData) -> dict | None:
    libs = adata.uns.get(K.SPATIAL, {})
    return next(iter(libs.values())) if len(libs) == 1 else None


def microns_per_pixel_or_none(adata: ad.AnnData) -> float | None:
    """µm per full-resolution pixel from ``uns["spatial"]``, else from ``uns["stfusion"]`` (image-only
    predictions record it there), else 1 for image-free data whose coordinates are in µm
    (``uns["stfusion"]["coordinate_units"] == "um"``: imputed spatial cells), else None."""
    lib = _library(adata)
    meta = adata.uns.get(K.STFUSION, {})
    value = None if lib is None else lib.get(K.MICRONS_PER_PIXEL)
    if value is None:
        value = meta.get(K.MICRONS_PER_PIXEL)
    if value is None and lib is None and meta.get(K.COORDINATE_UNITS) == "um":
        value = 1.0
    return float(value) if value is not None and float(value) > 0 else None


def background_image(adata: ad.AnnData) -> tuple[np.ndarray | None, float]:
    """The most detailed usable stored image and its scale factor; ``(None, 1.0)`` when none."""
    from stfusion.pl.spatial import _best_image

    lib = _library(adata)
    if lib is None or K.SCALEFACTORS not in lib:
        return None, 1.0
    try:
        return _best_image(lib)
    except StfusionError:
        return None, 1.0


# ----------------------------------------------------------------------------- geometry
def _nn_distance(xy: np.ndarray) -> float:
    if len(xy) < 2:
        return 1.0
    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1])) or 1.0


def marker_size_px(adata: ad.AnnData) -> tuple[str, float]:
    """``("square", side)`` for grid cells, ``("circle", diameter)`` for spots; full-res pixels."""
    xy = np.asarray(adata.obsm[K.SPATIAL], dtype=float)
    info = superres_info(adata)
    if info and K.SUPERRES_SUBPATCH_PX in info:
        return "square", float(info[K.SUPERRES_SUBPATCH_PX])
    if info:
        return "square", _nn_distance(xy)
    lib = _library(adata)
    diameter = None if lib is None else lib.get(K.SCALEFACTORS, {}).get(K.SPOT_DIAMETER_FULLRES)
    return "circle", float(diameter) if diameter else 0.9 * _nn_distance(xy)


def _shapes(adata: ad.AnnData, scalef: float) -> tuple[list, float]:
    """Spot patches in display pixels and their half-extent (for the axes limits)."""
    xy = np.asarray(adata.obsm[K.SPATIAL], dtype=float) * scalef
    if K.AREA_BBOX in adata.obsm:
        boxes = np.asarray(adata.obsm[K.AREA_BBOX], dtype=float) * scalef
        half = float(np.max(boxes[:, 2:] - boxes[:, :2])) / 2
        return [Rectangle((x0, y0), x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes], half
    kind, size = marker_size_px(adata)
    half = size * scalef / 2
    if kind == "square":
        return [Rectangle((x - half, y - half), 2 * half, 2 * half) for x, y in xy], half
    return [Circle((x, y), half) for x, y in xy], half


def grid_raster(xy: np.ndarray, side: float, values: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Cells of side ``side`` centred at ``xy`` (a regular grid) as a raster (NaN where no cell)
    and its ``imshow`` extent (left, right, bottom, top) in the same units as ``xy``."""
    origin = xy.min(axis=0)
    idx = np.round((xy - origin) / side).astype(np.int64)
    width, height = idx.max(axis=0) + 1
    raster = np.full((height, width), np.nan)
    raster[idx[:, 1], idx[:, 0]] = values
    x0, y0 = origin - side / 2
    return raster, (x0, x0 + width * side, y0 + height * side, y0)


def _draw(ax, adata: ad.AnnData, v: np.ndarray, scalef: float, norm: Normalize, cmap: str, alpha: float):
    """The coloured spots (PatchCollection) or grid (AxesImage), and the half-extent of one marker."""
    xy = np.asarray(adata.obsm[K.SPATIAL], dtype=float) * scalef
    kind, size = marker_size_px(adata)
    if superres_info(adata) is not None and kind == "square":  # thousands of cells: one image, not patches
        raster, extent = grid_raster(xy, size * scalef, v)
        art = ax.imshow(np.ma.masked_invalid(raster), extent=extent, origin="upper", cmap=cmap, norm=norm,
                        alpha=alpha, interpolation="nearest", gid=MAP_GID)
        return art, size * scalef / 2
    shapes, half = _shapes(adata, scalef)
    art = PatchCollection(shapes, cmap=cmap, norm=norm, alpha=alpha, linewidths=0, gid=MAP_GID)
    art.set_array(v)
    ax.add_collection(art)
    return art, half


def _set_limits(ax, xy: np.ndarray, half: float, image: np.ndarray | None) -> None:
    pad = half + 0.04 * float(np.ptp(xy, axis=0).max() if len(xy) > 1 else 1.0)
    x0, y0 = xy.min(axis=0) - pad
    x1, y1 = xy.max(axis=0) + pad
    if image is not None:  # never show more than the image
        x0, y0 = max(x0, -0.5), max(y0, -0.5)
        x1, y1 = min(x1, image.shape[1] - 0.5), min(y1, image.shape[0] - 0.5)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_aspect("equal")


# ----------------------------------------------------------------------------- the map
@styled
def expression_map(
    adata: ad.AnnData,
    gene: str,
    *,
    layer: str | None = None,
    values: np.ndarray | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = EXPRESSION_CMAP,
    label: str | None = None,
    title: str | None = None,
    show_image: bool = True,
    scale_bar: bool = True,
    alpha: float = 0.85,
    ax: plt.Axes | None = None,
) -> Figure:
    """One gene over the H&E: spots at their true size, or the cells of a super-resolved grid.

    Parameters
    ----------
    adata
        A section or a prediction with ``obsm["spatial"]`` (full-resolution pixels) and,
        for the image and the scale bar, ``uns["spatial"]``.
    gene
        Gene to draw.
    layer
        Draw this layer (e.g. ``"sd"``) instead of ``X``.
    values
        Draw these values (one per observation) instead; ``gene`` then only names them.
    vmin, vmax
        Colour limits (default: the values' range), so several maps can share one scale.
    label
        Colour bar label (default: the gene, plus the layer).
    title
        Axes title (default: the gene).
    show_image
        Draw the stored H&E preview underneath.
    scale_bar
        Draw a physical scale bar when the scale (µm per pixel) is known.
    ax
        Draw into this axes; default: a new figure.

    Returns
    -------
    The figure. The coloured artist (a PatchCollection of spots, or an AxesImage of a
    super-resolved grid) has ``gid="expression_map"``; ``get_clim()`` gives the colour limits.
    """
    if K.SPATIAL not in adata.obsm:
        raise StfusionError("The AnnData has no obsm['spatial'] spot coordinates; predict from a section to get them.")
    v = gene_values(adata, gene, layer) if values is None else np.asarray(values, dtype=float).ravel()
    if len(v) != adata.n_obs:
        raise ValueError(f"values has {len(v)} entries for {adata.n_obs} observations.")
    image, scalef = background_image(adata) if show_image else (None, 1.0)
    if ax is None:
        fig, ax = plt.subplots(figsize=(PANEL_INCHES + 0.8, PANEL_INCHES))
    fig = ax.figure
    if image is not None:
        ax.imshow(image)
    lo, hi = colour_limits(v, vmin, vmax)
    art, half = _draw(ax, adata, v, scalef, Normalize(lo, hi), cmap, alpha)
    _set_limits(ax, np.asarray(adata.obsm[K.SPATIAL], dtype=float) * scalef, half, image)
    add_colorbar(fig, art, ax, label or (gene if layer is None else f"{gene} ({layer})"))
    mpp = microns_per_pixel_or_none(adata)
    if scale_bar and mpp is not None:
        add_scale_bar(ax, mpp / scalef)
    ax.set_title(gene if title is None else title)
    ax.set_axis_off()
    return fig
