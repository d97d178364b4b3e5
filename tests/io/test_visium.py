"""Space Ranger reader on the squidpy Visium fixture (real H&E, 100 barcodes x 100 genes)."""

from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
from PIL import Image
from scipy import ndimage, sparse

from stfusion import _constants as K
from stfusion.data import fullres_path, fullres_shape, library_id, microns_per_pixel, spatial_info
from stfusion.errors import EmptySectionError, ImageError, InputFileError, JoinError
from stfusion.io.visium import read_visium
from tests.conftest import assert_spots_on_tissue, need

SPOT_DIAMETER_FULLRES = 89.42751063343188
POS_V1 = "tissue_positions_list.csv"
POS_V2 = "tissue_positions.csv"
HEADER = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


@pytest.fixture(scope="module")
def fixture_dir(shared_data) -> Path:
    return need(shared_data, "squidpy_visium_fixture")


@pytest.fixture(scope="module")
def section(fixture_dir):
    return read_visium(fixture_dir)


def copy_outs(src: Path, dst: Path, *, counts: bool = True) -> Path:
    """Writable copy of the fixture's small files (never into the repo)."""
    (dst / "spatial").mkdir(parents=True)
    for f in (src / "spatial").iterdir():
        shutil.copyfile(f, dst / "spatial" / f.name)
    if counts:
        shutil.copyfile(src / "filtered_feature_bc_matrix.h5", dst / "filtered_feature_bc_matrix.h5")
    return dst


def positions(outs: Path) -> pd.DataFrame:
    return pd.read_csv(outs / "spatial" / POS_V1, header=None, names=HEADER)


def assert_same_section(a, b) -> None:
    assert a.obs_names.equals(b.obs_names)
    assert a.var_names.equals(b.var_names)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.obsm[K.SPATIAL], b.obsm[K.SPATIAL])
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert list(a.var[K.GENE_IDS]) == list(b.var[K.GENE_IDS])
    la, lb = spatial_info(a), spatial_info(b)
    assert la[K.SCALEFACTORS] == lb[K.SCALEFACTORS]
    assert microns_per_pixel(a) == microns_per_pixel(b)
    assert fullres_shape(a) == fullres_shape(b)
    for key in (K.HIRES, K.LOWRES):
        np.testing.assert_array_equal(la[K.IMAGES][key], lb[K.IMAGES][key])


# --------------------------------------------------------------------------- the fixture
def test_fixture_counts_genes_and_spots(section, fixture_dir):
    assert section.shape == (100, 100)  # all 100 barcodes are in tissue and all join
    assert section.obs[K.IN_TISSUE].eq(1).all()
    with h5py.File(fixture_dir / "filtered_feature_bc_matrix.h5") as f:
        total = f["matrix/data"][:].sum()
        ids = [x.decode() for x in f["matrix/features/id"][:]]
    assert section.X.dtype == np.int32 and sparse.issparse(section.X)
    assert int(section.X.sum()) == int(total) == 932
    assert list(section.var[K.GENE_IDS]) == ids
    assert section.var_names.is_unique
    first = section.obs.loc["AAACAAGTATCTCCCA-1"]
    assert (first[K.ARRAY_ROW], first[K.ARRAY_COL]) == (50, 102)


def test_fixture_scale_and_scalefactors(section):
    lib = spatial_info(section)
    assert microns_per_pixel(section) == 55.0 / SPOT_DIAMETER_FULLRES
    assert lib[K.SCALE_SOURCE] == "visium"
    sf = lib[K.SCALEFACTORS]
    assert sf[K.HIRES_SCALEF] == 0.150015
    assert sf[K.LOWRES_SCALEF] == 0.045004502
    assert sf[K.FIDUCIAL_DIAMETER_FULLRES] == 144.45982486939
    assert sf[K.SPOT_DIAMETER_FULLRES] == pytest.approx(SPOT_DIAMETER_FULLRES, rel=1e-12)
    assert fullres_shape(section) == (13332, 13332)  # 2000 / 0.150015 and 600 / 0.045004502
    assert lib[K.IMAGES][K.HIRES].shape == (2000, 2000, 3)
    assert lib[K.IMAGES][K.LOWRES].shape == (600, 600, 3)
    assert lib[K.IMAGES][K.LOWRES].dtype == np.uint8
    assert fullres_path(section) is None
    assert library_id(section) == "squidpy_visium_fixture"
    assert section.uns[K.STFUSION][K.PLATFORM] == "visium"


def spots_off_tissue(adata) -> int:
    """Spots whose centre is on unstained slide in the lowres H&E (pink minus green <= 0)."""
    lib = spatial_info(adata)
    img = lib[K.IMAGES][K.LOWRES].astype(float)
    chroma = ndimage.uniform_filter(img[..., 0] - img[..., 1], 5)  # ~ one spot wide at lowres
    xy = np.round(adata.obsm[K.SPATIAL] * lib[K.SCALEFACTORS][K.LOWRES_SCALEF]).astype(int)
    return int((chroma[xy[:, 1], xy[:, 0]] <= 0).sum())


def test_fixture_xy_not_swapped(section):
    # positions file: barcode,in_tissue,row,col,pxl_row=8513,pxl_col=9811 -> (x, y) = (9811, 8513)
    np.testing.assert_array_equal(section.obsm[K.SPATIAL][0], [9811.0, 8513.0])
    assert_spots_on_tissue(section, image_key=K.LOWRES, check_swap=False)
    # The tissue fills a square here, so the grey-level check above also passes with x/y
    # swapped; the colour check tells them apart: all 100 in-tissue spots are on stained
    # tissue, while swapping puts several on bare slide.
    assert spots_off_tissue(section) == 0
    swapped = section.copy()
    swapped.obsm[K.SPATIAL] = section.obsm[K.SPATIAL][:, ::-1].copy()
    assert spots_off_tissue(swapped) >= 5


def test_matches_scanpy_reader(section, fixture_dir):
    import scanpy as sc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ref = sc.read_visium(fixture_dir)
    ref = ref[section.obs_names]
    np.testing.assert_array_equal(section.obsm[K.SPATIAL], np.asarray(ref.obsm[K.SPATIAL], dtype=float))
    np.testing.assert_array_equal(section.X.toarray(), ref.X.toarray())


# --------------------------------------------------------------------------- layouts
def test_v2_positions_with_header_read_identically(section, fixture_dir, tmp_path):
    outs = copy_outs(fixture_dir, tmp_path / "v2")
    positions(outs).to_csv(outs / "spatial" / POS_V2, index=False)
    (outs / "spatial" / POS_V1).unlink()
    assert (outs / "spatial" / POS_V2).read_text().startswith("barcode,in_tissue,")
    v2 = read_visium(outs, library_id="squidpy_visium_fixture")
    assert_same_section(section, v2)


def write_mtx(folder: Path, counts: sparse.spmatrix, ids, names, types, barcodes) -> None:
    folder.mkdir(parents=True)
    with gzip.open(folder / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, sparse.csr_matrix(counts).T.astype(np.int64))
    rows = "".join(f"{i}\t{n}\t{t}\n" for i, n, t in zip(ids, names, types))
    with gzip.open(folder / "features.tsv.gz", "wt") as fh:
        fh.write(rows)
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as fh:
        fh.write("".join(f"{b}\n" for b in barcodes))


def fixture_matrix(fixture_dir: Path):
    with h5py.File(fixture_dir / "filtered_feature_bc_matrix.h5") as f:
        m = f["matrix"]
        x = sparse.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=m["shape"][:]).T.tocsr()
        ids = [v.decode() for v in m["features/id"][:]]
        names = [v.decode() for v in m["features/name"][:]]
        barcodes = [v.decode() for v in m["barcodes"][:]]
    return x, ids, names, barcodes


def test_mtx_folder_reads_identically_and_drops_other_features(section, fixture_dir, tmp_path):
    outs = copy_outs(fixture_dir, tmp_path / "mtx", counts=False)
    x, ids, names, barcodes = fixture_matrix(fixture_dir)
    antibody = sparse.csr_matrix(np.full((x.shape[0], 1), 7))
    types = ["Gene Expression"] * len(ids) + ["Antibody Capture"]
    write_mtx(
        outs / "filtered_feature_bc_matrix",
        sparse.hstack([x, antibody]),
        ids + ["CD3"],
        names + ["CD3_TotalSeqB"],
        types,
        barcodes,
    )
    mtx = read_visium(outs, library_id="squidpy_visium_fixture")  # falls back to the folder
    assert "CD3_TotalSeqB" not in mtx.var_names
    assert_same_section(section, mtx)


def test_duplicate_symbols_made_unique(fixture_dir, tmp_path):
    outs = copy_outs(fixture_dir, tmp_path / "dup", counts=False)
    x, ids, names, barcodes = fixture_matrix(fixture_dir)
    names = ["Gapdh"] * 3 + names[3:]
    write_mtx(outs / "filtered_feature_bc_matrix", x, ids, names, ["Gene Expression"] * len(ids), barcodes)
    adata = read_visium(outs)
    assert list(adata.var_names[:3]) == ["Gapdh", "Gapdh-1", "Gapdh-2"]
    assert list(adata.var[K.GENE_IDS][:3]) == ids[:3]


def test_in_tissue_filter_and_partial_join(fixture_dir, tmp_path):
    outs = copy_outs(fixture_dir, tmp_path / "partial")
    pos = positions(outs)
    pos.loc[:9, "in_tissue"] = 0
    pos = pos.iloc[:95]
    pos.to_csv(outs / "spatial" / POS_V1, header=False, index=False)
    inside = read_visium(outs)
    assert inside.n_obs == 85
    assert inside.obs[K.IN_TISSUE].eq(1).all()
    everything = read_visium(outs, only_in_tissue=False)
    assert everything.n_obs == 95
    assert int((everything.obs[K.IN_TISSUE] == 0).sum()) == 10
    assert set(everything.obs_names) == set(pos["barcode"])


def test_library_id_from_parent_of_outs(fixture_dir, tmp_path):
    outs = copy_outs(fixture_dir, tmp_path / "sampleA" / "outs")
    assert library_id(read_visium(outs)) == "sampleA"
    assert library_id(read_visium(outs, library_id="S1")) == "S1"


def test_microns_per_pixel_override(fixture_dir):
    adata = read_visium(fixture_dir, microns_per_pixel=0.5)
    lib = spatial_info(adata)
    assert microns_per_pixel(adata) == 0.5
    assert lib[K.SCALE_SOURCE] == "override"
    assert lib[K.SCALEFACTORS][K.SPOT_DIAMETER_FULLRES] == pytest.approx(110.0)


# --------------------------------------------------------------------------- full-res image
def test_fullres_image_of_right_size_is_used(fixture_dir, tmp_path):
    img = tmp_path / "fullres.png"
    Image.new("1", (13333, 13331)).save(img)  # 1-bit: tiny file, header gives the size
    adata = read_visium(fixture_dir, fullres_image=img)
    assert fullres_shape(adata) == (13331, 13333)
    assert fullres_path(adata) == img.resolve()


@pytest.mark.parametrize("size", [(13332, 6000), (4000, 4000)], ids=["aspect", "scale"])
def test_fullres_image_of_wrong_size_raises(fixture_dir, tmp_path, size):
    img = tmp_path / "other.png"
    Image.new("1", size).save(img)
    with pytest.raises(ImageError, match="another section"):
        read_visium(fixture_dir, fullres_image=img)


# --------------------------------------------------------------------------- errors
def test_missing_positions_file(fixture_dir, tmp_path):
    outs = copy_outs(fixture_dir, tmp_path / "nopos")
    (outs / "spatial" / POS_V1).unlink()
    with pytest.raises(InputFileError, match="tissue_positions.csv .or tissue_positions_list.csv. not found"):
        read_visium(outs)


@pytest.mark.parametrize("name", ["spatial/scalefactors_json.json", "filtered_feature_bc_matrix.h5"])
def test_missing_other_files(fixture_dir, tmp_path, name):
    outs = copy_outs(fixture_dir, tmp_path / "missing")
    (outs / name).unlink()
    with pytest.raises(InputFileError, match=Path(name).name) as info:
        read_visium(outs)
    assert "should contain" in str(info.value)


def test_missing_folder(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        read_visium(tmp_path / "nope")


def test_no_common_barcodes(fixture_dir, tmp_path):
    outs = copy_outs(fixture_dir, tmp_path / "nojoin")
    pos = positions(outs)
    pos["barcode"] = pos["barcode"].str.replace("-1", "", regex=False)
    pos.to_csv(outs / "spatial" / POS_V1, header=False, index=False)
    with pytest.raises(JoinError, match="None of the 100 barcodes .* among the 100 barcodes"):
        read_visium(outs)


def test_no_spot_in_tissue(fixture_dir, tmp_path):
    outs = copy_outs(fixture_dir, tmp_path / "empty")
    pos = positions(outs).assign(in_tissue=0)
    pos.to_csv(outs / "spatial" / POS_V1, header=False, index=False)
    with pytest.raises(EmptySectionError, match="only_in_tissue=False"):
        read_visium(outs)
