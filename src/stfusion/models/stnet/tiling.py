"""Tile an H&E-only slide at a physical field and keep the tiles that hold tissue.

A tile is background when the mean of its RGB channels is at least ``white`` (220) in more
than ``max_background_fraction`` (half) of its pixels, as in ST-Net's processing of TCGA
slides. Tissue detection first looks at a low-resolution overview (one pixel per tile) to
skip obviously empty regions, then checks each candidate tile at the model's resolution.

The tissue test of one patch (:func:`stfusion.data.patches.is_tissue`) is shared with the
whole-slide streaming of :mod:`stfusion.scale.slide`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stfusion.data.image import ImageReader
from stfusion.data.patches import MAX_BACKGROUND_FRACTION, WHITE, is_tissue, patch_box


@dataclass
class Tiles:
    """Tissue tiles of a slide: centres (x, y full-res px), grid indices (row, col) and pixels."""

    centers_px: np.ndarray
    grid_rc: np.ndarray
    patches: np.ndarray
    n_total: int


def tile_grid(shape_hw: tuple[int, int], side_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Centres (x, y) and (row, col) of a grid of square tiles of ``side_px`` covering the image."""
    h, w = shape_hw
    rows, cols = max(1, math.ceil(h / side_px)), max(1, math.ceil(w / side_px))
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    rc = np.stack([r.ravel(), c.ravel()], axis=1)
    # patch_box centres on pixel index + 0.5, so index i*side + side/2 - 0.5 gives the box [i*side, (i+1)*side)
    centers = np.stack([(rc[:, 1] + 0.5) * side_px - 0.5, (rc[:, 0] + 0.5) * side_px - 0.5], axis=1)
    return centers, rc


def _overview_candidates(reader: ImageReader, rc: np.ndarray, grid_hw: tuple[int, int], side_px: float, white: int) -> np.ndarray:
    """Tiles whose 8x8-px overview is not entirely background (cheap pre-filter)."""
    rows, cols = grid_hw
    sub = 8
    over = reader.read_region(0, 0, cols * side_px, rows * side_px, out_shape=(rows * sub, cols * sub))
    bg = over.astype(np.float32).mean(axis=-1) >= min(255, white + 15)  # lenient: the real test follows
    frac = bg.reshape(rows, sub, cols, sub).mean(axis=(1, 3))
    return frac[rc[:, 0], rc[:, 1]] < 1.0


def tissue_tiles(
    image: str | Path | np.ndarray,
    microns_per_pixel: float,
    field_um: float,
    out_px: int,
    *,
    white: int = WHITE,
    max_background_fraction: float = MAX_BACKGROUND_FRACTION,
) -> Tiles:
    """Tiles of ``field_um`` µm over the whole image, resampled to ``out_px``, tissue only.

    ``image`` is a file path (any format :class:`~stfusion.data.image.ImageReader`
    reads) or an RGB array at full resolution.
    """
    if not microns_per_pixel > 0:
        raise ValueError(f"microns_per_pixel must be positive, got {microns_per_pixel}. Pass the slide's pixel size.")
    reader = ImageReader.from_array(np.asarray(image)) if isinstance(image, np.ndarray) else ImageReader(image)
    with reader:
        side = field_um / microns_per_pixel
        centers, rc = tile_grid(reader.shape, side)
        grid_hw = (int(rc[:, 0].max()) + 1, int(rc[:, 1].max()) + 1)
        keep = _overview_candidates(reader, rc, grid_hw, side, white)
        patches, kept = [], []
        for i in np.flatnonzero(keep):
            box = patch_box(centers[i], field_um, microns_per_pixel)
            patch = reader.read_region(*box, out_shape=(out_px, out_px))
            if is_tissue(patch, white, max_background_fraction):
                patches.append(patch)
                kept.append(i)
    kept_idx = np.asarray(kept, dtype=int)
    stack = np.stack(patches) if patches else np.zeros((0, out_px, out_px, 3), np.uint8)
    return Tiles(centers[kept_idx], rc[kept_idx], stack, len(centers))


def tile_stain_reference(sections, names, transform, field_um: float, out_px: int) -> dict | None:
    """The stain reference over the tissue tiles of the training images (after ``transform``, the
    model's stain normaliser): what an H&E-only slide's tiles are compared with, since a slide's
    tiles cover more tissue than its spots do. None when no section has a full-resolution image."""
    from stfusion.data.section import fullres_path, microns_per_pixel
    from stfusion.data.shift import fit_stain_reference

    sets, kept = [], []
    for s, name in zip(sections, names, strict=True):
        path = fullres_path(s)
        if path is None or not Path(path).exists():
            continue
        tiles = tissue_tiles(path, microns_per_pixel(s), field_um, out_px)
        if len(tiles.patches):
            sets.append(transform(tiles.patches))
            kept.append(name)
    return fit_stain_reference(sets, kept) if sets else None
