"""Image encoders (CNN backbones in plain torch, with torchvision's parameter names).

``make_backbone(name, weights=None)`` returns ``(module, n_features)``: the module maps
normalised images (N, 3, H, W) to pooled features (N, n_features). Its state dict uses
torchvision's layout minus the classification head, so a ``torch.save(model.state_dict())``
of ``torchvision.models.densenet121()`` / ``resnet18()`` / ``resnet50()`` (or a timm model
with the same layout) loads into it; head keys (``classifier.*`` / ``fc.*``) are ignored
and reported. Weights are read with ``torch.load(..., weights_only=True)`` (never
arbitrary pickles), or from ``.safetensors`` when the ``safetensors`` package is installed.

Modules, each importing only those before it: :mod:`.base` (:class:`Backbone`, the shared
initialisation), the architectures :mod:`.densenet`, :mod:`.resnet` and :mod:`.small_cnn`,
:mod:`.weights` (reading and loading state dicts) and :mod:`.registry` (the encoders by
name, :func:`make_backbone`).
"""

from stfusion.models.encoders.base import Backbone, init_like_torchvision
from stfusion.models.encoders.densenet import DenseNet, densenet121
from stfusion.models.encoders.registry import BACKBONES, available_backbones, feature_dim, make_backbone
from stfusion.models.encoders.resnet import ResNet, resnet18, resnet50
from stfusion.models.encoders.small_cnn import SmallCNN, small_cnn
from stfusion.models.encoders.weights import LoadReport, WeightsError, load_weights, read_state_dict

__all__ = [
    "BACKBONES",
    "Backbone",
    "DenseNet",
    "LoadReport",
    "ResNet",
    "SmallCNN",
    "WeightsError",
    "available_backbones",
    "densenet121",
    "feature_dim",
    "init_like_torchvision",
    "load_weights",
    "make_backbone",
    "read_state_dict",
    "resnet18",
    "resnet50",
    "small_cnn",
]
