"""Small synthetic sections, predictions and super-resolved grids for the plotting and report tests."""

from __future__ import annotations

import copy

import anndata as ad
import numpy as np
import pandas as pd

from stfusion import _constants as K
from stfusion.data.synthetic import make_synthetic_section
from stfusion.models.base import prediction_adata, target_expression

MPP = 2.0  # µm per full-resolution pixel of the synthetic sections


def section(tmp_path, *, grid=(8, 8), n_genes=6, seed=0) -> ad.AnnData:
    return make_synthetic_section(tmp_path / "img", grid=grid, n_genes=n_genes, microns_per_pixel=MPP,
                                  spot_shape="round", seed=seed)


def prediction(truth: ad.AnnData, *, seed: int = 0, layers=("sd",)) -> ad.AnnData:
    """Truth plus noise growing with the gene index: gene 0 is predicted best, the last worst."""
    rng = np.random.default_rng(seed)
    y = target_expression(truth)
    noise_sd = y.std(axis=0) * (0.3 + 2.0 * np.arange(y.shape[1]) / max(1, y.shape[1] - 1))
    values = y + rng.normal(size=y.shape) * noise_sd
    extra = {name: np.abs(rng.normal(size=y.shape)) + 0.1 for name in layers}
    return prediction_adata(truth, values, list(truth.var_names), layers=extra, method="synthetic_test")


def with_preview_scale(adata: ad.AnnData, factor: int = 2) -> ad.AnnData:
    """A copy whose stored preview is downscaled ``factor`` times (scale factor 1 / factor)."""
    out = adata.copy()
    out.uns[K.SPATIAL] = copy.deepcopy(dict(adata.uns[K.SPATIAL]))
    lib = next(iter(out.uns[K.SPATIAL].values()))
    lib[K.IMAGES][K.HIRES] = np.ascontiguousarray(lib[K.IMAGES][K.HIRES][::factor, ::factor])
    lib[K.SCALEFACTORS][K.HIRES_SCALEF] = lib[K.SCALEFACTORS][K.HIRES_SCALEF] / factor
    return out


def superres(truth: ad.AnnData, *, k: int = 2, seed: int = 1) -> ad.AnnData:
    """A k x k grid of cells per spot, each cell carrying its spot's truth plus noise."""
    rng = np.random.default_rng(seed)
    xy = np.asarray(truth.obsm[K.SPATIAL], dtype=float)
    pitch = float(np.median(np.diff(np.unique(np.round(xy[:, 0])))))
    side = pitch / k
    offsets = (np.arange(k) - (k - 1) / 2) * side
    dx, dy = np.meshgrid(offsets, offsets, indexing="ij")
    centres = (xy[:, None, :] + np.stack([dx.ravel(), dy.ravel()], axis=1)[None]).reshape(-1, 2)
    y = np.repeat(target_expression(truth), k * k, axis=0)
    values = y + rng.normal(scale=0.2, size=y.shape)
    out = ad.AnnData(X=values.astype(np.float32), obs=pd.DataFrame(index=[f"cell_{i}" for i in range(len(centres))]),
                     var=pd.DataFrame(index=truth.var_names.copy()))
    out.obsm[K.SPATIAL] = centres
    out.uns[K.SPATIAL] = truth.uns[K.SPATIAL]
    out.uns[K.STFUSION] = {**truth.uns[K.STFUSION], "method": "synthetic_sr",
                           K.SUPERRES: {K.SUPERRES_FACTOR: k * k, K.SUPERRES_SUBPATCH_PX: side}}
    out.layers["sd"] = np.abs(rng.normal(size=values.shape)).astype(np.float32)
    return out
