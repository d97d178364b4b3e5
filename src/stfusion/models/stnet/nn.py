"""ST-Net's network: a CNN backbone, per-channel input normalisation and one linear head.

Inputs are float images in [0, 1], shape (N, 3, H, W). The per-channel mean and standard
deviation (computed on training patches) are buffers of the module, so they travel in its
state dict. The head maps the pooled features to the G target genes and starts from the
mean predictor (zero weights, bias = training mean), as ST-Net's reference code does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

# the 8 symmetries of the square: rotation by k * 90 degrees, then an optional horizontal flip
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, flip) for flip in (False, True) for k in range(4))


def dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Rotate images (..., H, W) by ``k`` quarter turns, then flip horizontally when ``flip``."""
    x = torch.rot90(x, k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


def random_dihedral(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training augmentation: each image gets a random 0/90/180/270 degree rotation and a flip with p = 0.5."""
    n = x.shape[0]
    ks = torch.randint(0, 4, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(x)
    for k, flip in DIHEDRAL:
        idx = torch.nonzero((ks == k) & (flips == flip)).ravel()
        if len(idx):
            out[idx] = dihedral(x[idx], k, flip)
    return out


def to_tensor(patches: np.ndarray) -> torch.Tensor:
    """uint8 patches (N, H, W, 3) -> float32 tensor (N, 3, H, W) in [0, 1]."""
    arr = torch.from_numpy(np.ascontiguousarray(patches))
    return arr.permute(0, 3, 1, 2).float().div_(255.0)


def channel_stats(patches: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 patches (N, H, W, 3), in [0, 1] units."""
    flat = patches.reshape(-1, 3).astype(np.float64) / 255.0
    std = flat.std(axis=0)
    std[std < 1e-6] = 1.0
    return flat.mean(axis=0).tolist(), std.tolist()


class STNetNet(nn.Module):
    """Backbone + linear head with the input normalisation built in.

    Parameters
    ----------
    backbone
        Head-less module mapping normalised images to pooled features (N, n_features).
    n_features, n_genes
        Feature and output sizes.
    channel_mean, channel_std
        Per-channel constants (RGB, [0, 1] units) subtracted/divided before the backbone.
    """

    def __init__(
        self,
        backbone: nn.Module,
        n_features: int,
        n_genes: int,
        channel_mean: Sequence[float] = (0.5, 0.5, 0.5),
        channel_std: Sequence[float] = (0.25, 0.25, 0.25),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(n_features, n_genes)
        self.register_buffer("channel_mean", torch.tensor(list(channel_mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("channel_std", torch.tensor(list(channel_std), dtype=torch.float32).view(1, 3, 1, 1))

    def init_head(self, mean: np.ndarray | torch.Tensor) -> None:
        """Zero weights and bias = ``mean``: the untrained net predicts the training mean."""
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.copy_(torch.as_tensor(np.asarray(mean), dtype=torch.float32))

    def set_head(self, weight: np.ndarray, bias: np.ndarray) -> None:
        """Set the head from arrays (genes x features, genes)."""
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            self.head.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features of images in [0, 1]."""
        return self.backbone((x - self.channel_mean) / self.channel_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def tta_embed(net: STNetNet, x: torch.Tensor) -> torch.Tensor:
    """Features averaged over the 8 dihedral transforms of each image."""
    total = None
    for k, flip in DIHEDRAL:
        f = net.embed(dihedral(x, k, flip))
        total = f if total is None else total + f
    return total / len(DIHEDRAL)


def predict_arrays(
    net: STNetNet, patches: np.ndarray, *, tta: bool = True, batch_size: int = 64, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions (N, G) and embeddings (N, F) of uint8 patches, in eval mode without gradients.

    With ``tta`` both are means over the 8 dihedral symmetries (the head is linear, so the
    mean of the predictions is the head applied to the mean features). ``progress``: a rich
    progress bar over the batches.
    """
    from rich.progress import track

    starts = range(0, len(patches), batch_size)
    was_training = net.training
    net.eval()
    preds, feats = [], []
    try:
        with torch.no_grad():
            for start in track(starts, description="ST-Net patches", disable=not progress, transient=True):
                x = to_tensor(patches[start : start + batch_size])
                f = tta_embed(net, x) if tta else net.embed(x)
                feats.append(f)
                preds.append(net.head(f))
    finally:
        net.train(was_training)
    n_feat, n_out = net.head.in_features, net.head.out_features
    pred = torch.cat(preds).numpy() if preds else np.zeros((0, n_out), np.float32)
    feat = torch.cat(feats).numpy() if feats else np.zeros((0, n_feat), np.float32)
    return pred, feat


def mse_loss(augment: bool = True):
    """``loss_fn(net, (x, y))`` for the training loop: MSE, random dihedral augmentation in training."""

    def loss_fn(net: STNetNet, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        if augment and net.training:
            x = random_dihedral(x)
        return nn.functional.mse_loss(net(x), y)

    return loss_fn
