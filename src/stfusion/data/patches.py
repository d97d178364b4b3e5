"""Patches of a section by physical size: squares of a given side in µm around spot centres.

A spot centre at pixel index ``(x, y)`` (full-resolution pixels, x = column, y = row) is the
point ``(x + 0.5, y + 0.5)``; a patch is centred there exactly, without rounding to whole
pixels, and resampled to ``out_px`` pixels. Image access (files, pyramids, stored previews,
resampling) is :class:`stfusion.data.image.ImageReader`'s; this module knows the section:
its image path or stored preview, its µm per pixel and its spot coordinates.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from stfusion import _constants as K
from stfusion.data.image import ImageReader, read_region
from stfusion.data.section import fullres_path, fullres_shape, microns_per_pixel, spatial_info, spot_coords
from stfusion.errors import ImageError, SchemaError

logger = logging.getLogger("stfusion")

WHITE = 220  # a pixel whose mean RGB is at least this is background (ST-Net's TCGA processing)
MAX_BACKGROUND_FRACTION = 0.5  # a patch with more background than this holds no tissue

__all__ = [
    "MAX_BACKGROUND_FRACTION", "WHITE", "ImageReader", "PatchReader", "background_fraction", "is_tissue",
    "patch_box", "read_patch", "read_patches", "read_region", "section_reader",
]  # fmt: skip


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


# --------------------------------------------------------------------------- tissue
def background_fraction(patch: np.ndarray, white: int = WHITE) -> float:
    """Fraction of pixels whose mean RGB is at least ``white``."""
    return float((patch[..., :3].astype(np.float32).mean(axis=-1) >= white).mean())


def is_tissue(patch: np.ndarray, white: int = WHITE, max_background_fraction: float = MAX_BACKGROUND_FRACTION) -> bool:
    """True unless more than ``max_background_fraction`` of the pixels are background."""
    return background_fraction(patch, white) <= max_background_fraction
