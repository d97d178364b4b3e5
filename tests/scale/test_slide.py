"""Whole-slide streaming: tiled reads equal full reads; streamed predictions equal in-memory ones."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import tifffile

from stfusion.data.patches import ImageReader
from stfusion.data.section import section_from_image
from stfusion.scale import predict_slide, predict_slide_adata, slide_microns_per_pixel, spot_lattice
from stfusion.scale.synthetic import random_histogene, random_stnet, write_synthetic_slide

MPP = 1.5
GENES = [f"g{i}" for i in range(4)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "slide.ome.tif"
    return write_synthetic_slide(path, 1400, 1700, microns_per_pixel=MPP, compression="deflate", tile=128, min_side=300)


def test_pyramid_and_scale_are_written(slide):
    with tifffile.TiffFile(slide) as tif:
        shapes = [lv.shape[:2] for lv in tif.series[0].levels]
        assert tif.pages[0].is_tiled and tif.pages[0].tilewidth == 128
    assert shapes == [(1400, 1700), (700, 850), (350, 425)]
    assert slide_microns_per_pixel(slide) == pytest.approx(MPP)


def test_tiled_reads_equal_the_full_image(slide):
    full = tifffile.imread(slide)
    level1 = tifffile.imread(slide, level=1)
    with ImageReader(slide) as reader:
        assert reader.level_scales == [(1.0, 1.0), (0.5, 0.5), (0.25, 0.25)]
        for x0, y0, x1, y1 in ((0, 0, 1700, 1400), (130, 257, 391, 600), (1600, 1300, 1700, 1400)):
            np.testing.assert_array_equal(reader.read_region(x0, y0, x1, y1), full[y0:y1, x0:x1])
        # a 2x shrink reads the half-resolution level (exact block: no resampling)
        np.testing.assert_array_equal(reader.read_region(0, 0, 1700, 1400, out_shape=(700, 850)), level1)


def test_hex_lattice_has_the_spacing():
    from scipy.spatial import cKDTree

    centers, rc = spot_lattice((1000, 1200), 50.0, "hex")
    dist, _ = cKDTree(centers).query(centers, k=7)
    np.testing.assert_allclose(dist[:, 1:3], 50.0, rtol=1e-9)
    assert (centers[:, 0] < 1200).all() and (centers[:, 1] < 1000).all() and len(np.unique(rc, axis=0)) == len(rc)


def test_stnet_streaming_equals_predict_image(slide):
    model = random_stnet(GENES, width=4, out_px=32)
    mem = model.predict_image(slide, MPP)
    streamed = predict_slide_adata(model, slide, chunk_spots=7)  # many chunks
    assert list(streamed.obs_names) == list(mem.obs_names) and streamed.n_obs > 20
    assert streamed.n_obs < mem.uns["stfusion"]["n_tiles_total"]  # background tiles skipped
    np.testing.assert_array_equal(streamed.obsm["spatial"], mem.obsm["spatial"])
    np.testing.assert_allclose(streamed.X, mem.X, rtol=0, atol=1e-5)
    np.testing.assert_allclose(streamed.obsm["X_stnet"], mem.obsm["X_stnet"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(streamed.var["pseudo_bulk"], mem.var["pseudo_bulk"], atol=1e-5)


def test_output_opens_backed_and_chunking_does_not_matter(slide, tmp_path):
    model = random_stnet(GENES, width=4, out_px=32, tta=False)
    one = predict_slide(model, slide, tmp_path / "one.h5ad", chunk_spots=10_000)
    many = predict_slide(model, slide, tmp_path / "many.h5ad", chunk_spots=5, lattice="hex", spacing_um=150.0)
    assert one.n_spots > 0 and many.n_spots > 0 and one.n_lattice != many.n_lattice
    backed = ad.read_h5ad(one.path, backed="r")
    assert backed.isbacked and backed.shape == (one.n_spots, len(GENES))
    ten = predict_slide(model, slide, tmp_path / "ten.h5ad", chunk_spots=10)
    np.testing.assert_allclose(ad.read_h5ad(ten.path).X, backed.X[:], atol=1e-6)
    assert not list(tmp_path.glob("*.parts"))  # temporary parts removed


def test_histogene_window_equals_section_prediction(slide, tmp_path):
    """One window of the slide predicted by streaming = HisToGene.predict on a section of those spots."""
    model = random_histogene(GENES, patch_um=100.0, pitch_um=200.0)
    streamed = model.predict_image(slide, MPP)  # 200 µm pitch: the slide fits one 32 x 32 window
    assert streamed.n_obs > 10 and streamed.uns["stfusion"]["method"] == "histogene"
    centers = streamed.obsm["spatial"]
    counts = np.ones((len(centers), len(GENES)), dtype=np.int64)
    section = section_from_image(counts, centers, slide, obs_names=list(streamed.obs_names), var_names=GENES,
                                 library_id="s", microns_per_pixel=MPP)  # fmt: skip
    direct = model.predict(section)
    np.testing.assert_allclose(streamed.X, direct.X, rtol=0, atol=1e-4)
    small = predict_slide_adata(model, slide, window=3)  # several windows: same spots (window order), other context
    assert sorted(small.obs_names) == sorted(streamed.obs_names)
    assert not np.allclose(small[streamed.obs_names].X, streamed.X, atol=1e-4)
