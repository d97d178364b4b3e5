"""Per-gene scores of one prediction, in the benchmark's tidy layout."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd

from stfusion.models.base import dense, target_expression
from stfusion.models.conformal import LEVELS, prediction_space, truth_in_space


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
    flat = _uninformative(truth, p)
    table = {
        "pearson": _zero_where(M.pearson(truth, p), flat),
        "spearman": _zero_where(M.spearman(truth, p), flat),
        "rmse": M.rmse(truth, p),
        "auroc": M.auroc_extremes(truth, p),
        "pearson_smoothed": _zero_where(M.pearson(smoothed, p), flat),
        "pvalue": np.where(flat, 1.0, M.pearson_pvalues(truth, p)),
    }
    return _tidy(table, genes)


def score_intervals(model, pred: ad.AnnData, test: ad.AnnData, genes: Sequence[str],
                    levels: Sequence[float] = LEVELS) -> pd.DataFrame:
    """Per gene, for each nominal level (default 50/80/90/95%): ``coverage_<pct>`` (fraction of the
    test spots whose measured value, in the space of the prediction's ``X``, lies inside the
    interval) and ``width_<pct>`` (mean interval width). Intervals from ``model.add_intervals``:
    conformal when the model is calibrated, else the model's own SD."""
    from stfusion.metrics.coverage import coverage, interval_width

    sub = pred[list(test.obs_names), list(genes)].copy()
    truth = truth_in_space(test, genes, prediction_space(sub))
    table = {}
    for level in levels:
        iv = model.add_intervals(sub.copy(), level)
        lo, hi = dense(iv.layers["lower"]).astype(float), dense(iv.layers["upper"]).astype(float)
        pct = f"{round(100 * level):d}"
        table[f"coverage_{pct}"] = coverage(truth, lo, hi)[0]
        table[f"width_{pct}"] = interval_width(lo, hi)
    return _tidy(table, genes)


def _uninformative(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Genes whose prediction is constant over the spots while the truth varies.

    Their correlation is undefined (NaN); summaries count them as r = 0, the value of a
    prediction that carries no information, so that a method is not rewarded for
    predicting a constant (NaN genes would silently drop out of its mean).
    """
    with np.errstate(invalid="ignore"):
        return (np.nanstd(pred, axis=0) == 0) & (np.nanstd(truth, axis=0) > 0)


def _zero_where(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 0.0, values)


def score_imputation(pred: ad.AnnData, spatial_full: ad.AnnData, genes: Sequence[str]) -> pd.DataFrame:
    """Li et al. 2022 metrics per gene: PCC, SSIM, z-scored RMSE, JS divergence."""
    from stfusion import metrics as M

    truth = target_expression(spatial_full, genes)  # log1p cp10k; totals over all measured genes
    p = _aligned(pred, spatial_full.obs_names, genes)
    table = {
        "pearson": _zero_where(M.pearson(truth, p), _uninformative(truth, p)),
        "ssim": M.ssim(truth, p),
        "rmse": M.rmse(truth, p, zscore=True),
        "js": M.js_divergence(truth, p),
    }
    return _tidy(table, genes)


def _tidy(table: dict[str, np.ndarray], genes: Sequence[str]) -> pd.DataFrame:
    frames = [pd.DataFrame({"gene": list(genes), "metric": name, "value": np.asarray(v, float)}) for name, v in table.items()]
    return pd.concat(frames, ignore_index=True)
