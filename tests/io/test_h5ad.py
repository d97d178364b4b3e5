"""h5ad reader (stfusion sections and scanpy/squidpy Visium objects) and atomic writer."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

from stfusion import _constants as K
from stfusion.data import fullres_shape, library_id, microns_per_pixel, spatial_info
from stfusion.errors import CountsError, InputFileError, SchemaError
from stfusion.io.h5ad import read_h5ad, write_h5ad
from stfusion.io.visium import read_visium
from tests.conftest import assert_spots_on_tissue, need

LIB = "V1_Adult_Mouse_Brain"


@pytest.fixture(scope="module")
def fixture_dir(shared_data) -> Path:
    return need(shared_data, "squidpy_visium_fixture")


@pytest.fixture(scope="module")
def scanpy_style(fixture_dir) -> ad.AnnData:
    """The fixture read by scanpy's own (deprecated) Visium reader: float images, no µm/px."""
    import scanpy as sc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        adata = sc.read_visium(fixture_dir)
    adata.var_names_make_unique()
    return adata


def recovered_counts(x: sparse.spmatrix) -> sparse.csr_matrix:
    """Undo log1p(normalize_total): the smallest non-zero value of each spot is one count."""
    e = sparse.csr_matrix(x, dtype=np.float64)
    e.data = np.expm1(e.data)
    unit = np.minimum.reduceat(e.data, e.indptr[:-1])  # row minima (every row has data)
    counts = sparse.diags(1.0 / unit) @ e
    assert np.abs(counts.data - np.round(counts.data)).max() < 0.01
    counts.data = np.round(counts.data)
    return counts.tocsr()


# --------------------------------------------------------------------------- squidpy test_data.h5ad
def test_normalised_h5ad_raises_counts_error(fixture_dir):
    with pytest.raises(CountsError) as info:
        read_h5ad(fixture_dir / "test_data.h5ad")
    msg = str(info.value)
    assert "X contain 22372 non-integer values" in msg
    assert "layers['counts'] (absent)" in msg and ".raw.X (absent)" in msg


def test_squidpy_h5ad_with_counts_layer(fixture_dir, tmp_path):
    src = ad.read_h5ad(fixture_dir / "test_data.h5ad")
    src.layers[K.LAYER_COUNTS] = recovered_counts(src.X)
    path = tmp_path / "with_counts.h5ad"
    src.write_h5ad(path)
    with pytest.warns(UserWarning, match="imply different full-resolution sizes"):
        adata = read_h5ad(path)  # its hires image is random noise of the wrong size
    assert adata.shape == (49, 1999)
    assert library_id(adata) == LIB
    assert int(adata.X.sum()) == int(src.layers[K.LAYER_COUNTS].sum()) == 204613
    assert microns_per_pixel(adata) == 55.0 / 89.44476048022638
    assert fullres_shape(adata) == (1725, 961)  # from lowres 88 x 49 at 0.051033426
    lib = spatial_info(adata)
    assert lib[K.SCALEFACTORS][K.LOWRES_SCALEF] == 0.051033426
    assert lib[K.METADATA]["software_version"] == "spaceranger-1.0.0"
    assert lib[K.IMAGES][K.LOWRES].dtype == np.uint8
    assert list(adata.obs["leiden"][:3]) == list(src.obs["leiden"][:3])
    # The lowres crop is almost all tissue, so the grey-level margin is small here; the
    # colour (pink minus green) under every spot confirms they sit on stained tissue.
    assert_spots_on_tissue(adata, image_key=K.LOWRES, margin=2.0, check_swap=False)
    img = lib[K.IMAGES][K.LOWRES].astype(float)
    xy = np.round(adata.obsm[K.SPATIAL] * lib[K.SCALEFACTORS][K.LOWRES_SCALEF]).astype(int)
    assert (img[xy[:, 1], xy[:, 0], 0] - img[xy[:, 1], xy[:, 0], 1]).min() > 10
    assert (img[40:80, :3, 0] - img[40:80, :3, 1]).max() < 5  # bare slide on the left edge


# --------------------------------------------------------------------------- conversion
def test_scanpy_visium_h5ad_converts_like_read_visium(scanpy_style, fixture_dir, tmp_path):
    path = tmp_path / "scanpy.h5ad"
    scanpy_style.write_h5ad(path)
    adata = read_h5ad(path)
    ref = read_visium(fixture_dir)
    assert library_id(adata) == "custom"  # scanpy's library id from the h5 metadata
    assert adata.obs_names.equals(ref.obs_names) and adata.var_names.equals(ref.var_names)
    assert (adata.X != ref.X).nnz == 0 and adata.X.dtype == np.int32
    np.testing.assert_array_equal(adata.obsm[K.SPATIAL], ref.obsm[K.SPATIAL])
    assert microns_per_pixel(adata) == microns_per_pixel(ref)
    assert fullres_shape(adata) == fullres_shape(ref) == (13332, 13332)
    assert spatial_info(adata)[K.SCALEFACTORS] == spatial_info(ref)[K.SCALEFACTORS]
    for key in (K.HIRES, K.LOWRES):
        np.testing.assert_array_equal(spatial_info(adata)[K.IMAGES][key], spatial_info(ref)[K.IMAGES][key])
    assert_spots_on_tissue(adata, image_key=K.LOWRES, check_swap=False)


def test_counts_taken_from_raw(scanpy_style, tmp_path):
    import scanpy as sc

    adata = scanpy_style.copy()
    adata.raw = adata.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    path = tmp_path / "raw.h5ad"
    adata.write_h5ad(path)
    section = read_h5ad(path)
    assert section.X.dtype == np.int32
    np.testing.assert_array_equal(section.X.toarray(), scanpy_style.X.toarray())


def test_multiple_libraries_need_library_id(scanpy_style, tmp_path):
    a = scanpy_style.copy()
    b = scanpy_style[:40].copy()
    b.uns[K.SPATIAL] = {"B": b.uns[K.SPATIAL]["custom"]}
    a.uns[K.SPATIAL] = {"A": a.uns[K.SPATIAL]["custom"]}
    both = ad.concat([a, b], label=K.OBS_LIBRARY_ID, keys=["A", "B"], uns_merge="unique", index_unique="-")
    path = tmp_path / "two.h5ad"
    both.write_h5ad(path)
    with pytest.raises(SchemaError, match="2 libraries .A, B.. Pass library_id="):
        read_h5ad(path)
    with pytest.raises(SchemaError, match="'C' is not in"):
        read_h5ad(path, library_id="C")
    section = read_h5ad(path, library_id="B")
    assert section.n_obs == 40 and library_id(section) == "B"
    assert set(section.obs[K.OBS_LIBRARY_ID]) == {"B"}


def test_no_spatial_entry(tmp_path):
    path = tmp_path / "plain.h5ad"
    ad.AnnData(X=sparse.csr_matrix(np.ones((3, 2)))).write_h5ad(path)
    with pytest.raises(SchemaError, match="no uns\\['spatial'\\]"):
        read_h5ad(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        read_h5ad(tmp_path / "nope.h5ad")


# --------------------------------------------------------------------------- sections
def test_section_round_trip(fixture_dir, tmp_path):
    section = read_visium(fixture_dir)
    path = write_h5ad(section, tmp_path / "a" / "b" / "section.h5ad")  # creates parents
    back = read_h5ad(path)
    assert back.obs_names.equals(section.obs_names)
    assert (back.X != section.X).nnz == 0
    np.testing.assert_array_equal(back.obsm[K.SPATIAL], section.obsm[K.SPATIAL])
    assert spatial_info(back)[K.SCALE_SOURCE] == "visium"
    assert microns_per_pixel(back) == microns_per_pixel(section)
    assert fullres_shape(back) == (13332, 13332)
    assert back.uns[K.STFUSION][K.PLATFORM] == "visium"
    assert sorted(p.name for p in path.parent.iterdir()) == ["section.h5ad"]  # no temp file left


def _failing_write(self, filename, *args, **kwargs):
    Path(filename).write_bytes(b"\x89HDF partial")
    raise OSError("disk full")


def test_failed_write_leaves_no_partial_file(fixture_dir, tmp_path, monkeypatch):
    section = read_visium(fixture_dir)
    monkeypatch.setattr(ad.AnnData, "write_h5ad", _failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_h5ad(section, tmp_path / "out.h5ad")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_existing_file(fixture_dir, tmp_path, monkeypatch):
    section = read_visium(fixture_dir)
    path = write_h5ad(section, tmp_path / "out.h5ad")
    before = path.read_bytes()
    monkeypatch.setattr(ad.AnnData, "write_h5ad", _failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_h5ad(section[:10].copy(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5ad"]
