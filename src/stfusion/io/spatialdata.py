"""Export a section or a prediction to SpatialData (zarr), when ``spatialdata`` is installed.

The SpatialData object has one coordinate system, ``"global"``, in full-resolution pixels
(the unit of ``obsm["spatial"]``):

- ``shapes["<library>_spots"]``: circles at the spot centres with the spot radius (or, for
  a super-resolved grid, half the grid cell side);
- ``images["<library>_hires"]`` / ``images["<library>_lowres"]``: the stored downscaled
  images, mapped to full-resolution pixels by a scale transformation;
- ``tables["table"]``: the AnnData itself, annotating the spots (``region``/``instance_id``).

Install with ``pip install spatialdata`` (not a core dependency: it pulls dask, geopandas
and more).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
from scipy.spatial import cKDTree

from stfusion import _constants as K
from stfusion.errors import StfusionError

REGION_KEY, INSTANCE_KEY = "region", "instance_id"


def _import_spatialdata():
    try:
        import spatialdata  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise StfusionError(
            "Exporting to SpatialData needs the optional package 'spatialdata': pip install spatialdata"
        ) from exc
    return spatialdata


def _spot_radius_px(adata: ad.AnnData, info: dict) -> float:
    diameter = info.get(K.SCALEFACTORS, {}).get(K.SPOT_DIAMETER_FULLRES)
    if diameter:
        return float(diameter) / 2
    xy = np.asarray(adata.obsm[K.SPATIAL], dtype=float)
    if len(xy) < 2:
        raise StfusionError("Cannot size one spot without a spot diameter in uns['spatial'][lib]['scalefactors'].")
    dist, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(dist[:, 1])) / 2


def to_spatialdata(adata: ad.AnnData):
    """A ``spatialdata.SpatialData`` view of a section or prediction (see the module docstring)."""
    sd = _import_spatialdata()
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    if K.SPATIAL not in adata.obsm:
        raise StfusionError("The AnnData has no obsm['spatial'] spot centres; nothing to place in space.")
    libs = list(adata.uns.get(K.SPATIAL, {}))
    lib = libs[0] if len(libs) == 1 else "section"
    info = adata.uns[K.SPATIAL][lib] if len(libs) == 1 else {}
    region = f"{lib}_spots"
    xy = np.asarray(adata.obsm[K.SPATIAL], dtype=float)
    shapes = ShapesModel.parse(
        xy, geometry=0, radius=np.full(len(xy), _spot_radius_px(adata, info)),
        index=np.arange(len(xy)), transformations={"global": Identity()},
    )
    images = {}
    for key, img in info.get(K.IMAGES, {}).items():
        scalef = info.get(K.SCALEFACTORS, {}).get(f"tissue_{key}_scalef")
        if not scalef:
            continue
        arr = np.asarray(img)
        arr = arr[..., None] if arr.ndim == 2 else arr
        images[f"{lib}_{key}"] = Image2DModel.parse(
            np.moveaxis(arr, -1, 0), dims=("c", "y", "x"),
            transformations={"global": Scale([1 / scalef, 1 / scalef], axes=("y", "x"))},
        )
    table = adata.copy()
    table.obs[REGION_KEY] = region
    table.obs[REGION_KEY] = table.obs[REGION_KEY].astype("category")
    table.obs[INSTANCE_KEY] = np.arange(adata.n_obs)
    table = TableModel.parse(table, region=region, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    return sd.SpatialData(images=images, shapes={region: shapes}, tables={"table": table})


def write_spatialdata(adata: ad.AnnData, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write :func:`to_spatialdata` of ``adata`` to a ``.zarr`` store."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise StfusionError(f"{path} exists; remove it or pass overwrite=True.")
    to_spatialdata(adata).write(path, overwrite=overwrite)
    return path
