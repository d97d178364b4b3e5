"""Calibrated prediction intervals for imputed genes, TISSUE-style (Sun, Zou et al., Nat Methods 2024).

An imputer (SpaIM, Tangram, gimVI, kNN on the reference: anything with ``fit(reference,
spatial, genes=None)`` and ``impute(genes) -> AnnData``) predicts genes the spatial assay did
not measure; nothing measures them, so their errors are estimated from the genes it *did*
measure. The steps, as TISSUE (``tissue-sc``, ``tissue/main.py``) does them, in our own code:

1. **Calibration predictions.** The measured genes are shuffled (``seed``) and split into
   ``n_folds`` folds; for each fold a *fresh* imputer is fitted on the spatial data without
   that fold and predicts it. Every measured gene thus has a prediction made without seeing it.
   The fold's genes are replaced by one column of their summed counts (a name no reference gene
   has), so every fit normalises by the same cell totals. **Cost: ``n_folds`` extra fits of the
   imputer** (SpaIM, Tangram and gimVI retrain each time).
2. **Local variability** (TISSUE's "cell-centric variability"). Each cell's ``n_neighbors``
   nearest spatial neighbours (itself included) are weighted by ``exp(cosine similarity)``
   of the cells' calibration-prediction profiles (standardised, first ≤10 principal
   components); a gene's variability at a cell is the weighted root-mean-square difference of
   the neighbours' predictions to the cell's own, plus ``offset`` (TISSUE adds 1).
3. **Scores.** For a calibration gene, ``(measured − prediction) / variability`` per cell, the
   measured value in the interval's target space (below).
4. **Groups.** Genes are grouped by k-means on statistics of their prediction (log1p of the
   mean, SD and mean variability over cells; ``gene_groups``, ``"auto"``: 2–4 by silhouette,
   each group ≥ 5 calibration genes); within each gene group, cells are grouped by k-means on
   the group's standardised calibration predictions (``cell_groups``, ``"auto"`` as TISSUE:
   2–4 by silhouette). A group with fewer than ``min_group`` calibration scores uses all scores.
5. **Intervals.** In each (gene group, cell group) the conformal quantile of the |scores| at the
   finite-sample rank ``ceil((n + 1) · coverage)`` is the half-width multiplier; a gene to
   impute joins the gene group with the nearest centre of its own prediction statistics, and
   its interval at a cell is ``prediction ± multiplier × its own variability``. With
   ``symmetric=False`` the signed scores give separate lower and upper multipliers (their
   ``(1 − coverage)/2`` and ``(1 + coverage)/2`` quantiles). Lower ends are clipped at
   ``min(prediction, 0)`` (expression is non-negative), so the interval always holds the
   prediction.

**Target space of the intervals**: ``log1p(counts / cell total × 1e4)`` with the cell total
over the genes of the spatial data given, which a gene to impute is not part of (so a
calibration gene's measured value uses the total over the other measured genes). The intervals sit around the
imputer's own output (``X`` of the imputed AnnData); an imputer whose output is right only up
to a per-gene scale (SpaIM, Tangram) gets wide intervals, which is the honest answer.

Differences from TISSUE (on purpose): the spatial graph is the plain k nearest neighbours
(TISSUE also prunes edges longer than Q3 + 1.5 IQR of the neighbour distances); the
variability weights come from the calibration predictions only, so they are fixed at
calibration and a later request for other genes gets the same weights; genes are grouped by
statistics of their prediction rather than by the whole profile (a new gene has the same
statistics, whatever the cells); zero residuals are kept in the calibration set (TISSUE drops
them by default, which widens intervals beyond the nominal level).

Validity rests on the calibration genes' held-out errors resembling the imputed genes' errors.
An imputer whose output level moves with the number of training genes breaks this: on MERFISH,
SpaIM's fold models (75% of the panel) predict higher than its final model, and its 90%
intervals cover 80%; gimVI (50 epochs) on Slide-seq goes the other way and over-covers. kNN and
Tangram are within ±3 points on three real pairs. Measured coverage is in
``benchmarks/intervals/imputation.md``. More folds bring the fold models closer to the final one.

Everything calibrated is kept as arrays (``calibration.npz``, no pickle) and a JSON card
(``calibration.json``): a saved and loaded calibration gives identical intervals.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from stfusion import _constants as K
from stfusion.errors import StfusionError
from stfusion.models.conformal_impute.pieces import (
    MIN_GENES_PER_GROUP, _choose_k, _coords, _dense, _standardise, cross_validated_predictions, gene_statistics,
    local_variability, neighbour_weights, spatial_neighbours,
)  # fmt: skip

__all__ = [
    "CalibratedImputerMixin", "ImputationCalibration", "calibrate_imputer", "conformal_impute",
    "cross_validated_predictions", "local_variability", "spatial_neighbours",
]  # fmt: skip

CARD_FILE = "calibration.json"
ARRAYS_FILE = "calibration.npz"
KIND = "conformal_tissue"


# --------------------------------------------------------------------------- the calibration
@dataclass
class ImputationCalibration:
    """What TISSUE-style intervals need, as arrays: apply it to any imputed genes of the same cells."""

    genes: list[str]  # calibration (measured) genes
    obs_names: list[str]
    neighbours: np.ndarray  # cells x k, int64
    weights: np.ndarray  # cells x k
    scores: np.ndarray  # cells x calibration genes, signed (measured − prediction) / variability
    gene_group: np.ndarray  # calibration genes -> gene group
    gene_centres: np.ndarray  # gene groups x statistics, standardised
    stat_mean: np.ndarray
    stat_sd: np.ndarray
    cell_groups: np.ndarray  # gene groups x cells
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def offset(self) -> float:
        return float(self.params.get("offset", 1.0))

    @property
    def min_group(self) -> int:
        return int(self.params.get("min_group", 100))

    # -- the parts of an interval
    def variability(self, pred: np.ndarray) -> np.ndarray:
        return local_variability(pred, self.neighbours, self.weights, self.offset)

    def assign_gene_groups(self, pred: np.ndarray, variability: np.ndarray) -> np.ndarray:
        """Gene group of each column of ``pred``: the nearest centre of its standardised statistics."""
        if len(self.gene_centres) == 1:
            return np.zeros(pred.shape[1], np.int64)
        z = (gene_statistics(pred, variability, self.offset) - self.stat_mean) / self.stat_sd
        return np.argmin(((z[:, None, :] - self.gene_centres[None]) ** 2).sum(axis=2), axis=1).astype(np.int64)

    def multipliers(self, coverage: float, symmetric: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper half-width multipliers per (gene group, cell group)."""
        if not 0.0 < coverage < 1.0:
            raise ValueError(f"coverage must be between 0 and 1 (e.g. 0.9), got {coverage}.")
        n_gg = len(self.gene_centres)
        n_cg = int(self.cell_groups.max()) + 1 if self.cell_groups.size else 1
        lo, hi = np.zeros((n_gg, n_cg)), np.zeros((n_gg, n_cg))
        pooled = self.scores.ravel()
        for g in range(n_gg):
            in_gene = self.gene_group == g
            for c in range(n_cg):
                s = self.scores[np.ix_(self.cell_groups[g] == c, in_gene)].ravel()
                if s.size < self.min_group:
                    s = pooled
                lo[g, c], hi[g, c] = _conformal_pair(s, coverage, symmetric)
        return lo, hi

    def intervals(self, pred: np.ndarray, coverage: float = 0.9, symmetric: bool = True,
                  nonnegative: bool = True) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """``(lower, upper)`` around ``pred`` (these cells x any genes) at nominal ``coverage``."""
        pred = np.asarray(pred, dtype=np.float64)
        if pred.ndim != 2 or pred.shape[0] != len(self.obs_names):
            raise StfusionError(f"Predictions have shape {pred.shape}; the calibration is for {len(self.obs_names)} cells.")
        var = self.variability(pred)
        groups = self.assign_gene_groups(pred, var)
        lo_m, hi_m = self.multipliers(coverage, symmetric)
        cell_g = self.cell_groups[groups].T  # cells x genes: each gene's cell groups
        lower = pred - lo_m[groups[None, :], cell_g] * var
        upper = pred + hi_m[groups[None, :], cell_g] * var
        if nonnegative:
            lower = np.maximum(lower, np.minimum(pred, 0.0))
        return lower, upper

    def apply(self, imputed: ad.AnnData, coverage: float = 0.9, symmetric: bool = True) -> ad.AnnData:
        """A copy of ``imputed`` with ``layers["lower"]``/``["upper"]`` and ``uns["stfusion"]["coverage"]``."""
        if list(map(str, imputed.obs_names)) != self.obs_names:
            raise StfusionError("The imputed cells are not the calibrated ones (names or order differ); "
                                "calibrate on the same spatial data the imputer was fitted to.")  # fmt: skip
        out = imputed.copy()
        lower, upper = self.intervals(_dense(imputed.X), coverage, symmetric)
        out.layers[K.LAYER_LOWER] = lower.astype(np.float32)
        out.layers[K.LAYER_UPPER] = upper.astype(np.float32)
        # float32 rounding must not put the prediction outside its interval
        x = np.asarray(out.X, dtype=np.float32)
        out.layers[K.LAYER_LOWER] = np.minimum(out.layers[K.LAYER_LOWER], x)
        out.layers[K.LAYER_UPPER] = np.maximum(out.layers[K.LAYER_UPPER], x)
        meta = dict(out.uns.get(K.STFUSION, {}))
        meta[K.COVERAGE] = self.describe(coverage, symmetric)
        out.uns[K.STFUSION] = meta
        return out

    def describe(self, coverage: float, symmetric: bool = True) -> dict[str, Any]:
        return {
            "nominal": float(coverage), "kind": KIND, "symmetric": bool(symmetric),
            "method": "TISSUE-style conformal intervals (Sun, Zou et al. 2024): cross-validated predictions of "
                      "the measured genes, scores normalised by local spatial variability, grouped quantiles",
            "target": "log1p(counts / cell total x 1e4), total over the spatial data's measured genes",
            "layers": [K.LAYER_LOWER, K.LAYER_UPPER], "n_calibration_genes": len(self.genes),
            "n_gene_groups": int(len(self.gene_centres)), **{k: v for k, v in self.params.items() if k != "source"},
        }  # fmt: skip

    # -- persistence (JSON + npz, no pickle)
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        card = {"kind": KIND, "genes": self.genes, "obs_names": self.obs_names, "params": self.params}
        (directory / CARD_FILE).write_text(json.dumps(card, indent=1))
        arrays = {k: getattr(self, k) for k in ("neighbours", "weights", "scores", "gene_group", "gene_centres",
                                                 "stat_mean", "stat_sd", "cell_groups")}  # fmt: skip
        with open(directory / ARRAYS_FILE, "wb") as fh:
            np.savez(fh, **arrays)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ImputationCalibration:
        directory = Path(directory)
        if not (directory / CARD_FILE).exists() or not (directory / ARRAYS_FILE).exists():
            raise StfusionError(f"{directory} holds no interval calibration ({CARD_FILE} and {ARRAYS_FILE}).")
        card = json.loads((directory / CARD_FILE).read_text())
        with np.load(directory / ARRAYS_FILE, allow_pickle=False) as a:
            arrays = {k: a[k] for k in a.files}
        return cls(genes=list(card["genes"]), obs_names=list(card["obs_names"]), params=dict(card["params"]), **arrays)

    @classmethod
    def load_if_present(cls, directory: str | Path) -> ImputationCalibration | None:
        return cls.load(directory) if (Path(directory) / CARD_FILE).exists() else None


def _conformal_pair(scores: np.ndarray, coverage: float, symmetric: bool) -> tuple[float, float]:
    """Lower and upper multipliers from signed scores at the finite-sample conformal ranks."""
    if symmetric:
        q = _upper_rank(np.abs(scores), coverage)
        return q, q
    tail = (1.0 - coverage) / 2.0
    return _upper_rank(-scores, 1.0 - tail), _upper_rank(scores, 1.0 - tail)


def _upper_rank(values: np.ndarray, level: float) -> float:
    """The ``ceil((n + 1) · level)``-th smallest value (the largest when that rank exceeds n), at least 0."""
    v = np.sort(values[np.isfinite(values)])
    if v.size == 0:
        raise StfusionError("No finite calibration scores; the calibration genes were not predicted.")
    rank = math.ceil((v.size + 1) * level)
    if rank > v.size:
        warnings.warn(f"{v.size} calibration scores are too few for coverage {level}; using the largest.", stacklevel=4)
        rank = v.size
    return max(float(v[rank - 1]), 0.0)


def calibrate_imputer(
    make_imputer: Callable[[], Any], reference: ad.AnnData, spatial: ad.AnnData, genes: Sequence[str] | None = None,
    *, n_folds: int = 5, n_neighbors: int = 15, gene_groups: int | str = "auto", cell_groups: int | str = "auto",
    offset: float = 1.0, min_group: int = 100, seed: int = 0,
) -> ImputationCalibration:  # fmt: skip
    """Calibrate TISSUE-style intervals for imputations of ``spatial`` (the module docstring says how).

    ``make_imputer`` returns a fresh, unfitted imputer; it is fitted ``n_folds`` times (once
    per fold of the measured ``genes``, default: every gene of ``spatial`` in the reference).
    """
    if genes is None:
        genes = [str(g) for g in spatial.var_names if g in set(reference.var_names)]
    genes = [str(g) for g in genes]
    if len(genes) < 2:
        raise StfusionError(f"Calibration needs at least 2 measured genes shared with the reference, got {len(genes)}.")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}.")
    coords = _coords(spatial)
    pred, truth = cross_validated_predictions(make_imputer, reference, spatial, genes, n_folds=n_folds, seed=seed)
    return calibration_from_predictions(pred, truth, genes, [str(c) for c in spatial.obs_names], coords,
                                        n_neighbors=n_neighbors, gene_groups=gene_groups, cell_groups=cell_groups,
                                        offset=offset, min_group=min_group, seed=seed,
                                        extra={"n_folds": int(n_folds)})  # fmt: skip


def calibration_from_predictions(
    pred: np.ndarray, truth: np.ndarray, genes: Sequence[str], obs_names: Sequence[str], coords: np.ndarray, *,
    n_neighbors: int = 15, gene_groups: int | str = "auto", cell_groups: int | str = "auto", offset: float = 1.0,
    min_group: int = 100, seed: int = 0, extra: dict[str, Any] | None = None,
) -> ImputationCalibration:  # fmt: skip
    """The calibration from held-out predictions ``pred`` and measured ``truth`` (cells x ``genes``)."""
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    if pred.shape != truth.shape or pred.shape != (len(obs_names), len(genes)):
        raise StfusionError(f"pred {pred.shape} and truth {truth.shape} must both be cells x genes "
                            f"({len(obs_names)} x {len(genes)}).")  # fmt: skip
    neighbours = spatial_neighbours(coords, n_neighbors)
    weights = neighbour_weights(pred, neighbours, seed=seed)
    var = local_variability(pred, neighbours, weights, offset)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = (truth - pred) / var
    scores[~np.isfinite(scores)] = np.nan if offset == 0 else 0.0
    stats, mean, sd = _standardise(gene_statistics(pred, var, offset))
    gene_group, centres = _choose_k(stats, gene_groups, seed, MIN_GENES_PER_GROUP)
    n_cells = len(obs_names)
    cell_labels = np.zeros((len(centres), n_cells), np.int64)
    for g in range(len(centres)):
        profile, _, _ = _standardise(pred[:, gene_group == g])
        if profile.shape[1] > 10:
            from sklearn.decomposition import PCA

            profile = PCA(n_components=10, random_state=seed).fit_transform(profile)
        cell_labels[g], _ = _choose_k(profile, cell_groups, seed, max(1, min_group // max(1, int((gene_group == g).sum()))))
    params = {"offset": float(offset), "n_neighbors": int(neighbours.shape[1]), "min_group": int(min_group),
              "seed": int(seed), "gene_groups_requested": str(gene_groups), "cell_groups_requested": str(cell_groups),
              "cell_groups": [int(c.max()) + 1 for c in cell_labels], **(extra or {})}  # fmt: skip
    return ImputationCalibration(
        genes=[str(g) for g in genes], obs_names=[str(c) for c in obs_names], neighbours=neighbours.astype(np.int64),
        weights=weights, scores=scores.astype(np.float32), gene_group=gene_group, gene_centres=centres,
        stat_mean=mean, stat_sd=sd, cell_groups=cell_labels, params=params,
    )  # fmt: skip


def conformal_impute(
    make_imputer: Callable[[], Any], reference: ad.AnnData, spatial: ad.AnnData, impute_genes: Sequence[str],
    measured: Sequence[str] | None = None, *, coverage: float = 0.9, symmetric: bool = True, n_folds: int = 5,
    n_neighbors: int = 15, gene_groups: int | str = "auto", cell_groups: int | str = "auto", offset: float = 1.0,
    seed: int = 0,
) -> ad.AnnData:  # fmt: skip
    """Impute ``impute_genes`` with intervals: ``n_folds + 1`` fits of a fresh imputer each.

    One imputer is fitted on every ``measured`` gene (default: the genes ``spatial`` shares with
    the reference) and imputes ``impute_genes``; ``n_folds`` more calibrate the intervals
    (:func:`calibrate_imputer`). Returns the imputed AnnData with ``layers["lower"]``,
    ``layers["upper"]`` (in the space of ``X``) and ``uns["stfusion"]["coverage"]``.
    """
    if measured is None:
        measured = [str(g) for g in spatial.var_names if g in set(reference.var_names)]
    measured = [str(g) for g in measured]
    calib = calibrate_imputer(make_imputer, reference, spatial, measured, n_folds=n_folds, n_neighbors=n_neighbors,
                              gene_groups=gene_groups, cell_groups=cell_groups, offset=offset, seed=seed)  # fmt: skip
    imputed = make_imputer().fit(reference, spatial, measured).impute(list(impute_genes))
    return calib.apply(imputed, coverage, symmetric)


# --------------------------------------------------------------------------- the imputers' side
class CalibratedImputerMixin:
    """``calibrate(reference, spatial)`` and ``impute(genes, coverage=...)`` for an imputer class.

    The class provides ``hyperparams`` (its constructor's arguments) and ``_measured_genes()``
    (the genes it was fitted on); its ``impute`` calls :meth:`_with_intervals` when ``coverage``
    is given, and its ``save``/``load`` call :meth:`_save_calibration`/:meth:`_load_calibration`.
    """

    calibration_: ImputationCalibration | None = None

    def _measured_genes(self) -> list[str]:  # pragma: no cover - each imputer overrides
        raise NotImplementedError

    def calibrate(
        self, reference: ad.AnnData, spatial: ad.AnnData, *, n_folds: int = 5, n_neighbors: int = 15,
        gene_groups: int | str = "auto", cell_groups: int | str = "auto", offset: float = 1.0, seed: int = 0,
    ) -> Any:  # fmt: skip
        """Calibrate prediction intervals on the genes this imputer was fitted on (TISSUE-style).

        **Cost: ``n_folds`` more fits** of an imputer with these hyperparameters (each on the
        spatial data without one fold of the measured genes). ``reference`` and ``spatial`` must
        be the data of :meth:`fit`. Afterwards ``impute(genes, coverage=0.9)`` adds
        ``layers["lower"]``/``["upper"]``; :meth:`save` keeps the calibration.
        """
        measured = self._measured_genes()
        cls, hp = type(self), dict(self.hyperparams)
        self.calibration_ = calibrate_imputer(lambda: cls(**hp), reference, spatial, measured, n_folds=n_folds,
                                              n_neighbors=n_neighbors, gene_groups=gene_groups,
                                              cell_groups=cell_groups, offset=offset, seed=seed)  # fmt: skip
        return self

    def _with_intervals(self, out: ad.AnnData, coverage: float | None, symmetric: bool = True) -> ad.AnnData:
        if coverage is None:
            return out
        if self.calibration_ is None:
            raise StfusionError(f"{type(self).__name__} has no interval calibration: call "
                                ".calibrate(reference, spatial) after .fit (it refits the imputer per fold).")  # fmt: skip
        return self.calibration_.apply(out, coverage, symmetric)

    def _save_calibration(self, directory: str | Path) -> None:
        if self.calibration_ is not None:
            self.calibration_.save(directory)

    def _load_calibration(self, directory: str | Path) -> None:
        self.calibration_ = ImputationCalibration.load_if_present(directory)


def coverage_table(truth: np.ndarray, lower: np.ndarray, upper: np.ndarray, genes: Sequence[str]) -> pd.DataFrame:
    """Per gene: observed coverage and mean width of the intervals."""
    from stfusion.metrics.core import interval_coverage

    per_gene, _ = interval_coverage(truth, lower, upper)
    return pd.DataFrame({"gene": list(genes), "coverage": per_gene, "width": np.nanmean(upper - lower, axis=0)})
