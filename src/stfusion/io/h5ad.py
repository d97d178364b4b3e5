"""Read spatial ``.h5ad`` files (stfusion sections or scanpy/squidpy Visium objects); atomic write."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import anndata as ad
import numpy as np

from stfusion import _constants as K
from stfusion.data.counts import check_counts
from stfusion.data.image import image_shape, to_rgb_uint8
from stfusion.data.scale import resolve_scale
from stfusion.data.section import assemble_section, validate_section
from stfusion.errors import CountsError, InputFileError, SchemaError
from stfusion.io.atomic import atomic_path
from stfusion.io.visium import KEPT_SCALEFACTORS, check_fullres_matches, estimate_fullres_shape

__all__ = ["read_h5ad", "write_h5ad"]


# --------------------------------------------------------------------------- library
def _select_library(adata: ad.AnnData, library_id: str | None, path: Path) -> tuple[ad.AnnData, str]:
    """Keep one library of ``uns["spatial"]`` (and its spots, for concatenated objects)."""
    libs = list(adata.uns.get(K.SPATIAL, {}).keys())
    if not libs:
        raise SchemaError(
            f"{path} has no uns['{K.SPATIAL}'] entry, so no image or scale factors. Read the raw "
            "platform files instead (stfusion.io.read_visium, or the reader of your platform)."
        )
    if library_id is None:
        if len(libs) > 1:
            raise SchemaError(
                f"{path} holds {len(libs)} libraries ({', '.join(map(str, libs))}). "
                "Pass library_id= (CLI: --library-id) to pick one section."
            )
        library_id = libs[0]
    if library_id not in libs:
        raise SchemaError(f"Library '{library_id}' is not in {path}; it holds {', '.join(map(str, libs))}.")
    if len(libs) > 1:
        if K.OBS_LIBRARY_ID not in adata.obs:
            raise SchemaError(
                f"{path} holds {len(libs)} libraries but no obs['{K.OBS_LIBRARY_ID}'] column tells "
                "which spot belongs to which. Split the object per section before reading it."
            )
        adata = adata[adata.obs[K.OBS_LIBRARY_ID].astype(str).to_numpy() == str(library_id)].copy()
    adata.uns[K.SPATIAL] = {library_id: adata.uns[K.SPATIAL][library_id]}
    return adata, str(library_id)


# --------------------------------------------------------------------------- counts
def _count_candidates(adata: ad.AnnData):
    """``(where, matrix or None, var)`` for X, layers['counts'] and .raw, in that order."""
    yield "X", adata.X, adata.var
    layer = f"layers['{K.LAYER_COUNTS}']"
    yield layer, adata.layers[K.LAYER_COUNTS] if K.LAYER_COUNTS in adata.layers else None, adata.var
    raw = adata.raw
    yield ".raw.X", None if raw is None else raw.X, None if raw is None else raw.var


def _find_counts(adata: ad.AnnData, path: Path):
    """Return ``(matrix, var)`` of the first raw-count candidate."""
    tried = []
    for where, x, var in _count_candidates(adata):
        if x is None:
            tried.append(f"{where} (absent)")
            continue
        try:
            check_counts(x, what=where)
        except CountsError as exc:
            tried.append(re.split(r"(?<=\.)\s+(?=[A-Z])", str(exc))[0].rstrip("."))
            continue
        return x, var
    raise CountsError(
        f"No raw integer counts in {path}. Looked in: " + "; ".join(tried) + ". "
        f"Store the raw count matrix in X or layers['{K.LAYER_COUNTS}'] (e.g. adata.layers['{K.LAYER_COUNTS}'] "
        "= raw counts, before normalising) and write the file again."
    )


# --------------------------------------------------------------------------- conversion
def _fullres(lib: dict, images: dict, sf: dict) -> tuple[tuple[int, int], Path | None]:
    src = lib.get(K.METADATA, {}).get(K.SOURCE_IMAGE_PATH)
    if src:
        src_path = Path(str(src))
        if src_path.exists():
            shape = image_shape(src_path)
            check_fullres_matches(shape, images, sf, src_path)
            return shape, src_path
        warnings.warn(
            f"The full-resolution image {src_path} named in the file does not exist; using the stored "
            "images only. Set it with stfusion.data.set_fullres_image(adata, PATH).",
            UserWarning,
            stacklevel=3,
        )
    return estimate_fullres_shape(images, sf), None


def _convert(adata: ad.AnnData, lib_id: str, path: Path, mpp: float | None) -> ad.AnnData:
    """Turn a scanpy/squidpy Visium-style AnnData into a section."""
    lib = adata.uns[K.SPATIAL][lib_id]
    sf = {k: float(v) for k, v in lib.get(K.SCALEFACTORS, {}).items()}
    images = {k: to_rgb_uint8(v) for k, v in lib.get(K.IMAGES, {}).items() if k in (K.HIRES, K.LOWRES)}
    if K.SPATIAL not in adata.obsm:
        raise SchemaError(f"{path} has no obsm['{K.SPATIAL}'] (spot centres in full-resolution pixels).")
    microns, source = resolve_scale(
        microns_per_pixel=mpp,
        spot_diameter_fullres=sf.get(K.SPOT_DIAMETER_FULLRES),
        spot_diameter_um=K.VISIUM_SPOT_DIAMETER_UM,
    )
    x, var = _find_counts(adata, path)
    shape, src_path = _fullres(lib, images, sf)
    var = var.copy()
    if not var.index.is_unique:
        var.index = ad.utils.make_index_unique(var.index.astype(str))
    section = assemble_section(
        x,
        np.asarray(adata.obsm[K.SPATIAL], dtype=np.float64),
        obs_names=adata.obs_names,
        var_names=var.index,
        library_id=lib_id,
        microns_per_pixel=microns,
        scale_source=source,
        spot_diameter_um=K.VISIUM_SPOT_DIAMETER_UM,
        images=images,
        scalefactors={k: sf[k] for k in KEPT_SCALEFACTORS if k in sf},
        fullres_shape=shape,
        fullres_path=src_path,
        obs=adata.obs.copy(),
        var=var,
        meta={K.PLATFORM: "visium", K.SOURCE: str(path)},
    )
    other = {k: v for k, v in lib.get(K.METADATA, {}).items() if k != K.SOURCE_IMAGE_PATH}
    section.uns[K.SPATIAL][lib_id][K.METADATA].update(other)
    return section


def _is_section(lib: dict) -> bool:
    return K.MICRONS_PER_PIXEL in lib and K.FULLRES_SHAPE in lib


# --------------------------------------------------------------------------- public
def read_h5ad(
    path: str | Path, *, library_id: str | None = None, microns_per_pixel: float | None = None
) -> ad.AnnData:
    """Read a spatial ``.h5ad`` as a validated section.

    Accepts a stfusion section (returned after validation) or a scanpy/squidpy Visium
    object (``uns["spatial"][lib]`` with images and scale factors), which is converted:
    µm/px from ``spot_diameter_fullres`` (55 µm spots) unless ``microns_per_pixel`` is
    given, the full-resolution size from the stored images, raw counts from ``X``,
    ``layers["counts"]`` or ``.raw``. Objects with several libraries need ``library_id``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"h5ad file {path} does not exist. Check the path.")
    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types on broken files
        raise InputFileError(f"Cannot read {path} as h5ad: {exc}. Is the file complete?") from exc
    adata, lib_id = _select_library(adata, library_id, path)
    if _is_section(adata.uns[K.SPATIAL][lib_id]) and microns_per_pixel is None:
        return validate_section(adata)
    return _convert(adata, lib_id, path, microns_per_pixel)


def write_h5ad(adata: ad.AnnData, path: str | Path) -> Path:
    """Write ``adata`` atomically (temporary file in the same folder, then ``os.replace``).

    Creates missing parent folders. An error while writing leaves neither a partial file
    nor a changed existing file.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path
