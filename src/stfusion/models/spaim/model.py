"""SpaIM: impute genes of single-cell spatial data from an scRNA-seq reference by style transfer.

Li et al., "SpaIM: single-cell spatial transcriptomics imputation via style transfer",
Nat Commun 2025; reference code github.com/QSong-github/SpaIM. Samples are genes: a
gene's *content* is its mean log1p expression in each of K reference clusters, its target
its log1p profile over the N spatial cells. Net and losses: :mod:`stfusion.models.spaim.nn`.

Preprocessing. Both datasets: ``log1p(counts / cell total * target_sum)`` (totals over all
genes of the dataset, ``target_sum=1e4``, the space stfusion scores in); ``target_sum=None``
gives the reference code's ``log1p(counts)`` (its ``dataset.py`` does not normalise per cell;
only its clustering script does, with scanpy's default target). Clusters: ``obs["cell_type"]`` when
present (the reference code's "annotate" mode); otherwise Leiden (resolution 0.5, as the
reference code) when igraph is installed, else k-means (``n_clusters``, default 10) on the
PCA of the normalised, scaled reference (2,000 HVGs when it has more genes). An explicit
``n_clusters`` always uses k-means. Training genes with zero counts in either dataset are
dropped with a warning (the reference code filters genes seen in < 3 cells); requesting a
gene with zero reference counts raises :class:`UnimputableGenesError`.

Outputs are in the spatial data's log1p space only up to a per-gene scale: the cosine losses
do not fix each gene's magnitude, so score them with scale-free metrics (PCC, and SSIM, JS and
z-scored RMSE as Li et al. 2022 define them). Negative predictions are set to 0.

Differences from the reference code (on purpose): every requested gene is predicted (it
keeps only the last batch), outputs are labelled cells x genes in the requested order
(it can swap gene and cell labels), CPU by default (it hard-codes CUDA), and the
input-dropout augmentation of its ``main.py`` (3 extra copies, half the content zeroed)
is off by default (``dropout=0``), as in its benchmark script.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scipy import sparse
from torch.utils.data import TensorDataset

from stfusion import _constants as K
from stfusion.errors import CountsError, StfusionError
from stfusion.models.base import NotFittedError
from stfusion.models.conformal_impute import CalibratedImputerMixin
from stfusion.models.spaim.nn import SpaIMNet, spaim_loss

__all__ = ["FAST", "SpaIM", "UnimputableGenesError", "cluster_means", "log1p_expression", "reference_clusters"]

WEIGHTS_FILE = "weights.pt"
CARD_FILE = "model.json"
DEFAULT_KMEANS_K = 10
FAST: dict[str, Any] = {"epochs": 100, "batch_size": 32, "hidden": (256, 128)}


class UnimputableGenesError(StfusionError, ValueError):
    """Genes that cannot be imputed (not in the reference, or no counts there)."""


# --------------------------------------------------------------------------- preprocessing
def log1p_expression(counts, target_sum: float | None = 1e4) -> sparse.csr_matrix:
    """``log1p(counts / cell total * target_sum)`` (``None``: ``log1p(counts)``), sparse float32."""
    x = sparse.csr_matrix(counts, dtype=np.float64)
    if x.nnz and (not np.isfinite(x.data).all() or x.data.min() < 0):
        raise CountsError("Counts must be finite and non-negative; pass raw counts (adata.X or layers['counts']).")
    if target_sum is not None:
        totals = np.asarray(x.sum(axis=1)).ravel()
        scale = np.divide(float(target_sum), totals, out=np.zeros_like(totals), where=totals > 0)
        x = sparse.diags(scale) @ x
    return sparse.csr_matrix(x.log1p(), dtype=np.float32)


def _pca(reference: ad.AnnData, seed: int) -> ad.AnnData:
    """Normalised, log1p, scaled reference (2,000 HVGs when larger) with ``obsm["X_pca"]``."""
    import scanpy as sc

    tmp = ad.AnnData(X=sparse.csr_matrix(reference.X, dtype=np.float32))
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    if tmp.n_vars > 2000:
        sc.pp.highly_variable_genes(tmp, n_top_genes=2000, subset=True)
    tmp.X = tmp.X.toarray()  # scaling densifies anyway
    sc.pp.scale(tmp, max_value=10)
    n_comps = max(1, min(50, tmp.n_vars - 1, tmp.n_obs - 1))
    sc.pp.pca(tmp, n_comps=n_comps, random_state=seed)
    return tmp


def reference_clusters(
    reference: ad.AnnData, n_clusters: int | None = None, *, cluster_key: str = K.CELL_TYPE,
    resolution: float = 0.5, seed: int = 0,
) -> tuple[np.ndarray, list[str], str]:  # fmt: skip
    """Cluster index per reference cell, cluster names, and how they were found.

    ``obs[cluster_key]`` when present and ``n_clusters`` is None (cells without a label are
    left out: index -1); else Leiden (when igraph is installed and ``n_clusters`` is None);
    else k-means with ``n_clusters`` (default 10) on the reference's PCA.
    """
    if n_clusters is None and cluster_key in reference.obs:
        col = reference.obs[cluster_key].astype("category").cat.remove_unused_categories()
        if len(col.cat.categories) == 0:
            raise StfusionError(f"obs[{cluster_key!r}] has no labels; drop the column or pass n_clusters.")
        return col.cat.codes.to_numpy(np.int64), [str(c) for c in col.cat.categories], cluster_key
    threads = torch.get_num_threads()
    try:
        return _cluster_unlabelled(reference, n_clusters, resolution, seed)
    finally:  # scanpy's threadpoolctl limits can reset torch's OpenMP thread count on exit
        torch.set_num_threads(threads)


def _cluster_unlabelled(
    reference: ad.AnnData, n_clusters: int | None, resolution: float, seed: int
) -> tuple[np.ndarray, list[str], str]:
    """Leiden (igraph installed, no ``n_clusters``) or k-means on the reference's PCA."""
    tmp = _pca(reference, seed)
    if n_clusters is None and importlib.util.find_spec("igraph") is not None:
        import scanpy as sc

        sc.pp.neighbors(tmp, random_state=seed)
        sc.tl.leiden(tmp, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2, directed=False)
        codes = tmp.obs["leiden"].cat.codes.to_numpy(np.int64)
        return codes, [f"leiden_{c}" for c in tmp.obs["leiden"].cat.categories], "leiden"
    from sklearn.cluster import KMeans

    k = DEFAULT_KMEANS_K if n_clusters is None else int(n_clusters)
    if not 1 <= k <= reference.n_obs:
        raise ValueError(f"n_clusters must be between 1 and the reference's {reference.n_obs} cells, got {k}.")
    codes = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(tmp.obsm["X_pca"]).astype(np.int64)
    return codes, [f"kmeans_{c}" for c in range(k)], "kmeans"


def cluster_means(expr: sparse.csr_matrix, codes: np.ndarray, n_clusters: int) -> np.ndarray:
    """Mean of each gene in each cluster (cells with code -1 ignored): K x genes float32."""
    keep = codes >= 0
    rows, cols = codes[keep], np.flatnonzero(keep)
    sizes = np.bincount(rows, minlength=n_clusters).astype(np.float64)
    if (sizes == 0).any():
        raise StfusionError(f"Reference clusters {np.flatnonzero(sizes == 0).tolist()} are empty; pass fewer clusters.")
    ind = sparse.csr_matrix((1.0 / sizes[rows], (rows, cols)), shape=(n_clusters, expr.shape[0]))
    return np.asarray((ind @ expr).todense(), dtype=np.float32)


def _check_imputable(genes: list[str], idx: np.ndarray, expressed: np.ndarray) -> None:
    """Raise :class:`UnimputableGenesError` for genes absent from the reference (``idx`` -1) or without counts."""
    missing = [g for g, i in zip(genes, idx) if i < 0]
    if missing:
        raise UnimputableGenesError(f"{len(missing)} genes to impute are not in the reference: {missing[:10]}. "
                                    "Only genes the reference measures can be imputed.")  # fmt: skip
    empty = [g for g, e in zip(genes, expressed) if not e]
    if empty:
        raise UnimputableGenesError(f"{len(empty)} genes have zero counts in the reference and cannot be imputed: "
                                    f"{empty[:10]}. Drop them from the request.")  # fmt: skip


def _expressed_training_genes(train: list[str], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask of training genes with counts in both datasets; warns about the others."""
    ok = (x.max(axis=1) > 0) & (y.max(axis=1) > 0)
    if not ok.all():
        dropped = [g for g, keep in zip(train, ok) if not keep]
        warnings.warn(f"{len(dropped)} training genes have no counts in the reference or the spatial data "
                      f"and are not used: {dropped[:10]}", stacklevel=3)  # fmt: skip
    if ok.sum() < 2:
        raise StfusionError("Fewer than 2 training genes have counts in both datasets; SpaIM cannot be trained.")
    return ok


def _obs_hash(names: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(map(str, names)).encode()).hexdigest()


def _device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; other names as torch spells them."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _accelerator(name: str) -> str:
    """Lightning's accelerator name for a torch device name."""
    return "gpu" if _device(name).type == "cuda" else _device(name).type


# --------------------------------------------------------------------------- model
def imputed_anndata(values: np.ndarray, genes: Sequence[str], obs_names: Sequence[str], obsm: dict[str, np.ndarray],
                    method: str, expression_space: str) -> ad.AnnData:
    """Imputed values (spatial cells x ``genes``) as AnnData: the spatial cells' names and a copy of
    their ``obsm``, ``var["imputed"]`` set, and the method and expression space in ``uns``."""
    out = ad.AnnData(
        X=np.ascontiguousarray(values, dtype=np.float32),
        obs=pd.DataFrame(index=pd.Index(obs_names)),
        var=pd.DataFrame({"imputed": np.ones(len(genes), dtype=bool)}, index=pd.Index(genes)),
    )
    for key, arr in obsm.items():
        out.obsm[key] = arr.copy()
    out.uns[K.STFUSION] = {"method": method, "expression_space": expression_space}
    return out


class SpaIM(CalibratedImputerMixin):
    """SpaIM imputer for ONE spatial dataset (its output layer has one unit per spatial cell).

    A fitted model predicts only for the cells it was trained on; for other spatial data,
    fit a new model.

    ``fit(reference, spatial, genes=None)`` trains on the genes both measure (or ``genes``);
    ``impute(genes)`` predicts reference genes for every cell of that same spatial data;
    after ``calibrate(reference, spatial)`` (``n_folds`` more fits, see
    :mod:`stfusion.models.conformal_impute`) ``impute(genes, coverage=0.9)`` adds
    TISSUE-style interval layers ``lower``/``upper``.

    Parameters
    ----------
    epochs, batch_size, lr
        Adam training with :func:`stfusion.train.loop.fit` (reference code: 300 epochs,
        500 genes per batch, lr 1e-3, betas 0.9/0.999). Few genes mean few steps per epoch:
        on small panels use a smaller ``batch_size`` with fewer epochs (see :data:`FAST`).
    hidden
        ``(h1, h2)`` widths at the two ReST depths (512, 256).
    dropout, augment_copies
        Input-dropout augmentation: each batch gets ``augment_copies`` extra copies of the
        content with a fraction ``dropout`` of entries zeroed (reference ``main.py``: 0.5, 3).
    n_clusters, cluster_key, resolution
        Reference clusters (see :func:`reference_clusters`).
    target_sum
        Library-size normalisation before log1p (``None``, or ``False`` from a TOML config,
        which has no null: the reference code's raw log1p).
    seed, device
        Seed of weights, shuffling and masks; ``"cpu"``, ``"cuda"`` or ``"auto"``.
    progress
        Show the training loop's progress bar.
    """

    name: ClassVar[str] = "spaim"
    description: ClassVar[str] = "SpaIM: recursive style transfer from reference clusters to spatial profiles."
    input_kind: ClassVar[str] = "reference"

    def __init__(
        self, epochs: int = 300, batch_size: int = 500, lr: float = 1e-3, hidden: Sequence[int] = (512, 256),
        dropout: float = 0.0, augment_copies: int = 3, n_clusters: int | None = None,
        cluster_key: str = K.CELL_TYPE, resolution: float = 0.5, target_sum: float | bool | None = 1e4,
        seed: int = 0, device: str = "cpu", progress: bool = False,
    ) -> None:  # fmt: skip
        if target_sum is False:  # TOML has no null: `target_sum = false` in a benchmark config
            target_sum = None
        if epochs < 0 or batch_size < 1 or lr <= 0 or not 0.0 <= dropout < 1.0 or augment_copies < 0:
            raise ValueError("Need epochs >= 0, batch_size >= 1, lr > 0, 0 <= dropout < 1 and augment_copies >= 0.")
        self.hyperparams: dict[str, Any] = {
            "epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr),
            "hidden": [int(h) for h in hidden], "dropout": float(dropout), "augment_copies": int(augment_copies),
            "n_clusters": None if n_clusters is None else int(n_clusters), "cluster_key": str(cluster_key),
            "resolution": float(resolution), "target_sum": None if target_sum is None else float(target_sum),
            "seed": int(seed), "device": str(device),
        }  # fmt: skip
        self.progress = bool(progress)
        self.net_: SpaIMNet | None = None
        self.history_: list[dict[str, float]] = []

    @classmethod
    def fast(cls, **overrides: Any) -> SpaIM:
        """A short-training preset for tests and demos (:data:`FAST`, then ``overrides``)."""
        return cls(**{**FAST, **overrides})

    # -- fitting
    def fit(self, reference: ad.AnnData, spatial: ad.AnnData, genes: Sequence[str] | None = None) -> SpaIM:
        """Train on ``genes`` (default: every gene both datasets measure) of this spatial data."""
        hp = self.hyperparams
        self.calibration_ = None  # a calibration belongs to one fit
        train = self._training_genes(reference, spatial, genes)
        codes, names, how = reference_clusters(reference, hp["n_clusters"], cluster_key=hp["cluster_key"],
                                               resolution=hp["resolution"], seed=hp["seed"])  # fmt: skip
        content = cluster_means(log1p_expression(reference.X, hp["target_sum"]), codes, len(names))
        x = content[:, reference.var_names.get_indexer(train)].T
        sp_expr = log1p_expression(spatial.X, hp["target_sum"])[:, spatial.var_names.get_indexer(train)]
        y = np.asarray(sp_expr.T.todense(), dtype=np.float32)
        keep = _expressed_training_genes(train, x, y)
        self.content_, self.ref_genes_ = content, [str(g) for g in reference.var_names]
        self.genes_, self.clusters_, self.clustering_ = [g for g, k in zip(train, keep) if k], names, how
        self.obs_names_ = [str(c) for c in spatial.obs_names]
        self.obsm_ = {k: np.asarray(v) for k, v in spatial.obsm.items()
                      if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.number)}  # fmt: skip
        self._train(np.ascontiguousarray(x[keep]), np.ascontiguousarray(y[keep]))
        return self

    def _training_genes(self, reference: ad.AnnData, spatial: ad.AnnData, genes) -> list[str]:
        shared = spatial.var_names[spatial.var_names.isin(reference.var_names)]
        if genes is not None:
            bad = pd.Index([str(g) for g in genes]).difference(shared)
            if len(bad):
                raise StfusionError(
                    f"{len(bad)} training genes are not measured in both datasets (e.g. {list(bad[:3])}). "
                    "Pass genes present in both the reference and the spatial data."
                )
            shared = pd.Index([str(g) for g in genes]).unique()
        if len(shared) < 2:
            raise StfusionError(
                f"The reference and spatial data share {len(shared)} genes; SpaIM needs at least 2 to learn from. "
                "Harmonise gene names (symbols vs IDs, case) first."
            )
        return [str(g) for g in shared]

    def _build(self, n_clusters: int, n_cells: int) -> SpaIMNet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.hyperparams["seed"])
            return SpaIMNet(n_clusters, n_cells, tuple(self.hyperparams["hidden"]))

    def _train(self, x: np.ndarray, y: np.ndarray) -> None:
        """Adam on batches of genes with :func:`stfusion.train.loop.fit` (seeded, reproducible)."""
        from stfusion.train.loop import fit as train_loop

        hp = self.hyperparams
        net = self._build(x.shape[1], y.shape[1])
        masks = torch.Generator().manual_seed(hp["seed"])

        def loss_fn(net: SpaIMNet, batch) -> dict[str, torch.Tensor]:
            content, target = batch
            if hp["dropout"] > 0 and hp["augment_copies"] > 0:
                content, target = _augment(content, target, hp["augment_copies"], hp["dropout"], masks)
            total, parts = spaim_loss(net(content, target), target)
            return {"loss": total, **parts}

        data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
        result = train_loop(net, loss_fn, data, optimizer="adam", lr=hp["lr"], epochs=hp["epochs"],
                            batch_size=hp["batch_size"], seed=hp["seed"], progress=self.progress,
                            accelerator=_accelerator(hp["device"]))  # fmt: skip
        self.history_ = result.history
        self.net_ = net.to(_device(hp["device"])).eval()

    # -- prediction
    def _check_fitted(self) -> SpaIMNet:
        if self.net_ is None:
            raise NotFittedError("SpaIM is not fitted: call .fit(reference, spatial) or SpaIM.load(dir) first.")
        return self.net_

    def _content_of(self, genes: list[str]) -> np.ndarray:
        idx = pd.Index(self.ref_genes_).get_indexer(genes)
        content = self.content_[:, np.maximum(idx, 0)].T
        _check_imputable(genes, idx, content.max(axis=1, initial=0.0) > 0)
        return np.ascontiguousarray(content)

    def impute(self, genes: Sequence[str], coverage: float | None = None) -> ad.AnnData:
        """Spatial cells x ``genes`` (in that order), log1p space of the spatial data, negatives set to 0.

        ``coverage`` (e.g. 0.9): add calibrated intervals (``layers["lower"]``/``["upper"]``);
        needs :meth:`calibrate` first.
        """
        net = self._check_fitted()
        genes = [str(g) for g in genes]
        if len(set(genes)) != len(genes):
            raise UnimputableGenesError("Genes to impute are repeated; pass each gene once.")
        content = torch.from_numpy(self._content_of(genes))
        device = next(net.parameters()).device
        step = self.hyperparams["batch_size"]
        values = np.empty((len(self.obs_names_), len(genes)), np.float32)  # filled a batch of genes at a time
        with torch.no_grad():
            for i in range(0, len(genes), step):
                fake = net.generate(content[i : i + step].to(device))["fake"].cpu().numpy()
                np.clip(fake.T, 0.0, None, out=values[:, i : i + step])
        return self._with_intervals(self._wrap(values, genes), coverage)

    def _measured_genes(self) -> list[str]:
        self._check_fitted()
        return list(self.genes_)

    def fit_impute(self, reference: ad.AnnData, spatial: ad.AnnData, genes: Sequence[str]) -> ad.AnnData:
        """Train on the shared genes other than ``genes``, then impute ``genes``."""
        genes = [str(g) for g in genes]
        idx = reference.var_names.get_indexer(genes)
        _check_imputable(genes, idx, np.asarray(reference.X[:, np.maximum(idx, 0)].sum(axis=0)).ravel() > 0)
        hold = set(genes)
        shared = spatial.var_names[spatial.var_names.isin(reference.var_names)]
        return self.fit(reference, spatial, [g for g in shared if g not in hold]).impute(genes)

    def _wrap(self, values: np.ndarray, genes: list[str]) -> ad.AnnData:
        space = "log1p_counts" if self.hyperparams["target_sum"] is None else "log1p_cp10k"
        return imputed_anndata(values, genes, self.obs_names_, self.obsm_, self.name, space)

    # -- persistence
    def card(self) -> dict[str, Any]:
        from stfusion import __version__

        return {
            "method": self.name, "version": __version__, "hyperparams": self.hyperparams,
            "seed": self.hyperparams["seed"], "genes": self.genes_, "reference_genes": self.ref_genes_,
            "n_clusters": len(self.clusters_), "clusters": self.clusters_, "clustering": self.clustering_,
            "n_spatial_cells": len(self.obs_names_), "spatial_obs_names_sha256": _obs_hash(self.obs_names_),
            "spatial_obs_names": self.obs_names_, "obsm_keys": sorted(self.obsm_),
        }  # fmt: skip

    def save(self, directory: str | Path) -> Path:
        """Write ``model.json`` (card) and ``weights.pt`` (tensors only: net, content, obsm), and the
        interval calibration when there is one (``calibration.json``/``.npz``)."""
        net = self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"net.{k}": v.detach().cpu() for k, v in net.state_dict().items()}
        tensors["content"] = torch.from_numpy(self.content_)
        tensors.update({f"obsm.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.obsm_.items()})
        torch.save(tensors, directory / WEIGHTS_FILE)
        (directory / CARD_FILE).write_text(json.dumps(self.card(), indent=1))
        self._save_calibration(directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> SpaIM:
        """Rebuild a saved model (``device`` overrides the saved one)."""
        directory = Path(directory)
        if not (directory / CARD_FILE).exists() or not (directory / WEIGHTS_FILE).exists():
            raise StfusionError(f"{directory} is not a saved SpaIM model (needs {CARD_FILE} and {WEIGHTS_FILE}).")
        card = json.loads((directory / CARD_FILE).read_text())
        if card.get("method") != cls.name:
            raise StfusionError(f"{directory} holds a {card.get('method')!r} model, not SpaIM.")
        hp = dict(card["hyperparams"], **({} if device is None else {"device": device}))
        model = cls(**hp)
        tensors = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        model.content_ = tensors["content"].numpy()
        model.ref_genes_, model.genes_ = card["reference_genes"], card["genes"]
        model.clusters_, model.clustering_ = card["clusters"], card["clustering"]
        model.obs_names_ = card["spatial_obs_names"]
        if _obs_hash(model.obs_names_) != card["spatial_obs_names_sha256"]:
            raise StfusionError(f"{directory}/{CARD_FILE} is corrupt: the spatial cell names do not match their hash.")
        model.obsm_ = {k: tensors[f"obsm.{k}"].numpy() for k in card["obsm_keys"]}
        net = SpaIMNet(len(model.clusters_), len(model.obs_names_), tuple(hp["hidden"]))
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        model.net_ = net.to(_device(hp["device"])).eval()
        model._load_calibration(directory)
        return model


# --------------------------------------------------------------------------- training helpers
def _augment(content: torch.Tensor, target: torch.Tensor, copies: int, frac: float, gen: torch.Generator):
    """The reference code's augmentation: ``copies`` extra content copies with a fraction zeroed."""
    keep = torch.rand((copies, *content.shape), generator=gen) >= frac
    extra = content.unsqueeze(0) * keep.to(content.device, content.dtype)
    return torch.cat([content, extra.reshape(-1, content.shape[1])]), target.repeat(copies + 1, 1)
