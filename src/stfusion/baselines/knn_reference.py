"""SpaGE-like imputation baseline: average the k nearest reference cells in a shared PCA space.

For each spatial cell the genes to impute are the mean over its ``k`` nearest reference
cells (default 50, the usual neighbourhood size of SpaGE/Tangram-style kNN imputation),
found in a PCA space of the *matching genes*: the genes both datasets measure, minus the
ones being imputed (so a hidden gene never informs its own imputation).

Feature space: each dataset is normalised over the matching genes to 1e4 per cell and
log1p-transformed, then z-scored per gene with that dataset's own mean and sd (this removes
platform-wide gene-specific capture differences); PCA (default 30 components, at most
``n_matching_genes - 1``) is fitted on the reference and both datasets are projected on it.
Output: the neighbours' mean of ``log1p(counts / reference cell total over all genes × 1e4)``,
i.e. the reference's log1p-normalised space.

Large spatial tables (Visium HD, Xenium: ~500,000 cells) are processed ``chunk_size`` cells at a
time (features, PCA projection, neighbour search, averaging), with the spatial z-scoring
statistics gathered in passes over the chunks, so memory grows with the chunk and the output,
not with cells x matching genes; ``chunk_size=None`` does all cells at once (same result up to
float rounding).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from stfusion import _constants as K
from stfusion.baselines.interpolation import load_arrays, save_arrays
from stfusion.data.normalize import log1p_normalize_total
from stfusion.errors import StfusionError
from stfusion.models.base import TARGET_SUM, NotFittedError
from stfusion.models.conformal_impute import CalibratedImputerMixin


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 1e-12, sd, 1.0)


def matching_features(counts) -> np.ndarray:
    """log1p(counts / total over these genes × 1e4), z-scored per gene (cells with zero total stay 0)."""
    return _zscore(log1p_normalize_total(counts, TARGET_SUM).astype(np.float64))


class KNNReferenceImputer(CalibratedImputerMixin):
    """Impute unmeasured genes of spatial cells from their nearest reference cells.

    Parameters
    ----------
    ``calibrate(reference, spatial)`` then ``impute(genes, coverage=0.9)`` adds TISSUE-style
    interval layers (:mod:`stfusion.models.conformal_impute`).

    k
        Reference neighbours averaged per spatial cell (capped at the reference size).
    n_comps
        PCA components (capped at ``n_matching_genes - 1`` and ``n_reference_cells - 1``).
    """

    name: ClassVar[str] = "knn_reference"
    description: ClassVar[str] = "Mean of the k nearest reference cells in a shared PCA space (SpaGE-like)."
    input_kind: ClassVar[str] = "reference"
    has_uncertainty: ClassVar[bool] = False
    has_super_resolution: ClassVar[bool] = False

    def __init__(self, k: int = 50, n_comps: int = 30, chunk_size: int | None = 50_000) -> None:
        if k < 1 or n_comps < 1 or (chunk_size is not None and chunk_size < 1):
            raise ValueError(f"k, n_comps and chunk_size must be positive, got k={k}, n_comps={n_comps}, chunk_size={chunk_size}.")
        self.hyperparams: dict[str, Any] = {"k": int(k), "n_comps": int(n_comps),
                                            "chunk_size": None if chunk_size is None else int(chunk_size)}  # fmt: skip
        self.ref_counts_: sparse.csr_matrix | None = None

    def fit(
        self, reference: ad.AnnData, spatial: ad.AnnData, genes: Sequence[str] | None = None
    ) -> KNNReferenceImputer:
        """Keep both datasets' counts. ``genes``: the candidate matching genes (default: all shared)."""
        shared = spatial.var_names[spatial.var_names.isin(reference.var_names)]
        if genes is not None:
            bad = pd.Index(genes).difference(shared)
            if len(bad):
                raise StfusionError(
                    f"{len(bad)} matching genes are not measured in both datasets (e.g. {list(bad[:3])}). "
                    "Pass genes present in both the reference and the spatial data."
                )
            shared = pd.Index(genes)
        if len(shared) < 3:
            raise StfusionError(
                f"The reference and spatial data share {len(shared)} genes; at least 3 are needed. "
                "Harmonise gene names (symbols vs IDs, case) first."
            )
        self.calibration_ = None  # a calibration belongs to one fit
        self.ref_counts_ = sparse.csr_matrix(reference.X, dtype=np.float64)
        self.ref_genes_ = np.asarray(reference.var_names, dtype=str)
        self.shared_ = np.asarray(shared, dtype=str)
        self.sp_counts_ = sparse.csr_matrix(spatial[:, list(shared)].X, dtype=np.float64)
        self.sp_obs_names_ = np.asarray(spatial.obs_names, dtype=str)
        self.sp_obsm_ = {k: np.asarray(v) for k, v in spatial.obsm.items() if not isinstance(v, pd.DataFrame)}
        return self

    def impute(self, genes: Sequence[str], coverage: float | None = None) -> ad.AnnData:
        """Spatial cells x ``genes``, in the reference's log1p-normalised space (var ``imputed`` = True).

        ``coverage`` (e.g. 0.9): add calibrated interval layers (needs :meth:`calibrate` first)."""
        if self.ref_counts_ is None:
            raise NotFittedError("KNNReferenceImputer is not fitted: call .fit(reference, spatial) first.")
        genes = [str(g) for g in genes]
        ref_index = pd.Index(self.ref_genes_)
        missing = pd.Index(genes).difference(ref_index)
        if len(missing):
            raise StfusionError(
                f"{len(missing)} genes to impute are not in the reference (e.g. {list(missing[:3])}); "
                "only genes the reference measures can be imputed."
            )
        pca, knn, sp_cols = self._space(genes)
        cols = ref_index.get_indexer(genes)
        totals = np.asarray(self.ref_counts_.sum(axis=1)).ravel()
        values = log1p_normalize_total(self.ref_counts_[:, cols], TARGET_SUM, totals=totals)
        mean, sd = self._spatial_stats(sp_cols)
        out = np.empty((self.sp_counts_.shape[0], len(genes)), dtype=np.float32)
        for rows in self._chunks():
            feats = (self._spatial_log1p(rows, sp_cols) - mean) / sd
            neighbours = knn.kneighbors(pca.transform(feats), return_distance=False)
            out[rows] = _neighbour_mean(neighbours, values)
        return self._with_intervals(self._wrap(out, genes), coverage)

    def _measured_genes(self) -> list[str]:
        if self.ref_counts_ is None:
            raise NotFittedError("KNNReferenceImputer is not fitted: call .fit(reference, spatial) first.")
        return [str(g) for g in self.shared_]

    def _space(self, genes: Sequence[str]) -> tuple[PCA, NearestNeighbors, np.ndarray]:
        """PCA and neighbour index of the reference over the matching genes; spatial columns of those genes."""
        shared = pd.Index(self.shared_)
        train = shared[~shared.isin(genes)]
        if len(train) < 3:
            raise StfusionError(
                f"Only {len(train)} shared genes are left to match cells after removing the {len(genes)} "
                "genes to impute; impute fewer genes at a time (e.g. in folds)."
            )
        ref_feat = matching_features(self.ref_counts_[:, pd.Index(self.ref_genes_).get_indexer(train)])
        n_ref = ref_feat.shape[0]
        n_comps = max(1, min(self.hyperparams["n_comps"], len(train) - 1, n_ref - 1))
        pca = PCA(n_components=n_comps, random_state=0).fit(ref_feat)
        knn = NearestNeighbors(n_neighbors=min(self.hyperparams["k"], n_ref)).fit(pca.transform(ref_feat))
        return pca, knn, shared.get_indexer(train)

    def _chunks(self) -> list[slice]:
        n = self.sp_counts_.shape[0]
        step = self.hyperparams.get("chunk_size") or max(n, 1)
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    def _spatial_log1p(self, rows: slice, cols: np.ndarray) -> np.ndarray:
        return log1p_normalize_total(self.sp_counts_[rows][:, cols], TARGET_SUM).astype(np.float64)

    def _spatial_stats(self, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-gene mean and sd (1 where constant) of the spatial features, in passes over the chunks."""
        n = self.sp_counts_.shape[0]
        total = sum(self._spatial_log1p(rows, cols).sum(axis=0) for rows in self._chunks())
        mean = total / max(n, 1)
        sq = sum(((self._spatial_log1p(rows, cols) - mean) ** 2).sum(axis=0) for rows in self._chunks())
        sd = np.sqrt(sq / max(n, 1))
        return mean, np.where(sd > 1e-12, sd, 1.0)

    def _wrap(self, values: np.ndarray, genes: list[str]) -> ad.AnnData:
        out = ad.AnnData(
            X=values.astype(np.float32),
            obs=pd.DataFrame(index=pd.Index(self.sp_obs_names_)),
            var=pd.DataFrame({"imputed": np.ones(len(genes), dtype=bool)}, index=pd.Index(genes)),
        )
        for key, arr in self.sp_obsm_.items():
            out.obsm[key] = arr.copy()
        out.uns[K.STFUSION] = {"method": self.name, "expression_space": "log1p_cp10k_reference"}
        return out

    # -- persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``model.json`` and both datasets' counts (``arrays.npz``, no pickle)."""
        if self.ref_counts_ is None:
            raise NotFittedError("KNNReferenceImputer is not fitted: call .fit(reference, spatial) first.")
        from stfusion import __version__

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        card = {"method": self.name, "version": __version__, "hyperparams": self.hyperparams,
                "obsm_keys": list(self.sp_obsm_)}
        (directory / "model.json").write_text(json.dumps(card, indent=2))
        arrays = {"ref_genes": self.ref_genes_, "shared": self.shared_, "sp_obs_names": self.sp_obs_names_}
        arrays.update(_csr_arrays("ref", self.ref_counts_))
        arrays.update(_csr_arrays("sp", self.sp_counts_))
        arrays.update({f"obsm__{k}": v for k, v in self.sp_obsm_.items()})
        save_arrays(directory, arrays)
        self._save_calibration(directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> KNNReferenceImputer:
        path = Path(directory) / "model.json"
        if not path.exists():
            raise StfusionError(f"{directory} is not a saved stfusion model (no model.json). Save one with .save(dir).")
        card = json.loads(path.read_text())
        model = cls(**card["hyperparams"])
        a = load_arrays(directory)
        model.ref_genes_, model.shared_, model.sp_obs_names_ = a["ref_genes"], a["shared"], a["sp_obs_names"]
        model.ref_counts_, model.sp_counts_ = _csr_from(a, "ref"), _csr_from(a, "sp")
        model.sp_obsm_ = {k: a[f"obsm__{k}"] for k in card["obsm_keys"]}
        model._load_calibration(directory)
        return model


def _neighbour_mean(neighbours: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean of ``values`` rows over each row of neighbour indices (sparse averaging matrix)."""
    rows = np.repeat(np.arange(len(neighbours)), neighbours.shape[1])
    weights = sparse.csr_matrix(
        (np.full(rows.size, 1.0 / neighbours.shape[1]), (rows, neighbours.ravel())),
        shape=(len(neighbours), values.shape[0]),
    )
    return np.asarray(weights @ values)


def _csr_arrays(prefix: str, m: sparse.csr_matrix) -> dict[str, np.ndarray]:
    return {f"{prefix}_data": m.data, f"{prefix}_indices": m.indices, f"{prefix}_indptr": m.indptr,
            f"{prefix}_shape": np.asarray(m.shape)}


def _csr_from(a: dict[str, np.ndarray], prefix: str) -> sparse.csr_matrix:
    return sparse.csr_matrix((a[f"{prefix}_data"], a[f"{prefix}_indices"], a[f"{prefix}_indptr"]),
                             shape=tuple(a[f"{prefix}_shape"]))
