"""Hand-crafted patch features: shapes, names and values on synthetic patches."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk, ellipse

from stfusion.baselines.features import (
    colour_texture_features,
    histogram_features,
    morphology_feature_names,
    morphology_features,
)

PINK = (235, 170, 200)
PURPLE = (80, 40, 130)
MPP = 0.8  # µm per pixel of the synthetic patches


def pink_patch(size: int = 128, noise: float = 6.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), dtype=float)
    img[:] = PINK
    return np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)


def draw_discs(img: np.ndarray, centres, radius: float) -> np.ndarray:
    img = img.copy()
    for c in centres:
        rr, cc = disk(c, radius, shape=img.shape[:2])
        img[rr, cc] = PURPLE
    return img


def random_centres(n: int, radius: float, size: int = 128, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    centres: list[np.ndarray] = []
    while len(centres) < n:
        c = rng.uniform(radius + 2, size - radius - 2, 2)
        if all(np.hypot(*(c - d)) > 2 * radius + 3 for d in centres):
            centres.append(c)
    return centres


def as_dict(values: np.ndarray, names: list[str]) -> dict[str, float]:
    return dict(zip(names, values, strict=True))


# --------------------------------------------------------------------------- histograms
def test_histogram_shape_names_and_sums():
    patches = np.random.default_rng(0).integers(0, 256, (7, 20, 24, 3), dtype=np.uint8)
    values, names = histogram_features(patches)
    assert values.shape == (7, 15) and len(names) == 15
    assert names[0] == "hist_R_0" and names[-1] == "hist_B_4"
    np.testing.assert_allclose(values.reshape(7, 3, 5).sum(axis=2), 1.0)


def test_histogram_values_of_known_patch():
    patch = np.zeros((1, 10, 10, 3), dtype=np.uint8)
    patch[0, :5] = (100, 0, 255)  # bins 1, 0, 4 of 5
    patch[0, 5:] = (200, 0, 255)  # bins 3, 0, 4
    d = as_dict(histogram_features(patch)[0][0], histogram_features(patch)[1])
    assert d["hist_R_1"] == pytest.approx(0.5) and d["hist_R_3"] == pytest.approx(0.5)
    assert d["hist_G_0"] == 1.0 and d["hist_B_4"] == 1.0 and d["hist_R_0"] == 0.0


def test_rejects_non_uint8_or_wrong_shape():
    with pytest.raises(ValueError, match="uint8"):
        histogram_features(np.zeros((2, 8, 8, 3), dtype=float))
    with pytest.raises(ValueError, match="RGB"):
        colour_texture_features(np.zeros((2, 8, 8), dtype=np.uint8))


# --------------------------------------------------------------------------- morphology
@pytest.mark.parametrize("n", [12, 25])
def test_morphology_recovers_count_and_area(n):
    radius = 6.0
    patch = draw_discs(pink_patch(), random_centres(n, radius), radius)
    values, names = morphology_features(patch[None], MPP)
    d = as_dict(values[0], names)
    assert abs(d["nuclei_count"] - n) <= 0.1 * n
    true_area = np.pi * radius**2 * MPP**2
    assert d["area_um2_mean"] == pytest.approx(true_area, rel=0.2)
    assert d["major_um_mean"] == pytest.approx(2 * radius * MPP, rel=0.15)
    assert 1.0 <= d["axis_ratio_mean"] < 1.2
    assert d["mean_B_mean"] == pytest.approx(PURPLE[2], abs=15)
    assert d["nuclei_per_mm2"] == pytest.approx(d["nuclei_count"] / (128 * MPP / 1000) ** 2)
    area_hist = [d[f"area_um2_hist{b}"] for b in range(10)]
    assert sum(area_hist) == pytest.approx(1.0) and int(np.argmax(area_hist)) == int(true_area // 20)


def test_morphology_splits_touching_nuclei():
    pairs = [(20, 20), (20, 70), (70, 20), (70, 70), (100, 40)]
    centres = [(r, c + dc) for r, c in pairs for dc in (0, 10)]  # radius 6: overlapping by 2 px
    patch = draw_discs(pink_patch(noise=0), centres, 6)
    d = as_dict(*[a[0] if i == 0 else a for i, a in enumerate(morphology_features(patch[None], MPP))])
    assert d["nuclei_count"] == 10


def test_morphology_elongated_nuclei_and_neighbour_distances():
    img = pink_patch(noise=0)
    spacing = 30
    for r in range(20, 128, spacing):
        for c in range(20, 128, spacing):
            rr, cc = ellipse(r, c, 4, 10, shape=img.shape[:2])  # semi-axes 4 (rows), 10 (columns)
            img[rr, cc] = PURPLE
    d = as_dict(morphology_features(img[None], MPP)[0][0], morphology_feature_names())
    assert d["nuclei_count"] == 16
    assert d["axis_ratio_mean"] == pytest.approx(2.5, rel=0.2)
    assert d["minor_um_mean"] == pytest.approx(8 * MPP, rel=0.2)
    # square grid: Delaunay edges are sides (30 px) and diagonals (42 px)
    assert spacing * MPP <= d["neighbour_um_mean"] <= spacing * np.sqrt(2) * MPP


def test_morphology_few_nuclei_give_finite_zeros():
    base = pink_patch()
    patches = np.stack([base, draw_discs(base, [(40, 40)], 6), draw_discs(base, [(40, 40), (90, 90)], 6)])
    values, names = morphology_features(patches, MPP)
    assert values.shape == (3, len(names)) and np.isfinite(values).all()
    d = [as_dict(v, names) for v in values]
    assert [x["nuclei_count"] for x in d] == [0, 1, 2]
    assert not np.any(values[0])
    assert d[1]["area_um2_std"] == 0 and d[2]["area_um2_skew"] == 0 and d[2]["neighbour_um_mean"] == 0
    assert d[1]["area_um2_mean"] > 0


def test_morphology_rejects_bad_scale():
    with pytest.raises(ValueError, match="microns_per_pixel"):
        morphology_features(pink_patch()[None], 0.0)


# --------------------------------------------------------------------------- colour / texture
def test_colour_texture_names_and_white_patch():
    white = np.full((2, 32, 32, 3), 255, dtype=np.uint8)
    values, names = colour_texture_features(white)
    assert values.shape == (2, len(names)) == (2, 22)
    assert np.isfinite(values).all()
    d = as_dict(values[0], names)
    assert d["mean_R"] == 255 and d["std_G"] == 0 and d["white_fraction"] == 1.0
    assert d["gradient_mean"] == 0 and d["glcm_contrast_d1"] == 0 and d["mean_H"] == pytest.approx(0, abs=1e-6)


def test_colour_texture_orders_texture_and_stain():
    flat = pink_patch(64, noise=0)
    textured = pink_patch(64, noise=40, seed=3)
    nuclei = draw_discs(flat, random_centres(8, 5, size=64), 5)
    values, names = colour_texture_features(np.stack([flat, textured, nuclei]))
    d = [as_dict(v, names) for v in values]
    assert d[1]["gradient_mean"] > d[0]["gradient_mean"] + 10
    assert d[1]["glcm_contrast_d1"] > d[0]["glcm_contrast_d1"]
    assert d[1]["glcm_homogeneity_d2"] < d[0]["glcm_homogeneity_d2"]
    assert d[2]["mean_H"] > d[0]["mean_H"] and d[2]["std_H"] > d[0]["std_H"]
    assert d[0]["white_fraction"] == 0.0
