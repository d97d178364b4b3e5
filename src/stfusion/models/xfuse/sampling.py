"""Training patches: sampled uniformly over tissue, augmented in torch (no torchvision).

Each patch is ``patch_px`` x ``patch_px`` working pixels around a centre drawn uniformly
from the tissue (and observed-area) pixels of a section chosen with probability
proportional to its tissue area. Geometry: random rotation 0-360°, scale 0.95-1.05 and
shear ±10°, applied to the image (bilinear), the label map (nearest) and the in-image mask
with one sampling grid (``grid_sample``). Colour: ±5% brightness, contrast, saturation and
hue (a rotation of the chroma plane in YIQ space). A section that fits in one patch under
any rotation is sampled whole (its centre jittered by the spare room).

Observations whose area's bounding box is not entirely inside the patch (cut by the
border) are left out of that patch's likelihood (label -1), as are unobserved tissue and
pixels outside the image; the background (label 0) and complete areas stay. Pixels outside
the image are white and excluded from the image likelihood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from stfusion.models.xfuse.data import UNOBSERVED, SectionData
from stfusion.models.xfuse.nn import IMAGE_RANGE
from stfusion.models.xfuse.field import Placement

_OUTSIDE = -2
_SCALE = (0.95, 1.05)
_SHEAR_DEG = 10.0
_JITTER = 0.05
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _max_inverse_gain() -> float:
    """Largest stretch from image to patch coordinates (norm of the inverse transform)."""
    t = math.tan(math.radians(_SHEAR_DEG))
    sigma_min = math.sqrt((2 + t * t - t * math.sqrt(4 + t * t)) / 2)  # smallest singular value of the shear
    return 1.0 / (_SCALE[0] * sigma_min)


def to_model_range(rgb01: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-0.9, 0.9]."""
    return (2.0 * rgb01 - 1.0) * IMAGE_RANGE


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """(h, w, 3) uint8 -> (3, h, w) float in [0, 1]."""
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float() / 255.0


@dataclass
class Batch:
    """A mini-batch of patches.

    ``image`` (B, 3, P, P) in [-0.9, 0.9]; ``valid`` (B, 1, P, P) 1 inside the image;
    ``labels`` (B, P, P) long, -1 ignored, else an index into ``counts[b]`` (row 0 of
    ``counts[b]`` is the background's zeros); ``beta`` (B, n_effects); ``section`` (B,);
    ``place``: where each patch lies in its section (for the expression field); ``obs``:
    per patch, the observations (0-based, in the order of rows 1.. of ``counts[b]``) whose
    counts it holds (for the gene field).
    """

    image: torch.Tensor
    valid: torch.Tensor
    labels: torch.Tensor
    counts: list[torch.Tensor]
    beta: torch.Tensor
    section: np.ndarray
    place: Placement | None = None
    obs: list[np.ndarray] | None = None


class _Source:
    """One section's tensors, padded so that any patch crop stays inside."""

    def __init__(self, data: SectionData, pad: int) -> None:
        self.data, self.pad = data, pad
        img = image_tensor(data.image)
        self.image = F.pad(img, (pad, pad, pad, pad), value=1.0)
        lab = torch.from_numpy(data.labels.astype(np.float32))[None]
        self.labels = F.pad(lab, (pad, pad, pad, pad), value=float(_OUTSIDE))
        self.valid = F.pad(torch.ones(1, *data.shape), (pad, pad, pad, pad), value=0.0)
        self.centres = data.sample_pixels()
        n_obs = data.counts.shape[0]
        self.counts = torch.cat([torch.zeros(1, data.counts.shape[1]), torch.from_numpy(data.counts)])  # row 0: background
        self.boxes = np.asarray(data.boxes, dtype=np.float64).reshape(n_obs, 4)
        self.beta = torch.from_numpy(data.beta)
        i0, i1, j0, j1 = data.region_box()
        self.region = (i0, i1, j0, j1)


class PatchSampler:
    """Draws augmented patches from training sections (see the module docstring)."""

    def __init__(self, sections: list[SectionData], patch_px: int, seed: int = 0, augment: bool = True) -> None:
        self.patch_px, self.augment = int(patch_px), bool(augment)
        self.reach = self.patch_px * _SCALE[1] * (1 + math.tan(math.radians(_SHEAR_DEG))) * math.sqrt(2) / 2
        pad = int(math.ceil(self.reach + self.patch_px / 2)) + 2  # room for any crop, centre jitter included
        self.sources = [_Source(s, pad) for s in sections]
        weights = np.asarray([max(len(s.centres), 1) for s in self.sources], dtype=float)
        self.section_p = weights / weights.sum()
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(int(seed))

    @property
    def patches_per_epoch(self) -> float:
        """Patches whose area adds up to the sampled region of all sections (at least 1 per section)."""
        return float(sum(max(1.0, len(s.centres) / self.patch_px**2) for s in self.sources))

    def _transform(self) -> np.ndarray:
        if not self.augment:
            return np.eye(2)
        theta = self.rng.uniform(0, 2 * np.pi)
        scale = self.rng.uniform(*_SCALE)
        shear = math.tan(math.radians(self.rng.uniform(-_SHEAR_DEG, _SHEAR_DEG)))
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        return rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([scale, scale])

    def _centre(self, src: _Source) -> np.ndarray:
        """Patch centre (x, y) in unpadded working-pixel continuous coordinates."""
        i0, i1, j0, j1 = src.region
        spare = self.patch_px / 2 - math.hypot(i1 - i0, j1 - j0) / 2 * _max_inverse_gain()
        if spare >= 0:  # the whole region fits under any transform: jitter its centre
            jitter = self.rng.uniform(-spare, spare, size=2) / (np.sqrt(2) * _max_inverse_gain()) if self.augment else np.zeros(2)
            return np.array([(j0 + j1) / 2, (i0 + i1) / 2]) + jitter
        flat = src.centres[self.rng.integers(len(src.centres))]
        w = src.data.shape[1]
        return np.array([flat % w, flat // w], dtype=float) + self.rng.uniform(0, 1, size=2)

    def _grid(self, centre: np.ndarray, m: np.ndarray, crop_side: int) -> torch.Tensor:
        p = self.patch_px
        q = np.arange(p) + 0.5 - p / 2
        qx, qy = np.meshgrid(q, q)
        src = np.stack([qx, qy], axis=-1) @ m.T + centre  # crop-relative continuous coordinates
        return torch.from_numpy((2.0 * src / crop_side - 1.0).astype(np.float32))[None]

    def _complete(self, src: _Source, centre: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Observation ids (0-based) whose bounding box lies entirely inside the patch."""
        b = src.boxes
        corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [0, 3]], b[:, [2, 3]]], axis=1) - centre
        q = corners @ np.linalg.inv(m).T
        inside = (np.abs(q) <= self.patch_px / 2).all(axis=(1, 2))
        return np.flatnonzero(inside)

    def _one(self, src: _Source) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray, np.ndarray,
                                          np.ndarray]:
        centre = self._centre(src)
        m = self._transform()
        side = 2 * int(math.ceil(self.reach)) + 2
        origin = np.floor(centre + src.pad - side / 2).astype(int)
        sl = (slice(None), slice(origin[1], origin[1] + side), slice(origin[0], origin[0] + side))
        grid = self._grid(centre + src.pad - origin, m, side)
        img = F.grid_sample(src.image[sl][None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        valid = F.grid_sample(src.valid[sl][None], grid, mode="bilinear", align_corners=False)[0] > 0.999
        lab = F.grid_sample(src.labels[sl][None], grid, mode="nearest", align_corners=False)[0, 0].round().long()
        keep = self._complete(src, centre, m)
        lut = torch.full((src.counts.shape[0] + 1,), -1, dtype=torch.long)  # label + 1 -> row in counts
        lut[1] = 0  # background
        lut[torch.from_numpy(keep + 2)] = torch.arange(1, len(keep) + 1)
        local = torch.where(lab >= 0, lut[lab.clamp_min(0) + 1], torch.full_like(lab, UNOBSERVED))
        counts = torch.cat([src.counts[:1], src.counts[torch.from_numpy(keep + 1)]])
        img = torch.where(valid, img, torch.ones_like(img))
        return img, valid.float(), local, counts, centre, m, keep

    def _colour(self, img: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """±5% brightness, contrast, saturation and hue."""
        u = (torch.rand(4, generator=self.gen) * 2 - 1) * _JITTER
        img = img * (1 + u[0])
        grey = (img * _YIQ[0].view(3, 1, 1)).sum(0, keepdim=True)
        mean = (grey * valid).sum() / valid.sum().clamp_min(1)
        img = (img - mean) * (1 + u[1]) + mean
        grey = (img * _YIQ[0].view(3, 1, 1)).sum(0, keepdim=True)
        img = grey + (img - grey) * (1 + u[2])
        angle = float(u[3]) * 2 * math.pi
        rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(angle), -math.sin(angle)], [0.0, math.sin(angle), math.cos(angle)]])
        mix = torch.linalg.inv(_YIQ) @ rot @ _YIQ
        img = torch.einsum("ij,jhw->ihw", mix, img)
        return torch.where(valid.bool(), img.clamp(0, 1), torch.ones_like(img))

    def sample(self, batch_size: int) -> Batch:
        """A batch of ``batch_size`` augmented patches."""
        idx = self.rng.choice(len(self.sources), size=int(batch_size), p=self.section_p)
        imgs, valids, labels, counts, betas, centres, mats, obs = [], [], [], [], [], [], [], []
        for i in idx:
            src = self.sources[i]
            img, valid, lab, cnt, centre, m, keep = self._one(src)
            obs.append(keep)
            centres.append(centre)
            mats.append(m)
            if self.augment:
                img = self._colour(img, valid)
            imgs.append(to_model_range(img))
            valids.append(valid)
            labels.append(lab)
            counts.append(cnt)
            betas.append(src.beta)
        place = Placement(idx, torch.from_numpy(np.stack(centres)).float(), torch.from_numpy(np.stack(mats)).float())
        return Batch(torch.stack(imgs), torch.stack(valids), torch.stack(labels), counts, torch.stack(betas), idx, place, obs)


def image_stats(datas: list[SectionData]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and SD of the working images in the model's [-0.9, 0.9] range."""
    pix = np.concatenate([d.image.reshape(-1, 3) for d in datas]).astype(np.float32) / 255.0
    x = to_model_range(torch.from_numpy(pix))
    return x.mean(0), x.std(0).clamp_min(0.02)
