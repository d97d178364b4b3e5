"""Image access: size and downscaled previews without decoding the whole file.

Full-resolution patches by physical size live in :mod:`stfusion.data.patches`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from stfusion.errors import ImageError

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
        from stfusion.data.patches import read_region

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
