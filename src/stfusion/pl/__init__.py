"""Plots. Every function returns a matplotlib figure."""

from stfusion.pl.attention import attention_map
from stfusion.pl.attribution import attribution_overlay
from stfusion.pl.boxplots import gene_boxplot, timing_bars
from stfusion.pl.embedding import embedding_umap
from stfusion.pl.maps import expression_map
from stfusion.pl.panels import comparison_panels
from stfusion.pl.spatial import spot_overlay

__all__ = [
    "attention_map",
    "attribution_overlay",
    "comparison_panels",
    "embedding_umap",
    "expression_map",
    "gene_boxplot",
    "spot_overlay",
    "timing_bars",
]
