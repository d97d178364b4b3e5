"""Patches by physical size: same tissue at any magnification, from JPEG/PNG/TIFF or the stored preview."""

from __future__ import annotations

import logging
import pickle
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from stfusion import _constants as K
from stfusion.data import assemble_section, section_from_image
from stfusion.data.patches import (
    ImageReader,
    PatchReader,
    read_patch,
    read_patches,
    read_region,
    section_reader,
)
from stfusion.data.scale import resolve_scale
from stfusion.errors import ImageError
from tests.conftest import need

LANCZOS = Image.Resampling.LANCZOS


# --------------------------------------------------------------------------- helpers
def _section(path, coords, mpp: float):
    coords = np.asarray(coords, dtype=float)
    n = len(coords)
    return section_from_image(
        np.ones((n, 2), dtype=int),
        coords,
        path,
        obs_names=[f"s{i}" for i in range(n)],
        var_names=["g1", "g2"],
        library_id="sec",
        microns_per_pixel=mpp,
    )


def _texture(size: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB texture (structure at several scales), uint8."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(size, size, 3))
    img = ndimage.gaussian_filter(noise, (3, 3, 0)) * 6 + ndimage.gaussian_filter(noise, (12, 12, 0)) * 25
    return np.clip(128 + img * 40, 0, 255).astype(np.uint8)


def _write_pyramid(path, levels: list[np.ndarray]) -> None:
    """Tiled (256) OME-TIFF pyramid: full resolution plus sub-resolution IFDs."""
    kw = dict(tile=(256, 256), photometric="rgb", compression="zlib")
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(levels[0], subifds=len(levels) - 1, **kw)
        for lev in levels[1:]:
            tw.write(lev, subfiletype=1, **kw)


def _agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    a, b = a.astype(float), b.astype(float)
    return float(np.abs(a - b).mean()), float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def texture_files(tmp_path_factory):
    """A 1024 px texture as PNG, as a 4-level TIFF pyramid, and its 4x downscale (hires-like)."""
    root = tmp_path_factory.mktemp("texture")
    img = _texture(1024)
    Image.fromarray(img).save(root / "full.png", compress_level=1)
    levels = [img] + [np.asarray(Image.fromarray(img).resize((1024 // f,) * 2, LANCZOS)) for f in (2, 4, 8)]
    _write_pyramid(root / "full.ome.tif", levels)
    return {"img": img, "png": root / "full.png", "tif": root / "full.ome.tif", "small": levels[2]}


@pytest.fixture(scope="module")
def big_tiff(tmp_path_factory):
    """8192 x 8192 RGB tiled TIFF (192 MB of pixels), tile (i, j) filled with a known colour."""
    path = tmp_path_factory.mktemp("big") / "big.tif"
    t, n = 256, 32

    def tiles():
        for i in range(n):
            for j in range(n):
                yield np.full((t, t, 3), ((i * 7 + j * 13) % 256, i * 8, j * 8), np.uint8)

    tifffile.imwrite(
        path, tiles(), shape=(n * t, n * t, 3), dtype=np.uint8, tile=(t, t), photometric="rgb", compression="zlib"
    )
    return path


# --------------------------------------------------------------------------- real tissue, two resolutions
@pytest.fixture(scope="module")
def her2st_two_res(shared_data, tmp_path_factory):
    """A 2048 px crop of a her2st H&E (0.74 µm/px) as PNG, and the same crop 4x smaller."""
    data = need(shared_data, "her2st/data")
    spots = pd.read_csv(data / "ST-spotfiles/C2_selection.tsv", sep="\t")
    xy = spots[["pixel_x", "pixel_y"]].to_numpy(float)
    mpp, _ = resolve_scale(xy, spot_spacing_um=K.ST_SPOT_SPACING_UM)
    x0, y0 = (np.median(xy, axis=0) - 1024).astype(int)
    root = tmp_path_factory.mktemp("her2st")
    with ImageReader(data / "ST-imgs/C/C2/5714_HE_BT_C2.jpg") as reader:
        crop = reader.read_region(x0, y0, x0 + 2048, y0 + 2048)
    Image.fromarray(crop).save(root / "big.png", compress_level=1)
    Image.fromarray(crop).resize((512, 512), LANCZOS).save(root / "small.png")
    inside = np.all((xy > [x0 + 100, y0 + 100]) & (xy < [x0 + 1948, y0 + 1948]), axis=1)
    centres = xy[inside] - [x0, y0]
    return {"mpp": mpp, "big": root / "big.png", "small": root / "small.png", "centres": centres}


def _small_centres(centres: np.ndarray, f: float = 4.0) -> np.ndarray:
    # pixel centre (x + 0.5) maps to (x + 0.5) / f in the downscaled image: exact, no half-pixel shift
    return (centres + 0.5) / f - 0.5


def test_two_resolutions_give_the_same_patches(her2st_two_res):
    d = her2st_two_res
    assert 0.69 < d["mpp"] < 0.78 and len(d["centres"]) >= 20
    big = _section(d["big"], d["centres"], d["mpp"])
    small = _section(d["small"], _small_centres(d["centres"]), d["mpp"] * 4)
    pa = read_patches(big, d["centres"], 100, 32)
    pb = read_patches(small, _small_centres(d["centres"]), 100, 32)
    assert pa.shape == pb.shape == (len(d["centres"]), 32, 32, 3) and pa.dtype == np.uint8
    mad, r = _agreement(pa, pb)
    # seen: mad 1.9, r 0.998 (a 100 µm patch is 136 px at full res, 34 px in the 4x smaller copy)
    assert mad < 4 and r > 0.99, (mad, r)


@pytest.mark.parametrize("wrong_factor", [3.0, 5.0])
def test_wrong_scale_gives_clearly_worse_agreement(her2st_two_res, wrong_factor):
    d = her2st_two_res
    big = _section(d["big"], d["centres"], d["mpp"])
    small = _section(d["small"], _small_centres(d["centres"]), d["mpp"] * wrong_factor)
    mad, r = _agreement(
        read_patches(big, d["centres"], 100, 32), read_patches(small, _small_centres(d["centres"]), 100, 32)
    )
    assert mad > 20 and r < 0.7, (mad, r)  # seen: mad 39 / 35, r 0.41 / 0.51


# --------------------------------------------------------------------------- geometry
def test_patch_finds_a_dark_square_not_its_transpose(tmp_path):
    img = np.full((200, 300, 3), 255, np.uint8)  # h 200, w 300
    img[40:60, 200:220] = 0  # x 200-219, y 40-59: centre pixel (209.5, 49.5)
    Image.fromarray(img).save(tmp_path / "sq.png")
    sec = _section(tmp_path / "sq.png", [[209.5, 49.5], [49.5, 150.0]], mpp=0.5)
    on = read_patch(sec, (209.5, 49.5), 10.0, 20)  # 10 µm = 20 px: exactly the square
    assert on.shape == (20, 20, 3) and on.max() == 0
    swapped = read_patch(sec, (49.5, 209.5), 10.0, 20)
    assert swapped.min() == 255  # below the image: white padding, no square
    # shifted by 10 px in x: left half dark, right half white
    half = read_patch(sec, (219.5, 49.5), 10.0, 20)
    assert half[:, :10].max() == 0 and half[:, 10:].min() == 255


def test_sub_pixel_centre(tmp_path):
    img = np.zeros((40, 200, 3), np.uint8)
    img[:, 100:] = 200  # vertical edge between pixels 99 and 100
    Image.fromarray(img).save(tmp_path / "edge.png")
    sec = _section(tmp_path / "edge.png", [[99.5, 20]], mpp=1.0)
    exact = read_patch(sec, (99.5, 20), 20.0, 20)[10]  # box [90, 110): 10 black, 10 grey
    assert (exact[:10] == 0).all() and (exact[10:] == 200).all()
    shifted = read_patch(sec, (100.0, 20), 20.0, 20)[10, :, 0].astype(int)  # half a pixel right
    assert abs(shifted[9] - 100) <= 3  # the pixel straddling the edge is half grey
    assert shifted[:7].max() == 0 and (shifted[12:] == 200).all()  # LANCZOS rings 1-2 px from the edge


def test_corner_patch_is_padded_white(tmp_path):
    Image.fromarray(np.full((100, 120, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    sec = _section(tmp_path / "grey.png", [[0, 0], [50, 50]], mpp=1.0)
    p = read_patch(sec, (-0.5, -0.5), 64.0, 64)  # box [-32, 32): a whole-pixel crop
    assert p.shape == (64, 64, 3)
    assert (p[:32].min(), p[:, :32].min()) == (255, 255) and (p[32:, 32:] == 128).all()
    q = read_patch(sec, (0, 0), 64.0, 16)  # resampled: allow the filter's width at the edge
    assert q.shape == (16, 16, 3)
    # box [-31.5, 32.5) at 4 px per output px: the image starts inside output pixel 7
    assert q[:5].min() == 255 and q[:, :5].min() == 255 and q[:7, :7].min() >= 250
    assert np.abs(q[8:, 8:].astype(int) - 128).max() <= 1


# --------------------------------------------------------------------------- formats
def test_tiff_pyramid_matches_png(texture_files):
    centres = np.array([[100.3, 200.7], [512, 512], [900, 130], [5, 1000]])
    size_um, out = 80.0, 16  # 80 px -> 16: the pyramid's 1/4 level is read
    png = _section(texture_files["png"], centres, 1.0)
    tif = _section(texture_files["tif"], centres, 1.0)
    with section_reader(tif) as reader:
        assert reader.level_scales == [(1.0, 1.0), (0.5, 0.5), (0.25, 0.25), (0.125, 0.125)]
    mad, r = _agreement(read_patches(png, centres, size_um, out), read_patches(tif, centres, size_um, out))
    assert mad < 3 and r > 0.98, (mad, r)
    exact = read_region(texture_files["tif"], 300, 400, 340, 420)
    assert np.array_equal(exact, texture_files["img"][400:420, 300:340])


def test_pyramid_level_choice(tmp_path):
    values = [10, 60, 110, 160]  # each level a constant, to see which one is read
    _write_pyramid(tmp_path / "p.tif", [np.full((2048 // 2**i,) * 2 + (3,), v, np.uint8) for i, v in enumerate(values)])
    with ImageReader(tmp_path / "p.tif") as reader:
        # 64 * r px wide -> 64 px: r full-res px per output px
        got = {
            r: int(reader.read_region(500, 500, 500 + 64 * r, 564, out_shape=(1, 64))[0, 0, 0])
            for r in (1, 1.5, 2, 3, 4, 7, 8, 20)
        }
    assert got == {1: 10, 1.5: 10, 2: 60, 3: 60, 4: 110, 7: 110, 8: 160, 20: 160}


def test_small_region_of_large_tiff_reads_only_its_tiles(big_tiff):
    tracemalloc.start()
    try:
        region = read_region(big_tiff, 1000, 3000, 1512, 3512)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert region.shape == (512, 512, 3)
    i, j = 3000 // 256, 1000 // 256
    assert tuple(region[0, 0]) == ((i * 7 + j * 13) % 256, i * 8, j * 8)
    assert peak < 16e6, f"peak {peak / 1e6:.1f} MB for a 0.8 MB region of a 192 MB image"


def test_downscaled_read_of_large_tiff_is_banded(big_tiff):
    tracemalloc.start()
    try:
        preview = read_region(big_tiff, 0, 0, 8192, 8192, out_shape=(128, 128))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64e6, f"peak {peak / 1e6:.1f} MB for the preview of a 192 MB image"
    # preview pixel (y, x) = (4 i + 2, 4 j + 2) lies inside tile (i, j)
    assert tuple(preview[4 * 5 + 2, 4 * 9 + 2]) == ((5 * 7 + 9 * 13) % 256, 40, 72)


def test_banded_and_direct_reads_agree(texture_files, monkeypatch):
    from stfusion.data import image

    direct = read_region(texture_files["png"], 10, 20, 1010, 1020, out_shape=(100, 100))
    monkeypatch.setattr(image, "_LARGE_PX", 1000)
    monkeypatch.setattr(image, "_BAND_PX", 50_000)
    banded = read_region(texture_files["png"], 10, 20, 1010, 1020, out_shape=(100, 100))
    mad, r = _agreement(direct, banded)
    assert mad < 1.5 and r > 0.99, (mad, r)


def test_jpeg_draft_matches_png(texture_files, tmp_path):
    Image.fromarray(texture_files["img"]).save(tmp_path / "t.jpg", quality=95)
    with ImageReader(tmp_path / "t.jpg") as jpg, ImageReader(texture_files["png"]) as png:
        assert jpg.shape == (1024, 1024) and len(jpg.level_scales) == 4
        a = jpg.read_region(100.5, 50.25, 190.5, 140.25, out_shape=(20, 20))  # ratio 4.5: 1/4 DCT scale
        b = png.read_region(100.5, 50.25, 190.5, 140.25, out_shape=(20, 20))
    mad, r = _agreement(a, b)
    assert mad < 3 and r > 0.98, (mad, r)


def test_grey_rgba_and_16bit_become_rgb_uint8(tmp_path):
    grey16 = np.full((40, 50), 32896, np.uint16)  # 32896 / 257 = 128
    tifffile.imwrite(tmp_path / "g16.tif", grey16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 90, 255
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    planar = np.stack([np.full((40, 50), v, np.uint8) for v in (1, 2, 3)])  # axes SYX
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    cases = {"g16.tif": (128,) * 3, "g16.png": (128,) * 3, "rgba.png": (90, 0, 0), "planar.tif": (1, 2, 3)}
    for name, want in cases.items():
        region = read_region(tmp_path / name, 5, 5, 15, 25)
        assert region.shape == (20, 10, 3) and region.dtype == np.uint8, name
        assert tuple(region[3, 3]) == want, name


def test_region_beyond_the_image_and_bad_input(texture_files, tmp_path):
    r = read_region(texture_files["tif"], 1000, -4, 1030, 6)
    assert r.shape == (10, 30, 3) and r[:4].min() == 255 and r[:, 24:].min() == 255
    assert np.array_equal(r[4:, :24], texture_files["img"][:6, 1000:])
    with pytest.raises(ValueError, match="Empty region"):
        read_region(texture_files["png"], 10, 10, 10, 20)
    with pytest.raises(ImageError, match="not found"):
        read_region(tmp_path / "missing.tif", 0, 0, 5, 5)
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="corrupt"):
        read_region(tmp_path / "bad.png", 0, 0, 5, 5)


# --------------------------------------------------------------------------- sections
def _visium_like(texture_files, centres):
    """Section without a full-resolution path: only a hires image at 1/4 scale."""
    n = len(centres)
    return assemble_section(
        np.ones((n, 2), dtype=int),
        centres,
        obs_names=[f"s{i}" for i in range(n)],
        var_names=["g1", "g2"],
        library_id="vis",
        microns_per_pixel=0.5,
        scale_source="override",
        spot_diameter_um=K.VISIUM_SPOT_DIAMETER_UM,
        images={K.HIRES: texture_files["small"].astype(np.float32) / 255.0},  # scanpy stores floats
        scalefactors={K.HIRES_SCALEF: 0.25},
        fullres_shape=(1024, 1024),
    )


def test_section_without_fullres_reads_the_hires_image(texture_files, caplog):
    centres = np.array([[300.0, 300.0], [700.2, 420.9], [512, 900]])
    vis = _visium_like(texture_files, centres)
    full = _section(texture_files["png"], centres, 0.5)
    with caplog.at_level(logging.INFO, logger="stfusion"):
        from_hires = read_patches(vis, centres, 40.0, 16)  # 80 full-res px -> 16: coarser than hires
    assert sum("no full-resolution image" in rec.message for rec in caplog.records) == 1
    mad, r = _agreement(from_hires, read_patches(full, centres, 40.0, 16))
    assert mad < 3 and r > 0.98, (mad, r)


def test_fullres_image_of_wrong_size_is_refused(texture_files, tmp_path):
    sec = _section(texture_files["png"], [[10, 10]], 1.0)
    Image.fromarray(texture_files["small"]).save(tmp_path / "other.png")
    sec.uns[K.SPATIAL]["sec"][K.METADATA][K.SOURCE_IMAGE_PATH] = str(tmp_path / "other.png")
    with pytest.raises(ImageError, match="set_fullres_image"):
        read_patch(sec, (10, 10), 10.0, 8)


@pytest.mark.parametrize("source", ["tif", "png", "hires"])
def test_patch_reader_pickles(texture_files, source):
    centres = np.array([[100.0, 120.0], [800.5, 640.5]])
    sec = _visium_like(texture_files, centres) if source == "hires" else _section(texture_files[source], centres, 0.5)
    reader = PatchReader(sec, 50.0, 24)
    first = reader[1]
    again = pickle.loads(pickle.dumps(reader))
    assert len(again) == 2 and again.side_px == pytest.approx(100.0)
    assert np.array_equal(again[1], first) and np.array_equal(again.read((100.0, 120.0)), reader[0])
    assert np.array_equal(read_patch(sec, (800.5, 640.5), 50.0, 24), first)


def test_read_patches_with_progress(texture_files):
    centres = np.array([[float(x), 500.0] for x in range(50, 1000, 100)])
    sec = _section(texture_files["tif"], centres, 0.5)
    patches = read_patches(sec, centres, 20.0, 8, progress=True)
    assert patches.shape == (10, 8, 8, 3) and patches.dtype == np.uint8
    assert np.array_equal(patches[3], read_patch(sec, centres[3], 20.0, 8))
    assert not np.array_equal(patches[3], patches[4])
