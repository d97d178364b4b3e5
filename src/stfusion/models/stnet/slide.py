"""ST-Net on a whole slide (:func:`stfusion.scale.predict_slide`): each spot on its own.

Each spot is read at the model's field and ``out_px`` and predicted with the test-time flips
the model was configured with; the default lattice is contiguous squares of the model's
field, as ``STNet.predict_image``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stfusion.scale.slide import SlideAdapter


class STNetSlideAdapter(SlideAdapter):
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
