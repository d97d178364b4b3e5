"""Scale from the spot grid: the array-coordinate fit is unbiased under position jitter."""

import numpy as np
import pytest

from stfusion.data.scale import grid_spacing_px, resolve_scale
from stfusion.errors import ScaleError


def _grid(pitch=290.0, jitter=6.0, seed=0):
    rng = np.random.default_rng(seed)
    ax, ay = np.meshgrid(np.arange(1, 21), np.arange(1, 21))
    array_xy = np.column_stack([ax.ravel(), ay.ravel()]).astype(float)
    px = array_xy * pitch + 100 + rng.normal(0, jitter, array_xy.shape)
    return px, array_xy


def test_affine_fit_recovers_pitch_despite_jitter():
    px, array_xy = _grid()
    assert grid_spacing_px(px, array_xy) == pytest.approx(290.0, rel=0.005)
    # the plain nearest-neighbour distance is biased low by the same jitter
    assert grid_spacing_px(px) < 290.0 * 0.99


def test_centred_lattice_uses_the_diagonal_offset():
    # 2k-array-like: x + y even, neighbours at (±1, ±1)
    ax, ay = np.meshgrid(np.arange(0, 30), np.arange(0, 30))
    keep = (ax + ay).ravel() % 2 == 0
    array_xy = np.column_stack([ax.ravel(), ay.ravel()])[keep].astype(float)
    px = array_xy * [21.6, 24.05]
    assert grid_spacing_px(px, array_xy) == pytest.approx(np.hypot(21.6, 24.05), rel=1e-6)


def test_resolve_scale_order_and_errors():
    px, array_xy = _grid(jitter=0)
    assert resolve_scale(px, microns_per_pixel=0.5) == (0.5, "override")
    assert resolve_scale(spot_diameter_fullres=110.0, spot_diameter_um=55.0) == (0.5, "visium")
    mpp, source = resolve_scale(px, spot_spacing_um=200.0, array_coords=array_xy)
    assert source == "grid" and mpp == pytest.approx(200 / 290)
    with pytest.raises(ScaleError, match="microns_per_pixel"):
        resolve_scale(px)
    with pytest.raises(ScaleError, match="fewer than two spots"):
        resolve_scale(px[:1], spot_spacing_um=200.0)
    with pytest.raises(ScaleError, match="positive"):
        resolve_scale(px, microns_per_pixel=-1)
