"""Encoders by name: :data:`BACKBONES` maps each name to its factory; :func:`make_backbone`
builds a head-less encoder, loading a local torchvision-layout state dict when one is given
(see :mod:`.weights`). New encoders register here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch

from stfusion.errors import StfusionError
from stfusion.models.encoders.base import Backbone
from stfusion.models.encoders.densenet import densenet121
from stfusion.models.encoders.resnet import resnet18, resnet50
from stfusion.models.encoders.small_cnn import small_cnn
from stfusion.models.encoders.weights import load_weights

__all__ = ["BACKBONES", "available_backbones", "feature_dim", "make_backbone"]

log = logging.getLogger("stfusion")


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "densenet121": densenet121,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "small_cnn": small_cnn,
}


def available_backbones() -> list[str]:
    """Names accepted by :func:`make_backbone`."""
    return sorted(BACKBONES)


def _factory(name: str) -> Callable[..., Backbone]:
    key = name.lower().replace("-", "_")
    if key not in BACKBONES:
        raise StfusionError(
            f"Unknown backbone {name!r}. Use one of: {', '.join(available_backbones())}."
        )
    return BACKBONES[key]


def feature_dim(name: str, **kwargs: Any) -> int:
    """Number of pooled features of backbone ``name`` (built on the meta device, no memory)."""
    factory = _factory(name)
    with torch.device("meta"):
        return factory(num_classes=None, **kwargs).n_features


def make_backbone(
    name: str,
    weights: str | os.PathLike[str] | Mapping[str, torch.Tensor] | None = None,
    *,
    strict: bool = True,
    **kwargs: Any,
) -> tuple[Backbone, int]:
    """A head-less backbone and its feature count.

    Parameters
    ----------
    name
        One of :func:`available_backbones` (``"densenet121"``, ``"resnet18"``, ...).
    weights
        Path of a local state dict (``.pth``/``.pt``/``.safetensors``) or a mapping of
        tensors in torchvision's layout; ``None`` keeps torchvision's random init.
    strict
        Raise on missing or unexpected keys (shape mismatches always raise).
    **kwargs
        Passed to the factory (e.g. ``width`` for ``small_cnn``).
    """
    model = _factory(name)(num_classes=None, **kwargs)
    if weights is None:
        log.info(f"backbone {name}: random initialisation (no weights given); features are not pretrained")
    else:
        load_weights(model, weights, strict=strict, name=name)
    return model, model.n_features
