"""Reading torchvision-layout state dicts into an encoder.

Weights are read with ``torch.load(..., weights_only=True)`` (never arbitrary pickles), or
from ``.safetensors`` when the ``safetensors`` package is installed. Legacy DenseNet names,
``module.``/``_orig_mod.`` prefixes and classification-head keys the encoder lacks are
handled; anything else that does not fit raises :class:`WeightsError`.

Encoders may declare, as class attributes of :class:`~.base.Backbone`, the key prefixes of
known checkpoint wrappers (``checkpoint_prefixes``, e.g. ``"dinov2."`` of a Hugging Face
``Dinov2ForImageClassification``) and the prefixes of a full checkpoint they knowingly do not
use (``unused_prefixes``, e.g. ``"layer4."`` for a ResNet-50 cut after layer3). Both are
applied explicitly and recorded in the :class:`LoadReport` (``stripped_prefix``,
``dropped_unused``); no other key is ever renamed or dropped silently.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

try:  # registered eagerly when installed, so tests and callers see one module object
    import safetensors  # noqa: F401
except ImportError:  # pragma: no cover - safetensors is a dependency; kept optional here
    pass

from stfusion.errors import InputFileError, StfusionError
from stfusion.models.encoders.base import Backbone

__all__ = ["LoadReport", "WeightsError", "load_weights", "read_state_dict"]

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


@dataclass
class LoadReport:
    """What :func:`load_weights` did."""

    loaded: list[str] = field(default_factory=list)
    ignored_head: list[str] = field(default_factory=list)
    legacy_renamed: int = 0
    filled_buffers: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    #: A known wrapper prefix (``Backbone.checkpoint_prefixes``) stripped from the file's keys.
    stripped_prefix: str | None = None
    #: Keys of a full checkpoint the encoder knowingly does not use (``Backbone.unused_prefixes``).
    dropped_unused: list[str] = field(default_factory=list)


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
    _check_keys(state, expected, report, strict=strict, name=name, source=source, layout=model.layout)
    report.loaded = list(state)
    for key in report.filled_buffers:
        state[key] = torch.zeros_like(expected[key])
    for key in report.missing:  # only reached when strict=False: keep the current values
        state[key] = expected[key]
    model.load_state_dict(state, strict=True)
    ignored = f"; ignored head keys: {', '.join(report.ignored_head)}" if report.ignored_head else ""
    if report.stripped_prefix:
        ignored += f"; stripped the checkpoint prefix {report.stripped_prefix!r}"
    if report.dropped_unused:
        prefixes = ", ".join(model.unused_prefixes)
        ignored += f"; dropped {len(report.dropped_unused)} keys this encoder does not use ({prefixes}*)"
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
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type
        raise WeightsError(f"Cannot read {path} as a .safetensors file ({type(exc).__name__}: {exc}).") from exc


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
    own_keys = set(model.state_dict())
    for prefix in model.checkpoint_prefixes:
        # e.g. "dinov2.embeddings.cls_token" of Dinov2ForImageClassification -> "embeddings.cls_token";
        # keys outside the prefix (that model's "classifier.*") go on to the head/unexpected checks
        if any(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own_keys):
            state = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}
            report.stripped_prefix = prefix
            break
    if model.unused_prefixes:
        report.dropped_unused = sorted(
            k for k in state if k.startswith(model.unused_prefixes) and k not in own_keys
        )
        dropped = set(report.dropped_unused)
        state = {k: v for k, v in state.items() if k not in dropped}
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
    layout: str = "torchvision's",
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
            f"Use a state dict of {layout} {name} layout (torch.save(model.state_dict())), "
            "or pass strict=False to skip missing/unexpected keys."
        )
    for key in report.unexpected:
        del state[key]
    if report.missing or report.unexpected:
        log.warning(
            f"backbone {name}: strict=False; {len(report.missing)} keys missing (left at their "
            f"initial values), {len(report.unexpected)} unexpected keys skipped"
        )
