"""The section data model: one AnnData per tissue section.

Schema (scverse Visium conventions):

- ``X``: raw counts, integer CSR; ``var_names`` unique genes; ``obs_names`` spot ids.
- ``obsm["spatial"]``: spot centres (x, y) in full-resolution image pixels.
- ``uns["spatial"][library_id]``: ``images`` (``hires`` preview, maybe ``lowres``),
  ``scalefactors`` (``spot_diameter_fullres``, ``tissue_hires_scalef``),
  ``microns_per_pixel`` and ``fullres_shape`` of the full-resolution image, and
  ``metadata["source_image_path"]``: the absolute path patches are read from.
- ``uns["stfusion"]``: ``section_id``, ``platform``, ``source``, optional ``patient``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from stfusion import _constants as K
from stfusion.data.counts import check_not_empty, check_unique_genes, to_counts_csr
from stfusion.data.image import image_shape, read_preview
from stfusion.data.scale import resolve_scale
from stfusion.errors import ImageError, SchemaError, SpotsOutOfBoundsError


# --------------------------------------------------------------------------- accessors
def library_id(adata: ad.AnnData) -> str:
    """The one library id under ``uns["spatial"]``."""
    libs = list(adata.uns.get(K.SPATIAL, {}).keys())
    if len(libs) != 1:
        raise SchemaError(
            f"Expected exactly one library under uns['{K.SPATIAL}'], found {len(libs)} ({libs}). "
            "A section is one AnnData per tissue section; split multi-section objects first "
            "(or read the section with `stfusion read`)."
        )
    return libs[0]


def spatial_info(adata: ad.AnnData) -> dict:
    """``uns["spatial"][library_id]``."""
    return adata.uns[K.SPATIAL][library_id(adata)]


def microns_per_pixel(adata: ad.AnnData) -> float:
    return float(spatial_info(adata)[K.MICRONS_PER_PIXEL])


def spot_diameter_px(adata: ad.AnnData) -> float:
    return float(spatial_info(adata)[K.SCALEFACTORS][K.SPOT_DIAMETER_FULLRES])


def fullres_shape(adata: ad.AnnData) -> tuple[int, int]:
    h, w = spatial_info(adata)[K.FULLRES_SHAPE]
    return int(h), int(w)


def fullres_path(adata: ad.AnnData) -> Path | None:
    """Path of the full-resolution image, or None when only downscaled images are stored."""
    p = spatial_info(adata).get(K.METADATA, {}).get(K.SOURCE_IMAGE_PATH)
    return Path(p) if p else None


def section_meta(adata: ad.AnnData) -> dict:
    return dict(adata.uns.get(K.STFUSION, {}))


def spot_coords(adata: ad.AnnData) -> np.ndarray:
    return np.asarray(adata.obsm[K.SPATIAL], dtype=float)


# --------------------------------------------------------------------------- building
def assemble_section(
    counts,
    coords_px: np.ndarray,
    *,
    obs_names,
    var_names,
    library_id: str,
    microns_per_pixel: float,
    scale_source: str,
    spot_diameter_um: float,
    images: dict[str, np.ndarray],
    scalefactors: dict[str, float],
    fullres_shape: tuple[int, int],
    fullres_path: str | Path | None = None,
    obs: pd.DataFrame | None = None,
    var: pd.DataFrame | None = None,
    meta: dict[str, Any] | None = None,
) -> ad.AnnData:
    """Put checked parts together into a section and validate it."""
    obs_names = pd.Index(np.asarray(obs_names).astype(str))
    var_names = pd.Index(np.asarray(var_names).astype(str))
    check_unique_genes(var_names)
    x = to_counts_csr(counts)
    check_not_empty(*x.shape)
    obs_df = pd.DataFrame(index=obs_names) if obs is None else obs.set_axis(obs_names)
    var_df = pd.DataFrame(index=var_names) if var is None else var.set_axis(var_names)
    adata = ad.AnnData(X=x, obs=obs_df, var=var_df)
    adata.obsm[K.SPATIAL] = np.asarray(coords_px, dtype=np.float64)
    sf = {k: float(v) for k, v in scalefactors.items()}
    sf[K.SPOT_DIAMETER_FULLRES] = float(spot_diameter_um) / float(microns_per_pixel)
    lib: dict[str, Any] = {
        K.IMAGES: dict(images),
        K.SCALEFACTORS: sf,
        K.MICRONS_PER_PIXEL: float(microns_per_pixel),
        K.SCALE_SOURCE: scale_source,
        K.FULLRES_SHAPE: np.asarray(fullres_shape, dtype=np.int64),
        K.METADATA: {},
    }
    if fullres_path is not None:
        lib[K.METADATA][K.SOURCE_IMAGE_PATH] = str(Path(fullres_path).resolve())
    adata.uns[K.SPATIAL] = {library_id: lib}
    adata.uns[K.STFUSION] = {K.SECTION_ID: library_id, **(meta or {})}
    validate_section(adata)
    return adata


def section_from_image(
    counts,
    coords_px: np.ndarray,
    image_path: str | Path,
    *,
    obs_names,
    var_names,
    library_id: str,
    spot_diameter_um: float = K.ST_SPOT_DIAMETER_UM,
    spot_spacing_um: float | None = None,
    microns_per_pixel: float | None = None,
    obs: pd.DataFrame | None = None,
    var: pd.DataFrame | None = None,
    meta: dict[str, Any] | None = None,
    hires_max_side: int = K.HIRES_MAX_SIDE_PX,
) -> ad.AnnData:
    """Build a section whose full-resolution image is a file (legacy ST, Visium with full-res TIFF).

    The scale comes from ``microns_per_pixel`` when given, else from the spot grid and
    ``spot_spacing_um`` (fitted through the array coordinates when ``obs`` has
    ``array_col``/``array_row``).
    """
    image_path = Path(image_path)
    shape = image_shape(image_path)
    array_xy = None
    if obs is not None and {K.ARRAY_COL, K.ARRAY_ROW} <= set(obs.columns):
        array_xy = obs[[K.ARRAY_COL, K.ARRAY_ROW]].to_numpy(dtype=float)
    mpp, source = resolve_scale(
        coords_px, microns_per_pixel=microns_per_pixel, spot_spacing_um=spot_spacing_um, array_coords=array_xy
    )
    check_spots_in_bounds(np.asarray(coords_px, dtype=float), shape, where=str(image_path))
    preview, scalef = read_preview(image_path, hires_max_side)
    return assemble_section(
        counts,
        coords_px,
        obs_names=obs_names,
        var_names=var_names,
        library_id=library_id,
        microns_per_pixel=mpp,
        scale_source=source,
        spot_diameter_um=spot_diameter_um,
        images={K.HIRES: preview},
        scalefactors={K.HIRES_SCALEF: scalef},
        fullres_shape=shape,
        fullres_path=image_path,
        obs=obs,
        var=var,
        meta=meta,
    )


# --------------------------------------------------------------------------- validation
def check_spots_in_bounds(coords: np.ndarray, shape: tuple[int, int], *, where: str = "the image") -> None:
    h, w = shape
    x, y = coords[:, 0], coords[:, 1]
    bad = ~np.isfinite(coords).all(axis=1) | (x < 0) | (y < 0) | (x >= w) | (y >= h)
    if not bad.any():
        return
    hint = ""
    swapped = (x < h) & (y < w) & (x >= 0) & (y >= 0)
    if swapped.all():
        hint = " All spots would fit with x and y swapped: check the column order (x is the column, y the row)."
    elif np.nanmax(x) > w * 1.5 or np.nanmax(y) > h * 1.5:
        hint = " Coordinates look scaled for a larger image: check that the image is the full-resolution one."
    raise SpotsOutOfBoundsError(
        f"{int(bad.sum())} of {len(coords)} spot centres lie outside {where} "
        f"(width {w}, height {h}; x range {np.nanmin(x):.0f}–{np.nanmax(x):.0f}, "
        f"y range {np.nanmin(y):.0f}–{np.nanmax(y):.0f}).{hint}"
    )


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise SchemaError(msg)


def validate_section(adata: ad.AnnData, *, require_counts: bool = True) -> ad.AnnData:
    """Check that ``adata`` is a valid stfusion section; raise a :class:`SectionError` if not.

    Returns ``adata`` unchanged so it can be used inline.
    """
    check_not_empty(adata.n_obs, adata.n_vars)
    check_unique_genes(adata.var_names)
    if require_counts:
        from stfusion.data.counts import check_counts

        check_counts(adata.X)
    fix = "Read the section with stfusion.io (or `stfusion read`) to get a valid one."
    _require(K.SPATIAL in adata.obsm, f"obsm['{K.SPATIAL}'] (spot centres in pixels) is missing. {fix}")
    coords = np.asarray(adata.obsm[K.SPATIAL])
    _require(
        coords.ndim == 2 and coords.shape[1] == 2,
        f"obsm['{K.SPATIAL}'] must have shape (n_spots, 2), got {coords.shape}. {fix}",
    )
    lib = spatial_info(adata)
    for key in (K.SCALEFACTORS, K.MICRONS_PER_PIXEL, K.FULLRES_SHAPE, K.IMAGES):
        _require(key in lib, f"uns['{K.SPATIAL}'][library]['{key}'] is missing. {fix}")
    _require(
        K.SPOT_DIAMETER_FULLRES in lib[K.SCALEFACTORS],
        f"scalefactors['{K.SPOT_DIAMETER_FULLRES}'] is missing. {fix}",
    )
    mpp = float(lib[K.MICRONS_PER_PIXEL])
    _require(np.isfinite(mpp) and mpp > 0, f"microns_per_pixel must be positive, got {mpp}. {fix}")
    path = fullres_path(adata)
    if path is None and not lib[K.IMAGES]:
        raise ImageError(
            "The section has neither a full-resolution image path nor a stored image. "
            "Read it again with its image (--image or --fullres-image)."
        )
    if path is not None and not path.exists():
        raise ImageError(
            f"The section's full-resolution image {path} does not exist (moved or deleted?). "
            "Set it again with stfusion.data.set_fullres_image(adata, PATH)."
        )
    check_spots_in_bounds(coords.astype(float), fullres_shape(adata))
    return adata


def set_fullres_image(adata: ad.AnnData, path: str | Path) -> None:
    """Point a section at a (moved) full-resolution image file of the same size."""
    path = Path(path)
    shape = image_shape(path)
    if tuple(shape) != fullres_shape(adata):
        raise ImageError(f"{path} is {shape[1]}x{shape[0]} px but the section expects {fullres_shape(adata)[::-1]}.")
    spatial_info(adata)[K.METADATA][K.SOURCE_IMAGE_PATH] = str(path.resolve())
