"""Evaluation metrics: per-gene accuracy of predicted spatial expression.

Definitions follow Li et al. 2022 (Nat Methods 19:662) and ST-Net (He et al. 2020).
"""

from stfusion.metrics.core import (
    accuracy_score,
    auroc_extremes,
    consistent_positive,
    interval_coverage,
    js_divergence,
    pearson,
    pearson_pvalues,
    rmse,
    significant_genes,
    spearman,
    ssim,
    topk_mean,
)
from stfusion.metrics.coverage import coverage_by_group, coverage_table, interval_width
from stfusion.metrics.evaluate import METRICS, AlignmentError, MetricError, aligned_names, evaluate
from stfusion.metrics.spatial import ari_kmeans, neighbour_graph, radius_graph, smooth_neighbours

__all__ = [
    "METRICS",
    "AlignmentError",
    "MetricError",
    "accuracy_score",
    "aligned_names",
    "ari_kmeans",
    "auroc_extremes",
    "consistent_positive",
    "coverage_by_group",
    "coverage_table",
    "evaluate",
    "interval_coverage",
    "interval_width",
    "js_divergence",
    "neighbour_graph",
    "pearson",
    "pearson_pvalues",
    "radius_graph",
    "rmse",
    "significant_genes",
    "smooth_neighbours",
    "spearman",
    "ssim",
    "topk_mean",
]
