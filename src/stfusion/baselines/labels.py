"""ST-Net's annotation baseline: predict the mean expression of training spots with the same label.

ST-Net compared against the mean of tumour vs normal spots; here any categorical obs column
works (default ``region_label``, the pathologist annotation).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import anndata as ad
import numpy as np
import pandas as pd

from stfusion import _constants as K
from stfusion.baselines.interpolation import load_arrays, resolve_train_genes, save_arrays, stacked_targets
from stfusion.errors import StfusionError
from stfusion.models.base import Model, prediction_adata


def spot_labels(section: ad.AnnData, label_key: str, *, role: str) -> pd.Series:
    """The section's label column as strings (missing labels stay missing)."""
    if label_key not in section.obs.columns:
        raise StfusionError(
            f"The {role} section has no obs column '{label_key}' "
            f"(columns: {list(section.obs.columns)[:10]}). Add the spot annotation as obs['{label_key}'] "
            "or pass label_key= naming the column that holds it."
        )
    col = section.obs[label_key]
    return col.astype(object).where(col.notna(), None).map(lambda v: None if v is None or v == "" else str(v))


class LabelMeanBaseline(Model):
    """Mean target expression of the training spots sharing the test spot's label.

    Test spots whose label is missing or not seen in training get the overall training mean.
    """

    name: ClassVar[str] = "label_mean"
    description: ClassVar[str] = "Mean expression of training spots with the same region label."
    input_kind: ClassVar[str] = "labels"

    def __init__(self, label_key: str = K.REGION_LABEL) -> None:
        super().__init__(label_key=label_key)

    def _fit(self, train_sections: Sequence[ad.AnnData], genes: Sequence[str] | None = None) -> LabelMeanBaseline:
        genes = resolve_train_genes(train_sections, genes)
        key = self.hyperparams["label_key"]
        labels = pd.concat([spot_labels(s, key, role="training") for s in train_sections], ignore_index=True)
        values = stacked_targets(train_sections, genes)
        known = labels.notna().to_numpy()
        if not known.any():
            raise StfusionError(f"Every training spot's '{key}' is missing; annotate the training spots first.")
        frame = pd.DataFrame(values[known]).groupby(labels[known].to_numpy(), sort=True).mean()
        self.labels_ = np.asarray(frame.index, dtype=str)
        self.label_means_ = frame.to_numpy()
        self.mean_ = values.mean(axis=0)
        self.genes_ = genes
        return self

    def _predict(self, section: ad.AnnData) -> ad.AnnData:
        genes = self._check_fitted()
        labels = spot_labels(section, self.hyperparams["label_key"], role="test")
        pos = pd.Index(self.labels_).get_indexer(labels.fillna("\0").to_numpy())
        values = np.where((pos >= 0)[:, None], self.label_means_[np.maximum(pos, 0)], self.mean_)
        return prediction_adata(section, values, genes, method=self.name)

    def save(self, directory: str | Path) -> Path:
        directory = super().save(directory)
        save_arrays(directory, {"labels": self.labels_, "label_means": self.label_means_, "mean": self.mean_})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> LabelMeanBaseline:
        model, card = cls.from_card(directory)
        arrays = load_arrays(directory)
        model.labels_, model.label_means_, model.mean_ = arrays["labels"], arrays["label_means"], arrays["mean"]
        return model
