"""Li et al. 2022's imputation benchmark (transcript distribution prediction), reproduced.

Li B., Zhang W., Guo C. et al. Benchmarking spatial and single-cell transcriptomics integration
methods for transcript distribution prediction and cell type deconvolution. *Nat Methods* 19,
662–670 (2022). Code: QuKunLab/SpatialBenchmarking, commit 3586b9d8 (read, not copied; what
follows is our own code written from the facts below).

What the protocol does, and where each fact comes from (files of that repository):

**Genes and split.** The genes of the spatial data that the scRNA-seq reference also measures,
in the spatial file's column order (``BLAST_GenePrediction.ipynb``, ``gimVI_impute``:
``Genes = list(Spatial_data_adata.var_names)`` indexes every test gene; ``doc/Tutorial.ipynb``:
``train_list = list(RNA_data.index & Spatial_data.columns)``); no filter on detection. They are
split into 10 folds, each hidden once ("10-X cross-validation", the notebook's first cell). The
repository never calls ``KFold``: ``Benchmarking/SpatialGenes.py`` and the notebooks import
``sklearn.model_selection.KFold`` but read the folds from per-dataset ``train_list.npy`` /
``test_list.npy`` files that are not published. We therefore split with
``KFold(n_splits=10, shuffle=True, random_state=seed)`` over that gene order (the run's seed;
``protocol_params``: ``n_splits``, ``shuffle``, ``random_state`` override it). Which genes fall
in which fold cannot be made identical to Li's.

**Inputs (Li's R-R scheme).** "We used raw count as input for predictions in this ipynb"
(``BLAST_GenePrediction.ipynb``): raw counts of both datasets go to every method, which then
applies its own preprocessing:

- Tangram (``Tangram_impute`` in the notebook and ``GenePrediction.Tangram_impute`` in
  ``SpatialGenes.py``): the reference is ``sc.pp.normalize_total`` (``target_sum=None``: each
  cell scaled to the median total) then ``sc.pp.log1p``, *in place* (the clustering copy is the
  same object), so Tangram maps and projects log-normalised reference expression; the spatial
  data stay raw counts, restricted to the training genes (``spatial_data_partial``), so
  ``tg.pp_adatas(..., genes=train_list)``'s ``rna_count_based`` density is computed from raw
  training-gene counts. ``tg.map_cells_to_space`` with the package defaults (1000 epochs,
  learning rate 0.1, ``density_prior="rna_count_based"``, ``random_state=None``) on
  ``cuda:0``; ``SpatialGenes.py``'s default ``modes="cells"``, the notebook's default
  ``modes="clusters"`` with Leiden clusters (normalise, log1p, ``highly_variable_genes``,
  ``scale(max_value=10)``, PCA, neighbours, ``leiden(resolution=0.5)``) and
  ``tg.project_genes(ad_map, RNA, cluster_label="leiden")`` (cluster sums, ``scale=True``). The
  prediction is ``tg.project_genes(...).X`` for the test genes Tangram kept (it drops genes
  without counts). Here: CPU instead of ``cuda:0``; ``random_state`` = the run's seed; Leiden
  through igraph (``flavor="igraph", n_iterations=-1``; Li's scanpy used ``leidenalg``), with
  k-means on the PCA when igraph is missing.
  Select the mode with the method's ``params = { mode = "cells" }`` (default) or ``"clusters"``;
  ``epochs`` overrides 1000.
- gimVI (notebook ``gimVI_impute``): reference restricted to the shared genes
  (``seq_data[:, Genes]``), spatial data to the training genes, raw counts,
  ``GIMVI(seq, spatial)`` with defaults, ``train(200)``, read-out
  ``get_imputed_values(normalized=False)[1]`` (expected counts of the spatial cells) for the
  test genes. Here: ``scvi.external.GIMVI`` of the installed scvi-tools, CPU, seed = run seed.
- SpaIM and kNN on the reference (not in Li's benchmark): the same raw-count inputs (the
  reference and the spatial training genes), each method's own normalisation, and its output
  scored as it comes, as Li scored every method's output. A test gene without counts in the
  reference cannot be imputed from it; it is scored as not predicted (Tangram drops such genes
  itself).

**Truth and metrics** (``Benchmarking/GenesMetrics.py``: ``cal_ssim``, ``scale_max``,
``scale_z_score``, ``scale_plus``, class ``count``; the notebook's ``CalculateMeteics``,
which produced the published ``*_Metrics.txt``): the truth is the raw spatial counts of the
test genes (``Insitu_count.txt`` as read by ``count``); per gene, NaNs filled with ``1e-20``:

- PCC: ``scipy.stats.pearsonr`` of raw truth and prediction (NaN for a constant column);
- SSIM: both columns divided by their maximum (``scale_max``), then ``cal_ssim`` with
  population moments, ``C1 = (0.01 M)^2``, ``C2 = (0.03 M)^2``, ``C3 = C2 / 2`` and
  ``M = [raw.max(), impute.max()][raw.max() > impute.max()]`` (the *smaller* maximum, as
  written; 1 after ``scale_max``);
- RMSE: both columns z-scored (``scipy.stats.zscore``, ddof 0), root mean squared difference;
- JS: both columns divided by their sum (``scale_plus``), ``M = (p + q) / 2``,
  ``0.5 * entropy(p, M) + 0.5 * entropy(q, M)`` (``scipy.stats.entropy``: natural log, inputs
  renormalised);
- a test gene a method did not predict: PCC 0, SSIM 0, RMSE 1.5, JS 1 (``CalculateMeteics``).

**Aggregation.** Per-gene values over the 10 folds (the published files hold one row per gene);
the figure's summaries per method are medians of these; the accuracy score (notebook section
"Calculated Accuracy score", ``get_score`` / ``make_score`` / ``plot_all``) ranks the methods
of one dataset on their *mean* PCC, SSIM, RMSE, JS (``fillna(0)``; PCC, SSIM: best = N;
RMSE, JS: largest = 1; each divided by N) and averages the four rank scores.

Every cell is also scored on stfusion's strict target (:func:`stfusion.benchmark.scoring.
score_imputation`: log1p(counts / cell total over all genes x 1e4)), rows ``target = "strict"``.
"""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from stfusion.benchmark.methods import make_model
from stfusion.benchmark.papers.base import PAPER, STRICT, PaperProtocol, tidy
from stfusion.benchmark.protocols import Fold
from stfusion.errors import ConfigError

__all__ = ["Li2022Imputation", "li_accuracy_score", "li_gene_folds", "li_metrics", "li_shared_genes"]

LI_METRICS = ("PCC", "SSIM", "RMSE", "JS")
NOT_PREDICTED = {"PCC": 0.0, "SSIM": 0.0, "RMSE": 1.5, "JS": 1.0}  # CalculateMeteics' values for a missing gene
FILL = 1e-20  # fillna value of GenesMetrics.count / CalculateMeteics


# ----------------------------------------------------------------------------- genes and split
def li_shared_genes(reference: ad.AnnData, spatial: ad.AnnData) -> list[str]:
    """Spatial genes that the reference measures, in the spatial data's order (no detection filter)."""
    ref = set(map(str, reference.var_names))
    return [str(g) for g in spatial.var_names if str(g) in ref]


def li_gene_folds(genes: list[str], n_splits: int = 10, shuffle: bool = True,
                  random_state: int | None = 0) -> list[tuple[list[str], list[str]]]:  # fmt: skip
    """``(train genes, test genes)`` per fold: ``sklearn.model_selection.KFold`` over ``genes``."""
    from sklearn.model_selection import KFold

    kf = KFold(n_splits=n_splits, shuffle=shuffle, random_state=random_state if shuffle else None)
    arr = np.asarray(genes, dtype=object)
    return [(list(arr[tr]), list(arr[te])) for tr, te in kf.split(arr)]


# ----------------------------------------------------------------------------- metrics
def _fill(a: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(a), FILL, a)


def _pcc(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    tc, pc = t - t.mean(0), p - p.mean(0)
    den = np.sqrt((tc**2).sum(0) * (pc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (tc * pc).sum(0) / den
    return np.where(den > 0, np.clip(r, -1, 1), np.nan)


def _ssim(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        t, p = _fill(t / t.max(0)), _fill(p / p.max(0))  # scale_max, then fillna
    tmax, pmax = t.max(0), p.max(0)
    m = np.where(tmax > pmax, pmax, tmax)  # [raw.max(), impute.max()][raw.max() > impute.max()]
    mu1, mu2 = t.mean(0), p.mean(0)
    s1, s2 = np.sqrt(((t - mu1) ** 2).mean(0)), np.sqrt(((p - mu2) ** 2).mean(0))
    s12 = ((t - mu1) * (p - mu2)).mean(0)
    c1, c2 = (0.01 * m) ** 2, (0.03 * m) ** 2
    c3 = c2 / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1) * (2 * s1 * s2 + c2) / (s1**2 + s2**2 + c2)
                * (s12 + c3) / (s1 * s2 + c3))  # fmt: skip


def _zscore(a: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a - a.mean(0)) / a.std(0)


def _rmse(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.sqrt(((_fill(_zscore(t)) - _fill(_zscore(p))) ** 2).mean(0))


def _js(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    from scipy.special import rel_entr

    with np.errstate(invalid="ignore", divide="ignore"):
        t, p = _fill(t / t.sum(0)), _fill(p / p.sum(0))  # scale_plus, then fillna
        m = (t + p) / 2

        def entropy(pk: np.ndarray, qk: np.ndarray) -> np.ndarray:  # scipy.stats.entropy(pk, qk), per column
            return rel_entr(pk / pk.sum(0), qk / qk.sum(0)).sum(0)

        return 0.5 * entropy(t, m) + 0.5 * entropy(p, m)


def li_metrics(truth: np.ndarray, pred: np.ndarray, predicted: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Li et al.'s per-gene PCC, SSIM, RMSE, JS of ``pred`` against the raw-count ``truth``
    (cells x genes); columns where ``predicted`` is False get the values of a gene the method
    did not predict."""
    t = _fill(np.asarray(truth, dtype=np.float64))
    p = _fill(np.asarray(pred, dtype=np.float64))
    if t.shape != p.shape or t.ndim != 2:
        raise ValueError(f"truth and prediction must be cells x genes of one shape, got {t.shape} and {p.shape}.")
    out = {"PCC": _pcc(t, p), "SSIM": _ssim(t, p), "RMSE": _rmse(t, p), "JS": _js(t, p)}
    if predicted is not None:
        miss = ~np.asarray(predicted, bool)
        for k, v in NOT_PREDICTED.items():
            out[k] = np.where(miss, v, out[k])
    return out


def li_accuracy_score(means: pd.DataFrame) -> pd.DataFrame:
    """Li et al.'s accuracy score (notebook ``get_score`` + ``plot_all``) from a methods x
    ("PCC", "SSIM", "RMSE", "JS") table of per-method *mean* metrics of one dataset.

    ``fillna(0)``; per metric the N methods are sorted descending and given N..1 (PCC, SSIM) or
    1..N (RMSE, JS), divided by N; AS is the sum of the four divided by 4.
    """
    r = means.loc[:, list(LI_METRICS)].astype(float).fillna(0)
    n = len(r)
    cols = {}
    for metric in LI_METRICS:
        order = r[metric].sort_values(ascending=False, kind="mergesort").index
        ranks = np.arange(n, 0, -1) if metric in ("PCC", "SSIM") else np.arange(1, n + 1)
        cols[metric] = pd.Series(ranks, index=order).reindex(r.index) / n
    score = pd.DataFrame(cols)
    score["AS"] = score.sum(axis=1) / 4
    return score


# ----------------------------------------------------------------------------- Li's method runs
def _li_normalised_reference(reference: ad.AnnData, genes: list[str]) -> ad.AnnData:
    """The reference as Li's Tangram sees it: normalize_total (median total) then log1p."""
    import scanpy as sc
    from scipy import sparse

    sc_data = ad.AnnData(X=sparse.csr_matrix(reference.X, dtype=np.float32),
                         obs=pd.DataFrame(index=pd.Index([str(c) for c in reference.obs_names])),
                         var=pd.DataFrame(index=pd.Index(genes)))  # fmt: skip
    sc.pp.normalize_total(sc_data)
    sc.pp.log1p(sc_data)
    return sc_data


def _li_leiden(sc_data: ad.AnnData, seed: int) -> np.ndarray:
    """Li's clusters: HVGs of the log-normalised reference, scale(10), PCA, neighbours, Leiden 0.5."""
    import scanpy as sc
    import torch

    threads = torch.get_num_threads()
    try:
        tmp = sc_data.copy()
        sc.pp.highly_variable_genes(tmp)
        tmp = tmp[:, tmp.var.highly_variable].copy()
        tmp.X = np.asarray(tmp.X.todense()) if hasattr(tmp.X, "todense") else tmp.X
        sc.pp.scale(tmp, max_value=10)
        sc.tl.pca(tmp, n_comps=max(1, min(50, tmp.n_vars - 1, tmp.n_obs - 1)))
        try:
            import igraph  # noqa: F401

            sc.pp.neighbors(tmp)
            sc.tl.leiden(tmp, resolution=0.5, flavor="igraph", n_iterations=-1, random_state=0)
            return tmp.obs["leiden"].astype(str).to_numpy()
        except ImportError:
            from sklearn.cluster import KMeans

            return KMeans(10, n_init=10, random_state=seed).fit_predict(tmp.obsm["X_pca"]).astype(str)
    finally:  # scanpy's threadpool limits can reset torch's thread count
        torch.set_num_threads(threads)


def li_tangram(reference: ad.AnnData, spatial_train: ad.AnnData, test: list[str], *, mode: str = "cells",
               epochs: int = 1000, seed: int = 0, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Li's Tangram_impute: (spatial cells x ``test`` prediction, whether each gene was predicted)."""
    from stfusion.baselines.peers import _preserved_rng, _require, _root_logger_untouched

    tg = _require("tangram", "Tangram")
    if mode not in ("cells", "clusters"):
        raise ConfigError(f"li2022 Tangram mode must be 'cells' or 'clusters', got {mode!r}.")
    ref_genes = [str(g) for g in reference.var_names]
    ids = {g: f"g{i}" for i, g in enumerate(ref_genes)}  # neutral ids survive Tangram's lower-casing
    sc_data = _li_normalised_reference(reference, [ids[g] for g in ref_genes])
    train = [str(g) for g in spatial_train.var_names]
    sp_data = ad.AnnData(X=np.asarray(spatial_train.X.todense() if hasattr(spatial_train.X, "todense")
                                      else spatial_train.X, dtype=np.float32),
                         obs=pd.DataFrame(index=pd.Index([str(c) for c in spatial_train.obs_names])),
                         var=pd.DataFrame(index=pd.Index([ids[g] for g in train])))  # fmt: skip
    if mode == "clusters":
        sc_data.obs["leiden"] = pd.Categorical(_li_leiden(sc_data, seed))
    with _preserved_rng(), _root_logger_untouched():
        tg.pp_adatas(sc_data, sp_data, genes=[ids[g] for g in train])
        kw = dict(mode="clusters", cluster_label="leiden", density_prior="rna_count_based") if mode == "clusters" else {}
        ad_map = tg.map_cells_to_space(sc_data, sp_data, device=device, num_epochs=int(epochs), random_state=seed,
                                       verbose=False, **kw)  # fmt: skip
        ad_ge = tg.project_genes(ad_map, sc_data, cluster_label="leiden" if mode == "clusters" else None)
    have = pd.Index(ad_ge.var_names)
    want = [ids[g].lower() for g in test]
    pos = have.get_indexer(want)
    x = ad_ge.X.toarray() if hasattr(ad_ge.X, "toarray") else np.asarray(ad_ge.X)
    pred = np.full((sp_data.n_obs, len(test)), np.nan)
    pred[:, pos >= 0] = x[:, pos[pos >= 0]]
    return pred, pos >= 0


def li_gimvi(reference: ad.AnnData, spatial_train: ad.AnnData, shared: list[str], test: list[str], *,
             epochs: int = 200, seed: int = 0) -> np.ndarray:  # fmt: skip
    """Li's gimVI_impute: spatial cells x ``test`` expected counts (``normalized=False``)."""
    from scipy import sparse

    from stfusion.baselines.peers import _preserved_rng, _require, _root_logger_untouched

    scvi = _require("scvi", "gimVI")
    from scvi.external import GIMVI

    ids = {g: f"g{i}" for i, g in enumerate(shared)}
    seq = ad.AnnData(X=sparse.csr_matrix(reference[:, shared].X, dtype=np.float32),
                     obs=pd.DataFrame(index=pd.Index([str(c) for c in reference.obs_names])),
                     var=pd.DataFrame(index=pd.Index([ids[g] for g in shared])))  # fmt: skip
    train = [str(g) for g in spatial_train.var_names]
    sp = ad.AnnData(X=sparse.csr_matrix(spatial_train.X, dtype=np.float32),
                    obs=pd.DataFrame(index=pd.Index([str(c) for c in spatial_train.obs_names])),
                    var=pd.DataFrame(index=pd.Index([ids[g] for g in train])))  # fmt: skip
    with _preserved_rng(), _root_logger_untouched():
        scvi.settings.seed = seed
        GIMVI.setup_anndata(seq)
        GIMVI.setup_anndata(sp)
        model = GIMVI(seq, sp)
        model.train(max_epochs=int(epochs), accelerator="cpu", devices=1, enable_progress_bar=False,
                    enable_model_summary=False)  # fmt: skip
        _, imputation = model.get_imputed_values(normalized=False)
    return np.asarray(imputation, dtype=np.float64)[:, [shared.index(g) for g in test]]


# ----------------------------------------------------------------------------- the protocol
class Li2022Imputation(PaperProtocol):
    """Li et al. 2022's 10-fold gene hold-out on a (reference, spatial) pair (module docstring)."""

    name = "li2022_imputation"
    paper = ("Li B. et al. Benchmarking spatial and single-cell transcriptomics integration methods for transcript "
             "distribution prediction and cell type deconvolution. Nat Methods 19, 662-670 (2022)")  # fmt: skip
    source = ("QuKunLab/SpatialBenchmarking@3586b9d: BLAST_GenePrediction.ipynb (Tangram_impute, gimVI_impute, "
              "CalculateMeteics, get_score/make_score/plot_all), Benchmarking/SpatialGenes.py "
              "(GenePrediction.Tangram_impute, gimVI_impute), Benchmarking/GenesMetrics.py (cal_ssim, scale_max, "
              "scale_z_score, scale_plus, count); split: KFold(10, shuffle=True, random_state=seed) over the "
              "spatial genes the reference measures (their fold files are unpublished)")  # fmt: skip
    data_kind = "pair"
    summary = "Li et al. 2022 imputation: 10-fold gene hold-out, raw-count truth, PCC/SSIM/RMSE/JS, accuracy score"
    published = {  # median per-gene PCC, FigureData/Figure2/Metrics/Data15/<Method>_Metrics.txt (osmFISH)
        "Tangram on osmFISH, median PCC": 0.343,
        "gimVI on osmFISH, median PCC": 0.225,
        "SpaGE on osmFISH, median PCC": 0.272,
        "Seurat on osmFISH, median PCC": 0.181,
    }
    param_names = ("n_splits", "shuffle", "random_state")

    def check(self, data: Any) -> None:
        super().check(data)
        reference, spatial = data
        k = int(self.params.get("n_splits", 10))
        n = len(li_shared_genes(reference, spatial))
        if n < k:
            raise ConfigError(f"protocol {self.name!r} splits the shared genes into {k} folds, but the reference and "
                              f"spatial data share {n} genes; harmonise gene names or lower n_splits.")  # fmt: skip

    def folds(self, data: Any, seed: int) -> list[Fold]:
        self.check(data)
        reference, spatial = data
        genes = li_shared_genes(reference, spatial)
        rs = self.params.get("random_state", seed)
        splits = li_gene_folds(genes, int(self.params.get("n_splits", 10)), bool(self.params.get("shuffle", True)), rs)
        return [Fold(name=f"li2022:fold{i}", train=[reference, spatial[:, tr].copy()], test=spatial,
                     hidden_genes=te, extra={"shared_genes": genes}) for i, (tr, te) in enumerate(splits)]  # fmt: skip

    def genes(self, fold: Fold, requested: Any) -> list[str]:
        return list(fold.hidden_genes or [])

    def predict(self, method: Any, fold: Fold, genes: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The method's prediction for ``genes`` (cells x genes) as Li ran it, and which genes it predicted."""
        reference, spatial_train = fold.train
        params = dict(method.params)
        if method.name == "tangram":
            return li_tangram(reference, spatial_train, genes, mode=params.get("mode", "cells"),
                              epochs=params.get("epochs", 1000), seed=seed, device=params.get("device", "cpu"))
        if method.name == "gimvi":
            shared = fold.extra.get("shared_genes") or li_shared_genes(reference, fold.test)
            p = li_gimvi(reference, spatial_train, shared, genes, epochs=params.get("epochs", 200), seed=seed)
            return p, np.ones(len(genes), bool)
        # a gene without counts in the reference cannot be imputed from it: not predicted (as Tangram drops it)
        predicted = np.asarray(reference[:, genes].X.sum(axis=0)).ravel() > 0
        pred = np.full((fold.test.n_obs, len(genes)), np.nan)
        if predicted.any():
            model = make_model(method, seed)
            model.fit(reference, spatial_train)
            keep = [g for g, ok in zip(genes, predicted) if ok]
            x = model.impute(keep)[:, keep].X
            pred[:, predicted] = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)
        return pred, predicted

    def run(self, method: Any, fold: Fold, genes: list[str], seed: int) -> pd.DataFrame:
        from stfusion.benchmark.scoring import score_imputation

        spatial = fold.test
        pred, predicted = self.predict(method, fold, genes, seed)
        x = spatial[:, genes].X
        truth = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)
        paper = tidy(li_metrics(truth, pred, predicted), genes, PAPER)
        pred_ad = ad.AnnData(X=np.where(np.isnan(pred), 0.0, pred), obs=pd.DataFrame(index=spatial.obs_names.copy()),
                             var=pd.DataFrame(index=pd.Index(genes)))  # fmt: skip
        strict = score_imputation(pred_ad, spatial, genes).assign(target=STRICT)
        strict["metric"] = strict["metric"].map({"pearson": "PCC", "ssim": "SSIM", "rmse": "RMSE", "js": "JS"})
        return pd.concat([paper, strict[paper.columns]], ignore_index=True)

    def summarise(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Per method and target: median PCC/SSIM/RMSE/JS over all genes (folds pooled), the genes
        counted, and the accuracy score AS across the methods of the dataset (from the means)."""
        rows = rows[rows.metric.isin(LI_METRICS)]
        out = []
        for target, df in rows.groupby("target"):
            med = df.pivot_table(index="method", columns="metric", values="value", aggfunc="median")
            mean = df.pivot_table(index="method", columns="metric", values="value", aggfunc="mean")
            score = li_accuracy_score(mean.reindex(columns=list(LI_METRICS)))
            n = df[df.metric == "PCC"].groupby("method")["gene"].count().rename("genes")
            table = med.reindex(columns=list(LI_METRICS)).join(score["AS"]).join(n)
            out.append(table.reset_index().assign(target=target))
        cols = ["method", "target", *LI_METRICS, "AS", "genes"]
        return pd.concat(out, ignore_index=True)[cols].sort_values(["target", "method"]).reset_index(drop=True)
