"""Plots. Every function returns a matplotlib figure."""

from stfusion.pl.spatial import spot_overlay

__all__ = ["spot_overlay"]
