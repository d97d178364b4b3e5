"""Image encoders in plain torch with the published parameter names: CNN backbones
(torchvision's names) and pathology foundation encoders (timm / Hugging Face names).

``make_backbone(name, weights=None)`` returns ``(module, n_features)``: the module maps
normalised images (N, 3, H, W) to pooled features (N, n_features). Its state dict uses
torchvision's layout minus the classification head, so a ``torch.save(model.state_dict())``
of ``torchvision.models.densenet121()`` / ``resnet18()`` / ``resnet50()`` (or a timm model
with the same layout) loads into it; head keys (``classifier.*`` / ``fc.*``) are ignored
and reported. Weights are read with ``torch.load(..., weights_only=True)`` (never
arbitrary pickles), or from ``.safetensors`` when the ``safetensors`` package is installed.

``make_encoder(name, weights=None | path | "hub")`` returns ``(module, preprocessing)`` for the
foundation encoders of :data:`ENCODERS` (``resnet50_trunc``, ``uni``, ``h_optimus_0``,
``virchow2``, ``phikon_v2``): ``module(preprocessing(uint8 patches (n, H, W, 3)))`` gives the
embeddings; the :class:`Preprocessing` (mean, std, input pixels, µm per pixel) is JSON.

Modules, each importing only those before it: :mod:`.base` (:class:`Backbone`, the shared
initialisation), :mod:`.preprocessing`, the architectures :mod:`.densenet`, :mod:`.resnet`,
:mod:`.small_cnn`, :mod:`.vit` (timm layout) and :mod:`.dinov2_hf` (Hugging Face layout),
:mod:`.weights` (reading and loading state dicts), :mod:`.hub` (downloads) and
:mod:`.registry` (the encoders by name, :func:`make_backbone`, :func:`make_encoder`).
"""

from stfusion.models.encoders.base import Backbone, init_like_torchvision
from stfusion.models.encoders.densenet import DenseNet, densenet121
from stfusion.models.encoders.dinov2_hf import Dinov2HF
from stfusion.models.encoders.hub import download_weights
from stfusion.models.encoders.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from stfusion.models.encoders.registry import (
    BACKBONES,
    ENCODERS,
    EncoderSpec,
    available_backbones,
    available_encoders,
    encoder_spec,
    feature_dim,
    make_backbone,
    make_encoder,
)
from stfusion.models.encoders.resnet import ResNet, ResNetTrunc, resnet18, resnet50, resnet50_trunc
from stfusion.models.encoders.small_cnn import SmallCNN, small_cnn
from stfusion.models.encoders.vit import VisionTransformer
from stfusion.models.encoders.weights import LoadReport, WeightsError, load_weights, read_state_dict

__all__ = [
    "BACKBONES",
    "ENCODERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "DenseNet",
    "Dinov2HF",
    "EncoderSpec",
    "LoadReport",
    "Preprocessing",
    "ResNet",
    "ResNetTrunc",
    "SmallCNN",
    "VisionTransformer",
    "WeightsError",
    "available_backbones",
    "available_encoders",
    "densenet121",
    "download_weights",
    "encoder_spec",
    "feature_dim",
    "init_like_torchvision",
    "load_weights",
    "make_backbone",
    "make_encoder",
    "read_state_dict",
    "resnet18",
    "resnet50",
    "resnet50_trunc",
    "small_cnn",
]
