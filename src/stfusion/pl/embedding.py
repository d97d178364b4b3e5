"""UMAP of spot embeddings (e.g. ST-Net's pooled features in ``obsm["X_stnet"]``)."""

from __future__ import annotations

import anndata as ad
import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from stfusion.errors import StfusionError  # noqa: E402


def umap_coords(x: np.ndarray, *, n_neighbors: int = 15, seed: int = 0) -> np.ndarray:
    """2-D UMAP (umap-learn) of the rows of ``x``; features are standardised first."""
    import umap

    x = np.asarray(x, dtype=np.float64)
    sd = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    reducer = umap.UMAP(n_neighbors=min(n_neighbors, len(x) - 1), random_state=seed, n_jobs=1)
    return reducer.fit_transform(z)


def _colour_values(pred: ad.AnnData, color: str | None) -> tuple[np.ndarray | None, str]:
    if color is None:
        return None, ""
    if color in pred.obs.columns:
        return pred.obs[color].to_numpy(), color
    if color in pred.var_names:
        col = pred[:, color].X
        return np.asarray(col.toarray() if hasattr(col, "toarray") else col).ravel(), f"{color} (predicted)"
    raise StfusionError(f"color={color!r} is neither an obs column ({list(pred.obs.columns)[:5]}) nor a gene of the prediction.")


def embedding_umap(
    pred: ad.AnnData, color: str | None = None, *, key: str = "X_stnet", n_neighbors: int = 15, seed: int = 0, ax=None
) -> Figure:
    """Scatter of the UMAP of ``pred.obsm[key]``, coloured by an obs label or a gene. Returns the figure.

    The coordinates are stored in ``pred.obsm[key + "_umap"]`` of the given object.
    """
    if key not in pred.obsm:
        raise StfusionError(f"{key!r} is not in obsm ({list(pred.obsm.keys())}); predict with ST-Net first (it writes X_stnet).")
    if pred.n_obs < 4:
        raise StfusionError(f"A UMAP needs at least 4 spots, got {pred.n_obs}.")
    xy = umap_coords(np.asarray(pred.obsm[key]), n_neighbors=n_neighbors, seed=seed)
    pred.obsm[f"{key}_umap"] = xy
    values, label = _colour_values(pred, color)
    fig = ax.figure if ax is not None else plt.figure(figsize=(5, 4.5))
    ax = ax if ax is not None else fig.add_subplot(111)
    if values is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=8, c="grey")
    elif pd.api.types.is_numeric_dtype(values) and not isinstance(values.dtype, pd.CategoricalDtype):
        sc = ax.scatter(xy[:, 0], xy[:, 1], s=8, c=values.astype(float), cmap="viridis")
        fig.colorbar(sc, ax=ax, label=label)
    else:
        cats = pd.Categorical(values)
        for i, cat in enumerate(cats.categories):
            m = np.asarray(cats.codes == i)
            ax.scatter(xy[m, 0], xy[m, 1], s=8, label=str(cat), color=plt.cm.tab20(i % 20))
        ax.legend(title=label, fontsize=7, markerscale=2, loc="best")
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_title(f"{key} UMAP" + (f" — {label}" if label else ""))
    return fig
