"""XFuse's data: working-resolution images, tissue masks and measurement areas.

A section is resampled once from its full-resolution image to the working resolution
(``resolution_um`` µm per pixel, PIL LANCZOS via :mod:`stfusion.data.patches`); the
resampled image, its tissue mask and an area label map are kept in memory as uint8/int32
arrays (a few MB per section at 10 µm/px), and patches are cut from them per mini-batch
(:mod:`.patches`).

Measurement areas (the pixels whose expression an observation's counts sum):

- ``obsm["area_centres"]`` (n x 2k, NaN padded): the union of k discs of the spot diameter
  at those centres (merged neighbour pairs);
- else ``obsm["area_bbox"]`` (synthetic sections with square areas): the half-open box
  ``[x0, x1) x [y0, y1)`` (full-resolution pixels); a synthetic section with round spots
  (``uns["synthetic"]["spot_shape"] == "round"``) uses discs instead, as its boxes only
  bound the discs;
- else the disc of the spot diameter around ``obsm["spatial"]``.

A working pixel belongs to an area when its centre does, in continuous full-resolution
coordinates (pixel ``(i, j)`` has its centre at ``((j + 0.5) / fx, (i + 0.5) / fy)``, the
convention of :mod:`stfusion.data.synthetic`); an area holding no pixel centre gets the
pixel under its centre. Label maps: ``-1`` tissue or slide not in any observed area and
not background, ``0`` background (non-tissue pixels outside every observed area, optionally
beyond a margin around the tissue: the zero-count pseudo-spot), ``i + 1`` observation ``i``. Tissue that no observation covers is
unobserved, never background.

The tissue mask (:func:`tissue_mask`): Otsu's threshold on the smoothed saturation or on
the darkness (1 - grey), whichever separates the image's two classes better, then a
closing, hole filling and removal of specks smaller than 5% of the largest piece. This
works on legacy ST and Visium slides (fiducial dots are dark but unsaturated) without
GrabCut. A mask file named in ``uns["spatial"][lib]["metadata"]["tissue_mask_path"]`` is used
instead when present.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
from PIL import Image
from scipy import ndimage, sparse

from stfusion import _constants as K
from stfusion.data.section import fullres_shape, microns_per_pixel, spatial_info, spot_coords, spot_diameter_px
from stfusion.errors import StfusionError

log = logging.getLogger("stfusion")

BACKGROUND, UNOBSERVED = 0, -1


# --------------------------------------------------------------------------- images
def working_shape(fullres_hw: tuple[int, int], mpp: float, resolution_um: float) -> tuple[int, int]:
    """(h, w) of the working-resolution image."""
    f = float(mpp) / float(resolution_um)
    return max(1, int(round(fullres_hw[0] * f))), max(1, int(round(fullres_hw[1] * f)))


def read_working_image(reader, fullres_hw: tuple[int, int], mpp: float, resolution_um: float) -> np.ndarray:
    """The whole image resampled to ``resolution_um`` µm/px: (h, w, 3) uint8."""
    h, w = working_shape(fullres_hw, mpp, resolution_um)
    return reader.read_region(0, 0, fullres_hw[1], fullres_hw[0], out_shape=(h, w))


def _otsu_split(values: np.ndarray) -> tuple[float, float]:
    """Otsu threshold and its separability (between-class / total variance, 0..1)."""
    from skimage.filters import threshold_otsu

    if np.ptp(values) <= 1e-6:
        return float(values.max()), 0.0
    t = threshold_otsu(values)
    lo, hi = values[values <= t], values[values > t]
    if lo.size == 0 or hi.size == 0:
        return float(t), 0.0
    w0, w1 = lo.size / values.size, hi.size / values.size
    return float(t), float(w0 * w1 * (lo.mean() - hi.mean()) ** 2 / values.var())


def tissue_mask(image: np.ndarray, min_fraction: float = 0.05) -> np.ndarray:
    """Boolean tissue mask of an RGB uint8 image (see the module docstring)."""
    from skimage.color import rgb2hsv
    from skimage.filters import gaussian

    rgb = np.asarray(image, dtype=np.float64)[..., :3] / 255.0
    sat = gaussian(rgb2hsv(rgb)[..., 1], sigma=1.0)
    dark = gaussian(1.0 - rgb.mean(axis=2), sigma=1.0)
    (ts, sep_s), (tg, sep_g) = _otsu_split(sat.ravel()), _otsu_split(dark.ravel())
    mask = sat > ts if sep_s >= sep_g else dark > tg
    if not mask.any() or mask.all():
        return np.ones(mask.shape, dtype=bool)
    mask = ndimage.binary_closing(mask, structure=_disk(2), border_value=0)
    mask = ndimage.binary_fill_holes(mask)
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, lab, np.arange(1, n + 1))
        mask = np.isin(lab, np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1)
    return mask


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx**2 + yy**2 <= radius**2


def resize_mask(mask: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """A boolean mask resized (majority of covered area) to ``shape_hw``."""
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    out = np.asarray(img.resize((shape_hw[1], shape_hw[0]), Image.Resampling.BOX))
    return out >= 128


def mask_fraction(mask: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """Fraction of each working pixel a full-resolution boolean mask covers, float32."""
    img = Image.fromarray(np.asarray(mask, dtype=np.float32))
    return np.asarray(img.resize((shape_hw[1], shape_hw[0]), Image.Resampling.BOX), dtype=np.float32)


# --------------------------------------------------------------------------- areas
@dataclass
class AreaSpec:
    """Geometry of measurement areas in full-resolution pixels.

    ``kind``: ``"box"`` (``values`` n x 4: x0, y0, x1, y1) or ``"discs"`` (``values`` n x 2k
    centres, NaN padded; ``radius`` px).
    """

    kind: str
    values: np.ndarray
    radius: float = 0.0

    def __len__(self) -> int:
        return int(self.values.shape[0])


def area_spec(section: ad.AnnData) -> AreaSpec:
    """The areas of a section's observations (see the module docstring)."""
    radius = spot_diameter_px(section) / 2.0
    if K.AREA_CENTRES in section.obsm:
        centres = np.asarray(section.obsm[K.AREA_CENTRES], dtype=float)
        if centres.ndim != 2 or centres.shape[1] % 2:
            raise StfusionError(
                f"obsm['{K.AREA_CENTRES}'] must have shape (n_obs, 2k) (x, y of k centres, NaN padded), got {centres.shape}."
            )
        return AreaSpec("discs", centres, radius)
    round_synthetic = section.uns.get(K.SYNTHETIC, {}).get("spot_shape") == "round"
    if K.AREA_BBOX in section.obsm and not round_synthetic:
        return AreaSpec("box", np.asarray(section.obsm[K.AREA_BBOX], dtype=float))
    return AreaSpec("discs", spot_coords(section), radius)


def discs_spec(centres: np.ndarray, radius: float) -> AreaSpec:
    return AreaSpec("discs", np.asarray(centres, dtype=float).reshape(len(centres), -1), float(radius))


def _pixel_range(lo: float, hi: float, f: float, n: int) -> tuple[int, int]:
    """Working pixel indices whose centres (i + 0.5) / f may lie in [lo, hi]."""
    return max(0, int(np.floor(lo * f - 0.5))), min(n, int(np.ceil(hi * f + 0.5)) + 1)


def _disc_pixels(cx: float, cy: float, r: float, fx: float, fy: float, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    i0, i1 = _pixel_range(cy - r, cy + r, fy, h)
    j0, j1 = _pixel_range(cx - r, cx + r, fx, w)
    ii, jj = np.mgrid[i0:i1, j0:j1]
    inside = ((jj + 0.5) / fx - cx) ** 2 + ((ii + 0.5) / fy - cy) ** 2 <= r**2
    return (ii[inside] * w + jj[inside]).astype(np.int64)


def _box_pixels(box: np.ndarray, fx: float, fy: float, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    x0, y0, x1, y1 = box
    i0, i1 = _pixel_range(y0, y1, fy, h)
    j0, j1 = _pixel_range(x0, x1, fx, w)
    ii, jj = np.mgrid[i0:i1, j0:j1]
    cx, cy = (jj + 0.5) / fx, (ii + 0.5) / fy
    inside = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
    return (ii[inside] * w + jj[inside]).astype(np.int64)


def _at_least_centre(px: np.ndarray, centre: tuple[float, float], fx: float, fy: float, hw: tuple[int, int]) -> np.ndarray:
    """``px``, or the pixel under ``centre`` when ``px`` is empty (an area smaller than a pixel)."""
    if px.size or not np.isfinite(centre).all():
        return px
    h, w = hw
    ci, cj = int(np.clip(centre[1] * fy, 0, h - 1)), int(np.clip(centre[0] * fx, 0, w - 1))
    return np.asarray([ci * w + cj], dtype=np.int64)


def area_pixels(spec: AreaSpec, i: int, fx: float, fy: float, hw: tuple[int, int]) -> np.ndarray:
    """Flat working-pixel indices of area ``i`` (each box or disc holds at least the pixel under its centre)."""
    if spec.kind == "box":
        box = spec.values[i]
        return _at_least_centre(_box_pixels(box, fx, fy, hw), ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), fx, fy, hw)
    xy = spec.values[i].reshape(-1, 2)
    xy = xy[np.isfinite(xy).all(axis=1)]
    parts = [_at_least_centre(_disc_pixels(x, y, spec.radius, fx, fy, hw), (x, y), fx, fy, hw) for x, y in xy]
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)


def area_boxes(spec: AreaSpec, fx: float, fy: float) -> np.ndarray:
    """Bounding boxes (x0, y0, x1, y1) of the areas in working-pixel continuous coordinates."""
    if spec.kind == "box":
        return spec.values * np.asarray([fx, fy, fx, fy])
    xy = spec.values.reshape(len(spec), -1, 2)
    lo, hi = np.nanmin(xy, axis=1) - spec.radius, np.nanmax(xy, axis=1) + spec.radius
    return np.concatenate([lo, hi], axis=1) * np.asarray([fx, fy, fx, fy])


def area_weights(spec: AreaSpec, fx: float, fy: float, hw: tuple[int, int]) -> sparse.csr_matrix:
    """Areas x working pixels membership matrix (1 where a pixel belongs to the area)."""
    rows, cols = [], []
    for i in range(len(spec)):
        px = area_pixels(spec, i, fx, fy, hw)
        rows.append(np.full(px.size, i, dtype=np.int64))
        cols.append(px)
    rows_a, cols_a = (np.concatenate(v) if v else np.empty(0, np.int64) for v in (rows, cols))
    data = np.ones(rows_a.size, dtype=np.float32)
    return sparse.csr_matrix((data, (rows_a, cols_a)), shape=(len(spec), hw[0] * hw[1]))


def label_map(spec: AreaSpec, tissue: np.ndarray, fx: float, fy: float, background_margin_px: float = 0.0) -> np.ndarray:
    """Training labels: -1 unobserved, 0 background, i + 1 observation i (later areas win overlaps).

    ``background_margin_px`` > 0: non-tissue pixels within that distance of the tissue are
    unobserved rather than background."""
    hw = tissue.shape
    near = tissue
    if background_margin_px > 0:
        near = ndimage.distance_transform_edt(~tissue) <= background_margin_px
    labels = np.where(near, UNOBSERVED, BACKGROUND).astype(np.int32).ravel()
    claimed = np.zeros(labels.size, dtype=bool)
    overlaps = 0
    for i in range(len(spec)):
        px = area_pixels(spec, i, fx, fy, hw)
        overlaps += int(claimed[px].sum())
        claimed[px] = True
        labels[px] = i + 1
    if overlaps:
        log.warning("xfuse: %d working pixels lie in more than one observed area; each went to the last area.", overlaps)
    return labels.reshape(hw)


# --------------------------------------------------------------------------- sections
@dataclass
class SectionData:
    """One section at the working resolution (see the module docstring).

    ``image`` (h, w, 3) uint8; ``tissue`` (h, w) bool; ``labels`` (h, w) int32 or None
    (prediction only); ``counts`` (n_obs, G) float32 or None; ``boxes`` (n_obs, 4) area
    bounding boxes in working pixels; ``beta`` covariate indicators; ``fx``/``fy`` working
    pixels per full-resolution pixel; ``mpp`` µm per full-resolution pixel.
    """

    name: str
    image: np.ndarray
    tissue: np.ndarray
    fx: float
    fy: float
    mpp: float
    fullres_hw: tuple[int, int]
    beta: np.ndarray
    spot_radius_px: float = 0.0
    labels: np.ndarray | None = None
    counts: np.ndarray | None = None
    boxes: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.tissue.shape

    def sample_pixels(self) -> np.ndarray:
        """Flat indices of pixels patch centres are drawn from (tissue and observed areas)."""
        region = self.tissue.copy()
        if self.labels is not None:
            region |= self.labels > 0
        return np.flatnonzero(region.ravel())

    def region_box(self, margin: int = 0) -> tuple[int, int, int, int]:
        """(i0, i1, j0, j1) bounding the tissue and the observed areas, plus ``margin`` px."""
        region = self.tissue if self.labels is None else (self.tissue | (self.labels > 0))
        if not region.any():
            region = np.ones_like(region)
        ii, jj = np.nonzero(region)
        h, w = self.shape
        return (max(0, ii.min() - margin), min(h, ii.max() + 1 + margin),
                max(0, jj.min() - margin), min(w, jj.max() + 1 + margin))


def section_name(section: ad.AnnData, default: str = "section") -> str:
    return str(section.uns.get(K.STFUSION, {}).get(K.SECTION_ID, default))


def _tissue_for(section: ad.AnnData | None, image: np.ndarray) -> np.ndarray:
    path = None
    if section is not None:
        path = spatial_info(section).get(K.METADATA, {}).get(K.TISSUE_MASK_PATH)
    if path and Path(path).is_file():
        mask = np.asarray(Image.open(path).convert("L")) > 127
        return resize_mask(mask, image.shape[:2])
    return tissue_mask(image)


def prepare_section(
    section: ad.AnnData,
    resolution_um: float,
    beta: np.ndarray,
    genes: list[str] | None = None,
    *,
    training: bool = False,
    background_margin_px: float = 0.0,
) -> SectionData:
    """Resample a section to the working resolution; with ``training``, labels and counts too
    (``background_margin_px``: see :func:`label_map`)."""
    from stfusion.data.patches import section_reader

    mpp = microns_per_pixel(section)
    hw_full = fullres_shape(section)
    with section_reader(section) as reader:
        image = read_working_image(reader, hw_full, mpp, resolution_um)
    h, w = image.shape[:2]
    fx, fy = w / hw_full[1], h / hw_full[0]
    data = SectionData(section_name(section), image, _tissue_for(section, image), fx, fy, mpp, hw_full,
                       np.asarray(beta, dtype=np.float32), spot_radius_px=spot_diameter_px(section) / 2.0)
    if training:
        spec = area_spec(section)
        data.labels = label_map(spec, data.tissue, fx, fy, background_margin_px)
        data.boxes = area_boxes(spec, fx, fy)
        x = section[:, list(genes)].X if genes is not None else section.X
        data.counts = np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float32)
    return data


def image_section(image_path: str | Path, microns_per_pixel: float, resolution_um: float, beta: np.ndarray,
                  spot_radius_px: float = 0.0) -> SectionData:
    """An H&E-only slide at the working resolution (no spots, no counts)."""
    from stfusion.data.image import ImageReader

    with ImageReader(image_path) as reader:
        hw_full = tuple(reader.shape)
        image = read_working_image(reader, hw_full, microns_per_pixel, resolution_um)
    h, w = image.shape[:2]
    return SectionData(Path(image_path).stem, image, tissue_mask(image), w / hw_full[1], h / hw_full[0],
                       float(microns_per_pixel), hw_full, np.asarray(beta, dtype=np.float32), spot_radius_px,
                       extra={K.SOURCE_IMAGE_PATH: str(Path(image_path).resolve())})
