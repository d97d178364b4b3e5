"""Grid positions of spots and of arbitrary image points, on one scale.

HisToGene embeds a token's column and row on the spot array. We take them from the array
coordinates (``obs["array_col"]``/``obs["array_row"]``: the legacy ST grid or the Visium
array) when a section has them, else from the pixel coordinates binned to the training grid
pitch (µm per grid unit, fitted on the training sections), so H&E-only slides get positions.
Any other image point (super-resolution patch centres) is mapped to the same grid units by
an affine fit pixel -> array over the section's spots, or by the same binning, so
sub-spot positions use the training scale. Positions are shifted so that the section's
spots start at 0, rounded, and clipped to the embedding table (with a warning).
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np

from stfusion import _constants as K
from stfusion.data.section import microns_per_pixel, spot_coords


def has_array(section: ad.AnnData) -> bool:
    """Whether the section has usable array coordinates (at least 3 spots, not all on a line)."""
    if not {K.ARRAY_COL, K.ARRAY_ROW} <= set(section.obs.columns) or section.n_obs < 3:
        return False
    arr = section.obs[[K.ARRAY_COL, K.ARRAY_ROW]].to_numpy(dtype=float)
    return bool(np.isfinite(arr).all() and np.ptp(arr[:, 0]) > 0 and np.ptp(arr[:, 1]) > 0)


def _affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 3 x 2 matrix A with [src, 1] @ A ≈ dst."""
    design = np.column_stack([src, np.ones(len(src))])
    coef, *_ = np.linalg.lstsq(design, dst, rcond=None)
    return coef


def array_pitch_um(section: ad.AnnData) -> np.ndarray | None:
    """µm per array unit along columns and rows (from an affine fit array -> pixels), or None."""
    if not has_array(section):
        return None
    arr = section.obs[[K.ARRAY_COL, K.ARRAY_ROW]].to_numpy(dtype=float)
    coef = _affine(arr, spot_coords(section))
    return np.linalg.norm(coef[:2], axis=1) * microns_per_pixel(section)


def training_pitch_um(sections: list[ad.AnnData], default_um: float = K.ST_SPOT_SPACING_UM) -> list[float]:
    """Median µm per grid unit (x, y) over the training sections; ``default_um`` without arrays."""
    pitches = [p for p in (array_pitch_um(s) for s in sections) if p is not None]
    if not pitches:
        return [float(default_um), float(default_um)]
    return [float(v) for v in np.median(np.vstack(pitches), axis=0)]


def grid_mapper(section: ad.AnnData, pitch_um: list[float], *, use_array: bool = True):
    """A function pixels (n, 2) -> float grid coordinates (n, 2) for this section."""
    if use_array and has_array(section):
        arr = section.obs[[K.ARRAY_COL, K.ARRAY_ROW]].to_numpy(dtype=float)
        coef = _affine(spot_coords(section), arr)
        return lambda px: np.column_stack([np.asarray(px, float), np.ones(len(px))]) @ coef
    scale = microns_per_pixel(section) / np.asarray(pitch_um, dtype=float)
    return lambda px: np.asarray(px, float) * scale


def spot_grid(section: ad.AnnData, pitch_um: list[float], *, use_array: bool = True) -> np.ndarray:
    """Float grid coordinates of the section's spots (array coordinates when present)."""
    if use_array and has_array(section):
        return section.obs[[K.ARRAY_COL, K.ARRAY_ROW]].to_numpy(dtype=float)
    return grid_mapper(section, pitch_um, use_array=False)(spot_coords(section))


def to_table(
    grid: np.ndarray, origin: np.ndarray, grid_size: int, *, what: str = "spots", tolerance: int = 0
) -> np.ndarray:
    """Integer table indices: ``round(grid - origin)`` clipped to ``[0, grid_size)``.

    Warns when an index lies more than ``tolerance`` entries outside the table.
    """
    idx = np.rint(np.asarray(grid, float) - np.asarray(origin, float)).astype(np.int64)
    over = (idx < -tolerance) | (idx >= grid_size + tolerance)
    if over.any():
        warnings.warn(
            f"{int(over.any(axis=1).sum())} {what} lie outside the {grid_size}-entry position table "
            f"(grid extent {idx.min(axis=0).tolist()}..{idx.max(axis=0).tolist()}); they are clipped to its edge. "
            "Fit with a larger grid_size for sections this large.",
            stacklevel=3,
        )
    return np.clip(idx, 0, grid_size - 1)


def section_positions(
    section: ad.AnnData, pitch_um: list[float], grid_size: int, *, use_array: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(table indices of the spots (n, 2), the origin subtracted), the minimum spot at 0."""
    grid = spot_grid(section, pitch_um, use_array=use_array)
    origin = np.floor(grid.min(axis=0) + 0.5)
    return to_table(grid, origin, grid_size), origin


def smooth_neighbours(y: np.ndarray, pos: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * y + weight * mean of the grid neighbours`` (spots within 1.5 grid units)."""
    from scipy.spatial import cKDTree

    pairs = cKDTree(pos).query_pairs(1.5, output_type="ndarray")
    total, count = np.zeros_like(y, dtype=np.float64), np.zeros(len(y))
    for a, b in ((0, 1), (1, 0)):
        np.add.at(total, pairs[:, a], y[pairs[:, b]])
        np.add.at(count, pairs[:, a], 1)
    neigh = np.where(count[:, None] > 0, total / np.maximum(count, 1)[:, None], y)
    return ((1 - weight) * y + weight * neigh).astype(np.float32)
