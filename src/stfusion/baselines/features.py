"""Hand-crafted image features of spot patches, the inputs of the image baselines.

Every function takes uint8 RGB patches ``(n, h, w, 3)`` and returns ``(values, names)``:
a float array ``(n, n_features)`` and the list of feature names. All values are finite.

- :func:`histogram_features`: channel-wise intensity histograms (XFuse, Extended Data Fig. 4c).
- :func:`morphology_features`: nucleus morphology statistics (ST-Net's comparison baseline).
- :func:`colour_texture_features`: colour moments, gradient and GLCM texture.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import Delaunay, QhullError
from skimage.color import rgb2gray, rgb2hed
from skimage.feature import graycomatrix, graycoprops
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

RGB = ("R", "G", "B")
HED = ("H", "E", "D")

# Fixed histogram ranges of the per-nucleus quantities (physical units), so that histogram
# bins mean the same thing in every patch. Values outside are counted in the end bins.
MORPHOLOGY_RANGES: dict[str, tuple[float, float]] = {
    "area_um2": (0.0, 200.0),  # lymphocyte ~20-40 µm², tumour nuclei up to ~150 µm²
    "major_um": (0.0, 25.0),
    "minor_um": (0.0, 15.0),
    "axis_ratio": (1.0, 4.0),
    "mean_R": (0.0, 255.0),
    "mean_G": (0.0, 255.0),
    "mean_B": (0.0, 255.0),
    "neighbour_um": (0.0, 50.0),  # Delaunay edge lengths between nucleus centroids
}
MORPHOLOGY_STATS = ("mean", "std", "skew", "kurtosis")
MORPHOLOGY_BINS = 10


def _check_patches(patches: np.ndarray) -> np.ndarray:
    patches = np.asarray(patches)
    if patches.ndim == 3:
        patches = patches[None]
    if patches.ndim != 4 or patches.shape[-1] != 3:
        raise ValueError(
            f"patches must be RGB images of shape (n, h, w, 3), got {patches.shape}. "
            "Read them with stfusion.data.patches.read_patches."
        )
    if patches.dtype != np.uint8:
        raise ValueError(
            f"patches must be uint8 (0-255), got {patches.dtype}; convert with np.clip(x, 0, 255).astype(np.uint8)."
        )
    return patches


# --------------------------------------------------------------------------- histograms
def histogram_features(patches: np.ndarray, bins: int = 5) -> tuple[np.ndarray, list[str]]:
    """Channel-wise ``bins``-bin intensity histograms (fraction of pixels) of each patch.

    Bins split 0-255 into equal intervals; each channel's ``bins`` values sum to 1.
    Features are ordered channel-major: ``hist_R_0 .. hist_R_{bins-1}, hist_G_0, ...``.
    """
    patches = _check_patches(patches)
    n = patches.shape[0]
    idx = (patches.astype(np.int32) * bins) // 256  # (n, h, w, 3) in 0..bins-1
    flat = idx.reshape(n, -1, 3) + np.arange(3) * bins  # channel offset
    flat = flat + (np.arange(n) * 3 * bins)[:, None, None]  # patch offset
    counts = np.bincount(flat.ravel(), minlength=n * 3 * bins).reshape(n, 3 * bins)
    values = counts / float(patches.shape[1] * patches.shape[2])
    names = [f"hist_{c}_{b}" for c in RGB for b in range(bins)]
    return values.astype(np.float64), names


# --------------------------------------------------------------------------- morphology
def _segment_nuclei(
    hema: np.ndarray, threshold: float, microns_per_pixel: float, min_area_um2: float
) -> np.ndarray:
    """Label image of nuclei from a smoothed haematoxylin channel (0 = background)."""
    mask = ndimage.binary_fill_holes(hema > threshold)
    if not mask.any():
        return np.zeros(hema.shape, dtype=np.int32)
    dist = ndimage.distance_transform_edt(mask)
    # one marker per local maximum (within ~2.5 µm) of the smoothed distance map; smoothing
    # breaks the ties along the flat ridge of an elongated nucleus so it keeps one marker
    smooth = ndimage.gaussian_filter(dist, sigma=max(1.0 / microns_per_pixel, 0.5))
    size = max(3, 2 * int(round(2.5 / microns_per_pixel)) + 1)
    peaks = (smooth == ndimage.maximum_filter(smooth, size=size)) & mask
    markers, _ = ndimage.label(peaks, structure=np.ones((3, 3)))
    labels = watershed(-dist, markers, mask=mask)
    areas = np.bincount(labels.ravel())
    min_px = min_area_um2 / microns_per_pixel**2
    small = areas < min_px
    small[0] = True
    labels[small[labels]] = 0
    return labels


def _nucleus_table(labels: np.ndarray, patch: np.ndarray, mpp: float) -> dict[str, np.ndarray]:
    """Per-nucleus quantities in physical units, computed with label-wise moment sums."""
    flat = labels.ravel()
    m = int(flat.max()) + 1
    keep = np.bincount(flat, minlength=m) > 0
    keep[0] = False
    if not keep.any():
        return {k: np.empty(0) for k in MORPHOLOGY_RANGES}
    yy, xx = np.indices(labels.shape, dtype=np.float64)

    def s(w: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights=w.ravel(), minlength=m)[keep]

    cnt = np.bincount(flat, minlength=m)[keep].astype(np.float64)
    cx, cy = s(xx) / cnt, s(yy) / cnt
    vxx = s(xx * xx) / cnt - cx**2 + 1.0 / 12  # + pixel's own variance
    vyy = s(yy * yy) / cnt - cy**2 + 1.0 / 12
    vxy = s(xx * yy) / cnt - cx * cy
    half_tr, det_term = (vxx + vyy) / 2, np.sqrt(((vxx - vyy) / 2) ** 2 + vxy**2)
    major = 4 * np.sqrt(np.maximum(half_tr + det_term, 0)) * mpp
    minor = 4 * np.sqrt(np.maximum(half_tr - det_term, 1.0 / 12)) * mpp
    out = {
        "area_um2": cnt * mpp**2,
        "major_um": major,
        "minor_um": minor,
        "axis_ratio": major / minor,
    }
    for c, name in enumerate(RGB):
        out[f"mean_{name}"] = s(patch[..., c].astype(np.float64)) / cnt
    out["neighbour_um"] = _delaunay_lengths(np.column_stack([cx, cy]) * mpp)
    return out


def _delaunay_lengths(points: np.ndarray) -> np.ndarray:
    """Lengths of the unique Delaunay edges between points (empty for < 3 points)."""
    if len(points) < 3:
        return np.empty(0)
    try:
        tri = Delaunay(points)
    except QhullError:  # collinear or duplicate points
        return np.empty(0)
    s = tri.simplices
    edges = np.concatenate([s[:, [0, 1]], s[:, [1, 2]], s[:, [0, 2]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    return np.linalg.norm(points[edges[:, 0]] - points[edges[:, 1]], axis=1)


def _summarise(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """mean, std, skewness, kurtosis and a fixed-edge histogram (fractions); zeros when empty."""
    out = np.zeros(len(MORPHOLOGY_STATS) + MORPHOLOGY_BINS)
    if len(values) == 0:
        return out
    out[0], out[1] = values.mean(), values.std()
    if len(values) >= 3 and out[1] > 0:  # biased moments, as scipy.stats.skew/kurtosis
        z = (values - out[0]) / out[1]
        out[2], out[3] = np.mean(z**3), np.mean(z**4) - 3.0
    edges = np.linspace(lo, hi, MORPHOLOGY_BINS + 1)
    idx = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, MORPHOLOGY_BINS - 1)
    out[4:] = np.bincount(idx, minlength=MORPHOLOGY_BINS) / len(values)
    return np.nan_to_num(out)


def morphology_feature_names() -> list[str]:
    names = ["nuclei_count", "nuclei_per_mm2", "nuclei_area_fraction"]
    for q in MORPHOLOGY_RANGES:
        names += [f"{q}_{st}" for st in MORPHOLOGY_STATS]
        names += [f"{q}_hist{b}" for b in range(MORPHOLOGY_BINS)]
    return names


def morphology_features(
    patches: np.ndarray,
    microns_per_pixel: float,
    *,
    min_area_um2: float = 10.0,
    smooth_um: float = 1.0,
    min_hematoxylin: float = 0.04,
) -> tuple[np.ndarray, list[str]]:
    """Nucleus morphology statistics of each patch (ST-Net's comparison baseline).

    Nuclei are segmented on the haematoxylin channel (``rgb2hed``) smoothed with a Gaussian
    of ``smooth_um``, thresholded by Otsu over the whole batch (so patches of one section
    share a threshold; never below ``min_hematoxylin`` so that nucleus-free patches stay
    empty), split by a distance-transform watershed, and objects under ``min_area_um2`` are
    dropped. Per nucleus: area, major/minor axis, their ratio, mean R/G/B, plus the Delaunay
    edge lengths between centroids. Per patch: mean, std, skewness, kurtosis and a 10-bin
    histogram (fixed edges :data:`MORPHOLOGY_RANGES`) of each quantity, nucleus count,
    density (per mm²) and nuclear area fraction. Patches with few nuclei give zeros.

    A working resolution of ~1 µm/px is enough (e.g. 100 µm patches read at 128 px).
    """
    patches = _check_patches(patches)
    mpp = float(microns_per_pixel)
    if not np.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"microns_per_pixel must be positive, got {microns_per_pixel}.")
    hema = rgb2hed(patches)[..., 0].astype(np.float32)
    sigma = smooth_um / mpp
    hema = ndimage.gaussian_filter(hema, sigma=(0, sigma, sigma))
    threshold = _batch_threshold(hema, min_hematoxylin)
    patch_area_mm2 = patches.shape[1] * patches.shape[2] * mpp**2 / 1e6
    rows = []
    for i in range(len(patches)):
        labels = _segment_nuclei(hema[i], threshold, mpp, min_area_um2)
        table = _nucleus_table(labels, patches[i], mpp)
        n_nuc = len(table["area_um2"])
        head = [n_nuc, n_nuc / patch_area_mm2, float((labels > 0).mean())]
        parts = [_summarise(table[q], *MORPHOLOGY_RANGES[q]) for q in MORPHOLOGY_RANGES]
        rows.append(np.concatenate([head, *parts]))
    return np.vstack(rows), morphology_feature_names()


def _batch_threshold(hema: np.ndarray, floor: float, max_pixels: int = 1_000_000) -> float:
    vals = hema.ravel()
    if vals.size > max_pixels:
        vals = vals[:: vals.size // max_pixels + 1]
    if np.ptp(vals) == 0:
        return float(max(floor, vals[0]))
    return float(max(threshold_otsu(vals), floor))


# --------------------------------------------------------------------------- colour / texture
GLCM_PROPS = ("contrast", "homogeneity", "energy", "correlation")
GLCM_DISTANCES = (1, 2)
GLCM_LEVELS = 32


def colour_texture_features(patches: np.ndarray, *, white_level: int = 220) -> tuple[np.ndarray, list[str]]:
    """Simple colour and texture features of each patch.

    Per-channel mean and std of RGB (0-255) and of the HED stain densities, mean grey-level
    gradient magnitude, GLCM contrast/homogeneity/energy/correlation at distances 1 and 2
    (grey quantised to 32 levels, 4 angles averaged) and the fraction of near-white pixels
    (all channels above ``white_level``: background or fat).
    """
    patches = _check_patches(patches)
    rgb = patches.astype(np.float32)
    hed = rgb2hed(patches).astype(np.float32)
    grey = rgb2gray(patches).astype(np.float32)  # 0..1
    gy, gx = np.gradient(grey * 255, axis=(1, 2))
    cols = [
        rgb.mean(axis=(1, 2)),
        rgb.std(axis=(1, 2)),
        hed.mean(axis=(1, 2)),
        hed.std(axis=(1, 2)),
        np.hypot(gx, gy).mean(axis=(1, 2))[:, None],
        _glcm(grey),
        (patches > white_level).all(axis=-1).mean(axis=(1, 2))[:, None],
    ]
    names = (
        [f"mean_{c}" for c in RGB]
        + [f"std_{c}" for c in RGB]
        + [f"mean_{c}" for c in HED]
        + [f"std_{c}" for c in HED]
        + ["gradient_mean"]
        + [f"glcm_{p}_d{d}" for p in GLCM_PROPS for d in GLCM_DISTANCES]
        + ["white_fraction"]
    )
    return np.nan_to_num(np.hstack(cols).astype(np.float64)), names


def _glcm(grey: np.ndarray) -> np.ndarray:
    q = np.minimum((grey * GLCM_LEVELS).astype(np.uint8), GLCM_LEVELS - 1)
    angles = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    out = np.zeros((len(q), len(GLCM_PROPS) * len(GLCM_DISTANCES)))
    for i, img in enumerate(q):
        m = graycomatrix(
            img, distances=list(GLCM_DISTANCES), angles=angles, levels=GLCM_LEVELS, symmetric=True, normed=True
        )
        out[i] = np.concatenate([graycoprops(m, p).mean(axis=1) for p in GLCM_PROPS])
    return out
