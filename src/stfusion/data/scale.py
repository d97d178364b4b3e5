"""Physical scale of a section: microns per full-resolution pixel.

Found, in order of preference, from a user override, from Visium scale factors
(the spot diameter is 55 µm), or from the spot grid of a legacy ST array
(the known centre-to-centre distance of the array over the neighbour distance in
pixels, fitted through the array coordinates when they are known).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from stfusion import _constants as K
from stfusion.errors import ScaleError


def grid_spacing_px(coords: np.ndarray, array_coords: np.ndarray | None = None) -> float:
    """Centre-to-centre distance of neighbouring spots, in pixels.

    With the spots' array coordinates (legacy ST ``x``/``y``, Visium ``array_col``/``array_row``)
    an affine map from array to pixel coordinates is fitted by least squares, and the
    distance is that map applied to each spot's nearest-neighbour offset on the array
    (median over spots). This averages out the jitter of individual spot positions, which
    biases the plain nearest-neighbour distance low (a minimum over noisy distances).
    Without array coordinates: the median nearest-neighbour distance in pixels.
    """
    coords = np.asarray(coords, dtype=float)
    if coords.ndim != 2 or coords.shape[0] < 2:
        raise ScaleError(
            "Cannot fit the spot grid: fewer than two spots. "
            "Pass microns_per_pixel= (or --microns-per-pixel) explicitly."
        )
    if array_coords is not None and len(array_coords) >= 3:
        spacing = _affine_spacing(coords, np.asarray(array_coords, dtype=float))
    else:
        dist, _ = cKDTree(coords).query(coords, k=2)
        spacing = float(np.median(dist[:, 1]))
    if not np.isfinite(spacing) or spacing <= 0:
        raise ScaleError(
            "Cannot fit the spot grid: spots share coordinates. "
            "Check the spot table or pass microns_per_pixel= explicitly."
        )
    return spacing


def _affine_spacing(coords: np.ndarray, array_coords: np.ndarray) -> float:
    design = np.column_stack([array_coords, np.ones(len(array_coords))])
    if np.linalg.matrix_rank(design) < 3:  # all spots on one array line: no 2-D fit
        dist, _ = cKDTree(coords).query(coords, k=2)
        return float(np.median(dist[:, 1]))
    affine, *_ = np.linalg.lstsq(design, coords, rcond=None)
    _, idx = cKDTree(array_coords).query(array_coords, k=2)
    offsets = array_coords[idx[:, 1]] - array_coords
    return float(np.median(np.linalg.norm(offsets @ affine[:2], axis=1)))


def resolve_scale(
    coords: np.ndarray | None = None,
    *,
    microns_per_pixel: float | None = None,
    spot_diameter_fullres: float | None = None,
    spot_diameter_um: float | None = None,
    spot_spacing_um: float | None = None,
    array_coords: np.ndarray | None = None,
) -> tuple[float, str]:
    """Return ``(microns_per_pixel, source)`` with source ``override``, ``visium`` or ``grid``.

    ``array_coords`` (spots x 2) improves the grid fit; see :func:`grid_spacing_px`.
    """
    if microns_per_pixel is not None:
        mpp = float(microns_per_pixel)
        if not np.isfinite(mpp) or mpp <= 0:
            raise ScaleError(f"microns_per_pixel must be a positive number, got {microns_per_pixel!r}.")
        return mpp, "override"
    if spot_diameter_fullres is not None and spot_diameter_um is not None:
        if spot_diameter_fullres <= 0:
            raise ScaleError(
                f"spot_diameter_fullres is {spot_diameter_fullres}; the scale factors file is broken. "
                "Pass microns_per_pixel= explicitly."
            )
        return float(spot_diameter_um) / float(spot_diameter_fullres), "visium"
    if spot_spacing_um is not None and coords is not None:
        return float(spot_spacing_um) / grid_spacing_px(coords, array_coords), "grid"
    raise ScaleError(
        "No way to know the physical scale of this section: no Visium scale factors, "
        "no spot spacing and no override. Pass microns_per_pixel= (CLI: --microns-per-pixel) "
        "or the array's centre-to-centre spot spacing (spot_spacing_um=, CLI: --spot-spacing-um)."
    )


def spot_diameter_px(microns_per_pixel: float, spot_diameter_um: float = K.ST_SPOT_DIAMETER_UM) -> float:
    """Spot diameter in full-resolution pixels."""
    return float(spot_diameter_um) / float(microns_per_pixel)
