"""read_st on tiny synthetic sections: layouts it accepts and the errors it raises."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stfusion import _constants as K
from stfusion.data import microns_per_pixel, section_meta, spatial_info
from stfusion.errors import (
    CountsError,
    DuplicateGenesError,
    EmptySectionError,
    ImageError,
    InputFileError,
    JoinError,
    ScaleError,
    SpotsOutOfBoundsError,
)
from stfusion.io.legacy_st import read_st, read_stutility

GENES = ["Gene1", "Gene2", "Gene3"]
PITCH_PX = 40.0  # 200 µm array pitch -> 5 µm/px


def _grid(n: int = 3) -> pd.DataFrame:
    """n x n array positions (x, y from 1), centres PITCH_PX apart, all selected."""
    x, y = np.meshgrid(np.arange(1, n + 1), np.arange(1, n + 1))
    x, y = x.ravel(), y.ravel()
    return pd.DataFrame(
        {
            "x": x,
            "y": y,
            "new_x": x + 0.01,
            "new_y": y - 0.01,
            "pixel_x": 20 + (x - 1) * PITCH_PX,
            "pixel_y": 30 + (y - 1) * PITCH_PX,
            "selected": 1,
        }
    )


def _counts(spots: pd.DataFrame) -> pd.DataFrame:
    values = np.arange(len(spots) * len(GENES)).reshape(len(spots), len(GENES)) % 7
    index = [f"{a}x{b}" for a, b in zip(spots["x"], spots["y"])]
    return pd.DataFrame(values, index=index, columns=GENES)


def _write(tmp_path: Path, counts: pd.DataFrame | None = None, spots: pd.DataFrame | None = None) -> tuple:
    spots = _grid() if spots is None else spots
    counts = _counts(spots) if counts is None else counts
    paths = (tmp_path / "sec.tsv", tmp_path / "spots.tsv", tmp_path / "he.png")
    counts.to_csv(paths[0], sep="\t")
    spots.to_csv(paths[1], sep="\t", index=False)
    Image.fromarray(np.full((160, 150, 3), 200, dtype=np.uint8)).save(paths[2])
    return paths


def test_reads_synthetic_section(tmp_path: Path) -> None:
    counts_path, spots_path, image = _write(tmp_path)
    adata = read_st(counts_path, spots_path, image, patient="P1")
    assert adata.shape == (9, 3) and list(adata.var_names) == GENES
    assert list(adata.obs_names[:2]) == ["1x1", "2x1"]
    np.testing.assert_array_equal(adata.obs[K.ARRAY_COL], _grid()["x"])
    np.testing.assert_array_equal(adata.obs[K.ARRAY_ROW], _grid()["y"])
    np.testing.assert_allclose(adata.obsm[K.SPATIAL], _grid()[["pixel_x", "pixel_y"]].to_numpy())
    np.testing.assert_array_equal(adata.X.toarray(), _counts(_grid()).to_numpy())
    assert microns_per_pixel(adata) == pytest.approx(200.0 / PITCH_PX)
    assert spatial_info(adata)[K.SCALEFACTORS][K.SPOT_DIAMETER_FULLRES] == pytest.approx(100.0 / 5.0)
    meta = section_meta(adata)
    assert meta == {K.SECTION_ID: "sec", K.PLATFORM: "st", K.SOURCE: str(counts_path.resolve()), K.PATIENT: "P1"}


def test_transposed_gzipped_float_counts_give_the_same_section(tmp_path: Path) -> None:
    counts_path, spots_path, image = _write(tmp_path)
    expect = read_st(counts_path, spots_path, image)
    other = tmp_path / "genes_by_spots.tsv.gz"
    with gzip.open(other, "wt") as fh:
        _counts(_grid()).T.astype(float).to_csv(fh, sep="\t")
    got = read_st(other, spots_path, image)
    assert list(got.obs_names) == list(expect.obs_names) and list(got.var_names) == GENES
    assert (got.X != expect.X).nnz == 0
    assert section_meta(got)[K.SECTION_ID] == "genes_by_spots"


def test_only_selected_and_partial_join(tmp_path: Path) -> None:
    spots = _grid()
    spots.loc[[0, 1], "selected"] = 0
    counts_path, spots_path, image = _write(tmp_path, counts=_counts(_grid()).iloc[:8], spots=spots)
    adata = read_st(counts_path, spots_path, image)  # 6 of 7 selected rows have counts
    assert adata.n_obs == 6 and "3x3" not in adata.obs_names and "1x1" not in adata.obs_names
    assert read_st(counts_path, spots_path, image, only_selected=False).n_obs == 8


def test_missing_tables_name_the_file(tmp_path: Path) -> None:
    counts_path, spots_path, image = _write(tmp_path)
    with pytest.raises(InputFileError, match="nope.tsv"):
        read_st(tmp_path / "nope.tsv", spots_path, image)
    with pytest.raises(InputFileError, match="spot table .*gone.tsv"):
        read_st(counts_path, tmp_path / "gone.tsv", image)


def test_missing_and_corrupt_image(tmp_path: Path) -> None:
    counts_path, spots_path, _ = _write(tmp_path)
    with pytest.raises(ImageError, match="not found"):
        read_st(counts_path, spots_path, tmp_path / "absent.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ImageError, match="bad.jpg"):
        read_st(counts_path, spots_path, bad)


def test_spots_outside_image(tmp_path: Path) -> None:
    spots = _grid()
    spots["pixel_x"] += 100  # columns at x = 120, 160, 200 in a 150 px wide image
    with pytest.raises(SpotsOutOfBoundsError, match="6 of 9 spot centres"):
        read_st(*_write(tmp_path, spots=spots))


def test_tables_that_do_not_join(tmp_path: Path) -> None:
    spots = _grid()
    counts = _counts(spots)
    spots[["x", "y"]] += 10
    with pytest.raises(JoinError, match=r"0 of 9 count rows matched 9 selected spot-table rows.*'1x1'.*'11x11'"):
        read_st(*_write(tmp_path, counts=counts, spots=spots))


def test_join_below_half_is_an_error(tmp_path: Path) -> None:
    counts = _counts(_grid()).iloc[:4]
    with pytest.raises(JoinError, match=r"4 of 4 count rows matched 9 selected spot-table rows \(44%"):
        read_st(*_write(tmp_path, counts=counts))


def test_swapped_ids_get_a_hint(tmp_path: Path) -> None:
    spots = _grid().assign(y=lambda d: d["y"] + 4)  # array rows 5-7, columns 1-3
    counts = _counts(spots.rename(columns={"x": "y", "y": "x"}))  # rows named '<row>x<column>'
    with pytest.raises(JoinError, match=r"0 of 9 count rows.*'5x1'.*x and y swapped"):
        read_st(*_write(tmp_path, counts=counts, spots=spots))


def test_duplicate_genes(tmp_path: Path) -> None:
    counts = _counts(_grid()).set_axis(["Gene1", "Gene2", "Gene1"], axis=1)
    with pytest.raises(DuplicateGenesError, match="Gene1"):
        read_st(*_write(tmp_path, counts=counts))


@pytest.mark.parametrize(("value", "what"), [(-1, "negative"), (0.5, "non-integer"), (np.nan, "NaN")])
def test_bad_counts(tmp_path: Path, value: float, what: str) -> None:
    counts = _counts(_grid()).astype(float)
    counts.iloc[4, 1] = value
    with pytest.raises(CountsError, match=what):
        read_st(*_write(tmp_path, counts=counts))


def test_no_selected_spot(tmp_path: Path) -> None:
    spots = _grid().assign(selected=0)
    with pytest.raises(EmptySectionError, match="selected == 1"):
        read_st(*_write(tmp_path, spots=spots))


def test_one_spot_needs_an_override(tmp_path: Path) -> None:
    paths = _write(tmp_path, spots=_grid().iloc[:1])
    with pytest.raises(ScaleError, match="microns_per_pixel"):
        read_st(*paths)
    assert microns_per_pixel(read_st(*paths, microns_per_pixel=2.0)) == 2.0


def test_spot_table_without_pixel_columns(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"lacks the columns \['pixel_x'\]"):
        read_st(*_write(tmp_path, spots=_grid().drop(columns="pixel_x")))


def test_stutility_symbols_made_unique(tmp_path: Path) -> None:
    """Two Ensembl ids with one symbol become Sym, Sym-1; unknown ids keep their id."""
    ids = ["ENSMUSG01.1", "ENSMUSG02.3", "ENSMUSG03.1", "ENSMUSG04.1"]
    spots = _grid()
    counts = pd.DataFrame(np.ones((9, 4), dtype=int), index=_counts(spots).index, columns=ids)
    counts.to_csv(tmp_path / "MOB9.tsv.gz", sep="\t")
    spots.to_csv(tmp_path / "alignment_table_MOB9.tsv", sep="\t", index=False)
    Image.fromarray(np.full((160, 150, 3), 200, dtype=np.uint8)).save(tmp_path / "MOB9.jpg")
    with pytest.raises(InputFileError, match="mouse_genes.tsv.gz"):
        read_stutility(tmp_path, "MOB9")
    genes = pd.DataFrame(
        {
            "gene_id": ["ENSMUSG01.1", "ENSMUSG02.2", "ENSMUSG03.1"],  # 02 differs only in version
            "gene_type": "protein_coding",
            "gene_name": ["Sym", "Other", "Sym"],
        }
    )
    genes.to_csv(tmp_path / "mouse_genes.tsv.gz", sep="\t", index=False)
    adata = read_stutility(tmp_path, "MOB9")
    assert list(adata.var_names) == ["Sym", "Other", "Sym-1", "ENSMUSG04.1"]
    assert list(adata.var[K.GENE_IDS]) == ids
    assert microns_per_pixel(adata) == pytest.approx(141.4 / PITCH_PX)
