"""Plots. Every function returns a matplotlib figure."""

from stfusion.pl.attention import attention_map
from stfusion.pl.attribution import attribution_overlay
from stfusion.pl.embedding import embedding_umap
from stfusion.pl.spatial import spot_overlay

__all__ = ["attention_map", "attribution_overlay", "embedding_umap", "spot_overlay"]
