"""HisToGene: vision transformer over a section's spot patches, with super-resolution."""

from stfusion.models.histogene.model import PRESETS, HisToGene

__all__ = ["PRESETS", "HisToGene"]
