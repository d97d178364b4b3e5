"""Encoders by name. New encoders register here.

:data:`BACKBONES` maps the CNN backbones' names to their factories; :func:`make_backbone` builds a
head-less encoder, loading a local torchvision-layout state dict when one is given (see
:mod:`.weights`).

:data:`ENCODERS` holds the pathology foundation encoders (and HEST's ImageNet baseline) as
:class:`EncoderSpec` entries: architecture, the :class:`~.preprocessing.Preprocessing` that
travels with the weights, output dimension and pooling, licence and Hugging Face repository.
:func:`make_encoder` builds one and loads its weights from a local file or (``weights="hub"``)
from the Hub. ``make_backbone``/``feature_dim`` accept these names too (so ST-Net can use them),
but :func:`available_backbones` keeps listing the CNN backbones only; :func:`available_encoders`
lists these.

Sources of the facts below (read 2026-12): timm ``vision_transformer.py`` (model definitions
``vit_large_patch16_224``, ``vit_huge_patch14_224``, ``vit_giant_patch14_reg4_dinov2``); the
model cards / configs on the Hub: MahmoodLab/UNI (``timm.create_model("vit_large_patch16_224",
img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True)``),
bioptimus/H-optimus-0 (config.json: ``vit_giant_patch14_reg4_dinov2``, mean/std, 224 px,
``global_pool="token"``, Apache-2.0), paige-ai/Virchow2 (``vit_huge_patch14_224`` with
``mlp_layer=SwiGLUPacked, act_layer=SiLU, mlp_ratio=5.3375, reg_tokens=4, init_values=1e-5,
global_pool=""``; embedding = concat(class token, mean of patch tokens 5:), 2560-d;
CC-BY-NC-ND-4.0), owkin/phikon-v2 (``Dinov2Model``, ViT-L/16, ``last_hidden_state[:, 0, :]``,
Owkin non-commercial licence); HEST-Benchmark (Jaume et al. 2024: 224 px at 0.5 µm/px,
``resnet50_trunc``).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from stfusion.errors import StfusionError
from stfusion.models.encoders.base import Backbone
from stfusion.models.encoders.densenet import densenet121
from stfusion.models.encoders.dinov2_hf import Dinov2HF
from stfusion.models.encoders.hub import download_weights
from stfusion.models.encoders.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from stfusion.models.encoders.resnet import resnet18, resnet50, resnet50_trunc
from stfusion.models.encoders.small_cnn import small_cnn
from stfusion.models.encoders.vit import VisionTransformer
from stfusion.models.encoders.weights import LoadReport, load_weights

__all__ = [
    "BACKBONES",
    "ENCODERS",
    "EncoderSpec",
    "available_backbones",
    "available_encoders",
    "encoder_spec",
    "feature_dim",
    "make_backbone",
    "make_encoder",
]

log = logging.getLogger("stfusion")


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "densenet121": densenet121,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "small_cnn": small_cnn,
}


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder: how to build it and what travels with its weights."""

    name: str
    architecture: str
    builder: Callable[..., Backbone]
    preprocessing: Preprocessing
    output_dim: int
    pooling: str
    licence: str
    hf_repo: str
    hf_filenames: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    gated: bool = False
    reference_params_m: float | None = None  # as published (model card / timm), for comparison
    source: str = ""

    def build(self, **overrides: Any) -> Backbone:
        """The module with random weights (``overrides`` change the configuration, e.g. depth)."""
        return self.builder(num_classes=None, **overrides)

    def n_params(self) -> int:
        """Parameter count of the full-size configuration (built on the meta device, no memory)."""
        with torch.device("meta"):
            return sum(p.numel() for p in self.build().parameters())


def _vit(**cfg: Any) -> Callable[..., Backbone]:
    return functools.partial(VisionTransformer, **cfg)


_HEST = "HEST-Benchmark convention: 224 px patches at 0.5 µm/px (112 µm field)."

ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in [
        EncoderSpec(
            name="resnet50_trunc",
            architecture="ResNet-50 cut after layer3 + global average pooling (torchvision keys)",
            builder=resnet50_trunc,
            preprocessing=Preprocessing(
                IMAGENET_MEAN, IMAGENET_STD, 224, 0.5, "bilinear",
                notes=f"ImageNet statistics (HEST get_eval_transforms). {_HEST}",
            ),
            output_dim=1024,
            pooling="global average of layer3 (1024 channels)",
            licence="BSD-3-Clause (torchvision ImageNet weights)",
            hf_repo="timm/resnet50.tv_in1k",
            reference_params_m=8.54,
            source="HEST src/hest/bench/cpath_model_zoo: timm resnet50.tv_in1k, features_only, out_indices=[3]",
        ),
        EncoderSpec(
            name="uni",
            architecture="ViT-L/16 + LayerScale (timm vit_large_patch16_224, init_values=1e-5)",
            builder=_vit(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                         mlp_ratio=4.0, mlp="gelu", init_values=1e-5, pooling="cls"),
            preprocessing=Preprocessing(
                IMAGENET_MEAN, IMAGENET_STD, 224, 0.5, "bilinear",
                notes="UNI model card: Resize(224), ToTensor, Normalize(ImageNet); trained at 20x "
                f"(~0.5 µm/px). {_HEST}",
            ),
            output_dim=1024,
            pooling="class token (timm global_pool='token')",
            licence="CC-BY-NC-ND-4.0 (gated; accept the terms on the Hub)",
            hf_repo="MahmoodLab/UNI",
            gated=True,
            reference_params_m=303.0,
            source="MahmoodLab/UNI model card; timm vit_large_patch16_224",
        ),
        EncoderSpec(
            name="h_optimus_0",
            architecture="ViT-g/14, 4 register tokens, SwiGLU-packed MLP, LayerScale "
            "(timm vit_giant_patch14_reg4_dinov2)",
            builder=_vit(img_size=224, patch_size=14, embed_dim=1536, depth=40, num_heads=24,
                         mlp_ratio=2.66667 * 2, mlp="swiglu_packed", init_values=1e-5, reg_tokens=4,
                         no_embed_class=True, pooling="cls"),
            preprocessing=Preprocessing(
                (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517), 224, 0.5, "bicubic",
                notes="bioptimus/H-optimus-0 config.json (mean, std, input 224) and model card "
                "(tiles of 224 px at 0.5 µm/px).",
            ),
            output_dim=1536,
            pooling="class token (config.json global_pool='token')",
            licence="Apache-2.0 (access on the Hub after accepting its conditions)",
            hf_repo="bioptimus/H-optimus-0",
            gated=True,
            reference_params_m=1130.0,
            source="bioptimus/H-optimus-0 config.json; timm vit_giant_patch14_reg4_dinov2",
        ),
        EncoderSpec(
            name="virchow2",
            architecture="ViT-H/14, 4 register tokens, SwiGLU-packed (SiLU-gated) MLP, LayerScale "
            "(timm vit_huge_patch14_224, mlp_ratio=5.3375)",
            builder=_vit(img_size=224, patch_size=14, embed_dim=1280, depth=32, num_heads=16,
                         mlp_ratio=5.3375, mlp="swiglu_packed", init_values=1e-5, reg_tokens=4,
                         no_embed_class=False, pooling="cls+mean"),
            preprocessing=Preprocessing(
                IMAGENET_MEAN, IMAGENET_STD, 224, 0.5, "bicubic",
                # Virchow2 was trained on mixed magnifications (5x, 10x, 20x, 40x), so it has no
                # single native resolution; 0.5 µm/px is the HEST convention, not a model fact.
                notes="paige-ai/Virchow2 pretrained_cfg: ImageNet mean/std, 224 px, bicubic, crop_pct 1.0. "
                f"Trained on mixed magnifications (5x-40x); 0.5 µm/px is HEST's choice. {_HEST}",
            ),
            output_dim=2560,
            pooling="class token concatenated with the mean of the patch tokens (registers excluded)",
            licence="CC-BY-NC-ND-4.0 (gated; accept the terms on the Hub)",
            hf_repo="paige-ai/Virchow2",
            gated=True,
            reference_params_m=632.0,
            source="paige-ai/Virchow2 model card; Virchow2 paper (arXiv 2408.00738): 632 M parameters",
        ),
        EncoderSpec(
            name="phikon_v2",
            architecture="ViT-L/16 DINOv2 in the Hugging Face Dinov2Model layout",
            builder=functools.partial(
                Dinov2HF, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4.0,
                # image_size 224 (a 14 x 14 position grid): Phikon-v2 was trained on 224 px tiles; the
                # value in its config.json could not be read here (a checkpoint with another grid
                # fails loading with a shape mismatch on embeddings.position_embeddings).
                patch_size=16, image_size=224, layer_norm_eps=1e-6, layerscale_value=1e-5,
                # embeddings.mask_token: transformers versions of 2024 (when Phikon-v2 was saved)
                # always create it, so the file is expected to hold it; not verified against the
                # file itself -- pass use_mask_token=False if a checkpoint lacks it.
                use_mask_token=True,
            ),
            preprocessing=Preprocessing(
                IMAGENET_MEAN, IMAGENET_STD, 224, 0.5, "bicubic",
                notes="Phikon-v2: ImageNet statistics (AutoImageProcessor), 224 px tiles at 20x (0.5 µm/px).",
            ),
            output_dim=1024,
            pooling="class token (last_hidden_state[:, 0, :])",
            licence="Owkin non-commercial licence (Hub tag: other)",
            hf_repo="owkin/phikon-v2",
            hf_filenames=("model.safetensors",),
            reference_params_m=303.0,
            source="owkin/phikon-v2 model card; Phikon-v2 paper (arXiv 2409.09173)",
        ),
    ]
}


def available_backbones() -> list[str]:
    """Names accepted by :func:`make_backbone` (the CNN backbones; see also :func:`available_encoders`)."""
    return sorted(BACKBONES)


def available_encoders() -> list[str]:
    """Names of :data:`ENCODERS` (accepted by :func:`make_encoder` and :func:`make_backbone`)."""
    return sorted(ENCODERS)


def _key(name: str) -> str:
    return name.lower().replace("-", "_")


def encoder_spec(name: str) -> EncoderSpec:
    """The :class:`EncoderSpec` of ``name`` (case and ``-``/``_`` insensitive)."""
    key = _key(name)
    if key not in ENCODERS:
        raise StfusionError(f"Unknown encoder {name!r}. Use one of: {', '.join(available_encoders())}.")
    return ENCODERS[key]


def _factory(name: str) -> Callable[..., Backbone]:
    key = _key(name)
    if key in BACKBONES:
        return BACKBONES[key]
    if key in ENCODERS:
        return ENCODERS[key].builder
    raise StfusionError(
        f"Unknown backbone {name!r}. Use one of: {', '.join(available_backbones())} "
        f"(or an encoder: {', '.join(available_encoders())})."
    )


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


def make_encoder(
    name: str,
    weights: str | os.PathLike[str] | Mapping[str, torch.Tensor] | None = None,
    *,
    token: str | None = None,
    strict: bool = True,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> tuple[Backbone, Preprocessing]:
    """An encoder of :data:`ENCODERS` and the preprocessing that goes with its weights.

    Parameters
    ----------
    name
        One of :func:`available_encoders` (``"uni"``, ``"h_optimus_0"``, ``"virchow2"``, ...).
    weights
        ``None``: random initialisation (logged); a local ``.safetensors``/``.pth``/``.bin``
        path or a mapping of tensors in the encoder's published layout; or ``"hub"`` to
        download the spec's file from its Hugging Face repository (``token`` or ``HF_TOKEN``
        for gated repositories).
    strict
        Raise on missing or unexpected keys (shape mismatches always raise).
    overrides
        Change the configuration (e.g. ``depth=2`` for a reduced test model).

    Returns
    -------
    (model, preprocessing): ``model(preprocessing(patches_uint8))`` gives the embeddings
    (n, ``model.n_features``).
    """
    spec = encoder_spec(name)
    model = spec.build(**overrides)
    if weights is None:
        log.info(f"encoder {spec.name}: random initialisation (no weights given); features are not pretrained")
    else:
        if isinstance(weights, str) and weights == "hub":
            weights = download_weights(
                spec.hf_repo, spec.hf_filenames, token=token, revision=revision, cache_dir=cache_dir
            )
        report: LoadReport = load_weights(model, weights, strict=strict, name=spec.name)
        log.debug(f"encoder {spec.name}: {report}")
    return model.eval(), spec.preprocessing
