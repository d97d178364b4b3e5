"""HisToGene on a whole slide (:func:`stfusion.scale.predict_slide`): a transformer over windows of spots.

A whole slide is cut into windows of ``window`` x ``window`` grid units (default half the
position table, 32 x 32 spots, about the size of a legacy ST array the model was trained on);
each window is one sequence with positions counted from its first tissue spot, as
``HisToGene.predict`` does for a section. Grid units: pixels scaled by the training pitch
(µm per grid unit), so the default lattice is squares at that pitch. Spots at window edges
do not attend across the edge.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stfusion.errors import StfusionError
from stfusion.models.histogene.positions import smooth_neighbours
from stfusion.scale.slide import SlideAdapter


class HisToGeneSlideAdapter(SlideAdapter):
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
        patches, keep = self.tissue_patches(reader, centers, mpp)
        if not keep.any():
            return None
        centers, rc = centers[keep], rc[keep]
        hp = self.model.hyperparams
        g = self.grid(centers, mpp)
        pos = np.clip(g - g.min(axis=0), 0, hp["grid_size"] - 1) if hp["use_positions"] else np.zeros_like(g)
        pred = self.model._run(self.model.pixels(patches), pos)
        if hp["smooth_predictions"] > 0:
            pred = smooth_neighbours(pred, g.astype(float), hp["smooth_predictions"])
        return self.block(self.model.to_eval_scale(pred), centers, rc)
