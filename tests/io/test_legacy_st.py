"""Legacy ST readers on the real shared data (her2st, STUtility MOB, XFuse toy)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from skimage.filters import threshold_otsu

from stfusion import _constants as K
from stfusion.data import fullres_shape, microns_per_pixel, section_meta, spatial_info, spot_diameter_px
from stfusion.errors import InputFileError, SpotsOutOfBoundsError
from stfusion.io.legacy_st import STUTILITY_2K_SPACING_UM, read_her2st, read_st, read_stutility, read_xfuse_toy
from tests.conftest import assert_spots_on_tissue, need

# (spots under tissue that have counts, genes, spots with an expression-cluster label)
HER2ST = {
    "B4": (283, 15289, 222),
    "C2": (187, 15706, 185),
    "C3": (180, 15821, 179),
    "C4": (184, 15842, 184),
    "C5": (181, 15721, 179),
    "C6": (178, 15772, 176),
}


@pytest.fixture(scope="module")
def her2st_root(shared_data: Path) -> Path:
    return need(shared_data, "her2st")


@pytest.fixture(scope="module")
def her2st_cache(her2st_root: Path) -> dict:
    """Each section is read once per module (a JPEG preview takes about a second)."""
    cache: dict[str, ad.AnnData] = {}

    def get(section: str) -> ad.AnnData:
        if section not in cache:
            cache[section] = read_her2st(her2st_root, section)
        return cache[section]

    return get


@pytest.mark.parametrize("section", sorted(HER2ST))
def test_her2st_sections(her2st_cache, section: str) -> None:
    adata = her2st_cache(section)
    n_spots, n_genes, n_clustered = HER2ST[section]
    assert adata.shape == (n_spots, n_genes)
    # 200 µm over the array pitch fitted through the array coordinates (~290 px)
    assert 0.68 <= microns_per_pixel(adata) <= 0.70
    assert spatial_info(adata)[K.SCALE_SOURCE] == "grid"
    assert 125 <= spot_diameter_px(adata) <= 150  # 100 µm spots
    assert adata.X.dtype == np.int32
    meta = section_meta(adata)
    assert meta[K.PLATFORM] == "st" and meta[K.PATIENT] == section[0] and meta[K.SECTION_ID] == section
    assert meta[K.SOURCE].endswith(f"ST-cnts/{section}.tsv.gz")
    assert int(adata.obs[K.CLUSTER_LABEL].notna().sum()) == n_clustered
    assert K.REGION_LABEL not in adata.obs  # no pathologist file for the imaged sections
    ids = adata.obs[K.ARRAY_COL].astype(str) + "x" + adata.obs[K.ARRAY_ROW].astype(str)
    assert list(ids) == list(adata.obs_names)
    assert_spots_on_tissue(adata)


def test_her2st_values_b4(her2st_cache) -> None:
    adata = her2st_cache("B4")
    assert adata["10x14", "SDF4"].X.toarray()[0, 0] == 3
    np.testing.assert_allclose(adata["10x14"].obsm[K.SPATIAL][0], [2555.02, 3792.05])
    assert adata.obs.loc["10x14", K.CLUSTER_LABEL] == "1"  # the annotation row at pixel 2555.02x3792.05
    assert fullres_shape(adata) == (9923, 9272)


def test_her2st_unknown_section_lists_available(her2st_root: Path) -> None:
    with pytest.raises(InputFileError, match=r"'Z9' not found.*B4, C2, C3"):
        read_her2st(her2st_root, "Z9")


def _her2st_copy(her2st_root: Path, tmp_path: Path, section: str) -> Path:
    """A her2st-like tree in tmp_path whose files link to the real ones."""
    root = tmp_path / "her2st"
    for rel in (
        f"data/ST-cnts/{section}.tsv.gz",
        f"data/ST-spotfiles/{section}_selection.tsv",
        f"res/ST-cluster/lbl/{section}-cluster-annotation.tsv.gz",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(her2st_root / rel)
    img = next((her2st_root / "data" / "ST-imgs").glob(f"*/{section}/*.jpg"))
    dest = root / "data" / "ST-imgs" / section[0] / section / img.name
    dest.parent.mkdir(parents=True)
    dest.symlink_to(img)
    return root


def test_her2st_region_labels_join_on_rounded_array_coords(her2st_root: Path, tmp_path: Path) -> None:
    """Pathologist files hold fractional array x, y and pixel-named rows, like B1's."""
    root = _her2st_copy(her2st_root, tmp_path, "C2")
    spots = pd.read_csv(root / "data/ST-spotfiles/C2_selection.tsv", sep="\t")
    labels = pd.DataFrame(
        {
            "x": spots["new_x"].to_numpy(),
            "y": spots["new_y"].to_numpy(),
            "pixel_x": spots["pixel_x"].to_numpy(),
            "pixel_y": spots["pixel_y"].to_numpy(),
            "label": np.where(spots["x"] < 20, "invasive cancer", "connective tissue"),
        },
        index=[f"{round(a)}x{round(b)}" for a, b in zip(spots["pixel_x"], spots["pixel_y"])],
    ).iloc[:-10]  # the last 10 spots have no label
    labels.loc[labels.index[0], ["x", "y"]] = np.nan  # broken rows exist in F1 and G2
    path = root / "data/ST-pat/lbl/C2_labeled_coordinates.tsv"
    path.parent.mkdir(parents=True)
    labels.to_csv(path, sep="\t", index_label="Row.names")
    adata = read_her2st(root, "C2")
    region = adata.obs[K.REGION_LABEL]
    assert int(region.notna().sum()) == len(labels) - 1
    labelled = region.notna()
    expect = np.where(adata.obs[K.ARRAY_COL] < 20, "invasive cancer", "connective tissue")[labelled.to_numpy()]
    assert list(region[labelled]) == list(expect)


def _tissue_fraction(adata: ad.AnnData) -> float:
    """Share of spots whose disc in the preview is darker than the Otsu tissue threshold."""
    lib = spatial_info(adata)
    grey = np.asarray(lib[K.IMAGES][K.HIRES], dtype=float).mean(axis=2)
    scalef = lib[K.SCALEFACTORS][K.HIRES_SCALEF]
    r = max(1, round(spot_diameter_px(adata) * scalef / 2))
    cells = [
        grey[max(0, round(y) - r) : round(y) + r + 1, max(0, round(x) - r) : round(x) + r + 1].mean()
        for x, y in adata.obsm[K.SPATIAL] * scalef
    ]
    return float(np.mean(np.asarray(cells) < threshold_otsu(grey)))


def test_her2st_swapped_pixel_columns_are_caught(her2st_root: Path, her2st_cache, tmp_path: Path) -> None:
    root = _her2st_copy(her2st_root, tmp_path, "C6")
    spot_file = root / "data/ST-spotfiles/C6_selection.tsv"
    spots = pd.read_csv(spot_file, sep="\t")
    spot_file.unlink()
    spots.rename(columns={"pixel_x": "pixel_y", "pixel_y": "pixel_x"}).to_csv(spot_file, sep="\t", index=False)
    # C6 is 9288 x 9907 px and its spots fit either way round: no SpotsOutOfBoundsError.
    # conftest's assert_spots_on_tissue (mean grey vs slide median) does not catch it either
    # (most of a her2st slide is tissue), so the on-tissue test here is the Otsu tissue share.
    swapped = read_her2st(root, "C6")
    assert _tissue_fraction(her2st_cache("C6")) >= 0.9  # measured 0.98
    assert _tissue_fraction(swapped) <= 0.7  # measured 0.54


def test_her2st_spots_out_of_image_when_scaled(her2st_root: Path, tmp_path: Path) -> None:
    root = _her2st_copy(her2st_root, tmp_path, "C2")
    spot_file = root / "data/ST-spotfiles/C2_selection.tsv"
    spots = pd.read_csv(spot_file, sep="\t")
    spot_file.unlink()
    spots[["pixel_x", "pixel_y"]] *= 2  # coordinates of a 2x larger image
    spots.to_csv(spot_file, sep="\t", index=False)
    with pytest.raises(SpotsOutOfBoundsError, match="scaled for a larger image"):
        read_her2st(root, "C2")


def test_her2st_h5ad_round_trip(her2st_cache, tmp_path: Path) -> None:
    adata = her2st_cache("C3")
    path = tmp_path / "C3.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert (back.X != adata.X).nnz == 0 and back.X.dtype == adata.X.dtype
    np.testing.assert_array_equal(back.obsm[K.SPATIAL], adata.obsm[K.SPATIAL])
    assert list(back.obs_names) == list(adata.obs_names) and list(back.var_names) == list(adata.var_names)
    pd.testing.assert_frame_equal(back.obs, adata.obs)
    assert microns_per_pixel(back) == microns_per_pixel(adata)
    assert spatial_info(back)[K.METADATA][K.SOURCE_IMAGE_PATH] == spatial_info(adata)[K.METADATA][K.SOURCE_IMAGE_PATH]


@pytest.mark.parametrize(("section", "n_spots"), [("MOB1", 379), ("MOB2", 407)])
def test_stutility_sections(shared_data: Path, section: str, n_spots: int) -> None:
    adata = read_stutility(need(shared_data, "stutility_mob"), section)
    assert adata.shape == (n_spots, 1000)
    # 141.4 µm over the fitted ~31.7 px neighbour distance (an assumed 2k-array pitch)
    assert 4.3 <= microns_per_pixel(adata) <= 4.45  # 141.4 µm over the fitted (1, 1) offset, ~32.3 px
    assert adata.var[K.GENE_IDS].str.startswith("ENSMUSG").all()
    assert adata.var_names[:3].tolist() == ["mt-Rnr2", "mt-Rnr1", "Gm42418"]
    assert adata.var.loc["mt-Rnr2", K.GENE_IDS] == "ENSMUSG00000064339.1"
    assert adata.var_names.is_unique
    # centred lattice: x + y even, nearest neighbours one step in both x and y
    assert ((adata.obs[K.ARRAY_COL] + adata.obs[K.ARRAY_ROW]) % 2 == 0).all()
    assert_spots_on_tissue(adata)


def test_stutility_values_and_override(shared_data: Path) -> None:
    root = need(shared_data, "stutility_mob")
    adata = read_stutility(root, "MOB1")
    np.testing.assert_array_equal(adata["12x28", ["mt-Rnr2", "mt-Rnr1", "Gm42418"]].X.toarray()[0], [14, 156, 261])
    np.testing.assert_allclose(adata["12x28"].obsm[K.SPATIAL][0], [506.25, 720.95])
    doubled = read_stutility(root, "MOB1", spot_spacing_um=2 * STUTILITY_2K_SPACING_UM)
    assert microns_per_pixel(doubled) == pytest.approx(2 * microns_per_pixel(adata))
    fixed = read_stutility(root, "MOB1", microns_per_pixel=5.0)
    assert microns_per_pixel(fixed) == 5.0 and spatial_info(fixed)[K.SCALE_SOURCE] == "override"
    with pytest.raises(InputFileError, match="MOB1, MOB2"):
        read_stutility(root, "MOB7")


def test_xfuse_toy(shared_data: Path) -> None:
    root = need(shared_data, "xfuse_mob_toy")
    adata = read_xfuse_toy(root)
    assert adata.shape == (282, 10)
    assert 6.8 <= microns_per_pixel(adata) <= 7.1  # 200 µm over the fitted ~29 px array pitch
    assert adata["17x17", "Calm1"].X.toarray()[0, 0] == 37
    assert Path(spatial_info(adata)[K.METADATA][K.TISSUE_MASK_PATH]) == (root / "mask.png").resolve()
    assert section_meta(adata)[K.SECTION_ID] == "xfuse_mob_toy"
    assert_spots_on_tissue(adata)
    same = read_st(root / "counts.tsv", root / "spots.tsv", root / "image.jpg")
    assert (same.X != adata.X).nnz == 0 and section_meta(same)[K.SECTION_ID] == "counts"
