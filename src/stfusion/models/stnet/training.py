"""ST-Net's training data (uint8 spot patches with optional stain jitter) and its frozen-encoder head."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from stfusion.data.stain import hed_jitter
from stfusion.models.stnet.nn import STNetNet, predict_arrays

__all__ = ["RIDGE_ALPHAS", "PatchDataset", "fit_frozen_head"]

RIDGE_ALPHAS = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)


class PatchDataset(Dataset):
    """uint8 patches (N, H, W, 3) and targets; items are (float image in [0, 1] CHW, target).

    ``stain_augment`` > 0: each item's haematoxylin and eosin are rescaled and shifted by up to
    that fraction (:func:`stfusion.data.stain.hed_jitter`), drawn from a generator seeded by ``seed``.
    """

    def __init__(self, patches: np.ndarray, y: np.ndarray, stain_augment: float = 0.0, seed: int = 0) -> None:
        self.patches = np.ascontiguousarray(patches)
        self.x = torch.from_numpy(self.patches).permute(0, 3, 1, 2)
        self.y = torch.as_tensor(y, dtype=torch.float32)
        self.stain_augment = float(stain_augment)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stain_augment > 0:
            patch = hed_jitter(self.patches[i : i + 1], self.rng, self.stain_augment, self.stain_augment)[0]
            return torch.from_numpy(patch).permute(2, 0, 1).float().div(255.0), self.y[i]
        return self.x[i].float().div(255.0), self.y[i]


def fit_frozen_head(net: STNetNet, patches: np.ndarray, y: np.ndarray, *, tta: bool) -> dict[str, Any]:
    """Fit the head on cached features by ridge (per-gene alpha by GCV), folded into the linear layer."""
    from sklearn.linear_model import RidgeCV

    _, feats = predict_arrays(net, patches, tta=tta)
    feats = feats.astype(np.float64)
    mean, scale = feats.mean(axis=0), feats.std(axis=0)
    scale[scale == 0] = 1.0
    ridge = RidgeCV(alphas=RIDGE_ALPHAS, alpha_per_target=True).fit((feats - mean) / scale, y)
    coef = np.atleast_2d(ridge.coef_) / scale
    net.set_head(coef, np.atleast_1d(ridge.intercept_) - coef @ mean)
    alphas = np.atleast_1d(ridge.alpha_)
    return {"epoch_selection": "none", "head": "ridge", "median_alpha": float(np.median(alphas))}
