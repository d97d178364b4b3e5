"""Synthetic data: XFuse-style shapes section and the reference + spatial pair."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage, sparse
from scipy.spatial.distance import pdist

from stfusion.data import fullres_path, microns_per_pixel, spot_diameter_px, validate_section
from stfusion.data.synthetic import make_synthetic_pair, make_synthetic_section


@pytest.fixture(scope="module")
def square(tmp_path_factory) -> ad.AnnData:
    return make_synthetic_section(tmp_path_factory.mktemp("sq"), seed=0, n_genes=5)


def _image(adata: ad.AnnData) -> np.ndarray:
    return np.asarray(Image.open(fullres_path(adata)))


def test_valid_section_with_ground_truth(square: ad.AnnData) -> None:
    validate_section(square)
    truth = square.uns["synthetic"]
    assert square.shape == (16, 5)
    assert list(square.var_names) == ["marker_0", "marker_1", "marker_2", "noise_0", "noise_1"]
    assert truth["label_map"].shape == (384, 384) and truth["rates"].shape == (5, 384, 384)
    assert truth["rates"].dtype == np.float32
    assert set(np.unique(truth["label_map"])) == {-1, 0, 1, 2}
    assert microns_per_pixel(square) == 1.0
    assert spot_diameter_px(square) == pytest.approx(96.0)
    assert _image(square).shape == (384, 384, 3) and _image(square).dtype == np.uint8
    np.testing.assert_allclose(square.obsm["spatial"][0], [48.0, 48.0])
    assert tuple(square.obsm["area_bbox"][5]) == (96, 96, 192, 192)  # row 1, column 1


def test_shapes_do_not_overlap(square: ad.AnnData) -> None:
    truth = square.uns["synthetic"]
    n = len(truth["shape_kind"])
    assert 20 <= n <= 32
    _, n_components = ndimage.label(truth["label_map"] >= 0, structure=np.ones((3, 3)))
    assert n_components == n  # each shape is one blob, none touches another
    area = 0
    for kind, (x0, y0, x1, y1), sub in zip(truth["shape_kind"], truth["shape_bbox"], truth["shape_subtype"]):
        patch = truth["label_map"][y0:y1, x0:x1]
        inside = patch == sub
        if kind in ("square", "rectangle"):
            assert inside.all()
        else:  # a disc fills pi/4 of its box
            assert inside.mean() == pytest.approx(np.pi / 4, abs=0.08)
        area += int(inside.sum())
    assert area == int((truth["label_map"] >= 0).sum())


def test_counts_are_poisson_of_summed_rates(square: ad.AnnData) -> None:
    truth = square.uns["synthetic"]
    for i, (x0, y0, x1, y1) in enumerate(square.obsm["area_bbox"]):
        summed = truth["rates"][:, y0:y1, x0:x1].astype(np.float64).sum(axis=(1, 2))
        np.testing.assert_allclose(square.layers["expected"][i], summed, rtol=1e-6)
    expected = square.layers["expected"]
    counts = square.X.toarray()
    assert np.all(counts[expected == 0] == 0)
    pos = expected > 0
    z = (counts[pos] - expected[pos]) / np.sqrt(expected[pos])
    assert np.all(np.abs(z) < 5)
    # marker counts = reads_per_pixel x the subtype's pixels in the area
    x0, y0, x1, y1 = square.obsm["area_bbox"][0]
    n_px = [(truth["label_map"][y0:y1, x0:x1] == k).sum() for k in range(3)]
    np.testing.assert_allclose(expected[0, :3], 10.0 * np.asarray(n_px))
    np.testing.assert_allclose(expected[:, 3:], 96 * 96 * 1.0)  # background genes everywhere


def test_poisson_mean_over_repeats(tmp_path: Path) -> None:
    """Low rates: the average over seeds of (counts - expected) is near zero."""
    diffs, total = [], 0.0
    for seed in range(12):
        a = make_synthetic_section(tmp_path, size_px=96, n_shapes=6, reads_per_pixel=0.02, seed=seed, noise_sd=0)
        diffs.append(a.X.toarray().sum() - a.layers["expected"].sum())
        total += a.layers["expected"].sum()
    assert abs(sum(diffs)) < 5 * np.sqrt(total)


def test_image_colours_separate_subtypes(square: ad.AnnData) -> None:
    img = _image(square).astype(float)
    truth = square.uns["synthetic"]
    palette = np.vstack([truth["subtype_colors"], truth["background_color"]]).astype(float)
    labels = np.where(truth["label_map"] >= 0, truth["label_map"], len(palette) - 1)
    nearest = np.argmin(((img[:, :, None, :] - palette[None, None]) ** 2).sum(axis=3), axis=2)
    assert (nearest == labels).mean() > 0.999
    for k in range(3):
        np.testing.assert_allclose(img[truth["label_map"] == k].mean(axis=0), palette[k], atol=2.0)
    assert pdist(palette).min() > 80  # colours (and background) far apart


def test_round_spots(tmp_path: Path) -> None:
    a = make_synthetic_section(tmp_path, spot_shape="round", grid=(3, 3), size_px=300, seed=4)
    validate_section(a)
    truth = a.uns["synthetic"]
    r = truth["area_radius_px"]
    assert r == pytest.approx(25.0) and spot_diameter_px(a) == pytest.approx(50.0)
    yy, xx = np.mgrid[0:300, 0:300] + 0.5
    for i, (cx, cy) in enumerate(a.obsm["spatial"]):
        inside = truth["area_map"] == i
        assert inside.sum() == pytest.approx(np.pi * r**2, rel=0.03)
        assert np.all((xx[inside] - cx) ** 2 + (yy[inside] - cy) ** 2 <= r**2)
        x0, y0, x1, y1 = a.obsm["area_bbox"][i]
        assert inside[y0:y1, x0:x1].sum() == inside.sum()
        summed = (truth["rates"][:, inside]).sum(axis=1)
        np.testing.assert_allclose(a.layers["expected"][i], summed, rtol=1e-5)
    with pytest.raises(ValueError, match="diameter"):
        make_synthetic_section(tmp_path, spot_shape="round", spot_diameter_px=200)


def test_seeded_and_writable(tmp_path: Path, square: ad.AnnData) -> None:
    again = make_synthetic_section(tmp_path / "again", seed=0, n_genes=5)
    assert (square.X != again.X).nnz == 0
    np.testing.assert_array_equal(square.uns["synthetic"]["label_map"], again.uns["synthetic"]["label_map"])
    np.testing.assert_array_equal(_image(square), _image(again))
    other = make_synthetic_section(tmp_path / "other", seed=1, n_genes=5)
    assert not np.array_equal(square.uns["synthetic"]["label_map"], other.uns["synthetic"]["label_map"])
    assert (square.X != other.X).nnz > 0
    path = tmp_path / "s.h5ad"
    square.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.uns["synthetic"]["rates"], square.uns["synthetic"]["rates"])
    np.testing.assert_array_equal(back.obsm["area_bbox"], square.obsm["area_bbox"])


@pytest.fixture(scope="module")
def pair() -> tuple[ad.AnnData, ad.AnnData]:
    return make_synthetic_pair(n_ref_cells=600, n_spatial_cells=500, n_genes=40, n_types=4, seed=0)


def test_pair_shapes_genes_counts(pair) -> None:
    ref, sp = pair
    assert ref.shape == (600, 40) and sp.shape == (500, 40)
    assert list(ref.var_names) == list(sp.var_names)
    for a in (ref, sp):
        assert sparse.issparse(a.X) and a.X.dtype.kind == "i" and a.X.min() >= 0
        assert set(a.obs["cell_type"].cat.categories) == {"type_0", "type_1", "type_2", "type_3"}
    assert sp.obsm["spatial"].shape == (500, 2)
    assert sp.uns["stfusion"]["coordinate_units"] == "um"
    # platform effect: the spatial data has far fewer reads per cell
    assert sp.X.sum(axis=1).mean() < 0.3 * ref.X.sum(axis=1).mean()


def test_pair_cell_type_signal(pair) -> None:
    ref, sp = pair
    markers = ref.uns["synthetic"]["marker_genes"]
    for a in (ref, sp):
        x = a.X.toarray().astype(float)
        types = a.obs["cell_type"].astype(str).to_numpy()
        for t, genes in enumerate(markers):
            cols = [a.var_names.get_loc(g) for g in genes]
            means = {u: x[types == u][:, cols].mean() for u in np.unique(types)}
            assert max(means, key=means.get) == f"type_{t}"


def test_pair_spatial_regions_and_seed(pair) -> None:
    ref, sp = pair
    xy, types = sp.obsm["spatial"], sp.obs["cell_type"].to_numpy()
    d = ((xy[:, None] - xy[None]) ** 2).sum(axis=2)
    np.fill_diagonal(d, np.inf)
    same = (types[np.argmin(d, axis=1)] == types).mean()
    assert same > 0.6  # neighbours share a type far above chance (about 0.25)
    ref2, sp2 = make_synthetic_pair(n_ref_cells=600, n_spatial_cells=500, n_genes=40, n_types=4, seed=0)
    assert (ref.X != ref2.X).nnz == 0 and np.array_equal(sp.obsm["spatial"], sp2.obsm["spatial"])
    ref3, _ = make_synthetic_pair(n_ref_cells=600, n_spatial_cells=500, n_genes=40, n_types=4, seed=1)
    assert (ref.X != ref3.X).nnz > 0
    with pytest.raises(ValueError, match="markers_per_type"):
        make_synthetic_pair(n_genes=10, n_types=4, markers_per_type=5)
