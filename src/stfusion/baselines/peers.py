"""Tangram and gimVI, the published peers of SpaIM, behind stfusion's imputation interface.

Both run through their own packages' public APIs on the CPU; they are optional extras
(``pip install 'stfusion[peers]'`` installs ``tangram-sc`` and ``scvi-tools``). Without
them, constructing the class works but ``fit`` raises :class:`OptionalDependencyError`
saying what to install; ``stfusion benchmark`` then reports the method as not run.

Interface (as :class:`~stfusion.baselines.knn_reference.KNNReferenceImputer` and
:class:`~stfusion.models.spaim.SpaIM`): ``fit(reference, spatial, genes=None)`` learns from
the genes both datasets measure (or ``genes``); ``impute(genes)`` returns an AnnData of the
spatial cells x ``genes`` (var ``imputed`` = True, ``obsm`` copied from the spatial data).
Inputs are never modified: the packages work on private copies (Tangram lower-cases gene
names and filters genes in place; gimVI writes a batch column into ``obs``). Gene names are
passed to the packages as neutral ids (``g0``, ``g1``, ...) so that names differing only in
case survive Tangram's lower-casing. Global random states (python, numpy, torch) are restored
after fitting. ``save(dir)``/``load(dir)`` keep a fitted peer (a card, arrays, and for gimVI
scvi-tools' own save with its data).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scipy import sparse

from stfusion import _constants as K
from stfusion.errors import OptionalDependencyError, StfusionError
from stfusion.models.base import NotFittedError
from stfusion.models.conformal_impute import CalibratedImputerMixin
from stfusion.models.spaim.model import UnimputableGenesError, imputed_anndata, log1p_expression, reference_clusters

__all__ = ["GimVIImputer", "TangramImputer", "peer_available"]

PEER_PACKAGES = {"tangram": ("tangram", "tangram-sc"), "scvi": ("scvi", "scvi-tools")}
CLUSTER_COLUMN = "stfusion_cluster"
CARD_FILE = "model.json"
GIMVI_DIR = "gimvi"
QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "scvi")


def peer_available(module: str) -> bool:
    """Whether the peer package importable as ``module`` ("tangram" or "scvi") is installed."""
    return importlib.util.find_spec(module) is not None


def _require(module: str, method: str) -> Any:
    """Import a peer package or raise :class:`OptionalDependencyError` with the install command."""
    dist = PEER_PACKAGES[module][1]
    if not peer_available(module):
        raise OptionalDependencyError(
            f"{method} needs the package {dist!r}, which is not installed. "
            f"Install the peers with: pip install 'stfusion[peers]' (or pip install {dist})."
        )
    try:
        with _root_logger_untouched():
            return importlib.import_module(module)
    except Exception as exc:  # installed but broken (e.g. an incompatible dependency)
        raise OptionalDependencyError(f"{method}: importing {dist!r} failed ({type(exc).__name__}: {exc}). "
                                      f"Reinstall it with: pip install 'stfusion[peers]'.") from exc  # fmt: skip


@contextlib.contextmanager
def _root_logger_untouched() -> Iterator[None]:
    """Undo what the packages do to the root logger (Tangram sets it to INFO on import, and its
    module-level ``logging.info`` calls would install a handler on an unconfigured root)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    chatty = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    if not handlers:
        root.addHandler(logging.NullHandler())
    for name in chatty:  # Lightning's per-fit INFO lines ("GPU available", tips)
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, lvl in chatty.items():
            logging.getLogger(name).setLevel(lvl)


@contextlib.contextmanager
def _preserved_rng() -> Iterator[None]:
    """Restore python, numpy and torch (CPU) random states after a package seeded them globally."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def _training_genes(reference: ad.AnnData, spatial: ad.AnnData, genes: Sequence[str] | None) -> list[str]:
    """Shared genes (or ``genes``) with counts in both datasets; at least 2."""
    shared = spatial.var_names[spatial.var_names.isin(reference.var_names)]
    if genes is not None:
        bad = pd.Index([str(g) for g in genes]).difference(shared)
        if len(bad):
            raise StfusionError(f"{len(bad)} training genes are not measured in both datasets (e.g. {list(bad[:3])}). "
                                "Pass genes present in both the reference and the spatial data.")  # fmt: skip
        shared = pd.Index([str(g) for g in genes]).unique()
    ref_n = np.asarray(reference[:, shared].X.sum(axis=0)).ravel()
    sp_n = np.asarray(spatial[:, shared].X.sum(axis=0)).ravel()
    train = [str(g) for g, a, b in zip(shared, ref_n, sp_n) if a > 0 and b > 0]
    if len(train) < 2:
        raise StfusionError(f"The reference and spatial data share {len(train)} genes with counts in both; at least 2 "
                            "are needed. Harmonise gene names (symbols vs IDs, case) first.")  # fmt: skip
    return train


class _ReferencePeer(CalibratedImputerMixin):
    """Shared bookkeeping: gene ids, requested-gene checks, output AnnData, interval calibration
    (``calibrate(reference, spatial)`` then ``impute(genes, coverage=0.9)``; see
    :mod:`stfusion.models.conformal_impute`)."""

    name: ClassVar[str] = ""
    input_kind: ClassVar[str] = "reference"
    has_uncertainty: ClassVar[bool] = False
    has_super_resolution: ClassVar[bool] = False
    expression_space: str = ""

    def _remember(self, reference: ad.AnnData, spatial: ad.AnnData, train: list[str]) -> None:
        self.calibration_ = None  # a calibration belongs to one fit
        self.ref_genes_ = [str(g) for g in reference.var_names]
        self.ref_detected_ = np.asarray((reference.X > 0).sum(axis=0)).ravel() > 0
        self.genes_ = train
        self.obs_names_ = [str(c) for c in spatial.obs_names]
        self.obsm_ = {k: np.asarray(v) for k, v in spatial.obsm.items()
                      if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.number)}  # fmt: skip

    def _measured_genes(self) -> list[str]:
        if not hasattr(self, "genes_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted: call .fit(reference, spatial) first.")
        return list(self.genes_)

    def _ids(self, genes: Sequence[str]) -> list[str]:
        return [f"g{i}" for i in pd.Index(self.ref_genes_).get_indexer(list(genes))]

    def _check_request(self, genes: Sequence[str]) -> list[str]:
        if not hasattr(self, "ref_genes_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted: call .fit(reference, spatial) first.")
        genes = [str(g) for g in genes]
        if len(set(genes)) != len(genes):
            raise UnimputableGenesError("Genes to impute are repeated; pass each gene once.")
        idx = pd.Index(self.ref_genes_).get_indexer(genes)
        missing = [g for g, i in zip(genes, idx) if i < 0]
        if missing:
            raise UnimputableGenesError(f"{len(missing)} genes to impute are not in the reference: {missing[:10]}. "
                                        "Only genes the reference measures can be imputed.")  # fmt: skip
        empty = [g for g, i in zip(genes, idx) if not self.ref_detected_[i]]
        if empty:
            raise UnimputableGenesError(f"{len(empty)} genes have zero counts in the reference and cannot be imputed: "
                                        f"{empty[:10]}. Drop them from the request.")  # fmt: skip
        return genes

    # -- persistence (shared part: model.json card + arrays.npz, no pickle)
    def _save_common(self, directory: str | Path, arrays: dict[str, np.ndarray]) -> Path:
        from stfusion import __version__
        from stfusion.baselines.interpolation import save_arrays

        if not hasattr(self, "ref_genes_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted: call .fit(reference, spatial) first.")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        card = {"method": self.name, "version": __version__, "hyperparams": self.hyperparams,
                "genes": self.genes_, "obsm_keys": sorted(self.obsm_)}  # fmt: skip
        (directory / CARD_FILE).write_text(json.dumps(card, indent=1))
        common = {"ref_genes": np.asarray(self.ref_genes_, dtype=str), "ref_detected": self.ref_detected_,
                  "obs_names": np.asarray(self.obs_names_, dtype=str)}  # fmt: skip
        common.update({f"obsm__{k}": v for k, v in self.obsm_.items()})
        save_arrays(directory, {**common, **arrays})
        self._save_calibration(directory)
        return directory

    @classmethod
    def _load_common(cls, directory: str | Path) -> tuple[Any, dict[str, np.ndarray]]:
        from stfusion.baselines.interpolation import load_arrays

        path = Path(directory) / CARD_FILE
        if not path.exists():
            raise StfusionError(f"{directory} is not a saved stfusion model (no {CARD_FILE}). Save one with .save(dir).")
        card = json.loads(path.read_text())
        if card.get("method") != cls.name:
            raise StfusionError(f"{directory} holds a {card.get('method')!r} model, not {cls.name!r}.")
        model, a = cls(**card["hyperparams"]), load_arrays(directory)
        model.ref_genes_, model.ref_detected_ = [str(g) for g in a["ref_genes"]], a["ref_detected"].astype(bool)
        model.genes_, model.obs_names_ = card["genes"], [str(c) for c in a["obs_names"]]
        model.obsm_ = {k: a[f"obsm__{k}"] for k in card["obsm_keys"]}
        model._load_calibration(directory)
        return model, a

    def _wrap(self, values: np.ndarray, genes: list[str]) -> ad.AnnData:
        return imputed_anndata(values, genes, self.obs_names_, self.obsm_, self.name, self.expression_space)


# --------------------------------------------------------------------------- Tangram
class TangramImputer(_ReferencePeer):
    """Tangram (Biancalani et al., Nat Methods 2021) through the ``tangram-sc`` package.

    Tangram learns a soft map of reference cells (``mode="cells"``) or reference clusters
    (``mode="clusters"``) onto the spatial cells that maximises the per-gene cosine
    similarity of the mapped and measured training genes (``tg.pp_adatas``,
    ``tg.map_cells_to_space``); imputed genes are the mapped reference expression
    (``tg.project_genes``).

    Mode choice: ``"clusters"`` (default) maps the K cluster profiles (cluster sums, Tangram's
    ``scale=True``) and is the cheaper and, on the imputation pairs measured here, the
    stronger mode; ``"cells"`` maps every reference cell (memory and time grow with
    reference cells x spatial cells). Clusters: ``obs[cluster_key]`` when present, else the
    same unsupervised clustering SpaIM uses (:func:`stfusion.models.spaim.model.reference_clusters`:
    Leiden when igraph is installed, else k-means with 10 clusters).

    Inputs: both datasets as ``log1p(counts / cell total x 1e4)`` (totals over each dataset's
    own genes): the reference as in the Li et al. 2022 benchmark's Tangram run, the spatial
    data the same way (the space stfusion scores in; that benchmark passed raw spatial counts).
    Output: spatial cells x genes in the reference's log1p-normalised space, weighted by the
    map; it is right up to a per-gene scale, like SpaIM's (score with PCC/SSIM/z-RMSE/JS).

    Parameters
    ----------
    mode
        ``"clusters"`` or ``"cells"``.
    epochs, lr
        Tangram's ``num_epochs`` (1000) and ``learning_rate`` (0.1).
    density_prior
        Tangram's spot density prior: ``"rna_count_based"`` (its default; computed by
        ``pp_adatas`` from the spatial input, here its log1p values) or ``"uniform"``.
    cluster_key, n_clusters, resolution
        Clusters for ``mode="clusters"`` (see above; ``n_clusters`` forces k-means).
    seed
        Tangram's ``random_state`` (and the clustering's seed).
    """

    name: ClassVar[str] = "tangram"
    description: ClassVar[str] = "Tangram (tangram-sc): map reference cells or clusters onto space, project genes."
    expression_space = "log1p_cp10k_reference_mapped"

    def __init__(
        self, mode: str = "clusters", epochs: int = 1000, lr: float = 0.1, density_prior: str = "rna_count_based",
        cluster_key: str = K.CELL_TYPE, n_clusters: int | None = None, resolution: float = 0.5, seed: int = 0,
        device: str = "cpu",
    ) -> None:  # fmt: skip
        if mode not in ("clusters", "cells"):
            raise ValueError(f"mode must be 'clusters' or 'cells', got {mode!r}.")
        if density_prior not in ("rna_count_based", "uniform"):
            raise ValueError(f"density_prior must be 'rna_count_based' or 'uniform', got {density_prior!r}.")
        if epochs < 1 or lr <= 0:
            raise ValueError(f"Need epochs >= 1 and lr > 0, got epochs={epochs}, lr={lr}.")
        self.hyperparams: dict[str, Any] = {
            "mode": mode, "epochs": int(epochs), "lr": float(lr), "density_prior": density_prior,
            "cluster_key": str(cluster_key), "n_clusters": None if n_clusters is None else int(n_clusters),
            "resolution": float(resolution), "seed": int(seed), "device": str(device),
        }  # fmt: skip

    def fit(self, reference: ad.AnnData, spatial: ad.AnnData, genes: Sequence[str] | None = None) -> TangramImputer:
        """Map the reference onto ``spatial`` using ``genes`` (default: all shared genes with counts)."""
        tg = _require("tangram", "Tangram")
        hp = self.hyperparams
        train = _training_genes(reference, spatial, genes)
        self._remember(reference, spatial, train)
        sc_data = self._reference_input(reference)
        sp_data = ad.AnnData(
            X=log1p_expression(spatial.X)[:, spatial.var_names.get_indexer(train)],
            obs=pd.DataFrame(index=pd.Index(self.obs_names_)),
            var=pd.DataFrame(index=pd.Index(self._ids(train))),
        )
        train_ids = sorted(self._ids(train))
        clusters = hp["mode"] == "clusters"
        with _preserved_rng(), _root_logger_untouched():
            tg.pp_adatas(sc_data, sp_data, genes=train_ids)
            self.map_ = tg.map_cells_to_space(
                sc_data, sp_data, cv_train_genes=train_ids, mode=hp["mode"],
                cluster_label=CLUSTER_COLUMN if clusters else None, device=hp["device"], learning_rate=hp["lr"],
                num_epochs=hp["epochs"], density_prior=hp["density_prior"], random_state=hp["seed"], verbose=False,
            )  # fmt: skip
        self.reference_ = sc_data
        return self

    def _reference_input(self, reference: ad.AnnData) -> ad.AnnData:
        """log1p-cp10k reference with neutral gene ids (and cluster labels in clusters mode)."""
        hp = self.hyperparams
        obs = pd.DataFrame(index=pd.Index([str(c) for c in reference.obs_names]))
        x = log1p_expression(reference.X)
        if hp["mode"] == "clusters":
            codes, names, how = reference_clusters(reference, hp["n_clusters"], cluster_key=hp["cluster_key"],
                                                   resolution=hp["resolution"], seed=hp["seed"])  # fmt: skip
            keep = codes >= 0  # cells without a label take no part
            obs = obs[keep].assign(**{CLUSTER_COLUMN: np.asarray(names, dtype=object)[codes[keep]]})
            x = x[np.flatnonzero(keep)]
            self.clusters_, self.clustering_ = list(names), how
        return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(self._ids(self.ref_genes_))))

    def impute(self, genes: Sequence[str], coverage: float | None = None) -> ad.AnnData:
        """Spatial cells x ``genes``: the mapped reference expression (``tg.project_genes``).

        ``coverage``: add calibrated interval layers (needs :meth:`calibrate` first)."""
        genes = self._check_request(genes)
        if not hasattr(self, "map_"):
            raise NotFittedError("TangramImputer is not fitted: call .fit(reference, spatial) first.")
        tg = _require("tangram", "Tangram")
        ids = self._ids(genes)
        clusters = self.hyperparams["mode"] == "clusters"
        with _root_logger_untouched():
            projected = tg.project_genes(self.map_, self.reference_[:, ids].copy(),
                                         cluster_label=CLUSTER_COLUMN if clusters else None, scale=True)  # fmt: skip
        values = projected[:, ids].X
        out = self._wrap(values.toarray() if sparse.issparse(values) else np.asarray(values), genes)
        return self._with_intervals(out, coverage)


    def save(self, directory: str | Path) -> Path:
        """Write ``model.json`` and ``arrays.npz``: the learned map and the log1p reference."""
        if not hasattr(self, "map_"):
            raise NotFittedError("TangramImputer is not fitted: call .fit(reference, spatial) first.")
        ref = sparse.csr_matrix(self.reference_.X)
        arrays = {"map": np.asarray(self.map_.X, dtype=np.float32), "map_obs": np.asarray(self.map_.obs_names, dtype=str),
                  "train_ids": np.asarray(self.map_.uns["train_genes_df"].index, dtype=str),
                  "ref_ids": np.asarray(self.reference_.var_names, dtype=str),
                  "ref_obs": np.asarray(self.reference_.obs_names, dtype=str),
                  "ref_data": ref.data, "ref_indices": ref.indices, "ref_indptr": ref.indptr,
                  "ref_shape": np.asarray(ref.shape)}  # fmt: skip
        if CLUSTER_COLUMN in self.reference_.obs:
            arrays["ref_clusters"] = self.reference_.obs[CLUSTER_COLUMN].to_numpy(dtype=str)
            arrays["map_clusters"] = self.map_.obs[CLUSTER_COLUMN].to_numpy(dtype=str)
        return self._save_common(directory, arrays)

    @classmethod
    def load(cls, directory: str | Path) -> TangramImputer:
        """Rebuild a saved Tangram imputer (imputes the same values as before saving)."""
        model, a = cls._load_common(directory)
        x = sparse.csr_matrix((a["ref_data"], a["ref_indices"], a["ref_indptr"]), shape=tuple(a["ref_shape"]))
        obs = pd.DataFrame(index=pd.Index(a["ref_obs"].astype(str)))
        map_obs = pd.DataFrame(index=pd.Index(a["map_obs"].astype(str)))
        if "ref_clusters" in a:
            obs[CLUSTER_COLUMN] = a["ref_clusters"].astype(object)
            map_obs[CLUSTER_COLUMN] = a["map_clusters"].astype(object)
        model.reference_ = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(a["ref_ids"].astype(str))))
        model.map_ = ad.AnnData(X=a["map"], obs=map_obs, var=pd.DataFrame(index=pd.Index(model.obs_names_)))
        model.map_.uns["train_genes_df"] = pd.DataFrame(index=pd.Index(a["train_ids"].astype(str)))
        return model


# --------------------------------------------------------------------------- gimVI
class GimVIImputer(_ReferencePeer):
    """gimVI (Lopez et al. 2019) through ``scvi-tools`` (``scvi.external.GIMVI``).

    A joint VAE of the reference (ZINB, library size modelled) and the spatial data (NB,
    observed library size) with a shared latent space; imputed genes are decoded for each
    spatial cell from its latent code (``GIMVI.setup_anndata``, ``GIMVI(...).train``,
    ``get_imputed_values``). Both datasets go in as raw counts (the spatial data restricted to
    the training genes).

    Read-out (``readout``), the choice that changes gimVI's scores most:

    - ``"normalized"`` (default): ``get_imputed_values(normalized=True)``, the decoder's
      expected *fraction* of a cell's reference-like library for each gene (independent of
      the spatial cell's depth), returned as ``log1p(fraction x 1e4)``: the reference's
      log1p-normalised space, the natural match for a depth-normalised target.
    - ``"counts"``: ``get_imputed_values(normalized=False)``, the expected counts at the spatial
      cell's observed library size over the training genes (the read-out of the Li et al.
      2022 benchmark), returned as ``log1p(counts)``; it carries each cell's depth.

    Parameters
    ----------
    readout
        ``"normalized"`` or ``"counts"``.
    epochs, batch_size, n_latent, kappa
        ``train(max_epochs=200, batch_size=128, kappa=5)`` and ``n_latent=10`` (scvi-tools and
        Li et al. 2022 defaults).
    seed
        ``scvi.settings.seed`` for the fit (global random states are restored afterwards).
    """

    name: ClassVar[str] = "gimvi"
    description: ClassVar[str] = "gimVI (scvi-tools): joint VAE of reference and spatial counts, decode missing genes."

    def __init__(
        self, readout: str = "normalized", epochs: int = 200, batch_size: int = 128, n_latent: int = 10,
        kappa: float = 5.0, seed: int = 0, device: str = "cpu",
    ) -> None:  # fmt: skip
        if readout not in ("normalized", "counts"):
            raise ValueError(f"readout must be 'normalized' or 'counts', got {readout!r}.")
        if epochs < 1 or batch_size < 2 or n_latent < 1:
            raise ValueError("Need epochs >= 1, batch_size >= 2 and n_latent >= 1.")
        self.hyperparams: dict[str, Any] = {
            "readout": readout, "epochs": int(epochs), "batch_size": int(batch_size), "n_latent": int(n_latent),
            "kappa": float(kappa), "seed": int(seed), "device": str(device),
        }  # fmt: skip
        self.expression_space = "log1p_cp10k_reference" if readout == "normalized" else "log1p_expected_counts"

    def fit(self, reference: ad.AnnData, spatial: ad.AnnData, genes: Sequence[str] | None = None) -> GimVIImputer:
        """Train gimVI on the reference and the spatial data's ``genes`` (default: all shared with counts)."""
        scvi = _require("scvi", "gimVI")
        from scvi.external import GIMVI

        hp = self.hyperparams
        train = _training_genes(reference, spatial, genes)
        self._remember(reference, spatial, train)
        seq = ad.AnnData(X=sparse.csr_matrix(reference.X, dtype=np.float32),
                         obs=pd.DataFrame(index=pd.Index([str(c) for c in reference.obs_names])),
                         var=pd.DataFrame(index=pd.Index(self._ids(self.ref_genes_))))  # fmt: skip
        sp = ad.AnnData(X=sparse.csr_matrix(spatial[:, train].X, dtype=np.float32),
                        obs=pd.DataFrame(index=pd.Index(self.obs_names_)),
                        var=pd.DataFrame(index=pd.Index(self._ids(train))))  # fmt: skip
        with _preserved_rng(), _root_logger_untouched():
            scvi.settings.seed = hp["seed"]
            GIMVI.setup_anndata(seq)
            GIMVI.setup_anndata(sp)
            model = GIMVI(seq, sp, n_latent=hp["n_latent"])
            model.train(max_epochs=hp["epochs"], batch_size=hp["batch_size"], kappa=hp["kappa"],
                        accelerator="gpu" if hp["device"].startswith("cuda") else "cpu", devices=1,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        self.model_ = model
        return self

    def impute(self, genes: Sequence[str], coverage: float | None = None) -> ad.AnnData:
        """Spatial cells x ``genes`` in the chosen read-out (see the class docstring).

        ``coverage``: add calibrated interval layers (needs :meth:`calibrate` first)."""
        genes = self._check_request(genes)
        if not hasattr(self, "model_"):
            raise NotFittedError("GimVIImputer is not fitted: call .fit(reference, spatial) first.")
        normalized = self.hyperparams["readout"] == "normalized"
        with _root_logger_untouched():
            _, spatial_values = self.model_.get_imputed_values(normalized=normalized)
        values = np.asarray(spatial_values)[:, pd.Index(self.ref_genes_).get_indexer(genes)].astype(np.float64)
        values = np.log1p(values * 1e4) if normalized else np.log1p(values)
        return self._with_intervals(self._wrap(values, genes), coverage)

    def save(self, directory: str | Path) -> Path:
        """Write ``model.json``, ``arrays.npz`` and scvi-tools' own save of the model with its data (``gimvi/``)."""
        if not hasattr(self, "model_"):
            raise NotFittedError("GimVIImputer is not fitted: call .fit(reference, spatial) first.")
        directory = self._save_common(directory, {})
        with _root_logger_untouched():
            self.model_.save(str(directory / GIMVI_DIR), overwrite=True, save_anndata=True)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> GimVIImputer:
        """Rebuild a saved gimVI imputer (needs scvi-tools)."""
        _require("scvi", "gimVI")
        from scvi.external import GIMVI

        model, _ = cls._load_common(directory)
        with _root_logger_untouched():
            model.model_ = GIMVI.load(str(Path(directory) / GIMVI_DIR), accelerator="cpu")
        return model
