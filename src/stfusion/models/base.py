"""The one model interface every method and baseline follows.

``Model(**hyperparams)``, ``.fit(train_sections)``, ``.predict(section) -> AnnData``
(predicted expression for the section's spots, same obs names, predicted genes as
var names, uncertainty in layers when the method has it), ``.save(dir)``, ``.load(dir)``.
Models never modify their inputs.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from stfusion import _constants as K
from stfusion.errors import StfusionError

TARGET_SUM = 1e4


class NotFittedError(StfusionError, RuntimeError):
    """predict() or save() was called before fit()."""


def target_expression(section: ad.AnnData, genes: Sequence[str] | None = None) -> np.ndarray:
    """The primary evaluation target: log1p(counts / spot total × 1e4), total over ALL genes.

    Methods train on their own normalisation but every histology comparison is scored on
    this one. Returns a dense float32 array (spots x genes) for ``genes`` (default: all).
    """
    from stfusion.data.normalize import log1p_normalize_total

    x = section.X
    totals = np.asarray(x.sum(axis=1)).ravel()
    if genes is not None:
        missing = pd.Index(genes).difference(section.var_names)
        if len(missing):
            raise StfusionError(
                f"{len(missing)} of {len(genes)} genes are not in the section (e.g. {list(missing[:3])}). "
                "Select genes present in every section (stfusion.data.genes.resolve_genes)."
            )
        x = section[:, list(genes)].X
    return log1p_normalize_total(x, target_sum=TARGET_SUM, totals=totals)


def prediction_adata(
    section: ad.AnnData,
    values: np.ndarray,
    genes: Sequence[str],
    *,
    layers: dict[str, np.ndarray] | None = None,
    method: str,
    space: str = "log1p_cp10k",
) -> ad.AnnData:
    """Wrap predictions for the spots of ``section`` as an AnnData.

    Spot names, coordinates and spatial metadata are copied from the section, so the
    result opens in scanpy/squidpy like the input. ``uns["stfusion"]`` records the method
    and the expression space of ``X``.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.shape != (section.n_obs, len(genes)):
        raise ValueError(f"predictions have shape {values.shape}, expected {(section.n_obs, len(genes))}")
    out = ad.AnnData(X=values, obs=pd.DataFrame(index=section.obs_names.copy()), var=pd.DataFrame(index=pd.Index(genes)))
    if K.SPATIAL in section.obsm:
        out.obsm[K.SPATIAL] = np.asarray(section.obsm[K.SPATIAL]).copy()
    if K.SPATIAL in section.uns:
        out.uns[K.SPATIAL] = section.uns[K.SPATIAL]
    for key, arr in (layers or {}).items():
        out.layers[key] = np.asarray(arr, dtype=np.float32)
    meta = dict(section.uns.get(K.STFUSION, {}))
    meta.update({"method": method, "expression_space": space})
    out.uns[K.STFUSION] = meta
    return out


def dense(x) -> np.ndarray:
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


class Model(ABC):
    """Base class: stores hyperparameters, the fitted genes, and a JSON model card."""

    name: ClassVar[str] = "model"
    description: ClassVar[str] = ""
    input_kind: ClassVar[str] = "histology"  # histology | reference | coordinates
    has_uncertainty: ClassVar[bool] = False
    has_super_resolution: ClassVar[bool] = False

    def __init__(self, **hyperparams: Any) -> None:
        self.hyperparams = dict(hyperparams)
        self.genes_: list[str] | None = None

    # -- interface
    @abstractmethod
    def fit(self, train_sections: Sequence[ad.AnnData], genes: Sequence[str] | None = None) -> Model: ...

    @abstractmethod
    def predict(self, section: ad.AnnData) -> ad.AnnData: ...

    # -- helpers
    def _check_fitted(self) -> list[str]:
        if self.genes_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call .fit(train_sections) or .load(dir) first.")
        return self.genes_

    def card(self) -> dict[str, Any]:
        from stfusion import __version__

        return {
            "method": self.name,
            "version": __version__,
            "hyperparams": self.hyperparams,
            "genes": self.genes_,
        }

    def save(self, directory: str | Path) -> Path:
        """Write the model card (JSON); subclasses add their weights."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "model.json").write_text(json.dumps(self.card(), indent=2, default=_json_default))
        return directory

    @classmethod
    def from_card(cls, directory: str | Path) -> tuple[Model, dict[str, Any]]:
        """A new model rebuilt from a saved card: checks the method, restores the
        hyperparameters and genes. Subclasses' ``load`` then restore their fitted arrays."""
        card = cls.read_card(directory)
        if card.get("method") != cls.name:
            raise StfusionError(
                f"{directory} holds a '{card.get('method')}' model, not '{cls.name}'. "
                "Load it with stfusion.models.api.load_model(dir), which picks the class from the card."
            )
        model = cls(**card["hyperparams"])
        model.genes_ = list(card["genes"])
        return model, card

    @staticmethod
    def read_card(directory: str | Path) -> dict[str, Any]:
        path = Path(directory) / "model.json"
        if not path.exists():
            raise StfusionError(f"{directory} is not a saved stfusion model (no model.json). Save one with model.save(dir).")
        return json.loads(path.read_text())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")
