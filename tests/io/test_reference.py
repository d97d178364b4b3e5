"""Readers for imputation data: scRNA-seq references and image-free spatial cells."""

from __future__ import annotations

import gzip

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from stfusion import _constants as K
from stfusion.errors import CountsError, DuplicateGenesError, InputFileError, JoinError, SchemaError
from stfusion.io.reference import (
    detect_orientation,
    read_merfish_pair,
    read_osmfish_pair,
    read_reference,
    read_slideseq_pair,
    read_spatial_cells,
    shared_genes,
    validate_reference,
    validate_spatial_cells,
)
from tests.conftest import need


# --------------------------------------------------------------------------- real pairs
@pytest.fixture(scope="module")
def osmfish(shared_data):
    return read_osmfish_pair(need(shared_data, "stdiff_osmfish"))


@pytest.fixture(scope="module")
def merfish(shared_data):
    return read_merfish_pair(need(shared_data, "spacexr_merfish"))


@pytest.fixture(scope="module")
def slideseq(shared_data):
    return read_slideseq_pair(need(shared_data, "spacexr_slideseq"))


def _is_int_csr(adata) -> bool:
    return sparse.isspmatrix_csr(adata.X) and np.issubdtype(adata.X.dtype, np.integer)


@pytest.mark.filterwarnings("ignore::anndata.OldFormatWarning")
def test_osmfish_pair(osmfish, shared_data):
    ref, sp = osmfish
    assert ref.shape == (5613, 33) and sp.shape == (3405, 33)
    assert _is_int_csr(ref) and _is_int_csr(sp)
    assert int(ref.X.sum()) == 30_502_449 and int(sp.X.sum()) == 650_913
    assert K.CELL_TYPE not in ref.obs  # no labels ship with this reference
    assert len(shared_genes(ref, sp)) == 33
    raw = ad.read_h5ad(shared_data / "stdiff_osmfish" / "dataset2_spatial_33.h5ad")
    np.testing.assert_allclose(sp.obsm[K.SPATIAL], raw.obs[["x_coord", "y_coord"]].to_numpy(float))
    np.testing.assert_array_equal(sp.X.toarray(), np.asarray(raw.X).astype(int))
    assert sp.obsm[K.SPATIAL].shape == (3405, 2) and np.isfinite(sp.obsm[K.SPATIAL]).all()
    assert sp.uns[K.STFUSION][K.COORDINATE_UNITS] == "unknown"
    assert sp.uns[K.STFUSION][K.PLATFORM] == "imaging" and ref.uns[K.STFUSION][K.PLATFORM] == "scrna"


def test_merfish_pair(merfish, shared_data):
    ref, sp = merfish
    d = shared_data / "spacexr_merfish"
    assert ref.shape == (1308, 134) and sp.shape == (750, 134)
    assert _is_int_csr(ref) and _is_int_csr(sp)
    assert len(shared_genes(ref, sp)) == 134
    assert shared_genes(ref, sp) == sorted(shared_genes(ref, sp))
    # orientation: values from the files' first rows (gene Gad1, first cell)
    assert ref[["TCTCATAAGCCCGAAA-2"], ["Gad1"]].X[0, 0] == 4
    assert sp[["f4e9c023-f3db-4f6d-9212-72b4dc77a3e3"], ["Gad1"]].X[0, 0] == 13
    numi = pd.read_csv(d / "sp_nUMI.csv", index_col=0).iloc[:, 0]  # same 750 cell ids
    assert isinstance(ref.obs[K.CELL_TYPE].dtype, pd.CategoricalDtype)
    assert ref.obs[K.CELL_TYPE].nunique() == 14
    truth = pd.read_csv(d / "ref_cell_types.csv", index_col=0).iloc[:, 0]
    assert ref.obs[K.CELL_TYPE].value_counts().sort_index().to_dict() == truth.value_counts().sort_index().to_dict()
    assert (ref.obs[K.CELL_TYPE].astype(str) == truth.reindex(ref.obs_names)).all()
    assert ref.obs[K.CELL_TYPE].value_counts()["Ependymal"] == 69
    coords = pd.read_csv(d / "sp_coords.csv", index_col=0)
    np.testing.assert_allclose(sp.obsm[K.SPATIAL], coords.loc[sp.obs_names, ["x", "y"]].to_numpy())
    assert sp.obsm[K.SPATIAL][0].tolist() == pytest.approx([1225.409571, -3825.694732])
    assert sp.uns[K.STFUSION][K.COORDINATE_UNITS] == "um"
    assert set(numi.index) == set(sp.obs_names)


def test_slideseq_pair(slideseq, shared_data):
    ref, sp = slideseq
    d = shared_data / "spacexr_slideseq"
    assert ref.shape == (475, 384) and sp.shape == (100, 378)
    assert _is_int_csr(ref) and _is_int_csr(sp)
    assert len(shared_genes(ref, sp)) == 378
    assert sp.uns[K.STFUSION][K.PLATFORM] == "beads"
    assert sp.uns[K.STFUSION][K.COORDINATE_UNITS] == "pixels"
    counts = ref.obs[K.CELL_TYPE].value_counts()
    assert len(counts) == 19 and (counts == 25).all()
    assert {"Purkinje", "Bergmann", "Granule", "UBCs"} <= set(counts.index)
    meta = pd.read_csv(d / "ref_meta_data.csv", index_col=0)
    names = pd.read_csv(d / "ref_cell_type_dict.csv", index_col=0)["Name"]
    expected = meta["cluster"].map(names).reindex(ref.obs_names)
    assert (ref.obs[K.CELL_TYPE].astype(str) == expected).all()
    assert sp.obsm[K.SPATIAL].shape == (100, 2) and np.isfinite(sp.obsm[K.SPATIAL]).all()
    assert sp[["TTGGACGTTTCAAT"]].obsm[K.SPATIAL][0].tolist() == pytest.approx([3411.272727, 2254.628099])


def test_real_tables_auto_orientation(shared_data):
    d = need(shared_data, "spacexr_slideseq")
    sp = read_spatial_cells(d / "sp_MappedDGEForR.csv", coords=d / "sp_BeadLocationsForR.csv", platform="beads")
    assert sp.shape == (100, 378)
    table = pd.read_csv(d / "sp_MappedDGEForR.csv", index_col=0)
    assert detect_orientation(table) == "genes_x_cells"  # from the names alone (100 beads < 378 genes)
    assert detect_orientation(table.T) == "cells_x_genes"


# --------------------------------------------------------------------------- tiny tables
CELLS = ["cellA", "cellB", "cellC"]
GENES = ["Gad1", "Rnd3", "Acta2", "Sox10"]
COUNTS = np.array([[1, 0, 3, 0], [0, 2, 0, 5], [7, 0, 0, 1]])


def _write(path, frame: pd.DataFrame, sep=","):
    text = frame.to_csv(sep=sep)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def _labels(tmp_path, rows=(("cellA", "T1"), ("cellB", "T2"), ("cellC", "T1")), header='"",x'):
    lines = ([header] if header else []) + [f"{a},{b}" for a, b in rows]
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("transpose", [False, True])
def test_orientation_detected_from_labels(tmp_path, transpose):
    frame = pd.DataFrame(COUNTS, index=CELLS, columns=GENES)
    path = _write(tmp_path / "c.csv", frame.T if transpose else frame)
    ref = read_reference(path, labels=_labels(tmp_path))
    assert ref.obs_names.tolist() == CELLS and ref.var_names.tolist() == GENES
    np.testing.assert_array_equal(ref.X.toarray(), COUNTS)
    assert ref.obs[K.CELL_TYPE].tolist() == ["T1", "T2", "T1"]
    validate_reference(ref)


@pytest.mark.parametrize("transpose", [False, True])
def test_orientation_detected_from_names_tsv_gz(tmp_path, transpose):
    cells = ["ACGTACGTAC-1", "TTGGACGTTTCA-1", "GGGCCCAAAT-2"]  # barcodes vs symbols
    frame = pd.DataFrame(COUNTS, index=cells, columns=GENES)
    path = _write(tmp_path / "c.tsv.gz", frame.T if transpose else frame, sep="\t")
    assert detect_orientation(frame.T if transpose else frame) == ("genes_x_cells" if transpose else "cells_x_genes")
    ref = read_reference(path)
    assert ref.obs_names.tolist() == cells
    np.testing.assert_array_equal(ref.X.toarray(), COUNTS)


def test_explicit_orientation_and_ambiguous(tmp_path):
    frame = pd.DataFrame(COUNTS, index=["c1", "c2", "c3"], columns=["g1", "g2", "g3", "g4"])
    path = _write(tmp_path / "c.csv", frame.T)
    with pytest.raises(SchemaError, match="orientation="):
        read_reference(path)
    ref = read_reference(path, orientation="genes_x_cells")
    assert ref.shape == (3, 4) and ref.var_names.tolist() == ["g1", "g2", "g3", "g4"]
    with pytest.raises(SchemaError, match="orientation must be"):
        read_reference(path, orientation="rows")


def test_cluster_dictionary_and_headerless_labels(tmp_path):
    path = _write(tmp_path / "c.csv", pd.DataFrame(COUNTS, index=CELLS, columns=GENES))
    meta = tmp_path / "meta.csv"
    meta.write_text("barcode,cluster,nUMI\ncellA,2,4\ncellB,1,7\ncellC,2,8\n")
    names = tmp_path / "dict.csv"
    names.write_text("Cluster,Name\n1,Purkinje\n2,Granule\n")
    ref = read_reference(path, labels=meta, cell_type_key="cluster", cell_types_file=names)
    assert ref.obs[K.CELL_TYPE].tolist() == ["Granule", "Purkinje", "Granule"]
    names.write_text("Cluster,Name\n1,Purkinje\n")
    with pytest.raises(SchemaError, match=r"Cluster ids \['2'\]"):
        read_reference(path, labels=meta, cell_type_key="cluster", cell_types_file=names)
    ref = read_reference(path, labels=_labels(tmp_path, header=None))  # no header row: no cell lost
    assert ref.obs[K.CELL_TYPE].tolist() == ["T1", "T2", "T1"]


def test_spatial_csv_join_and_failure(tmp_path):
    path = _write(tmp_path / "c.csv", pd.DataFrame(COUNTS, index=CELLS, columns=GENES).T)
    coords = tmp_path / "xy.csv"
    coords.write_text("barcodes,xcoord,ycoord\ncellC,5.5,6\ncellA,1,2\ncellB,3,4\nextra,9,9\n")
    sp = read_spatial_cells(path, coords=coords, units="pixels")
    assert sp.obsm[K.SPATIAL].tolist() == [[1, 2], [3, 4], [5.5, 6]]
    assert sp.uns[K.STFUSION][K.COORDINATE_UNITS] == "pixels"
    validate_spatial_cells(sp)
    coords.write_text('"",x,y\nother1,1,2\nother2,3,4\n')
    with pytest.raises(JoinError) as err:
        read_spatial_cells(path, coords=coords, orientation="genes_x_cells")
    msg = str(err.value)
    assert "0 of 3 cells matched" in msg and "'cellA'" in msg and "'other1'" in msg
    coords.write_text('"",x,y\ncellA,1,2\ncellB,3,4\n')
    with pytest.warns(UserWarning, match="1 of 3 cells have no coordinates"):
        sp = read_spatial_cells(path, coords=coords)
    assert sp.obs_names.tolist() == ["cellA", "cellB"]


def test_label_join_failure(tmp_path):
    path = _write(tmp_path / "c.csv", pd.DataFrame(COUNTS, index=CELLS, columns=GENES))
    labels = _labels(tmp_path, rows=(("x1", "T1"), ("x2", "T2")))
    with pytest.raises(JoinError, match="0 of 3 cells matched the labels"):
        read_reference(path, labels=labels, orientation="cells_x_genes")


def test_non_integer_and_duplicate_genes(tmp_path):
    frame = pd.DataFrame(COUNTS.astype(float), index=CELLS, columns=GENES)
    frame.iloc[0, 0] = 1.5
    with pytest.raises(CountsError, match="non-integer"):
        read_reference(_write(tmp_path / "f.csv", frame), orientation="cells_x_genes")
    dup = pd.DataFrame(COUNTS, index=CELLS, columns=["Gad1", "Rnd3", "Gad1", "Sox10"])
    with pytest.raises(DuplicateGenesError, match="Gad1"):
        read_reference(_write(tmp_path / "d.csv", dup), orientation="cells_x_genes")  # header not mangled
    with pytest.raises(DuplicateGenesError, match="Gad1"):
        read_reference(_write(tmp_path / "dt.csv", dup.T), orientation="genes_x_cells")
    with pytest.raises(InputFileError):
        read_reference(tmp_path / "missing.csv")


def test_h5ad_counts_layer_and_obs_labels(tmp_path):
    norm = np.log1p(COUNTS / COUNTS.sum(1, keepdims=True) * 1e4)
    obs = pd.DataFrame({"celltype": ["T1", "T2", "T1"], "xc": [1.0, 2, 3], "yc": [4.0, 5, 6]}, index=CELLS)
    src = ad.AnnData(X=norm, obs=obs, var=pd.DataFrame(index=GENES), layers={"counts": COUNTS.astype(np.float32)})
    src.write_h5ad(tmp_path / "a.h5ad")
    ref = read_reference(tmp_path / "a.h5ad", cell_type_key="celltype")
    np.testing.assert_array_equal(ref.X.toarray(), COUNTS)
    assert ref.obs[K.CELL_TYPE].cat.categories.tolist() == ["T1", "T2"]
    with pytest.raises(SchemaError, match="No obs column 'nope'"):
        read_reference(tmp_path / "a.h5ad", cell_type_key="nope")
    sp = read_spatial_cells(tmp_path / "a.h5ad", x_key="xc", y_key="yc")
    assert sp.obsm[K.SPATIAL].tolist() == [[1, 4], [2, 5], [3, 6]]
    ad.AnnData(X=norm, var=pd.DataFrame(index=GENES)).write_h5ad(tmp_path / "n.h5ad")
    with pytest.raises(CountsError, match="No raw counts"):
        read_reference(tmp_path / "n.h5ad")


def test_validators_reject_bad_objects(tmp_path):
    path = _write(tmp_path / "c.csv", pd.DataFrame(COUNTS, index=CELLS, columns=GENES))
    coords = tmp_path / "xy.csv"
    coords.write_text("cellA,1,2\ncellB,3,4\ncellC,5,6\n")  # headerless
    sp = read_spatial_cells(path, coords=coords)
    assert sp.obsm[K.SPATIAL][:, 1].tolist() == [2, 4, 6]
    with pytest.raises(SchemaError, match="platform"):
        validate_reference(sp)
    bad = sp.copy()
    bad.obsm[K.SPATIAL][1, 0] = np.nan
    with pytest.raises(SchemaError, match="1 cells have NaN"):
        validate_spatial_cells(bad)
    bad = sp.copy()
    bad.X = bad.X.astype(np.float32)
    with pytest.raises(CountsError, match="integer"):
        validate_spatial_cells(bad)
    with pytest.raises(SchemaError, match="units must be"):
        read_spatial_cells(path, coords=coords, units="mm")
