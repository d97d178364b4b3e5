"""Synthetic whole slides and random-initialised models for scale tests and benchmarks.

:func:`write_synthetic_slide` writes a tiled, pyramidal (OME-)TIFF of any size tile by tile
(tifffile accepts an iterator of tiles), so writing a 40,000 x 40,000 px slide needs the
memory of one tile. Tissue is an elliptical blob with a wavy edge; pixels are pink H&E-like
colours with noise, background near-white. Every level is rendered from the same continuous
pattern, so levels agree up to the noise.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TILE = 256
_BLOCK = 4
_TISSUE = np.array([200, 120, 170], np.float32)
_BACKGROUND = np.array([244, 243, 246], np.float32)


def _tissue(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Tissue mask at normalised coordinates (0..1)."""
    angle = np.arctan2(v - 0.5, u - 0.5)
    radius = 1.0 + 0.12 * np.sin(5 * angle) + 0.05 * np.cos(11 * angle)
    blob = ((u - 0.5) / 0.36) ** 2 + ((v - 0.5) / 0.30) ** 2 < radius**2
    hole = ((u - 0.55) / 0.08) ** 2 + ((v - 0.45) / 0.06) ** 2 < 1.0
    return blob & ~hole


def _tile(level_hw: tuple[int, int], ty: int, tx: int, bank: np.ndarray, tile: int) -> np.ndarray:
    h, w = level_hw
    ys, xs = np.arange(ty * tile, (ty + 1) * tile), np.arange(tx * tile, (tx + 1) * tile)
    step = _BLOCK if tile % _BLOCK == 0 else 1  # pattern evaluated on 4 x 4 px blocks (fast), noise per pixel
    v, u = np.meshgrid((ys[::step] + step / 2) / h, (xs[::step] + step / 2) / w, indexing="ij")
    mask = np.repeat(np.repeat(_tissue(u, v), step, 0), step, 1)[..., None]
    shade = np.repeat(np.repeat(0.85 + 0.15 * np.sin(40 * u + 25 * v), step, 0), step, 1)[..., None].astype(np.float32)
    noise = bank[(ty * 7919 + tx * 104729) % len(bank)]  # a few noise tiles reused: fast to write
    rgb = np.where(mask, _TISSUE * shade + noise, _BACKGROUND + noise / 4)
    inside = ((ys < h)[:, None] & (xs < w)[None, :])[..., None]
    return np.where(inside, np.clip(rgb, 0, 255), 255).astype(np.uint8)


def _tiles(level_hw: tuple[int, int], seed: int, tile: int) -> Iterator[np.ndarray]:
    h, w = level_hw
    bank = np.random.default_rng([seed, h]).normal(0, 12, (7, tile, tile, 3)).astype(np.float32)
    for ty in range(-(-h // tile)):
        for tx in range(-(-w // tile)):
            yield _tile(level_hw, ty, tx, bank, tile)


def write_synthetic_slide(
    path: str | Path, height: int, width: int, *, microns_per_pixel: float = 0.5, compression: str = "jpeg",
    min_side: int = 512, seed: int = 0, tile: int = TILE,
) -> Path:  # fmt: skip
    """Write a tiled pyramidal OME-TIFF (levels halved down to ``min_side``) tile by tile.

    ``compression``: ``"jpeg"`` (quality 90) or ``"deflate"``. Returns ``path``.
    """
    import tifffile

    levels = [(height, width)]
    while min(levels[-1]) // 2 >= min_side:
        h, w = levels[-1]
        levels.append((h // 2, w // 2))
    comp = {"compression": "jpeg", "compressionargs": {"level": 90}} if compression == "jpeg" else {"compression": compression}
    meta = {"axes": "YXS", "PhysicalSizeX": microns_per_pixel, "PhysicalSizeY": microns_per_pixel,
            "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}  # fmt: skip
    path = Path(path)
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for i, (h, w) in enumerate(levels):
            kwargs = {"subifds": len(levels) - 1, "metadata": meta} if i == 0 else {"subfiletype": 1, "metadata": None}
            tif.write(_tiles((h, w), seed, tile), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile),
                      photometric="rgb", **comp, **kwargs)  # fmt: skip
    return path


def random_stnet(genes: Sequence[str], *, seed: int = 0, **hyperparams: Any):
    """An ST-Net with random weights (fast preset), ready to predict (for scale tests)."""
    import torch

    from stfusion.models.stnet import STNet

    model = STNet(**{"preset": "fast", "seed": seed, **hyperparams})
    torch.manual_seed(seed)
    model.net_ = model.build_net(len(genes)).eval()
    model.genes_ = list(genes)
    return model


def random_histogene(genes: Sequence[str], *, seed: int = 0, patch_um: float = 100.0, pitch_um: float = 200.0,
                     **hyperparams: Any):  # fmt: skip
    """A HisToGene with random weights (fast preset), ready to predict (for scale tests)."""
    import torch

    from stfusion.models.histogene.model import HisToGene

    model = HisToGene(**{"preset": "fast", "seed": seed, **hyperparams})
    model.genes_ = list(genes)
    model.state_ = {"patch_um": float(patch_um), "pitch_um": [float(pitch_um)] * 2, "pixel_mean": [0.7, 0.55, 0.7],
                    "pixel_std": [0.15, 0.15, 0.15], "training_sections": [], "selected_fraction": 0.5,
                    "target_mean": [1.0] * len(genes), "target_std": [0.5] * len(genes)}  # fmt: skip
    torch.manual_seed(seed)
    model.net_ = model._build_net().eval()
    return model
