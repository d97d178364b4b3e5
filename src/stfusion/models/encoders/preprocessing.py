"""The preprocessing that travels with an encoder's weights (timm's ``pretrained_cfg`` convention).

An encoder's ``forward`` takes a *normalised* float tensor (n, 3, H, W); how raw pixels become
that tensor (mean, std, input size, interpolation) and which physical field a patch must cover
(µm per pixel) belong to the weights, not to the module. :class:`Preprocessing` holds those
facts, is JSON-serialisable (save it beside a model) and turns uint8 RGB patches
(n, H, W, 3) into the encoder's input.

HEST-Benchmark (Jaume et al. 2024) feeds every encoder 224 x 224 px patches at 0.5 µm/px,
i.e. a 112 µm field; the registry (:mod:`.registry`) records each encoder's own values.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class Preprocessing:
    """Pixels -> normalised encoder input.

    Parameters
    ----------
    mean, std
        Per-channel (RGB) statistics applied after scaling uint8 pixels to [0, 1].
    input_px
        Side of the square input the encoder expects (e.g. 224).
    um_per_px
        Physical resolution the patches should have (µm per pixel); ``input_px * um_per_px``
        is the field a patch covers (:attr:`field_um`).
    interpolation
        Resampling used when a patch is not ``input_px`` square (``"bicubic"``, ``"bilinear"``).
    notes
        Free text: where the values come from, and anything uncertain about them.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_px: int = 224
    um_per_px: float = 0.5
    interpolation: str = "bicubic"
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {self.mean} and {self.std}.")
        if any(v <= 0 for v in self.std):
            raise ValueError(f"std must be positive, got {self.std}.")
        if int(self.input_px) < 1 or self.um_per_px <= 0:
            raise ValueError(f"input_px and um_per_px must be positive, got {self.input_px}, {self.um_per_px}.")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}.")
        object.__setattr__(self, "input_px", int(self.input_px))
        object.__setattr__(self, "um_per_px", float(self.um_per_px))

    @property
    def field_um(self) -> float:
        """Side of the tissue field one input covers, in µm (224 px x 0.5 µm/px = 112 µm)."""
        return self.input_px * self.um_per_px

    # ---- JSON ----

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        known = {"mean", "std", "input_px", "um_per_px", "interpolation", "notes"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown preprocessing fields {unknown}; expected some of {sorted(known)}.")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        return cls.from_dict(json.loads(text))

    # ---- pixels ----

    def __call__(self, patches: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB patches (n, H, W, 3) (or one (H, W, 3)) -> float32 (n, 3, input_px, input_px).

        Pixels are scaled to [0, 1], resized to ``input_px`` when needed (``interpolation``,
        antialiased when shrinking; the whole patch is resized, nothing is cropped: cut patches
        at the physical size :attr:`field_um` first) and normalised with ``mean``/``std``.
        """
        x = torch.as_tensor(np.asarray(patches)) if not isinstance(patches, torch.Tensor) else patches
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"Expected uint8 RGB patches of shape (n, H, W, 3), got {tuple(x.shape)}.")
        if x.dtype != torch.uint8:
            raise ValueError(f"Expected uint8 pixels (0-255), got dtype {x.dtype}.")
        x = x.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
        if x.shape[-2:] != (self.input_px, self.input_px):
            shrinking = min(x.shape[-2:]) > self.input_px
            kwargs: dict[str, Any] = {"mode": self.interpolation}
            if self.interpolation != "nearest":
                kwargs.update(align_corners=False, antialias=shrinking)
            x = F.interpolate(x, size=(self.input_px, self.input_px), **kwargs)
            if self.interpolation == "bicubic":
                x = x.clamp_(0.0, 1.0)  # bicubic overshoots; PIL-like behaviour
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()
