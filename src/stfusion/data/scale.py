"""Physical scale of a section: microns per full-resolution pixel.

Found, in order of preference, from a user override, from Visium scale factors
(the spot diameter is 55 µm), or from the spot grid of a legacy ST array
(median nearest-neighbour distance in pixels over the known centre-to-centre
distance of the array).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from stfusion import _constants as K
from stfusion.errors import ScaleError


def grid_spacing_px(coords: np.ndarray) -> float:
    """Median distance from each spot centre to its nearest neighbour, in pixels."""
    coords = np.asarray(coords, dtype=float)
    if coords.ndim != 2 or coords.shape[0] < 2:
        raise ScaleError(
            "Cannot fit the spot grid: fewer than two spots. "
            "Pass microns_per_pixel= (or --microns-per-pixel) explicitly."
        )
    dist, _ = cKDTree(coords).query(coords, k=2)
    spacing = float(np.median(dist[:, 1]))
    if not np.isfinite(spacing) or spacing <= 0:
        raise ScaleError(
            "Cannot fit the spot grid: spots share coordinates. "
            "Check the spot table or pass microns_per_pixel= explicitly."
        )
    return spacing


def resolve_scale(
    coords: np.ndarray | None = None,
    *,
    microns_per_pixel: float | None = None,
    spot_diameter_fullres: float | None = None,
    spot_diameter_um: float | None = None,
    spot_spacing_um: float | None = None,
) -> tuple[float, str]:
    """Return ``(microns_per_pixel, source)`` with source ``override``, ``visium`` or ``grid``."""
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
        return float(spot_spacing_um) / grid_spacing_px(coords), "grid"
    raise ScaleError(
        "No way to know the physical scale of this section: no Visium scale factors, "
        "no spot spacing and no override. Pass microns_per_pixel= (CLI: --microns-per-pixel) "
        "or the array's centre-to-centre spot spacing (spot_spacing_um=, CLI: --spot-spacing-um)."
    )


def spot_diameter_px(microns_per_pixel: float, spot_diameter_um: float = K.ST_SPOT_DIAMETER_UM) -> float:
    """Spot diameter in full-resolution pixels."""
    return float(spot_diameter_um) / float(microns_per_pixel)
