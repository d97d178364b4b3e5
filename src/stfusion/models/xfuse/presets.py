"""XFuse's named hyperparameter presets (``XFuse(preset=...)``)."""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS"]

PRESETS: dict[str, dict[str, Any]] = {
    # CPU-sized for one legacy-ST section (~400 spots) on 2 cores; measured times: benchmarks/xfuse.
    "fast": {"resolution_um": 10.0, "patch_px": 128, "batch_size": 2, "steps": 2000, "lr": 1e-3, "expr_lr": 1e-2,
             "metagene_interval": 200, "depth": 6, "base_width": 16},
    # The reference implementation's sizes (depth 6, width 16, 768 px patches, batches of 3,
    # Adam 3e-4, drop-and-split every 1000 steps); 5 µm/px and the expression rate (10x) are
    # our choices.
    "paper": {"resolution_um": 5.0, "patch_px": 768, "batch_size": 3, "steps": 100_000, "lr": 3e-4, "expr_lr": 3e-3,
              "metagene_interval": 1000, "depth": 6, "base_width": 16},
}
