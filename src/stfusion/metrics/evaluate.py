"""Score a predicted section against a measured one, gene by gene, as a tidy table.

Metric definitions: :mod:`stfusion.metrics.core` (Li et al. 2022, Nat Methods 19:662;
He et al. 2020, ST-Net, Nat Biomed Eng 4:827).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from stfusion import _constants as K
from stfusion.errors import StfusionError
from stfusion.metrics import core

log = logging.getLogger("stfusion")

METRICS: dict[str, Callable] = {
    "pearson": core.pearson,
    "spearman": core.spearman,
    "rmse": core.rmse,
    "rmse_z": partial(core.rmse, zscore=True),
    "ssim": core.ssim,
    "js": core.js_divergence,
    "auroc": core.auroc_extremes,
}
GENE_CHUNK = 2048  # genes densified at a time


class AlignmentError(StfusionError, ValueError):
    """Prediction and truth do not share spots or genes."""


class MetricError(StfusionError, ValueError):
    """An unknown metric was requested."""


def _examples(names: Iterable, n: int = 3) -> str:
    names = list(names)[:n]
    return ", ".join(repr(str(x)) for x in names) if names else "none"


def _check_unique(index: pd.Index, what: str, side: str) -> None:
    if not index.is_unique:
        dup = index[index.duplicated()].unique()
        raise AlignmentError(
            f"{side} has duplicated {what} names (e.g. {_examples(dup)}); make them unique "
            f"(adata.{'obs' if what == 'spot' else 'var'}_names_make_unique()) before evaluating."
        )


def _overlap(truth_idx: pd.Index, pred_idx: pd.Index, what: str, *, truth_may_have_more: bool = False) -> pd.Index:
    _check_unique(truth_idx, what, "truth")
    _check_unique(pred_idx, what, "pred")
    common = truth_idx[truth_idx.isin(pred_idx)]
    if (len(common) < len(truth_idx) and not truth_may_have_more) or len(common) < len(pred_idx):
        log.warning(
            "evaluate: %d of %d truth %ss and %d of %d predicted %ss match by name; scoring only those",
            len(common), len(truth_idx), what, len(common), len(pred_idx), what,
        )
    return common


def _refuse(spots: pd.Index, genes: pd.Index, pred: ad.AnnData, truth: ad.AnnData) -> None:
    if len(spots) and len(genes):
        return
    raise AlignmentError(
        f"prediction and truth do not overlap: {len(spots)} spots match "
        f"(truth {truth.n_obs}, pred {pred.n_obs}) and {len(genes)} genes match "
        f"(truth {truth.n_vars}, pred {pred.n_vars}). Truth spots e.g. {_examples(truth.obs_names)}, "
        f"pred spots e.g. {_examples(pred.obs_names)}; truth genes e.g. {_examples(truth.var_names)}, "
        f"pred genes e.g. {_examples(pred.var_names)}. Use the same spot ids (obs_names) and gene "
        "names (var_names) on both sides, e.g. predict on the truth section itself."
    )


def aligned_names(pred: ad.AnnData, truth: ad.AnnData) -> tuple[pd.Index, pd.Index]:
    """Spot and gene names shared by ``pred`` and ``truth``, in truth's order.

    Logs a warning when only part overlaps (except truth genes the prediction does not
    cover: a measured section holds every gene); raises :class:`AlignmentError` (with the counts
    on each side and example names) when no spot or no gene is shared, or names repeat.
    """
    spots = _overlap(truth.obs_names, pred.obs_names, "spot")
    # a measured section holds every gene, a prediction the model's genes: no warning for that
    genes = _overlap(truth.var_names, pred.var_names, "gene", truth_may_have_more=True)
    _refuse(spots, genes, pred, truth)
    return spots, genes


def _matrix(adata: ad.AnnData, layer: str | None):
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise AlignmentError(f"layer '{layer}' not found; available: {list(adata.layers)}")
    return adata.layers[layer]


def _dense(m, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    sub = m[rows][:, cols]
    return sub.toarray().astype(float) if sparse.issparse(sub) else np.asarray(sub, dtype=float)


def _resolve(metrics) -> dict[str, Callable]:
    if isinstance(metrics, str) or callable(metrics):
        metrics = [metrics]
    out: dict[str, Callable] = {}
    for m in metrics:
        if callable(m):
            out[getattr(m, "__name__", repr(m))] = m
        elif m in METRICS:
            out[m] = METRICS[m]
        else:
            raise MetricError(f"unknown metric {m!r}; choose from {sorted(METRICS)} or pass a function")
    return out


def _section_name(truth: ad.AnnData, section: str | None) -> str:
    if section is not None:
        return str(section)
    return str(truth.uns.get(K.STFUSION, {}).get(K.SECTION_ID, "section"))


def evaluate(
    pred: ad.AnnData,
    truth: ad.AnnData,
    metrics=("pearson", "spearman", "rmse"),
    *,
    section: str | None = None,
    layer_pred: str | None = None,
    layer_truth: str | None = None,
) -> pd.DataFrame:
    """Per-gene metrics of ``pred`` against ``truth`` on the spots and genes they share.

    Spots (obs_names) and genes (var_names) are matched by name, in truth's order; a partial
    overlap is logged as a warning, no overlap raises :class:`AlignmentError`. ``metrics`` are
    names from :data:`METRICS` ("pearson", "spearman", "rmse", "rmse_z", "ssim", "js",
    "auroc") or functions ``f(truth, pred) -> per-gene array``. Values are read from ``X`` or
    the given layers, dense or sparse, a block of genes at a time.

    Returns
    -------
    DataFrame with columns ``gene``, ``section``, ``metric``, ``value`` (one row per gene and
    metric).
    """
    funcs = _resolve(metrics)
    spots, genes = aligned_names(pred, truth)
    rows_t, rows_p = truth.obs_names.get_indexer(spots), pred.obs_names.get_indexer(spots)
    cols_t, cols_p = truth.var_names.get_indexer(genes), pred.var_names.get_indexer(genes)
    mt, mp = _matrix(truth, layer_truth), _matrix(pred, layer_pred)
    values = {name: [] for name in funcs}
    for start in range(0, len(genes), GENE_CHUNK):
        sl = slice(start, start + GENE_CHUNK)
        t, p = _dense(mt, rows_t, cols_t[sl]), _dense(mp, rows_p, cols_p[sl])
        for name, f in funcs.items():
            values[name].append(np.asarray(f(t, p), dtype=float).ravel())
    sec = _section_name(truth, section)
    gene_names = np.asarray(genes, dtype=str)
    frames = [
        pd.DataFrame({"gene": gene_names, "section": sec, "metric": name, "value": np.concatenate(v)})
        for name, v in values.items()
    ]
    return pd.concat(frames, ignore_index=True)
