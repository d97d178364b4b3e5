"""CNN backbones in plain torch, with torchvision's exact module and parameter names.

``make_backbone(name, weights=None)`` returns ``(module, n_features)``: the module maps
normalised images (N, 3, H, W) to pooled features (N, n_features). Its state dict uses
torchvision's layout minus the classification head, so a ``torch.save(model.state_dict())``
of ``torchvision.models.densenet121()`` / ``resnet18()`` / ``resnet50()`` (or a timm model
with the same layout) loads into it; head keys (``classifier.*`` / ``fc.*``) are ignored
and reported. Weights are read with ``torch.load(..., weights_only=True)`` (never
arbitrary pickles), or from ``.safetensors`` when the ``safetensors`` package is installed.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from stfusion.errors import InputFileError, StfusionError

if TYPE_CHECKING:
    from stfusion.models._densenet import DenseNet
    from stfusion.models._resnet import ResNet

__all__ = [
    "BACKBONES",
    "Backbone",
    "LoadReport",
    "WeightsError",
    "available_backbones",
    "densenet121",
    "feature_dim",
    "load_weights",
    "make_backbone",
    "resnet18",
    "resnet50",
    "small_cnn",
]

log = logging.getLogger("stfusion")

# torchvision's remapping of the legacy DenseNet names ("norm.1" -> "norm1", "conv.2" -> "conv2")
_LEGACY_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / torch.compile
_NESTED_KEYS = ("state_dict", "model")
_N_SHOWN = 5


class WeightsError(StfusionError, ValueError):
    """A weights file does not match the backbone's layout."""


class Backbone(nn.Module):
    """Base class: images (N, 3, H, W) -> pooled features (N, n_features), then the head.

    Without a head (``num_classes=None``) the head is ``nn.Identity`` (no parameters), so
    ``forward`` returns the pooled features and the state dict has no head keys.
    """

    head_name: ClassVar[str] = "classifier"

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


def densenet121(num_classes: int | None = 1000, **kwargs: Any) -> DenseNet:
    """DenseNet-121 (growth 32, blocks (6, 12, 24, 16), 64 initial features, bn_size 4).

    ``kwargs`` go to :class:`stfusion.models._densenet.DenseNet` (``drop_rate``,
    ``memory_efficient``). 7,978,856 parameters with the 1,000-class head.
    """
    from stfusion.models._densenet import DenseNet

    return DenseNet(32, (6, 12, 24, 16), 64, bn_size=4, num_classes=num_classes, **kwargs)


def resnet18(num_classes: int | None = 1000, **kwargs: Any) -> ResNet:
    """ResNet-18 (basic blocks (2, 2, 2, 2)); 11,689,512 parameters with the 1,000-class head."""
    from stfusion.models._resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, **kwargs)


def resnet50(num_classes: int | None = 1000, **kwargs: Any) -> ResNet:
    """ResNet-50 (bottlenecks (3, 4, 6, 3), stride on the 3x3 conv as in torchvision).

    25,557,032 parameters with the 1,000-class head.
    """
    from stfusion.models._resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, **kwargs)


def small_cnn(width: int = 16, num_classes: int | None = None) -> SmallCNN:
    """A tiny fast CNN for tests and quick runs; ``8 * width`` features."""
    return SmallCNN(width=width, num_classes=num_classes)


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


@dataclass
class LoadReport:
    """What :func:`load_weights` did."""

    loaded: list[str] = field(default_factory=list)
    ignored_head: list[str] = field(default_factory=list)
    legacy_renamed: int = 0
    filled_buffers: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def load_weights(
    model: Backbone,
    weights: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    name: str | None = None,
) -> LoadReport:
    """Load a torchvision-layout state dict into ``model`` (in place).

    Legacy DenseNet names (``norm.1``) are renamed, ``module.`` prefixes stripped, head
    keys the model lacks ignored, and ``num_batches_tracked`` buffers absent from old
    checkpoints set to 0. Any other missing or unexpected key raises
    :class:`WeightsError` when ``strict`` (otherwise it is skipped with a warning);
    shape mismatches always raise.
    """
    name = name or type(model).__name__
    source = str(weights) if not isinstance(weights, Mapping) else "the given mapping"
    state = read_state_dict(weights) if not isinstance(weights, Mapping) else dict(weights)
    state, report = _normalise_keys(state, model)
    expected = model.state_dict()
    _check_keys(state, expected, report, strict=strict, name=name, source=source)
    report.loaded = list(state)
    for key in report.filled_buffers:
        state[key] = torch.zeros_like(expected[key])
    for key in report.missing:  # only reached when strict=False: keep the current values
        state[key] = expected[key]
    model.load_state_dict(state, strict=True)
    ignored = f"; ignored head keys: {', '.join(report.ignored_head)}" if report.ignored_head else ""
    log.info(f"backbone {name}: loaded {len(report.loaded)} tensors from {source}{ignored}")
    return report


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt`` (weights-only) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"Weights file {path} does not exist. Pass the path of a local .pth/.pt state dict.")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types here
        raise WeightsError(
            f"Cannot read {path} as a weights-only state dict ({type(exc).__name__}: {exc}). "
            "Re-save it as plain tensors: torch.save(model.state_dict(), path)."
        ) from exc
    return _unwrap(obj, path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise WeightsError(
            f"{path} is a .safetensors file but the 'safetensors' package is not installed. "
            "Install it (pip install safetensors) or convert the file to a .pth state dict."
        ) from exc
    return dict(load_file(str(path), device="cpu"))


def _is_tensor_map(obj: object) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if _is_tensor_map(obj):
        return dict(obj)  # type: ignore[arg-type]
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if _is_tensor_map(obj.get(key)):
                return dict(obj[key])
    raise WeightsError(
        f"{path} does not hold a state dict (a mapping of names to tensors, or one under "
        f"{' / '.join(_NESTED_KEYS)!r}). Save it with torch.save(model.state_dict(), path)."
    )


def _normalise_keys(
    state: dict[str, torch.Tensor], model: Backbone
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    report = LoadReport()
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _LEGACY_DENSENET.match(key)
        if match:
            key = match.group(1) + match.group(2)
            report.legacy_renamed += 1
        renamed[key] = value
    own = set(model.state_dict())
    head = model.head_name + "."
    report.ignored_head = sorted(k for k in renamed if k.startswith(head) and k not in own)
    ignored = set(report.ignored_head)
    kept = {k: v for k, v in renamed.items() if k not in ignored}
    return kept, report


def _check_keys(
    state: dict[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    report: LoadReport,
    *,
    strict: bool,
    name: str,
    source: str,
) -> None:
    missing = [k for k in expected if k not in state]
    report.filled_buffers = [k for k in missing if k.endswith("num_batches_tracked")]
    report.missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    report.unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    if report.missing and strict:
        problems.append(f"{len(report.missing)} missing keys (e.g. {report.missing[:_N_SHOWN]})")
    if report.unexpected and strict:
        problems.append(f"{len(report.unexpected)} unexpected keys (e.g. {report.unexpected[:_N_SHOWN]})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[:_N_SHOWN]})")
    if problems:
        raise WeightsError(
            f"Weights from {source} do not fit backbone {name}: {'; '.join(problems)}. "
            f"Use a state dict of torchvision's {name} layout (torch.save(model.state_dict())), "
            "or pass strict=False to skip missing/unexpected keys."
        )
    for key in report.unexpected:
        del state[key]
    if report.missing or report.unexpected:
        log.warning(
            f"backbone {name}: strict=False; {len(report.missing)} keys missing (left at their "
            f"initial values), {len(report.unexpected)} unexpected keys skipped"
        )
