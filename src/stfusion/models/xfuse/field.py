"""A per-section spatial random effect on XFuse's expression heads (``expression_field_um``).

In the paper's model the metagene activities and the scale of a pixel are functions of the
latent tissue state only, and the posterior of that state is amortised by an encoder that
sees the image alone: the counts of a training section shape the prediction at its
unmeasured spots only through weights shared by the whole section. On the MOB 50% hold-out
that model scores about 0.30 median r even on its own training spots.

With ``expression_field_um`` > 0 each training section also gets a field over the section,
cells of that size, that adds to the metagene logits and to the scale's pre-activation at
every pixel (bilinear between cells). Its prior is Gaussian (independent cells, or a Gaussian
Markov random field with ``field_smoothness``), its value a point (MAP) estimate fitted with
the expression parameters. Cells of one to two spot spacings carry what the measured spots
show to the tissue around and between them, next to what the image shows; a section the
model was not trained on (an H&E-only slide included) gets no field.

Fields are read through each training patch's own transform (rotation, scale and shear of the
augmentation) and zero outside the section.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Placement:
    """Where each patch of a batch lies: ``section`` (B,) index into the field's sections,
    ``centre`` (B, 2) patch centre (x, y) in working pixels (pixel j spans [j, j + 1)),
    ``mat`` (B, 2, 2) patch-to-section linear map (x, y)."""

    section: np.ndarray
    centre: torch.Tensor
    mat: torch.Tensor

    @classmethod
    def frames(cls, section: int, origins: list[tuple[int, int]], side: int) -> Placement:
        """Axis-aligned frames of ``side`` pixels with top-left corners ``origins`` (row, col)."""
        centre = torch.tensor([[c0 + side / 2, r0 + side / 2] for r0, c0 in origins], dtype=torch.float32)
        mat = torch.eye(2).expand(len(origins), 2, 2)
        return cls(np.full(len(origins), int(section)), centre, mat)


def section_index(names: list[str], shapes: list[tuple[int, int]], name: str, shape: tuple[int, int]) -> int | None:
    """Index of the training section with id ``name`` and working ``shape`` (None: not trained on)."""
    for i, (n, s) in enumerate(zip(names, shapes, strict=True)):
        if n == str(name) and s == tuple(int(v) for v in shape):
            return i
    return None


def read_field(field: torch.Tensor, field_cell: float, sample_cell: float, cells_hw, centre: torch.Tensor,
               mat: torch.Tensor) -> torch.Tensor:
    """``field`` (1, C, h', w'; cells of ``field_cell`` working pixels in section coordinates)
    read bilinearly at the centres of a patch's ``cells_hw`` cells of ``sample_cell`` pixels,
    placed by ``centre`` and ``mat``; zero outside the section. Returns (1, C, h, w)."""
    hc, wc = int(cells_hw[0]), int(cells_hw[1])
    qy = (torch.arange(hc, dtype=torch.float32) + 0.5) * sample_cell - hc * sample_cell / 2
    qx = (torch.arange(wc, dtype=torch.float32) + 0.5) * sample_cell - wc * sample_cell / 2
    gy, gx = torch.meshgrid(qy, qx, indexing="ij")
    xy = torch.stack([gx, gy], dim=-1) @ mat.T.float() + centre.float()  # (h, w, 2) section coordinates
    size = torch.tensor([field.shape[-1], field.shape[-2]], dtype=torch.float32) * float(field_cell)
    grid = (2.0 * xy / size - 1.0)[None]
    return F.grid_sample(field, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class ExpressionField(nn.Module):
    """A per-section spatial random effect on the expression heads (``expression_field_um``).

    For each training section, a map of cells of ``cell_px`` working pixels holds additive
    offsets of the metagene logits (rows ``0 .. M-1``, one per metagene row of the model) and
    of the scale's pre-activation (row ``M``); it is read bilinearly at every pixel of a patch,
    so each pixel's offset blends the four nearest cells. The prior is N(0, ``prior_sd``^2)
    per entry, times ``exp(-smoothness / 2 * sum of squared differences of neighbouring cells)``
    (a Gaussian Markov random field; 0: independent cells); the maps are point (MAP)
    estimates. Cells of a few spot spacings let what the measured spots of a section show
    reach the unmeasured tissue between them, beside what the image shows. Sections not
    trained on get no offsets.
    """

    def __init__(self, names: list[str], shapes: list[tuple[int, int]], n_metagenes: int, cell_px: float,
                 prior_sd: float = 1.0, smoothness: float = 0.0) -> None:
        super().__init__()
        self.names = [str(n) for n in names]
        self.shapes = [tuple(int(v) for v in s) for s in shapes]
        self.cell_px, self.prior_sd, self.smoothness = float(cell_px), float(prior_sd), float(smoothness)
        self.maps = nn.ParameterList([nn.Parameter(torch.zeros(int(n_metagenes) + 1, max(1, math.ceil(h / self.cell_px)),
                                                               max(1, math.ceil(w / self.cell_px))))
                                      for h, w in self.shapes])

    def spec(self) -> dict:
        return {"names": self.names, "shapes": [list(s) for s in self.shapes], "cell_px": self.cell_px,
                "prior_sd": self.prior_sd, "smoothness": self.smoothness, "metagenes": int(self.maps[0].shape[0]) - 1}

    @classmethod
    def from_spec(cls, spec: dict) -> ExpressionField:
        return cls(spec["names"], [tuple(s) for s in spec["shapes"]], spec["metagenes"], spec["cell_px"], spec["prior_sd"],
                   spec.get("smoothness", 0.0))

    def index(self, name: str, shape: tuple[int, int]) -> int | None:
        return section_index(self.names, self.shapes, name, shape)

    def read(self, place: Placement, hw) -> torch.Tensor:
        """Offsets at every pixel of each patch: (B, M + 1, h, w)."""
        return torch.cat([read_field(self.maps[int(i)][None], self.cell_px, 1.0, hw, place.centre[b], place.mat[b])
                          for b, i in enumerate(place.section)])

    def log_prior(self) -> torch.Tensor:
        """Gaussian log prior of the maps (up to a constant)."""
        total = -0.5 * sum((m**2).sum() for m in self.maps) / self.prior_sd**2
        if self.smoothness:
            rough = sum((m.diff(dim=1) ** 2).sum() + (m.diff(dim=2) ** 2).sum() for m in self.maps)
            total = total - 0.5 * self.smoothness * rough
        return total


def attach_field(net: nn.Module, datas: Sequence[Any], hp: dict[str, Any]) -> dict[str, Any] | None:
    """Give ``net`` the per-section field of ``hp["expression_field_um"]`` over the training
    sections ``datas`` (SectionData); returns its spec for the model card (None without one)."""
    if not hp["expression_field_um"]:
        return None
    names = [d.name for d in datas]
    if len(set(names)) < len(names):
        logging.getLogger("stfusion").warning(
            "xfuse: training sections share section ids %s; prediction uses the first one's field.", names)
    net.field = ExpressionField(names, [d.shape for d in datas], hp["max_metagenes"],
                                hp["expression_field_um"] / hp["resolution_um"], smoothness=hp["field_smoothness"])
    return net.field.spec()
