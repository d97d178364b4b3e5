"""The pieces of TISSUE-style calibration (:mod:`stfusion.models.conformal_impute`): spatial
neighbourhoods and their weights, local variability of a prediction, gene statistics, k-means
groups, and cross-validated predictions of the measured genes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from stfusion import _constants as K
from stfusion.errors import StfusionError

TARGET_SUM = 1e4
AUTO_K = (2, 3, 4)
MIN_GENES_PER_GROUP = 5

# --------------------------------------------------------------------------- pieces
def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)


def _coords(spatial: ad.AnnData) -> np.ndarray:
    if K.SPATIAL not in spatial.obsm:
        raise StfusionError(f"The spatial data has no obsm[{K.SPATIAL!r}] coordinates; intervals need cell positions.")
    return np.asarray(spatial.obsm[K.SPATIAL], dtype=np.float64)[:, :2]


def spatial_neighbours(coords: np.ndarray, n_neighbors: int = 15) -> np.ndarray:
    """Indices (cells x k) of each cell's ``n_neighbors`` nearest cells, itself first (k capped at the cells)."""
    from sklearn.neighbors import NearestNeighbors

    coords = np.asarray(coords, dtype=np.float64)
    k = int(min(n_neighbors, len(coords)))
    if k < 1:
        raise StfusionError("No cells to build a spatial neighbourhood from.")
    idx = NearestNeighbors(n_neighbors=k).fit(coords).kneighbors(coords, return_distance=False)
    # the cell itself first even when duplicates share its position
    self_col = np.arange(len(coords))
    has_self = (idx == self_col[:, None]).any(axis=1)
    idx[~has_self, -1] = self_col[~has_self]
    order = np.argsort(idx != self_col[:, None], axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)


def neighbour_weights(profiles: np.ndarray, neighbours: np.ndarray, n_pcs: int = 10, seed: int = 0) -> np.ndarray:
    """``exp(cosine similarity)`` of each cell's profile to its neighbours' (standardised, ≤ ``n_pcs`` PCs)."""
    from sklearn.decomposition import PCA

    x = np.asarray(profiles, dtype=np.float64)
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 1e-12, sd, 1.0)
    n_comp = int(min(n_pcs, x.shape[1], x.shape[0]))
    if n_comp >= 1 and x.shape[1] > n_comp:
        x = PCA(n_components=n_comp, random_state=seed).fit_transform(x)
    norm = np.linalg.norm(x, axis=1)
    unit = x / np.where(norm > 1e-12, norm, 1.0)[:, None]
    cos = np.einsum("cd,ckd->ck", unit, unit[neighbours])
    return np.exp(cos)


def local_variability(pred: np.ndarray, neighbours: np.ndarray, weights: np.ndarray, offset: float = 1.0) -> np.ndarray:
    """Cells x genes: weighted RMS of the neighbours' predictions minus the cell's own, plus ``offset``."""
    pred = np.asarray(pred, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum(axis=1, keepdims=True)
    out = np.empty_like(pred)
    step = max(1, 2_000_000 // max(1, neighbours.shape[1] * pred.shape[1]))
    for i in range(0, len(pred), step):
        nb = neighbours[i : i + step]
        diff = pred[nb] - pred[i : i + step, None, :]
        out[i : i + step] = np.sqrt(np.einsum("ck,ckg->cg", w[i : i + step], diff**2))
    return out + float(offset)


def gene_statistics(pred: np.ndarray, variability: np.ndarray, offset: float) -> np.ndarray:
    """Genes x 3: log1p of the mean and SD of the prediction and of its mean variability (less ``offset``)."""
    pred = np.asarray(pred, dtype=np.float64)
    stats = np.stack([np.abs(pred.mean(axis=0)), pred.std(axis=0), np.maximum(variability.mean(axis=0) - offset, 0.0)], 1)
    return np.log1p(stats)


def _kmeans(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):  # tiny problems: OpenMP threads only spin
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
    return km.labels_.astype(np.int64), km.cluster_centers_


def _choose_k(x: np.ndarray, k, seed: int, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and centres of k-means with ``k`` groups ("auto": best silhouette of 2–4, stopping at the first
    drop as TISSUE; a k leaving a group smaller than ``min_size`` is not taken)."""
    from sklearn.metrics import silhouette_score

    n = len(x)
    one = (np.zeros(n, np.int64), x.mean(axis=0, keepdims=True))
    if k == "auto":
        best, best_score = one, -np.inf
        for kk in AUTO_K:
            if kk * min_size > n or len(np.unique(x, axis=0)) <= kk:
                break
            labels, centres = _kmeans(x, kk, seed)
            if np.bincount(labels, minlength=kk).min() < min_size:
                break
            score = silhouette_score(x, labels, sample_size=min(n, 3000), random_state=seed)  # O(n^2): subsample
            if score <= best_score:
                break
            best, best_score = (labels, centres), score
        return best
    k = int(k)
    if k < 1:
        raise ValueError(f"Group counts must be >= 1 or 'auto', got {k}.")
    k = min(k, max(1, n // max(min_size, 1)), len(np.unique(x, axis=0)))
    return one if k <= 1 else _kmeans(x, k, seed)


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean, sd = x.mean(axis=0), x.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    return (x - mean) / sd, mean, sd


def _fold_of(genes: list[str], n_folds: int, seed: int) -> list[list[str]]:
    order = np.random.default_rng(seed).permutation(len(genes))
    return [[genes[i] for i in part] for part in np.array_split(order, n_folds) if len(part)]


HELD_OUT_COLUMN = "__stfusion_held_out_counts__"


def _without(spatial: ad.AnnData, fold: Sequence[str], reference_genes) -> ad.AnnData:
    """``spatial`` without the genes of ``fold``, plus one column of their summed counts (same cell totals)."""
    from scipy import sparse

    name = HELD_OUT_COLUMN
    while name in set(reference_genes) or name in set(spatial.var_names):
        name += "_"
    held = set(fold)
    keep = [g for g in spatial.var_names if g not in held]
    x = sparse.csr_matrix(spatial[:, keep].X)
    summed = sparse.csr_matrix(np.asarray(spatial[:, list(fold)].X.sum(axis=1)).reshape(-1, 1).astype(x.dtype))
    out = ad.AnnData(
        X=sparse.hstack([x, summed], format="csr"), obs=spatial.obs.copy(),
        var=pd.DataFrame(index=pd.Index([*map(str, keep), name])), uns=dict(spatial.uns),
    )  # fmt: skip
    for key, arr in spatial.obsm.items():
        out.obsm[key] = arr.copy()
    return out


def cross_validated_predictions(
    make_imputer: Callable[[], Any], reference: ad.AnnData, spatial: ad.AnnData, genes: Sequence[str],
    n_folds: int = 5, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Each of ``genes`` predicted by an imputer fitted without its fold; and its measured value then.

    Returns ``(pred, truth)``, both spatial cells x ``genes``: ``truth`` in
    log1p(counts / total × 1e4) with the total over every gene of ``spatial`` but the gene
    itself (as for a gene to impute, which is not in the spatial data's total). Fits
    ``n_folds`` fresh imputers.

    Each fold's imputer gets the spatial data with the fold's genes replaced by one column of
    their summed counts (:data:`HELD_OUT_COLUMN`, a name no reference gene has, so no imputer
    learns from it): the imputer normalises by the same cell totals as one fitted on all
    measured genes, and never sees a held-out gene's own counts.
    """
    genes = [str(g) for g in genes]
    if not 2 <= n_folds <= len(genes):
        raise StfusionError(f"n_folds must be between 2 and the {len(genes)} measured genes, got {n_folds}.")
    pred = np.empty((spatial.n_obs, len(genes)))
    col = {g: i for i, g in enumerate(genes)}
    totals = np.asarray(spatial.X.sum(axis=1), dtype=np.float64).ravel()
    for fold in _fold_of(genes, n_folds, seed):
        held = set(fold)
        seen = _without(spatial, fold, reference.var_names)
        imputer = make_imputer()
        imputer.fit(reference, seen, [g for g in genes if g not in held])
        out = imputer.impute(fold)
        if list(map(str, out.obs_names)) != list(map(str, spatial.obs_names)):
            raise StfusionError("The imputer returned other cells than the spatial data's; intervals need the same cells.")
        cols = [col[g] for g in fold]
        pred[:, cols] = _dense(out[:, fold].X)
    counts = _dense(spatial[:, genes].X)
    rest = totals[:, None] - counts  # each gene's cell total without the gene itself
    with np.errstate(divide="ignore", invalid="ignore"):
        truth = np.where(rest > 0, np.log1p(counts / rest * TARGET_SUM), 0.0)
    return pred, truth
