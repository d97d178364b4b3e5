"""ResNet (He et al. 2016, torchvision's v1.5 bottleneck) with torchvision's names, in plain torch.

Layout: ``conv1, bn1, relu, maxpool``, ``layer{1..4}.{i}`` blocks (``conv1, bn1, conv2, bn2
[, conv3, bn3], downsample.0 (conv1x1), downsample.1 (BN)``), ``avgpool``, ``fc``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from stfusion.models.encoders.base import Backbone, init_like_torchvision

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "ResNetTrunc", "resnet18", "resnet50", "resnet50_trunc"]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand (x4), with a residual connection."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(Backbone):
    """ResNet. ``num_classes=None`` drops ``fc`` (forward returns pooled features).

    Parameters
    ----------
    block
        :class:`BasicBlock` or :class:`Bottleneck`.
    layers
        Blocks per stage (ResNet-18: (2, 2, 2, 2); ResNet-50: (3, 4, 6, 3)).
    num_classes
        Size of the linear ``fc`` head, or ``None`` for none.
    zero_init_residual
        Zero the last BN of each block (torchvision option, off by default).
    """

    head_name = "fc"

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        num_classes: int | None = 1000,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__(512 * block.expansion)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self._set_head(num_classes)
        init_like_torchvision(self, conv_mode="fan_out", zero_linear_bias=False)
        if zero_init_residual:
            for m in self.modules():
                last_bn = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
                if last_bn is not None:
                    nn.init.constant_(last_bn.weight, 0)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        out_planes = planes * block.expansion
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(_conv1x1(self.inplanes, out_planes, stride), nn.BatchNorm2d(out_planes))
        modules = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = out_planes
        modules += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def resnet18(num_classes: int | None = 1000, **kwargs: Any) -> ResNet:
    """ResNet-18 (basic blocks (2, 2, 2, 2)); 11,689,512 parameters with the 1,000-class head."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, **kwargs)


def resnet50(num_classes: int | None = 1000, **kwargs: Any) -> ResNet:
    """ResNet-50 (bottlenecks (3, 4, 6, 3), stride on the 3x3 conv as in torchvision).

    25,557,032 parameters with the 1,000-class head.
    """
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, **kwargs)


class ResNetTrunc(ResNet):
    """A ResNet cut after ``layer3``, then global average pooling (no ``layer4``, no ``fc``).

    HEST-Benchmark's ImageNet baseline ``resnet50_trunc`` (Jaume et al. 2024, HEST repository
    ``src/hest/bench/cpath_model_zoo``): timm's ``resnet50.tv_in1k`` (torchvision's ImageNet
    weights, same key names) with ``features_only=True, out_indices=[3]`` -- the output of
    ``layer3`` (1024 channels for ResNet-50) -- average-pooled to a 1024-d embedding.

    A *full* torchvision ResNet-50 state dict loads strictly: its ``layer4.*`` keys are dropped
    knowingly (``unused_prefixes``; listed in ``LoadReport.dropped_unused`` and logged) and its
    ``fc.*`` keys are reported as an ignored head (``LoadReport.ignored_head``). Any other
    missing or unexpected key still fails.
    """

    unused_prefixes = ("layer4.",)

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        num_classes: int | None = None,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__(block, (*layers[:3], 1), num_classes=None, zero_init_residual=zero_init_residual)
        del self.layer4
        self.n_features = 256 * block.expansion
        self._set_head(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.avgpool(x), 1)


def resnet50_trunc(
    num_classes: int | None = None, layers: Sequence[int] = (3, 4, 6), **kwargs: Any
) -> ResNetTrunc:
    """ResNet-50 up to ``layer3`` + global average pooling: 1024 features, 8,543,296 parameters
    (conv1 to layer3 of torchvision's ResNet-50); loads a full ResNet-50 state dict (see
    :class:`ResNetTrunc`). ``layers`` (bottlenecks in layer1-3) is for reduced test models."""
    return ResNetTrunc(Bottleneck, (*layers, 1), num_classes=num_classes, **kwargs)
