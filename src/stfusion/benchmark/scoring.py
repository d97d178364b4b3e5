"""Per-gene scores of one prediction, in the benchmark's tidy layout."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd

from stfusion.models.base import dense, target_expression


def _aligned(pred: ad.AnnData, spots: Sequence[str], genes: Sequence[str]) -> np.ndarray:
    return dense(pred[list(spots), list(genes)].X).astype(float)


def score_histology(pred: ad.AnnData, test: ad.AnnData, genes: Sequence[str]) -> pd.DataFrame:
    """Scores on the primary target log1p(counts / spot total × 1e4).

    Metrics per gene: pearson, spearman, rmse, auroc (top vs bottom quartile),
    pearson_smoothed (against the neighbour-smoothed truth, ST-Net) and pvalue
    (one-sided, positive correlation).
    """
    from stfusion import metrics as M

    truth = target_expression(test, genes)
    p = _aligned(pred, test.obs_names, genes)
    smoothed = M.smooth_neighbours(test, truth)
    table = {
        "pearson": M.pearson(truth, p),
        "spearman": M.spearman(truth, p),
        "rmse": M.rmse(truth, p),
        "auroc": M.auroc_extremes(truth, p),
        "pearson_smoothed": M.pearson(smoothed, p),
        "pvalue": M.pearson_pvalues(truth, p),
    }
    return _tidy(table, genes)


def imputation_truth(spatial_full: ad.AnnData, genes: Sequence[str]) -> np.ndarray:
    """log1p(counts / cell total × 1e4) of the hidden genes; totals over all measured genes."""
    return target_expression(spatial_full, genes)


def score_imputation(pred: ad.AnnData, spatial_full: ad.AnnData, genes: Sequence[str]) -> pd.DataFrame:
    """Li et al. 2022 metrics per gene: PCC, SSIM, z-scored RMSE, JS divergence."""
    from stfusion import metrics as M

    truth = imputation_truth(spatial_full, genes)
    p = _aligned(pred, spatial_full.obs_names, genes)
    table = {
        "pearson": M.pearson(truth, p),
        "ssim": M.ssim(truth, p),
        "rmse": M.rmse(truth, p, zscore=True),
        "js": M.js_divergence(truth, p),
    }
    return _tidy(table, genes)


def _tidy(table: dict[str, np.ndarray], genes: Sequence[str]) -> pd.DataFrame:
    frames = [pd.DataFrame({"gene": list(genes), "metric": name, "value": np.asarray(v, float)}) for name, v in table.items()]
    return pd.concat(frames, ignore_index=True)
