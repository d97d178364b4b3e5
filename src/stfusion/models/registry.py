"""Find models and baselines by name (for the CLI and the benchmark runner).

Entries are import strings, so listing methods imports nothing heavy.
"""

from __future__ import annotations

import importlib

from stfusion.errors import StfusionError

# name -> "module:Class"
REGISTRY: dict[str, str] = {
    # methods
    "stnet": "stfusion.models.stnet.model:STNet",
    "spaim": "stfusion.models.spaim.model:SpaIM",
    "histogene": "stfusion.models.histogene.model:HisToGene",
    "xfuse": "stfusion.models.xfuse.model:XFuse",
    "encoder_ridge": "stfusion.models.encoder_ridge.model:EncoderRidge",
    # histology / spatial baselines
    "constant": "stfusion.baselines.interpolation:ConstantBaseline",
    "nearest_neighbour": "stfusion.baselines.interpolation:NearestNeighbourBaseline",
    "linear": "stfusion.baselines.interpolation:LinearInterpolationBaseline",
    "gaussian_process": "stfusion.baselines.gp:GaussianProcessBaseline",
    "label_mean": "stfusion.baselines.labels:LabelMeanBaseline",
    "histogram_regression": "stfusion.baselines.image_regression:HistogramRegressionBaseline",
    "morphology_rf": "stfusion.baselines.image_regression:MorphologyForestBaseline",
    "depth_only": "stfusion.baselines.image_regression:DepthOnlyBaseline",
    "colour_texture_ridge": "stfusion.baselines.image_regression:ColourTextureRidgeBaseline",
    # imputation from a single-cell reference
    "knn_reference": "stfusion.baselines.knn_reference:KNNReferenceImputer",
    "tangram": "stfusion.baselines.peers:TangramImputer",
    "gimvi": "stfusion.baselines.peers:GimVIImputer",
}


def get(name: str) -> type:
    """The class registered under ``name``."""
    key = name.lower().replace("-", "_")
    if key not in REGISTRY:
        raise StfusionError(f"Unknown method {name!r}. Available: {', '.join(sorted(REGISTRY))}.")
    module, cls = REGISTRY[key].split(":")
    return getattr(importlib.import_module(module), cls)


def available() -> list[str]:
    return sorted(REGISTRY)
