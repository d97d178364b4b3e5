"""Reader for 10x Genomics Visium (Space Ranger ``outs`` folder)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from stfusion import _constants as K
from stfusion.data.image import image_shape, open_pil, to_rgb_uint8
from stfusion.data.scale import resolve_scale
from stfusion.data.section import assemble_section
from stfusion.errors import EmptySectionError, ImageError, InputFileError, JoinError

__all__ = ["estimate_fullres_shape", "read_visium"]

POSITIONS_V2 = "tissue_positions.csv"
POSITIONS_V1 = "tissue_positions_list.csv"
SCALEFACTORS_JSON = "scalefactors_json.json"
IMAGE_FILES = {K.HIRES: "tissue_hires_image.png", K.LOWRES: "tissue_lowres_image.png"}
SCALEF_OF = {K.HIRES: K.HIRES_SCALEF, K.LOWRES: K.LOWRES_SCALEF}
POSITION_COLUMNS = ["barcode", K.IN_TISSUE, K.ARRAY_ROW, K.ARRAY_COL, "pxl_row_in_fullres", "pxl_col_in_fullres"]
KEPT_SCALEFACTORS = (K.HIRES_SCALEF, K.LOWRES_SCALEF, K.FIDUCIAL_DIAMETER_FULLRES)
FULLRES_TOLERANCE = 0.03  # relative; preview size vs full-res size x scale factor

_LAYOUT = (
    "A Space Ranger outs folder should contain filtered_feature_bc_matrix.h5 (or the "
    "filtered_feature_bc_matrix/ folder with matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz) and "
    f"spatial/ with {POSITIONS_V2} (or {POSITIONS_V1}), {SCALEFACTORS_JSON}, "
    f"{IMAGE_FILES[K.HIRES]} and {IMAGE_FILES[K.LOWRES]}."
)


def _missing(what: Path, outs: Path) -> InputFileError:
    return InputFileError(f"{what} not found in the Visium folder {outs}. {_LAYOUT}")


# --------------------------------------------------------------------------- counts
def _counts_path(outs: Path, counts_file: str) -> Path:
    path = outs / counts_file
    if path.exists():
        return path
    if counts_file.endswith(".h5"):
        folder = outs / counts_file[: -len(".h5")]
        if folder.is_dir():
            return folder
    raise _missing(Path(counts_file), outs)


def read_counts(outs: Path, counts_file: str = "filtered_feature_bc_matrix.h5") -> ad.AnnData:
    """Gene-expression counts from a 10x ``.h5`` file or matrix folder; symbols made unique."""
    import scanpy as sc

    path = _counts_path(outs, counts_file)
    try:
        if path.is_dir():
            adata = sc.read_10x_mtx(path, var_names="gene_symbols", gex_only=True)
        else:
            adata = sc.read_10x_h5(path, gex_only=True)
    except (OSError, KeyError, ValueError) as exc:
        raise InputFileError(
            f"Cannot read the 10x count matrix {path}: {exc}. Check that it is a complete Space Ranger "
            "feature-barcode matrix (.h5, or a folder with matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz)."
        ) from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        adata.var_names_make_unique()
    return adata


# --------------------------------------------------------------------------- spatial/
def read_positions(spatial_dir: Path) -> pd.DataFrame:
    """Spot table indexed by barcode; v1 (no header) or v2 (with header) layout."""
    path = spatial_dir / POSITIONS_V2
    if not path.exists():
        path = spatial_dir / POSITIONS_V1
    if not path.exists():
        raise _missing(Path("spatial") / f"{POSITIONS_V2} (or {POSITIONS_V1})", spatial_dir.parent)
    with path.open() as fh:
        first = fh.readline()
    has_header = first.split(",")[0].strip().strip('"') == "barcode"
    df = pd.read_csv(path, header=0 if has_header else None)
    if df.shape[1] != len(POSITION_COLUMNS):
        raise InputFileError(
            f"{path} has {df.shape[1]} columns; expected {len(POSITION_COLUMNS)} "
            f"({', '.join(POSITION_COLUMNS)}). Is this a Space Ranger tissue positions file?"
        )
    df.columns = POSITION_COLUMNS
    df["barcode"] = df["barcode"].astype(str)
    return df.set_index("barcode")


def read_scalefactors(spatial_dir: Path) -> dict[str, float]:
    path = spatial_dir / SCALEFACTORS_JSON
    if not path.exists():
        raise _missing(Path("spatial") / SCALEFACTORS_JSON, spatial_dir.parent)
    with path.open() as fh:
        sf = json.load(fh)
    if K.SPOT_DIAMETER_FULLRES not in sf:
        raise InputFileError(
            f"{path} has no '{K.SPOT_DIAMETER_FULLRES}' entry (found {sorted(sf)}). "
            "Use the scalefactors_json.json Space Ranger wrote for this section."
        )
    return {k: float(v) for k, v in sf.items() if v is not None}


def read_images(spatial_dir: Path, scalefactors: dict[str, float]) -> dict[str, np.ndarray]:
    """The hires/lowres PNGs that exist and have a scale factor, as uint8 RGB."""
    images = {}
    for key, name in IMAGE_FILES.items():
        path = spatial_dir / name
        if path.exists() and SCALEF_OF[key] in scalefactors:
            images[key] = to_rgb_uint8(np.asarray(open_pil(path).convert("RGB")))
    return images


def _round_up(value: float) -> int:
    """Ceil, forgiving the rounding of scale factors to ~6 digits in scalefactors_json.json."""
    return math.ceil(value * (1.0 - 1e-5))


def estimate_fullres_shape(images: dict[str, np.ndarray], scalefactors: dict[str, float]) -> tuple[int, int]:
    """Full-resolution (height, width) implied by the stored previews and their scale factors.

    Takes the largest estimate over ``hires`` and ``lowres`` (the full-resolution image
    is at least as large as any preview implies) and warns when they disagree.
    """
    shapes = []
    for key in (K.HIRES, K.LOWRES):
        scalef = scalefactors.get(SCALEF_OF[key])
        if key in images and scalef:
            h, w = np.asarray(images[key]).shape[:2]
            shapes.append((_round_up(h / scalef), _round_up(w / scalef)))
    if not shapes:
        raise ImageError(
            "Cannot tell the size of the full-resolution image: no hires or lowres image with its "
            "scale factor. Pass the full-resolution image (fullres_image= / --fullres-image)."
        )
    est = (max(s[0] for s in shapes), max(s[1] for s in shapes))
    if any(abs(s[i] - est[i]) > FULLRES_TOLERANCE * est[i] for s in shapes for i in (0, 1)):
        warnings.warn(
            f"The hires and lowres images imply different full-resolution sizes {shapes}; "
            f"using the largest {est}. One of the stored images may be cropped or mislabelled.",
            UserWarning,
            stacklevel=2,
        )
    return est


def check_fullres_matches(
    shape: tuple[int, int], images: dict[str, np.ndarray], scalefactors: dict[str, float], path: Path
) -> None:
    """Raise :class:`ImageError` when the full-res image does not fit the stored preview."""
    key = K.HIRES if K.HIRES in images else K.LOWRES if K.LOWRES in images else None
    if key is None:
        return
    h, w = np.asarray(images[key]).shape[:2]
    big_h, big_w = shape
    scalef = scalefactors[SCALEF_OF[key]]
    aspect_err = abs((h / w) / (big_h / big_w) - 1.0)
    scale_err = abs(max(h, w) / (max(big_h, big_w) * scalef) - 1.0)
    if aspect_err > FULLRES_TOLERANCE or scale_err > FULLRES_TOLERANCE:
        exp_h, exp_w = round(h / scalef), round(w / scalef)
        raise ImageError(
            f"The full-resolution image {path} is {big_w}x{big_h} px (width x height), but the {key} "
            f"image ({w}x{h} px, scale factor {scalef:g}) implies about {exp_w}x{exp_h} px. "
            "Is this the image of another section? Pass the full-resolution image that was given "
            "to Space Ranger for this section."
        )


# --------------------------------------------------------------------------- join
def _join(counts: ad.AnnData, positions: pd.DataFrame, only_in_tissue: bool, outs: Path) -> ad.AnnData:
    common = counts.obs_names.intersection(positions.index, sort=False)
    if len(common) == 0:
        raise JoinError(
            f"None of the {counts.n_obs} barcodes of the count matrix ({', '.join(counts.obs_names[:2])}, ...) "
            f"appear among the {len(positions)} barcodes of the positions file "
            f"({', '.join(positions.index[:2])}, ...) in {outs}. Check that both come from the same "
            "Space Ranger run (and the same barcode suffix, e.g. '-1')."
        )
    if only_in_tissue:
        inside = positions.loc[common, K.IN_TISSUE].to_numpy() == 1
        common = common[inside]
        if len(common) == 0:
            raise EmptySectionError(
                f"No spot of {outs} is marked in_tissue = 1. Pass only_in_tissue=False to keep all spots."
            )
    return counts[common].copy()


def _default_library_id(outs: Path) -> str:
    return outs.parent.name if outs.name == "outs" and outs.parent.name else outs.name


# --------------------------------------------------------------------------- public
def read_visium(
    outs_dir: str | Path,
    *,
    fullres_image: str | Path | None = None,
    library_id: str | None = None,
    counts_file: str = "filtered_feature_bc_matrix.h5",
    microns_per_pixel: float | None = None,
    only_in_tissue: bool = True,
) -> ad.AnnData:
    """Read a Space Ranger ``outs`` folder into a validated section.

    Parameters
    ----------
    outs_dir
        The ``outs`` folder (holds the count matrix and ``spatial/``).
    fullres_image
        The full-resolution H&E given to Space Ranger; recommended for patch-based models.
    library_id
        Section id; default the folder name (its parent's when the folder is called ``outs``).
    counts_file
        ``.h5`` file or matrix folder inside ``outs_dir``.
    microns_per_pixel
        Override of the scale; default 55 µm / ``spot_diameter_fullres``.
    only_in_tissue
        Keep only spots marked ``in_tissue`` = 1.
    """
    outs = Path(outs_dir).resolve()
    if not outs.is_dir():
        raise InputFileError(f"Visium folder {outs} does not exist. {_LAYOUT}")
    spatial_dir = outs / K.SPATIAL
    positions = read_positions(spatial_dir)
    scalefactors = read_scalefactors(spatial_dir)
    images = read_images(spatial_dir, scalefactors)
    counts = _join(read_counts(outs, counts_file), positions, only_in_tissue, outs)
    mpp, source = resolve_scale(
        microns_per_pixel=microns_per_pixel,
        spot_diameter_fullres=scalefactors[K.SPOT_DIAMETER_FULLRES],
        spot_diameter_um=K.VISIUM_SPOT_DIAMETER_UM,
    )
    if fullres_image is not None:
        fullres_image = Path(fullres_image)
        shape = image_shape(fullres_image)
        check_fullres_matches(shape, images, scalefactors, fullres_image)
    else:
        shape = estimate_fullres_shape(images, scalefactors)
    pos = positions.loc[counts.obs_names]
    coords = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    obs = counts.obs.join(pos[[K.IN_TISSUE, K.ARRAY_ROW, K.ARRAY_COL]].astype(np.int64))
    return assemble_section(
        counts.X,
        coords,
        obs_names=counts.obs_names,
        var_names=counts.var_names,
        library_id=library_id or _default_library_id(outs),
        microns_per_pixel=mpp,
        scale_source=source,
        spot_diameter_um=K.VISIUM_SPOT_DIAMETER_UM,
        images=images,
        scalefactors={k: scalefactors[k] for k in KEPT_SCALEFACTORS if k in scalefactors},
        fullres_shape=shape,
        fullres_path=fullres_image,
        obs=obs,
        var=counts.var,
        meta={K.PLATFORM: "visium", K.SOURCE: str(outs)},
    )
