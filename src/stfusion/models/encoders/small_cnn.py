"""A tiny fast CNN (four conv-BN-ReLU-maxpool blocks) for tests and quick runs."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from stfusion.models.encoders.base import Backbone, init_like_torchvision

__all__ = ["SmallCNN", "small_cnn"]


class SmallCNN(Backbone):
    """Four conv-BN-ReLU-maxpool blocks (width w, 2w, 4w, 8w) and global average pooling."""

    def __init__(self, width: int = 16, num_classes: int | None = None) -> None:
        if width < 1:
            raise ValueError(f"width must be a positive integer, got {width}.")
        super().__init__(8 * width)
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        for i in range(4):
            blocks[f"block{i + 1}"] = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False),
                    norm=nn.BatchNorm2d(chans[i + 1]),
                    relu=nn.ReLU(inplace=True),
                    pool=nn.MaxPool2d(2),
                )
            )
        self.features = nn.Sequential(blocks)
        self._set_head(num_classes)
        init_like_torchvision(self, conv_mode="fan_out")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)


def small_cnn(width: int = 16, num_classes: int | None = None) -> SmallCNN:
    """A tiny fast CNN for tests and quick runs; ``8 * width`` features."""
    return SmallCNN(width=width, num_classes=num_classes)
