"""Image access by physical size: regions of full-resolution images and patches in µm.

Coordinates are full-resolution pixels, x = column, y = row. A box ``[x0, x1) x [y0, y1)``
covers pixels ``x0 .. x1-1``; in continuous coordinates pixel ``i`` spans ``[i, i + 1)``, so
a spot centre at pixel index ``(x, y)`` is the point ``(x + 0.5, y + 0.5)``. Boxes may be
fractional: a patch is centred at the exact float coordinate (PIL ``resize`` with a float
source box), without rounding to whole pixels. Outside the image the region is white (255).

Resampling is PIL's LANCZOS throughout (antialiased when shrinking: the kernel widens
with the scale), the filter of the stored previews (:func:`stfusion.data.image.read_preview`).

Sources: JPEG/PNG/... via PIL (a JPEG is decoded at 1/2, 1/4 or 1/8 scale with ``draft()``
when the output is at least that much smaller than the box); TIFF/OME-TIFF via tifffile's
zarr store (only the tiles/strips overlapping the box are read; of a pyramid, the coarsest
level still at least as fine as the output); or an in-memory array (the stored ``hires``
preview of a section without a full-resolution image; its pixel grid is the full-resolution
one scaled by the scale factor). Shrinking reads of very large boxes (e.g. previews of a
non-pyramidal whole-slide TIFF) are block-averaged band by band, so memory stays bounded.
Grey, RGBA and 16-bit images become RGB uint8 (16-bit: the full 0-65535 range maps to 0-255).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from stfusion import _constants as K
from stfusion.data.image import is_tiff, open_pil, to_rgb_uint8
from stfusion.data.section import fullres_path, fullres_shape, microns_per_pixel, spatial_info, spot_coords
from stfusion.errors import ImageError, SchemaError

logger = logging.getLogger("stfusion")

RESAMPLE = Image.Resampling.LANCZOS
_WHITE = 255
_LARGE_PX = 4096 * 4096  # a shrinking read of more source pixels than this goes band by band
_BAND_PX = 1 << 22  # source pixels per band of such a read (~12 MB of RGB)
_JPEG_SCALES = (2, 4, 8)  # DCT scalings PIL's JPEG draft() can decode at


# --------------------------------------------------------------------------- levels
class _Level:
    """One resolution of an image: its (h, w) and its pixels per full-resolution pixel (sx, sy)."""

    def __init__(self, shape: tuple[int, int], scale: tuple[float, float]):
        self.shape = (int(shape[0]), int(shape[1]))
        self.scale = (float(scale[0]), float(scale[1]))

    def fetch(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:  # pragma: no cover
        """Raw pixels of an in-bounds box, (h, w[, c]) in the source dtype."""
        raise NotImplementedError


class _ArrayLevel(_Level):
    def __init__(self, array: np.ndarray, scale: float):
        self.array = to_rgb_uint8(array)
        super().__init__(self.array.shape[:2], (scale, scale))

    def fetch(self, x0, y0, x1, y1):
        return self.array[y0:y1, x0:x1]


class _PilLevel(_Level):
    """A PIL-readable file decoded (at first use) at 1/``reduce`` scale."""

    def __init__(self, path: Path, full_wh: tuple[int, int], reduce: int):
        w, h = full_wh
        super().__init__((-(-h // reduce), -(-w // reduce)), (1.0 / reduce, 1.0 / reduce))
        self.path, self.reduce, self._img = path, reduce, None

    def _decode(self) -> Image.Image:
        img = open_pil(self.path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                if self.reduce > 1:
                    img.draft("RGB", (img.size[0] // self.reduce, img.size[1] // self.reduce))
                if img.mode.startswith("I;16") or img.mode in ("I", "F"):
                    pass  # 16-bit / 32-bit grey: scaled to 8 bits by _to_rgb8
                elif img.mode not in ("RGB", "L"):
                    img = img.convert("RGB")
                img.load()
        except Exception as exc:
            raise ImageError(f"Cannot decode image {self.path}: {exc}. The file may be truncated or corrupt.") from exc
        if img.size != self.shape[::-1]:
            raise ImageError(f"Decoding {self.path} at 1/{self.reduce} gave {img.size}, expected {self.shape[::-1]}.")
        return img

    def fetch(self, x0, y0, x1, y1):
        if self._img is None:
            self._img = self._decode()
        arr = np.asarray(self._img.crop((x0, y0, x1, y1)))
        return arr.astype(np.uint16) if self._img.mode == "I" else arr  # 16-bit PNGs may open as "I"


class _ZarrLevel(_Level):
    """One level of a TIFF, read through tifffile's zarr store (only overlapping chunks)."""

    def __init__(self, array, axes: str, full_wh: tuple[int, int]):
        h, w = array.shape[axes.index("Y")], array.shape[axes.index("X")]
        super().__init__((h, w), (w / full_wh[0], h / full_wh[1]))
        self.array, self.axes = array, axes

    def fetch(self, x0, y0, x1, y1):
        pick = {"Y": slice(y0, y1), "X": slice(x0, x1), "S": slice(None), "C": slice(None)}
        arr = np.asarray(self.array[tuple(pick.get(ax, 0) for ax in self.axes)])
        kept = [ax for ax in self.axes if ax in pick]
        chans = [i for i, ax in enumerate(kept) if ax in "SC"]
        arr = np.transpose(arr, [kept.index("Y"), kept.index("X"), *chans])
        return arr.reshape(arr.shape[0], arr.shape[1], -1) if arr.ndim > 3 else arr


def _to_rgb8(arr: np.ndarray) -> np.ndarray:
    """RGB uint8 from grey/RGB(A)/multi-channel pixels of any integer depth."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4):  # multi-channel: first 3 as RGB
        arr = arr[:, :, :3] if arr.shape[2] > 3 else np.concatenate([arr, np.zeros_like(arr[:, :, :1])], axis=2)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.uint8:
        top = float(np.iinfo(arr.dtype).max)
        arr = np.clip(np.rint(arr.astype(np.float32) * (255.0 / top)), 0, 255).astype(np.uint8)
    return to_rgb_uint8(arr)


def _fetch_padded(level: _Level, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """RGB uint8 pixels of an integer box of ``level``, white where it leaves the image."""
    h, w = level.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if (cx0, cy0, cx1, cy1) == (x0, y0, x1, y1):
        return np.ascontiguousarray(_to_rgb8(level.fetch(x0, y0, x1, y1)))
    out = np.full((y1 - y0, x1 - x0, 3), _WHITE, dtype=np.uint8)
    if cx1 > cx0 and cy1 > cy0:
        out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = _to_rgb8(level.fetch(cx0, cy0, cx1, cy1))
    return out


def _fetch_reduced(level: _Level, x0: int, y0: int, x1: int, y1: int, k: int) -> np.ndarray:
    """Box means over k x k blocks of an integer box (sides multiples of k), read band by band."""
    if k == 1:
        return _fetch_padded(level, x0, y0, x1, y1)
    band = k * max(1, _BAND_PX // ((x1 - x0) * k))
    out = []
    for y in range(y0, y1, band):
        crop = _fetch_padded(level, x0, y, x1, min(y + band, y1))
        out.append(np.asarray(Image.fromarray(crop).reduce(k)))
    return np.concatenate(out, axis=0)


def _resample(level: _Level, box: tuple[float, float, float, float], out_shape: tuple[int, int]) -> np.ndarray:
    """The float ``box`` (level pixels) resampled to ``out_shape`` (h, w) with LANCZOS."""
    bx0, by0, bx1, by1 = box
    h, w = out_shape
    if all(float(v).is_integer() for v in box) and (bx1 - bx0, by1 - by0) == (w, h):
        return _fetch_padded(level, int(bx0), int(by0), int(bx1), int(by1))
    rx, ry = (bx1 - bx0) / w, (by1 - by0) / h
    big = (bx1 - bx0) * (by1 - by0) > _LARGE_PX
    k = max(1, int(min(rx, ry) // 2)) if big else 1  # leave LANCZOS a 2-4x shrink
    margin = k * (math.ceil(3 * max(1.0, rx / k, ry / k)) + 1)  # LANCZOS support is 3 output px
    ix0, iy0 = math.floor(bx0) - margin, math.floor(by0) - margin
    ix1 = ix0 + k * math.ceil((math.ceil(bx1) + margin - ix0) / k)
    iy1 = iy0 + k * math.ceil((math.ceil(by1) + margin - iy0) / k)
    src = Image.fromarray(_fetch_reduced(level, ix0, iy0, ix1, iy1, k))
    rel = ((bx0 - ix0) / k, (by0 - iy0) / k, (bx1 - ix0) / k, (by1 - iy0) / k)
    return np.asarray(src.resize((w, h), RESAMPLE, box=rel))


def _pick_level(levels: Sequence[_Level], ratio_x: float, ratio_y: float) -> _Level:
    """Coarsest level with at least the resolution needed (ratio = full-res px per output px)."""
    fine_enough = [lv for lv in levels if 1 / lv.scale[0] <= ratio_x * 1.01 and 1 / lv.scale[1] <= ratio_y * 1.01]
    if not fine_enough:
        return max(levels, key=lambda lv: lv.scale[0])
    return min(fine_enough, key=lambda lv: lv.scale[0] * lv.scale[1])


# --------------------------------------------------------------------------- reader
class ImageReader:
    """An image opened once for many region reads (context manager, picklable).

    ``ImageReader(path)`` reads a file; :meth:`from_array` wraps an in-memory image whose
    pixels are ``scale`` x full-resolution pixels. Files are opened lazily and re-opened
    after unpickling or in a forked worker process.
    """

    def __init__(self, path: str | Path):
        self._path: Path | None = Path(path)
        self._array: np.ndarray | None = None
        self._array_scale = 1.0
        self._shape: tuple[int, int] | None = None
        self._reset()

    @classmethod
    def from_array(
        cls, image: np.ndarray, scale: float = 1.0, fullres_shape: tuple[int, int] | None = None
    ) -> ImageReader:
        """Reader over an image held in memory at ``scale`` pixels per full-resolution pixel."""
        self = cls.__new__(cls)
        self._path, self._array, self._array_scale = None, np.asarray(image), float(scale)
        h, w = self._array.shape[:2]
        self._shape = tuple(fullres_shape) if fullres_shape is not None else (round(h / scale), round(w / scale))
        self._reset()
        return self

    def _reset(self) -> None:
        self._levels: list[_Level] | None = None
        self._tif = None
        self._pid = os.getpid()

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the full-resolution image."""
        if self._shape is None:
            self._open()
        return self._shape

    @property
    def level_scales(self) -> list[tuple[float, float]]:
        """(sx, sy) of each available resolution, pixels per full-resolution pixel."""
        return [lv.scale for lv in self._open()]

    def _open(self) -> list[_Level]:
        if self._levels is not None and (self._tif is None or self._pid == os.getpid()):
            return self._levels
        if self._tif is not None:  # forked worker: its own file handle, not the parent's offset
            self.close()
        self._reset()
        if self._array is not None:
            self._levels = [_ArrayLevel(self._array, self._array_scale)]
        elif is_tiff(self._path):
            self._levels = self._open_tiff()
        else:
            self._levels = self._open_pil()
        return self._levels

    def _open_pil(self) -> list[_Level]:
        img = open_pil(self._path)
        wh, is_jpeg = img.size, img.format == "JPEG"
        img.close()
        self._shape = (wh[1], wh[0])
        scales = (1, *_JPEG_SCALES) if is_jpeg else (1,)
        return [_PilLevel(self._path, wh, r) for r in scales if r == 1 or min(wh) >= 8 * r]

    def _open_tiff(self) -> list[_Level]:
        import tifffile
        import zarr

        if not self._path.exists():
            raise ImageError(
                f"Image file not found: {self._path}. Check the path, or pass the right file with --image."
            )
        try:
            self._tif = tifffile.TiffFile(self._path)
            series = self._tif.series[0]
            axes = series.levels[0].axes
            full = series.levels[0].shape
            full_wh = (full[axes.index("X")], full[axes.index("Y")])
            levels = [
                _ZarrLevel(zarr.open(series.aszarr(level=i), mode="r"), lv.axes, full_wh)
                for i, lv in enumerate(series.levels)
            ]
        except Exception as exc:
            self.close()
            raise ImageError(f"Cannot read TIFF {self._path}: {exc}. The file may be corrupt.") from exc
        self._shape = (int(full_wh[1]), int(full_wh[0]))
        return levels

    def read_region(
        self, x0: float, y0: float, x1: float, y1: float, *, out_shape: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Pixels of the box ``[x0, x1) x [y0, y1)`` (full-res pixels) as H x W x 3 uint8.

        Without ``out_shape`` the box is rounded to whole pixels and returned at full
        resolution; with ``out_shape=(h, w)`` it is resampled (LANCZOS) to that size from
        the coarsest stored resolution that is still fine enough. White outside the image.
        """
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"Empty region x {x0}..{x1}, y {y0}..{y1}: x1 must exceed x0 and y1 exceed y0.")
        if out_shape is None:
            x0, y0, x1, y1 = (int(round(v)) for v in (x0, y0, x1, y1))
            out_shape = (y1 - y0, x1 - x0)
        h, w = int(out_shape[0]), int(out_shape[1])
        if h < 1 or w < 1:
            raise ValueError(f"out_shape must be positive (h, w), got {out_shape}.")
        level = _pick_level(self._open(), (x1 - x0) / w, (y1 - y0) / h)
        sx, sy = level.scale
        return _resample(level, (x0 * sx, y0 * sy, x1 * sx, y1 * sy), (h, w))

    def close(self) -> None:
        """Release the file and the decoded pixels (the reader re-opens on next use)."""
        if self._tif is not None:
            self._tif.close()
        self._levels, self._tif = None, None

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_levels=None, _tif=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def __repr__(self) -> str:
        src = str(self._path) if self._path is not None else f"array x{self._array_scale:g}"
        return f"ImageReader({src})"


def read_region(
    path: str | Path, x0: float, y0: float, x1: float, y1: float, *, out_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Read the box ``[x0, x1) x [y0, y1)`` of an image file (see :meth:`ImageReader.read_region`)."""
    with ImageReader(path) as reader:
        return reader.read_region(x0, y0, x1, y1, out_shape=out_shape)


# --------------------------------------------------------------------------- sections
def section_reader(section) -> ImageReader:
    """Reader of a section's full-resolution image, or of its stored hires/lowres image.

    The stored image is used when the section has no full-resolution path (logged once,
    at INFO, per reader: patches then have at most the preview's resolution).
    """
    path = fullres_path(section)
    if path is not None:
        reader = ImageReader(path)
        if tuple(reader.shape) != fullres_shape(section):
            raise ImageError(
                f"{path} is {reader.shape[1]}x{reader.shape[0]} px but the section's spot coordinates are for "
                f"{fullres_shape(section)[1]}x{fullres_shape(section)[0]} px. Point it at the right image with "
                "stfusion.data.set_fullres_image(adata, PATH)."
            )
        return reader
    lib = spatial_info(section)
    for key, sf_key in ((K.HIRES, K.HIRES_SCALEF), (K.LOWRES, K.LOWRES_SCALEF)):
        image, scalef = lib.get(K.IMAGES, {}).get(key), lib.get(K.SCALEFACTORS, {}).get(sf_key)
        if image is not None and scalef is not None:
            logger.info(
                "Section %s has no full-resolution image; reading patches from its stored '%s' image "
                "(%.3f x full resolution), so patch resolution is limited. Set the full-resolution image "
                "with stfusion.data.set_fullres_image for sharper patches.",
                section.uns.get(K.STFUSION, {}).get(K.SECTION_ID, "?"),
                key,
                float(scalef),
            )
            return ImageReader.from_array(image, float(scalef), fullres_shape(section))
    raise SchemaError(
        "The section has no full-resolution image path and no stored hires/lowres image with its scale factor "
        f"('{K.HIRES_SCALEF}' / '{K.LOWRES_SCALEF}'). Read it again with its image, or set one with "
        "stfusion.data.set_fullres_image(adata, PATH)."
    )


def patch_box(center_px: Sequence[float], size_um: float, mpp: float) -> tuple[float, float, float, float]:
    """Float box (x0, y0, x1, y1) of side ``size_um`` µm centred on pixel ``center_px`` = (x, y)."""
    if not (size_um > 0 and mpp > 0):
        raise ValueError(f"size_um and microns_per_pixel must be positive, got {size_um} and {mpp}.")
    half = size_um / mpp / 2.0
    cx, cy = float(center_px[0]) + 0.5, float(center_px[1]) + 0.5
    return cx - half, cy - half, cx + half, cy + half


def read_patch(
    section, center_px: Sequence[float], size_um: float, out_px: int, *, reader: ImageReader | None = None
) -> np.ndarray:
    """Square patch of side ``size_um`` µm centred on ``center_px`` (x, y full-res px), out_px x out_px x 3.

    Pass ``reader`` (from :func:`section_reader`) to reuse an open image across calls.
    """
    box = patch_box(center_px, size_um, microns_per_pixel(section))
    if reader is not None:
        return reader.read_region(*box, out_shape=(out_px, out_px))
    with section_reader(section) as own:
        return own.read_region(*box, out_shape=(out_px, out_px))


def read_patches(
    section, centers_px: np.ndarray, size_um: float, out_px: int, *, progress: bool = False
) -> np.ndarray:
    """Patches at each centre (n x 2 array of x, y), n x out_px x out_px x 3 uint8, one open image."""
    with PatchReader(section, size_um, out_px, centers_px=centers_px) as patches:
        return patches.read_all(progress=progress)


class PatchReader:
    """Patches of one physical size from one section, its image opened once; picklable.

    ``reader[i]`` is the patch at centre ``i`` (default: the spot centres), ``reader.read((x, y))``
    the patch at any centre. Only the image source travels when pickled (the file path, or
    the stored preview), so it can go to torch DataLoader workers.
    """

    def __init__(self, section, size_um: float, out_px: int, *, centers_px: np.ndarray | None = None):
        self.size_um, self.out_px = float(size_um), int(out_px)
        self.microns_per_pixel = microns_per_pixel(section)
        centers = spot_coords(section) if centers_px is None else np.asarray(centers_px, dtype=float)
        if centers.ndim != 2 or centers.shape[1] != 2:
            raise ValueError(f"centers_px must have shape (n, 2) with columns x, y; got {centers.shape}.")
        self.centers_px = centers
        patch_box((0, 0), self.size_um, self.microns_per_pixel)  # validates size
        self.reader = section_reader(section)

    @property
    def side_px(self) -> float:
        """Patch side in full-resolution pixels."""
        return self.size_um / self.microns_per_pixel

    def read(self, center_px: Sequence[float]) -> np.ndarray:
        box = patch_box(center_px, self.size_um, self.microns_per_pixel)
        return self.reader.read_region(*box, out_shape=(self.out_px, self.out_px))

    def __len__(self) -> int:
        return len(self.centers_px)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.read(self.centers_px[i])

    def read_all(self, *, progress: bool = False) -> np.ndarray:
        """All patches, n x out_px x out_px x 3 uint8 (rich progress bar when ``progress``)."""
        from rich.progress import track

        out = np.empty((len(self), self.out_px, self.out_px, 3), dtype=np.uint8)
        for i in track(range(len(self)), description="Reading patches", disable=not progress, transient=True):
            out[i] = self[i]
        return out

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> PatchReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
