"""DenseNet (Huang et al. 2017) with torchvision's module names, in plain torch.

Layout: ``features.conv0/norm0/relu0/pool0``, ``features.denseblock{i}.denselayer{j}``
(``norm1, relu1, conv1, norm2, relu2, conv2``), ``features.transition{i}``
(``norm, relu, conv, pool``), ``features.norm5``, ``classifier``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from stfusion.models.encoders.base import Backbone, init_like_torchvision

__all__ = ["DenseNet", "densenet121"]


class _DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 bottleneck (bn_size * growth channels), then BN-ReLU-conv3x3 (growth)."""

    def __init__(
        self, in_features: int, growth_rate: int, bn_size: int, drop_rate: float, memory_efficient: bool
    ) -> None:
        super().__init__()
        inner = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_features, inner, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(inner)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(inner, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def _bottleneck(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.relu1(self.norm1(torch.cat(inputs, 1))))

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        needs_grad = any(t.requires_grad for t in inputs)
        if self.memory_efficient and needs_grad and torch.is_grad_enabled():
            bottleneck = cp.checkpoint(self._bottleneck, *inputs, use_reentrant=False)
        else:
            bottleneck = self._bottleneck(*inputs)
        out = self.conv2(self.relu2(self.norm2(bottleneck)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class _DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; each sees the concatenation of all previous outputs."""

    def __init__(
        self,
        num_layers: int,
        in_features: int,
        bn_size: int,
        growth_rate: int,
        drop_rate: float,
        memory_efficient: bool,
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(in_features + i * growth_rate, growth_rate, bn_size, drop_rate, memory_efficient)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """BN-ReLU-conv1x1 to ``out_features`` channels, then 2x2 average pooling."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


def _n_features(num_init_features: int, block_config: Sequence[int], growth_rate: int) -> int:
    """Channels after the last dense block (each transition halves the channels)."""
    n = num_init_features
    for i, num_layers in enumerate(block_config):
        n += num_layers * growth_rate
        if i != len(block_config) - 1:
            n //= 2
    return n


class DenseNet(Backbone):
    """DenseNet-BC. ``num_classes=None`` drops the classifier (forward returns pooled features).

    Parameters
    ----------
    growth_rate, block_config, num_init_features, bn_size, drop_rate
        As in torchvision (DenseNet-121: 32, (6, 12, 24, 16), 64, 4, 0).
    num_classes
        Size of the linear classifier, or ``None`` for none.
    memory_efficient
        Recompute the bottleneck inputs in backward (gradient checkpointing) to save memory.
    """

    head_name = "classifier"

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        num_classes: int | None = 1000,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__(_n_features(num_init_features, block_config, growth_rate))
        self.features = nn.Sequential(
            OrderedDict(
                conv0=nn.Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False),
                norm0=nn.BatchNorm2d(num_init_features),
                relu0=nn.ReLU(inplace=True),
                pool0=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        )
        n = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers, n, bn_size, growth_rate, drop_rate, memory_efficient)
            self.features.add_module(f"denseblock{i + 1}", block)
            n += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(n, n // 2))
                n //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(n))
        self._set_head(num_classes)
        init_like_torchvision(self, conv_mode="fan_in")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x), inplace=True)
        return torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)


def densenet121(num_classes: int | None = 1000, **kwargs: Any) -> DenseNet:
    """DenseNet-121 (growth 32, blocks (6, 12, 24, 16), 64 initial features, bn_size 4).

    ``kwargs`` go to :class:`DenseNet` (``drop_rate``, ``memory_efficient``).
    7,978,856 parameters with the 1,000-class head.
    """
    return DenseNet(32, (6, 12, 24, 16), 64, bn_size=4, num_classes=num_classes, **kwargs)
