"""Neighbour smoothing on hand-made grids and k-means ARI."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from stfusion import _constants as K
from stfusion.metrics import ari_kmeans, radius_graph, smooth_neighbours
from tests.conftest import need


def _square_section(platform="st", with_array=True):
    """3 x 3 square grid with one spot missing (col 2, row 2), 200 px apart."""
    cells = [(c, r) for r in range(3) for c in range(3) if (c, r) != (2, 2)]
    obs = pd.DataFrame(index=[f"{c}x{r}" for c, r in cells])
    if with_array:
        obs[K.ARRAY_COL] = [c for c, _ in cells]
        obs[K.ARRAY_ROW] = [r for _, r in cells]
    X = sparse.csr_matrix(np.arange(len(cells), dtype=float)[:, None] * [1.0, 10.0])
    a = ad.AnnData(X=X, obs=obs)
    a.obsm[K.SPATIAL] = np.array([[100 + 200 * c, 50 + 200 * r] for c, r in cells], dtype=float)
    a.uns[K.STFUSION] = {K.PLATFORM: platform}
    return a


# spot index by (col, row): 0:(0,0) 1:(1,0) 2:(2,0) 3:(0,1) 4:(1,1) 5:(2,1) 6:(0,2) 7:(1,2)
SQUARE_EXPECTED = np.array(
    [
        np.mean([0, 1, 3, 4]),
        np.mean([0, 1, 2, 3, 4, 5]),
        np.mean([1, 2, 4, 5]),
        np.mean([0, 1, 3, 4, 6, 7]),
        np.mean([0, 1, 2, 3, 4, 5, 6, 7]),
        np.mean([1, 2, 4, 5, 7]),
        np.mean([3, 4, 6, 7]),
        np.mean([3, 4, 5, 6, 7]),
    ]
)


def test_square_grid_3x3_from_array_coords():
    a = _square_section()
    out = smooth_neighbours(a)
    assert sparse.issparse(out) and out.shape == a.shape
    np.testing.assert_allclose(out.toarray()[:, 0], SQUARE_EXPECTED)
    np.testing.assert_allclose(out.toarray()[:, 1], 10 * SQUARE_EXPECTED)


def test_square_grid_from_pixels_and_coordinate_array():
    a = _square_section(platform=None, with_array=False)
    dense = a.X.toarray()
    np.testing.assert_allclose(smooth_neighbours(a, dense)[:, 0], SQUARE_EXPECTED)
    out = smooth_neighbours(a.obsm[K.SPATIAL], dense)
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out[:, 0], SQUARE_EXPECTED)
    with pytest.raises(ValueError, match="pass X"):
        smooth_neighbours(a.obsm[K.SPATIAL])


def test_visium_hexagonal_neighbours():
    # Visium array coords: (row + col) even. Centre (col 4, row 2) and its six neighbours,
    # plus (4, 0) and (4, 4): two rows away, NOT neighbours on the hexagonal grid.
    cells = [(4, 2), (2, 2), (6, 2), (3, 1), (5, 1), (3, 3), (5, 3), (4, 0), (4, 4), (8, 2)]
    obs = pd.DataFrame(
        {K.ARRAY_COL: [c for c, _ in cells], K.ARRAY_ROW: [r for _, r in cells]},
        index=[f"s{i}" for i in range(len(cells))],
    )
    X = np.zeros((len(cells), 1))
    X[0, 0] = 7.0  # only the centre expresses
    a = ad.AnnData(X=X, obs=obs)
    a.uns[K.STFUSION] = {K.PLATFORM: "visium"}
    out = smooth_neighbours(a)
    assert out[0, 0] == pytest.approx(1.0)  # (7 + 6 x 0) / 7
    # (2, 2) sees itself, the centre, (3, 1), (3, 3); (6, 2) also (8, 2); (3, 1) also (4, 0)...
    np.testing.assert_allclose(out[1:7, 0], [7.0 / 4, 7.0 / 5, 7.0 / 5, 7.0 / 5, 7.0 / 5, 7.0 / 5])
    assert out[7, 0] == 0.0 and out[8, 0] == 0.0  # (4, 0), (4, 4): not neighbours of the centre
    assert out[9, 0] == 0.0  # (8, 2): two columns beyond (6, 2)


def _visium_lattice(n_rows=9, n_cols=18):
    cells = [(c, r) for r in range(n_rows) for c in range(n_cols) if (c + r) % 2 == 0]
    obs = pd.DataFrame(
        {K.ARRAY_COL: [c for c, _ in cells], K.ARRAY_ROW: [r for _, r in cells]},
        index=[f"s{i}" for i in range(len(cells))],
    )
    a = ad.AnnData(X=np.random.default_rng(0).poisson(3.0, size=(len(cells), 4)).astype(float), obs=obs)
    # 100 µm centre to centre at 0.5 µm/px, with a little jitter
    xy = np.column_stack([obs[K.ARRAY_COL] * 100.0, obs[K.ARRAY_ROW] * 100.0 * np.sqrt(3)])
    a.obsm[K.SPATIAL] = xy + np.random.default_rng(1).normal(0, 3.0, size=xy.shape)
    a.uns[K.STFUSION] = {K.PLATFORM: "visium"}
    return a


def test_hex_pixels_match_visium_array_rule():
    a = _visium_lattice()
    by_array = smooth_neighbours(a)
    by_pixels = smooth_neighbours(a.obsm[K.SPATIAL], a.X)
    np.testing.assert_allclose(by_pixels, by_array)
    interior = (a.obs[K.ARRAY_ROW].between(1, 7) & a.obs[K.ARRAY_COL].between(2, 15)).to_numpy()
    g = radius_graph(a.obsm[K.SPATIAL])
    assert set(np.diff(g.indptr)[interior]) == {7}  # itself + 6
    # forcing the square-grid factor on a hex grid reaches the second ring (sqrt(3) d)
    assert np.diff(radius_graph(a.obsm[K.SPATIAL], 1.8).indptr)[interior].min() > 7


def test_real_legacy_st_pixels_match_array_grid(shared_data):
    table = need(shared_data, "her2st/data/ST-spotfiles/C3_selection.tsv")
    d = pd.read_csv(table, sep="\t")
    by_array = radius_graph(d[["x", "y"]].to_numpy(float))
    by_pixels = radius_graph(d[["pixel_x", "pixel_y"]].to_numpy(float))
    assert (by_array != by_pixels).nnz == 0
    assert np.bincount(np.diff(by_array.indptr)).argmax() == 9  # 3 x 3 blocks


def test_ari_kmeans_recovers_clusters():
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 30)
    centres = rng.normal(0, 10, size=(3, 20))
    expr = centres[np.repeat([0, 1, 2], 30)] + rng.normal(size=(90, 20))
    assert ari_kmeans(expr, labels) == pytest.approx(1.0)
    assert ari_kmeans(sparse.csr_matrix(expr), labels, n_pcs=5) == pytest.approx(1.0)
    noisy = rng.normal(size=(90, 20))
    assert ari_kmeans(noisy, labels) < 0.2
    lab_missing = labels.astype(object)
    lab_missing[:5] = None
    assert ari_kmeans(expr, lab_missing) == pytest.approx(1.0)
    assert ari_kmeans(expr, labels, n_clusters=2, seed=3) < 1.0
