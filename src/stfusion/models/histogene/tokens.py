"""HisToGene's tokens: one section's patches as views (flips/rotations, stain-jittered copies), one
drawn per token and step in training, and sections padded into batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from stfusion.data.stain import hed_jitter

__all__ = ["STAIN_COPIES", "collate_sections", "dihedral_variants", "pick_variant", "stain_views", "token_variants"]

STAIN_COPIES = 3  # stain-jittered copies of each training patch with stain_augment > 0


def collate_sections(items: Sequence[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Pad sections to the longest: (patches (B,N,P), pos (B,N,2), mask (B,N), targets (B,N,G))."""
    n = max(it[0].shape[0] for it in items)
    out = []
    for j in range(len(items[0])):
        first = items[0][j]
        buf = first.new_zeros((len(items), n, *first.shape[1:]))
        for b, it in enumerate(items):
            buf[b, : it[j].shape[0]] = it[j]
        out.append(buf)
    mask = torch.zeros(len(items), n, dtype=torch.bool)
    for b, it in enumerate(items):
        mask[b, : it[0].shape[0]] = True
    return (out[0], out[1], mask, *out[2:])


def dihedral_variants(patches: np.ndarray) -> np.ndarray:
    """The 8 flips/90° rotations of each (px, px, 3) patch, flattened: (n, 8, 3 px²)."""
    out = []
    for c in range(8):
        v = np.rot90(patches, c % 4, axes=(1, 2))
        out.append((v[:, :, ::-1] if c >= 4 else v).reshape(len(patches), -1))
    return np.ascontiguousarray(np.stack(out, axis=1))


def pick_variant(patches: torch.Tensor, random: bool) -> torch.Tensor:
    """(B, N, V, P) -> (B, N, P): variant 0, or one drawn at random per token."""
    if not random or patches.shape[2] == 1:
        return patches[:, :, 0]
    b, n, v, _ = patches.shape
    choice = torch.randint(0, v, (b, n))
    return patches[torch.arange(b)[:, None], torch.arange(n)[None, :], choice]


def stain_views(sections: Sequence[np.ndarray], augment: float, seed: int) -> list[list[np.ndarray]]:
    """Per section (uint8 patches (n, px, px, 3)): ``[patches]``, plus :data:`STAIN_COPIES` copies
    with H, E and residual rescaled and shifted by up to ``augment`` (seeded) when ``augment`` > 0."""
    if augment <= 0:
        return [[p] for p in sections]
    rng = np.random.default_rng(seed)
    return [[p] + [hed_jitter(p, rng, augment, augment) for _ in range(STAIN_COPIES)] for p in sections]


def token_variants(views: Sequence[np.ndarray], dihedral: bool) -> np.ndarray:
    """(n, V, P) float32 token variants of one section: each view (n, ...) flattened, or its 8
    flips/rotations when ``dihedral`` (views must then be (n, px, px, 3)); variant 0 is the
    first view as it is (the one used outside training)."""
    parts = [dihedral_variants(v) if dihedral else v.reshape(len(v), 1, -1) for v in views]
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)
