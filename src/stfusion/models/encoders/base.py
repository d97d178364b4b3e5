"""The shared base of every encoder: :class:`Backbone` and torchvision's initialisation.

Imports no architecture; the architecture modules (:mod:`.densenet`, :mod:`.resnet`,
:mod:`.small_cnn`) build on it and the registry (:mod:`.registry`) builds on them.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

__all__ = ["Backbone", "init_like_torchvision"]


class Backbone(nn.Module):
    """Base class: images (N, 3, H, W) -> pooled features (N, n_features), then the head.

    Without a head (``num_classes=None``) the head is ``nn.Identity`` (no parameters), so
    ``forward`` returns the pooled features and the state dict has no head keys.
    """

    head_name: ClassVar[str] = "classifier"
    #: Words naming the published key layout, for error messages ("torchvision's", "timm's", ...).
    layout: ClassVar[str] = "torchvision's"
    #: Key prefixes of known checkpoint wrappers stripped on loading, and reported
    #: (e.g. ``"dinov2."`` of a Hugging Face ``Dinov2For...`` model).
    checkpoint_prefixes: ClassVar[tuple[str, ...]] = ()
    #: Key prefixes of a full checkpoint that this (truncated) encoder knowingly does not use
    #: (e.g. ``"layer4."`` for a ResNet cut after layer3); dropped on loading, and reported.
    unused_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.n_features = n_features

    def _set_head(self, num_classes: int | None) -> None:
        head = nn.Identity() if num_classes is None else nn.Linear(self.n_features, num_classes)
        self.add_module(self.head_name, head)

    @property
    def has_head(self) -> bool:
        return isinstance(getattr(self, self.head_name), nn.Linear)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, n_features)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.head_name)(self.forward_features(x))


def init_like_torchvision(module: nn.Module, conv_mode: str = "fan_in", zero_linear_bias: bool = True) -> None:
    """Kaiming-normal convolutions, BN weight 1 / bias 0, linear bias 0 (DenseNet) or default (ResNet)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=conv_mode, nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear) and m.bias is not None and zero_linear_bias:
            nn.init.constant_(m.bias, 0)
