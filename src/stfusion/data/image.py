"""Image files: headers, downscaled previews and regions, with no knowledge of sections.

Coordinates are full-resolution pixels, x = column, y = row. A box ``[x0, x1) x [y0, y1)``
covers pixels ``x0 .. x1-1``; in continuous coordinates pixel ``i`` spans ``[i, i + 1)``.
Boxes may be fractional: a region is resampled from the exact float box (PIL ``resize``
with a float source box), without rounding to whole pixels. Outside the image the region
is white (255).

Resampling is PIL's LANCZOS throughout (antialiased when shrinking: the kernel widens
with the scale), the filter of the stored previews (:func:`read_preview`).

Sources: JPEG/PNG/... via PIL (a JPEG is decoded at 1/2, 1/4 or 1/8 scale with ``draft()``
when the output is at least that much smaller than the box); TIFF/OME-TIFF via tifffile's
zarr store (only the tiles/strips overlapping the box are read; of a pyramid, the coarsest
level still at least as fine as the output); or an in-memory array (the stored ``hires``
preview of a section without a full-resolution image; its pixel grid is the full-resolution
one scaled by the scale factor). Shrinking reads of very large boxes (e.g. previews of a
non-pyramidal whole-slide TIFF) are block-averaged band by band, so memory stays bounded.
Grey, RGBA and 16-bit images become RGB uint8 (16-bit: the full 0-65535 range maps to 0-255).

Patches of a section by physical size (µm) live in :mod:`stfusion.data.patches`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from stfusion.errors import ImageError

RESAMPLE = Image.Resampling.LANCZOS
_WHITE = 255
_LARGE_PX = 4096 * 4096  # a shrinking read of more source pixels than this goes band by band
_BAND_PX = 1 << 22  # source pixels per band of such a read (~12 MB of RGB)
_JPEG_SCALES = (2, 4, 8)  # DCT scalings PIL's JPEG draft() can decode at


TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".svs", ".ome.tif", ".ome.tiff")


def is_tiff(path: str | Path) -> bool:
    return str(path).lower().endswith(TIFF_SUFFIXES)


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise ImageError(f"Image file not found: {path}. Check the path, or pass the right file with --image.")
    if path.stat().st_size == 0:
        raise ImageError(f"Image file is empty: {path}. Re-export or re-copy the image.")


def open_pil(path: str | Path) -> Image.Image:
    """Open an image lazily with PIL (no pixel decoding yet); clear error when corrupt."""
    path = Path(path)
    _check_exists(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.size  # noqa: B018  (forces the header parse)
    except Exception as exc:  # PIL raises many types for broken files
        raise ImageError(f"Cannot read image {path}: {exc}. The file may be corrupt or not an image.") from exc
    return img


def image_shape(path: str | Path) -> tuple[int, int]:
    """(height, width) of the full-resolution image, read from the header only."""
    path = Path(path)
    if is_tiff(path):
        import tifffile

        _check_exists(path)
        try:
            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].levels[0].shape
                axes = tif.series[0].levels[0].axes
        except Exception as exc:
            raise ImageError(f"Cannot read TIFF {path}: {exc}. The file may be corrupt.") from exc
        return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
    w, h = open_pil(path).size
    return int(h), int(w)


def to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """Convert grey/RGBA/float images to H x W x 3 uint8."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        elif np.issubdtype(arr.dtype, np.integer) and np.iinfo(arr.dtype).max > 255:
            arr = arr.astype(np.float64) * (255.0 / np.iinfo(arr.dtype).max)  # 16-bit: full range
        arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
    return arr


def read_preview(path: str | Path, max_side: int) -> tuple[np.ndarray, float]:
    """Downscaled RGB copy whose longest side is at most ``max_side``.

    Returns ``(image, scalef)`` with ``scalef`` = preview pixels per full-resolution pixel.
    """
    path = Path(path)
    h, w = image_shape(path)
    scalef = min(1.0, max_side / max(h, w))
    out_size = (max(1, round(w * scalef)), max(1, round(h * scalef)))
    if is_tiff(path):
        full = read_region(path, 0, 0, w, h, out_shape=(out_size[1], out_size[0]))
        return full, scalef
    img = open_pil(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.draft("RGB", out_size)  # JPEG: decode at a reduced DCT scale
            img = img.convert("RGB").resize(out_size, Image.Resampling.LANCZOS)
    except Exception as exc:
        raise ImageError(f"Cannot decode image {path}: {exc}. The file may be truncated or corrupt.") from exc
    return np.asarray(img, dtype=np.uint8), scalef


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
