"""Frozen pathology encoder + PCA + ridge (HEST-Benchmark's linear probe), and cached patch embeddings."""

from stfusion.models.encoder_ridge.features import FEATURES_UNS, FrozenEncoder, add_features, cached_features, obsm_key
from stfusion.models.encoder_ridge.model import EncoderRidge

__all__ = ["FEATURES_UNS", "EncoderRidge", "FrozenEncoder", "add_features", "cached_features", "obsm_key"]
