"""The papers' baselines, with the same interface as the models (fit, predict -> AnnData, save, load)."""

from stfusion.baselines.gp import GaussianProcessBaseline
from stfusion.baselines.image_regression import (
    ColourTextureRidgeBaseline,
    DepthOnlyBaseline,
    HistogramRegressionBaseline,
    MorphologyForestBaseline,
)
from stfusion.baselines.interpolation import ConstantBaseline, LinearInterpolationBaseline, NearestNeighbourBaseline
from stfusion.baselines.knn_reference import KNNReferenceImputer
from stfusion.baselines.labels import LabelMeanBaseline
from stfusion.baselines.null import ShuffledNull, null_distribution

__all__ = [
    "ColourTextureRidgeBaseline",
    "ConstantBaseline",
    "DepthOnlyBaseline",
    "GaussianProcessBaseline",
    "HistogramRegressionBaseline",
    "KNNReferenceImputer",
    "LabelMeanBaseline",
    "LinearInterpolationBaseline",
    "MorphologyForestBaseline",
    "NearestNeighbourBaseline",
    "ShuffledNull",
    "null_distribution",
]
