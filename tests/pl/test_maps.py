"""Expression maps and comparison panels: geometry, physical scale bars, shared colour limits."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from stfusion import _constants as K
from stfusion.data.normalize import log1p_normalize_total
from stfusion.errors import StfusionError
from stfusion.pl import comparison_panels, expression_map
from stfusion.pl.maps import MAP_GID
from stfusion.pl.panels import measured_expression
from stfusion.pl.style import format_length, nice_length_um
from tests.pl import synthetic as S


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    return S.section(tmp_path_factory.mktemp("maps"))


@pytest.fixture(scope="module")
def pred(truth):
    return S.prediction(truth, layers=("sd", "sd_counts"))


def _collections(fig):
    """The coloured artists: spot PatchCollections and grid AxesImages, in panel order."""
    return [a for ax in fig.axes for a in [*ax.collections, *ax.images] if a.get_gid() == MAP_GID]


def _scale_bar(ax):
    (line,) = [ln for ln in ax.lines if ln.get_gid() == "scale_bar"]
    (label,) = [t for t in ax.texts if t.get_gid() == "scale_bar_label"]
    x = line.get_xdata()
    return float(x[1] - x[0]), label.get_text()


@pytest.mark.parametrize("factor", [1, 2])
def test_scale_bar_length_matches_microns_per_pixel(truth, pred, factor):
    p = S.with_preview_scale(pred, factor)  # preview pixels are `factor` full-res pixels
    fig = expression_map(p, "marker_0")
    ax = fig.axes[0]
    length_px, label = _scale_bar(ax)
    um_per_display_px = S.MPP * factor
    width_um = (ax.get_xlim()[1] - ax.get_xlim()[0]) * um_per_display_px
    expected_um = nice_length_um(width_um)
    assert length_px == pytest.approx(expected_um / um_per_display_px)
    assert label == format_length(expected_um)
    assert 0.05 * width_um < expected_um <= 0.2 * width_um  # a readable bar, not the whole panel
    plt.close(fig)


def test_nice_lengths():
    assert nice_length_um(1000) == 200
    assert nice_length_um(4999) == 500
    assert nice_length_um(3) == 1  # never shorter than 1 µm
    assert format_length(2000) == "2 mm" and format_length(50) == "50 µm"
    with pytest.raises(ValueError):
        nice_length_um(0)


def test_spots_drawn_at_their_diameter_with_the_gene_values(truth, pred):
    fig = expression_map(pred, "marker_1", vmin=-1, vmax=5)
    (coll,) = _collections(fig)
    paths = coll.get_paths()
    assert len(paths) == pred.n_obs
    diameter = truth.uns[K.SPATIAL][next(iter(truth.uns[K.SPATIAL]))][K.SCALEFACTORS][K.SPOT_DIAMETER_FULLRES]
    extent = paths[0].get_extents(coll.get_transforms()[0] if len(coll.get_transforms()) else None)
    assert extent.width == pytest.approx(diameter, rel=1e-6)  # scale factor 1: full-res pixels
    np.testing.assert_allclose(coll.get_array(), pred[:, "marker_1"].X.ravel(), rtol=1e-6)
    assert coll.get_clim() == (-1, 5)
    plt.close(fig)


def test_superres_grid_drawn_as_cells_of_the_cell_side(truth):
    sr = S.superres(truth, k=2)
    fig = expression_map(sr, "marker_0")
    (img,) = _collections(fig)
    side = sr.uns[K.STFUSION][K.SUPERRES][K.SUPERRES_SUBPATCH_PX]
    raster = img.get_array()
    assert raster.shape == (16, 16) and raster.count() == 4 * truth.n_obs  # 8 x 8 spots, 2 x 2 cells each
    left, right, bottom, top = img.get_extent()
    assert (right - left) / raster.shape[1] == pytest.approx(side) and (bottom - top) / raster.shape[0] == pytest.approx(side)
    # the cell at the lowest x and y holds the first value at that position
    xy = sr.obsm[K.SPATIAL]
    first = np.flatnonzero((xy[:, 0] == xy[:, 0].min()) & (xy[:, 1] == xy[:, 1].min()))[0]
    assert raster[0, 0] == pytest.approx(sr.X[first, 0])
    plt.close(fig)


def test_xfuse_grid_side_from_grid_um(truth):
    sr = S.superres(truth, k=2)
    meta = dict(sr.uns[K.STFUSION])
    del meta[K.SUPERRES]
    meta[K.GRID_UM] = 48.0  # 24 px at 2 µm/px
    sr.uns[K.STFUSION] = meta
    fig = expression_map(sr, "marker_0")
    (img,) = _collections(fig)
    left, right, _, _ = img.get_extent()
    assert (right - left) / img.get_array().shape[1] == pytest.approx(48.0 / S.MPP)
    assert _scale_bar(fig.axes[0])[0] > 0
    plt.close(fig)


def test_unknown_gene_and_layer_fail_clearly(pred):
    with pytest.raises(StfusionError, match="not among"):
        expression_map(pred, "NOPE")
    with pytest.raises(StfusionError, match="Layer 'var'"):
        expression_map(pred, "marker_0", layer="var")


def test_map_without_image_or_scale(pred):
    bare = pred.copy()
    del bare.uns[K.SPATIAL]
    fig = expression_map(bare, "marker_0")
    ax = fig.axes[0]
    assert not ax.images and not [ln for ln in ax.lines if ln.get_gid() == "scale_bar"]
    assert len(_collections(fig)[0].get_paths()) == bare.n_obs
    plt.close(fig)


def test_image_only_prediction_takes_its_scale_from_uns_stfusion(pred):
    tiles = pred.copy()  # like ST-Net's predict_image: no uns["spatial"], the scale in uns["stfusion"]
    del tiles.uns[K.SPATIAL]
    tiles.uns[K.STFUSION] = {**tiles.uns[K.STFUSION], K.MICRONS_PER_PIXEL: 0.5}
    fig = expression_map(tiles, "marker_0")
    ax = fig.axes[0]
    length_px, label = _scale_bar(ax)
    assert length_px * 0.5 == pytest.approx(nice_length_um((ax.get_xlim()[1] - ax.get_xlim()[0]) * 0.5))
    plt.close(fig)


def test_panels_share_limits_between_measured_and_predicted(truth, pred):
    fig = comparison_panels(pred, "marker_0", truth=truth)
    colls = _collections(fig)
    assert len(colls) == 4  # measured, predicted, sd, sd_counts
    assert [ax.get_title() for ax in fig.axes if ax.collections][:4] == ["measured", "predicted", "uncertainty (sd)", "uncertainty (sd_counts)"]
    measured = log1p_normalize_total(truth[:, ["marker_0"]].X, target_sum=1e4, totals=np.asarray(truth.X.sum(axis=1)).ravel())
    both = np.concatenate([np.ravel(measured), pred[:, "marker_0"].X.ravel()])
    assert colls[0].get_clim() == pytest.approx((both.min(), both.max()))
    assert colls[1].get_clim() == colls[0].get_clim()
    sd = np.asarray(pred[:, "marker_0"].layers["sd"], dtype=float)
    assert colls[2].get_clim() == pytest.approx((sd.min(), sd.max()))  # uncertainty keeps its own scale
    plt.close(fig)
    fig = comparison_panels(pred, "marker_0", truth=truth, shared_limits=False, uncertainty=[])
    colls = _collections(fig)
    assert len(colls) == 2 and colls[0].get_clim() != colls[1].get_clim()
    plt.close(fig)


def test_panels_without_truth(pred):
    fig = comparison_panels(pred, "marker_2", uncertainty=["sd"])
    assert len(_collections(fig)) == 2
    plt.close(fig)


def test_measured_expression_is_the_prediction_scale(truth):
    m = measured_expression(truth, ["marker_0", "noise_0"])
    totals = np.asarray(truth.X.sum(axis=1)).ravel()
    expected = np.log1p(truth[:, "noise_0"].X.toarray().ravel() / totals * 1e4)
    np.testing.assert_allclose(m[:, "noise_0"].X.ravel(), expected, rtol=1e-5)
    assert m.obs_names.equals(truth.obs_names) and K.SPATIAL in m.uns
