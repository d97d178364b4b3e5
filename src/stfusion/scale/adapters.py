"""How each histology method predicts a chunk of slide spots (for :mod:`stfusion.scale.slide`).

- ST-Net: each spot on its own (its field, ``out_px``, test-time flips as the model says);
  default lattice: contiguous squares of the model's field, as ``STNet.predict_image``.
- HisToGene: a transformer over a sequence of spots. A whole slide is cut into windows of
  ``window`` x ``window`` grid units (default half the position table, 32 x 32 spots, about
  the size of a legacy ST array the model was trained on); each window is one sequence with
  positions counted from its first tissue spot, as ``HisToGene.predict`` does for a section.
  Grid units: pixels scaled by the training pitch (µm per grid unit), so the default lattice is
  squares at that pitch. Spots at window edges do not attend across the edge.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from stfusion.data.patches import ImageReader
from stfusion.errors import StfusionError
from stfusion.models.stnet.tiling import is_tissue
from stfusion.scale.slide import LATTICES, read_chunk

PSEUDO_BULK_KEY = "pseudo_bulk"


class _Adapter:
    genes: list[str]
    field_um: float
    out_px: int
    spacing_um: float
    lattice: str
    expression_space: str
    provenance: dict[str, Any]
    obsm: dict[str, str] = {}
    pseudo_bulk_key = PSEUDO_BULK_KEY
    name_prefix = "spot"

    def __init__(self, lattice: str | None, spacing_um: float | None, chunk_spots: int) -> None:
        self.lattice = lattice or "square"
        if self.lattice not in LATTICES:
            raise StfusionError(f"Unknown spot lattice {self.lattice!r}; use one of {LATTICES}.")
        self._spacing = spacing_um
        self.chunk_spots = max(1, int(chunk_spots))

    def chunks(self, centers: np.ndarray, rc: np.ndarray, mpp: float) -> Iterator[np.ndarray]:
        for start in range(0, len(centers), self.chunk_spots):
            yield np.arange(start, min(start + self.chunk_spots, len(centers)))

    def tissue_patches(self, reader: ImageReader, centers: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
        patches = read_chunk(reader, centers, self.field_um, mpp, self.out_px)
        keep = np.fromiter((is_tissue(p) for p in patches), dtype=bool, count=len(patches))
        return patches[keep], keep

    @staticmethod
    def block(values: np.ndarray, centers: np.ndarray, rc: np.ndarray, **extra: np.ndarray) -> dict[str, np.ndarray]:
        return {"X": np.asarray(values, np.float32), "spatial": centers.astype(np.float64),
                "row": rc[:, 0].astype(np.int64), "col": rc[:, 1].astype(np.int64), **extra}  # fmt: skip


class STNetAdapter(_Adapter):
    obsm = {"X_stnet": "emb"}
    name_prefix = "tile"  # as STNet.predict_image

    def __init__(self, model: Any, lattice: str | None, spacing_um: float | None, chunk_spots: int) -> None:
        super().__init__(lattice, spacing_um, chunk_spots)
        self.model, cfg = model, model.config
        self.genes, self.field_um, self.out_px = list(model._check_fitted()), float(cfg["patch_um"]), int(cfg["out_px"])
        self.spacing_um = float(spacing_um or self.field_um)
        self.expression_space, self.provenance = model.expression_space, model._provenance()

    def predict_chunk(self, reader, centers, rc, mpp):
        patches, keep = self.tissue_patches(reader, centers, mpp)
        if not keep.any():
            return None
        values, emb = self.model.predict_patches(patches)
        return self.block(values, centers[keep], rc[keep], emb=np.asarray(emb, np.float32))


class HisToGeneAdapter(_Adapter):
    def __init__(self, model: Any, lattice: str | None, spacing_um: float | None, chunk_spots: int,
                 window: int | None = None) -> None:  # fmt: skip
        super().__init__(lattice, spacing_um, chunk_spots)
        model._check_fitted()
        self.model, hp, st = model, model.hyperparams, model.state_
        self.genes, self.field_um, self.out_px = list(model.genes_), float(st["patch_um"]), int(hp["patch_px"])
        self.pitch_um = np.asarray(st["pitch_um"], dtype=float)
        self.spacing_um = float(spacing_um or self.pitch_um.mean())
        self.window = int(window or max(1, hp["grid_size"] // 2))
        if self.window > hp["grid_size"]:
            raise StfusionError(f"window {self.window} exceeds the position table ({hp['grid_size']}); pass a smaller one.")
        self.expression_space = "log1p_cp10k"
        self.provenance = {"patch_px": self.out_px, "window_grid_units": self.window, "pitch_um": st["pitch_um"]}

    def grid(self, centers: np.ndarray, mpp: float) -> np.ndarray:
        """Integer grid units (x, y) of pixel centres: pixel boxes binned at the training pitch."""
        return np.floor((centers + 0.5) * mpp / self.pitch_um + 1e-9).astype(np.int64)

    def chunks(self, centers, rc, mpp):
        win = self.grid(centers, mpp) // self.window
        order = np.lexsort((win[:, 0], win[:, 1]))  # windows in row order
        keys = win[order]
        cuts = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
        yield from np.split(order, cuts)

    def predict_chunk(self, reader, centers, rc, mpp):
        import torch

        from stfusion.models.histogene.model import smooth_neighbours

        patches, keep = self.tissue_patches(reader, centers, mpp)
        if not keep.any():
            return None
        centers, rc = centers[keep], rc[keep]
        st, hp = self.model.state_, self.model.hyperparams
        x = (patches.astype(np.float32) / 255.0 - np.asarray(st["pixel_mean"], np.float32)) / np.asarray(
            st["pixel_std"], np.float32
        )
        g = self.grid(centers, mpp)
        pos = np.clip(g - g.min(axis=0), 0, hp["grid_size"] - 1) if hp["use_positions"] else np.zeros_like(g)
        pred = self.model._run(torch.from_numpy(x.reshape(len(x), -1)), pos)
        if hp["smooth_predictions"] > 0:
            pred = smooth_neighbours(pred, g.astype(float), hp["smooth_predictions"])
        return self.block(self.model.to_eval_scale(pred), centers, rc)


def adapter_for(model: Any, *, lattice: str | None = None, spacing_um: float | None = None, chunk_spots: int = 256,
                window: int | None = None) -> _Adapter:  # fmt: skip
    """The slide adapter of a fitted model (ST-Net or HisToGene)."""
    name = getattr(model, "name", type(model).__name__)
    if name == "stnet":
        return STNetAdapter(model, lattice, spacing_um, chunk_spots)
    if name == "histogene":
        return HisToGeneAdapter(model, lattice, spacing_um, chunk_spots, window)
    raise StfusionError(f"Whole-slide streaming supports stnet and histogene, not {name!r}; "
                        "use model.predict_image for other methods.")  # fmt: skip
