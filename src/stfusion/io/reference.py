"""Readers for imputation data: scRNA-seq references and image-free spatial cells.

These have no H&E image, so they are not sections and skip ``validate_section``.
Both schemas: raw integer counts in ``X`` (int32 CSR), unique ``var_names``/``obs_names``.
Reference: ``obs["cell_type"]`` categorical when labels are known, ``uns["stfusion"] =
{"platform": "scrna", "source": path}``. Spatial cells: ``obsm["spatial"]`` finite (x, y)
when known, units in ``uns["stfusion"]["coordinate_units"]`` ("um" | "pixels" | "unknown"),
platform "imaging" (osmFISH, MERFISH, Xenium cells) or "beads" (Slide-seq).

Table orientation (``orientation="auto"``), in order: (1) with a side file (labels or
coordinates), the axis whose names overlap its ids more is the cell axis; (2) else the axis
whose names look like genes (symbols or Ensembl ids; not DNA barcodes, UUIDs, numbers or
names with underscores) in at least 50 points more of a sample is the gene axis; (3) else a
:class:`SchemaError` asks for ``orientation="cells_x_genes"`` or ``"genes_x_cells"``.
"""

from __future__ import annotations

import csv
import gzip
import re
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from stfusion import _constants as K
from stfusion.data.counts import check_counts, check_not_empty, check_unique_genes, to_counts_csr
from stfusion.errors import CountsError, InputFileError, JoinError, SchemaError

__all__ = [
    "detect_orientation", "read_merfish_pair", "read_osmfish_pair", "read_reference", "read_slideseq_pair",
    "read_spatial_cells", "shared_genes", "validate_reference", "validate_spatial_cells",
]  # fmt: skip

REFERENCE_PLATFORM = "scrna"
SPATIAL_PLATFORMS = ("imaging", "beads")
COORDINATE_UNITS = ("um", "pixels", "unknown")
ORIENTATIONS = ("auto", "cells_x_genes", "genes_x_cells")

_LABEL_COLUMNS = ("cell_type", "celltype", "cell_types", "cluster", "label", "annotation", "x")
_X_COLUMNS = ("x", "xcoord", "x_coord", "x_centroid", "centroid_x", "x_um", "imagecol")
_Y_COLUMNS = ("y", "ycoord", "y_coord", "y_centroid", "centroid_y", "y_um", "imagerow")
_GENE_RE = re.compile(r"^(ENS[A-Z]*G\d+(\.\d+)?|[A-Za-z][A-Za-z0-9]*([.\-][A-Za-z0-9]+)*)$")
_BARCODE_RE = re.compile(r"[ACGTN]{8,}")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-")


# --------------------------------------------------------------------------- validation
def _validate_counts_part(adata: ad.AnnData, what: str) -> None:
    check_not_empty(adata.n_obs, adata.n_vars, what=what)
    fix = "Convert with adata.X = stfusion.data.counts.to_counts_csr(adata.X) (it checks the values)."
    if not sparse.issparse(adata.X) or adata.X.format != "csr":
        raise SchemaError(f"The {what}'s X is {type(adata.X).__name__}, not a CSR matrix. {fix}")
    if not np.issubdtype(adata.X.dtype, np.integer):
        raise CountsError(f"The {what}'s X has dtype {adata.X.dtype}; raw integer counts are required. {fix}")
    check_counts(adata.X, what=f"{what} counts")
    check_unique_genes(adata.var_names)
    if not adata.obs_names.is_unique:
        raise SchemaError(f"The {what}'s cell ids are not unique. Call adata.obs_names_make_unique().")


def _meta(adata: ad.AnnData, what: str) -> dict:
    meta = adata.uns.get(K.STFUSION)
    if not isinstance(meta, dict) or K.PLATFORM not in meta:
        raise SchemaError(
            f"The {what} has no uns['{K.STFUSION}']['{K.PLATFORM}']. Read it with "
            "stfusion.io.reference.read_reference / read_spatial_cells."
        )
    return meta


def validate_reference(adata: ad.AnnData) -> None:
    """Raise a :class:`SectionError` subclass unless ``adata`` is a valid scRNA-seq reference."""
    _validate_counts_part(adata, "reference")
    meta = _meta(adata, "reference")
    if meta[K.PLATFORM] != REFERENCE_PLATFORM:
        raise SchemaError(
            f"The reference's platform is {meta[K.PLATFORM]!r}, expected {REFERENCE_PLATFORM!r}. "
            "Pass the single-cell reference, not the spatial data."
        )
    if K.CELL_TYPE in adata.obs:
        col = adata.obs[K.CELL_TYPE]
        if not isinstance(col.dtype, pd.CategoricalDtype):
            raise SchemaError(
                f"obs['{K.CELL_TYPE}'] has dtype {col.dtype}, expected categorical. "
                f"Convert with adata.obs['{K.CELL_TYPE}'] = adata.obs['{K.CELL_TYPE}'].astype('category')."
            )
        if col.isna().all():
            raise SchemaError(f"obs['{K.CELL_TYPE}'] is empty (all missing). Drop the column or attach labels.")


def validate_spatial_cells(adata: ad.AnnData) -> None:
    """Raise a :class:`SectionError` subclass unless ``adata`` is valid image-free spatial data."""
    _validate_counts_part(adata, "spatial data")
    meta = _meta(adata, "spatial data")
    if meta[K.PLATFORM] not in SPATIAL_PLATFORMS:
        raise SchemaError(
            f"The spatial data's platform is {meta[K.PLATFORM]!r}, expected one of {SPATIAL_PLATFORMS}. "
            "Histology sections (visium, st) are validated with validate_section instead."
        )
    if K.SPATIAL not in adata.obsm:
        return
    xy = np.asarray(adata.obsm[K.SPATIAL])
    if xy.ndim != 2 or xy.shape[1] != 2 or not np.issubdtype(xy.dtype, np.number):
        raise SchemaError(f"obsm['{K.SPATIAL}'] must be numeric with shape (n_cells, 2), got {xy.shape}, {xy.dtype}.")
    n_bad = int(np.count_nonzero(~np.isfinite(xy).all(axis=1)))
    if n_bad:
        raise SchemaError(f"{n_bad} cells have NaN or infinite coordinates. Drop them or fix the coordinates file.")
    units = meta.get(K.COORDINATE_UNITS)
    if units not in COORDINATE_UNITS:
        raise SchemaError(f"uns['{K.STFUSION}']['{K.COORDINATE_UNITS}'] is {units!r}; use one of {COORDINATE_UNITS}.")


# --------------------------------------------------------------------------- tables
def _check_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"File not found: {path}. Check the path (and the folder layout of the dataset).")
    return path


def _header(path: Path) -> tuple[str, list[str]]:
    """Delimiter and the first line's fields, unmangled (pandas renames repeated names)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
        first = fh.readline()
    sep = "\t" if first.count("\t") > first.count(",") else ","
    fields = next(csv.reader([first], delimiter=sep), [])
    return sep, [f.strip() for f in fields]


def _read_raw(path: Path) -> pd.DataFrame:
    """All cells as strings, no header: header detection is left to the caller."""
    return pd.read_csv(path, sep=_header(path)[0], header=None, dtype=str, keep_default_na=False)


def _read_matrix(path: Path) -> pd.DataFrame:
    """A counts table with string row and column names (first column = row names)."""
    sep, names = _header(path)
    first = pd.read_csv(path, sep=sep, nrows=0).columns[0]
    df = pd.read_csv(path, sep=sep, dtype={first: str}).set_index(first)
    df.index = df.index.astype(str).str.strip()
    df.columns = names[1:] if len(names) == df.shape[1] + 1 else df.columns.astype(str)
    return df


def _gene_fraction(names: pd.Index, n: int = 500) -> float:
    sample = [str(s) for s in names[:n]]
    if not sample:
        return 0.0
    ok = [_GENE_RE.match(s) and len(s) <= 20 and not _BARCODE_RE.search(s) and not _UUID_RE.match(s) for s in sample]
    return float(np.mean([bool(v) for v in ok]))


def detect_orientation(df: pd.DataFrame, cell_ids=None) -> str:
    """``"cells_x_genes"`` or ``"genes_x_cells"`` for a table (rule in the module docstring)."""
    if cell_ids is not None:
        ids = set(map(str, cell_ids))
        in_rows = int(df.index.isin(ids).sum())
        in_cols = int(df.columns.isin(ids).sum())
        if in_rows != in_cols:
            return "cells_x_genes" if in_rows > in_cols else "genes_x_cells"
    g_rows, g_cols = _gene_fraction(df.index), _gene_fraction(df.columns)
    if abs(g_rows - g_cols) >= 0.5:
        return "genes_x_cells" if g_rows > g_cols else "cells_x_genes"
    raise SchemaError(
        f"Cannot tell whether the table ({df.shape[0]} rows x {df.shape[1]} columns) is cells x genes "
        f"or genes x cells (gene-like names: {g_rows:.0%} of rows, {g_cols:.0%} of columns). "
        "Pass orientation='cells_x_genes' or orientation='genes_x_cells'."
    )


def _table_to_adata(path: Path, orientation: str, cell_ids=None) -> ad.AnnData:
    if orientation not in ORIENTATIONS:
        raise SchemaError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}.")
    df = _read_matrix(path)
    if orientation == "auto":
        orientation = detect_orientation(df, cell_ids)
    values = df.to_numpy()
    if orientation == "genes_x_cells":
        values, cells, genes = values.T, df.columns, df.index
    else:
        cells, genes = df.index, df.columns
    check_unique_genes(genes)
    x = to_counts_csr(values, what=f"counts in {path.name}")
    obs, var = pd.DataFrame(index=cells.rename(None)), pd.DataFrame(index=genes.rename(None))
    return ad.AnnData(X=x, obs=obs, var=var)


def _h5ad_counts(path: Path) -> ad.AnnData:
    """Cells x genes counts from X, layers['counts'] or .raw, whichever holds raw counts."""
    with warnings.catch_warnings():  # files written by old anndata versions read fine
        warnings.simplefilter("ignore", ad.OldFormatWarning)
        src = ad.read_h5ad(path)
    candidates = [("X", src.X, src.var)]
    if K.LAYER_COUNTS in src.layers:
        candidates.append((f"layers['{K.LAYER_COUNTS}']", src.layers[K.LAYER_COUNTS], src.var))
    if src.raw is not None:
        candidates.append(("raw.X", src.raw.X, src.raw.var))
    failures = []
    for name, x, var in candidates:
        try:
            counts = to_counts_csr(x, what=f"{path.name} {name}")
        except CountsError as err:
            failures.append(f"{name}: {err}")
            continue
        check_unique_genes(var.index)
        return ad.AnnData(X=counts, obs=src.obs.copy(), var=var.copy())
    hint = f" Store raw integer counts in X, layers['{K.LAYER_COUNTS}'] or .raw."
    raise CountsError(f"No raw counts in {path}: tried " + "; ".join(failures) + hint)


def _read_counts(path, orientation: str, cell_ids=None) -> ad.AnnData:
    path = _check_file(path)
    suffix = path.name.lower().removesuffix(".gz")
    if suffix.endswith(".h5ad"):
        return _h5ad_counts(path)
    if suffix.endswith((".csv", ".tsv", ".txt")):
        return _table_to_adata(path, orientation, cell_ids)
    raise InputFileError(f"Unsupported counts file {path.name}: expected .h5ad, .csv, .tsv or .txt (optionally .gz).")


# --------------------------------------------------------------------------- side tables
def _with_header(raw: pd.DataFrame, known_ids: set[str]) -> pd.DataFrame:
    """Use the first row as header unless its first value is a known id."""
    if raw.empty:
        raise InputFileError("A side table (labels or coordinates) is empty.")
    if raw.iat[0, 0] in known_ids:
        raw.columns = [f"col{i}" for i in range(raw.shape[1])]
        return raw
    out = raw.iloc[1:].reset_index(drop=True)
    out.columns = [str(c).strip() for c in raw.iloc[0]]
    return out


def _pick(columns, wanted: str | None, candidates, fallback: int, what: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise SchemaError(f"Column {wanted!r} not in the {what} table (columns: {list(columns)}).")
        return wanted
    lower = {str(c).lower(): c for c in columns}
    for cand in candidates:
        if cand in lower and lower[cand] != columns[0]:
            return lower[cand]
    if len(columns) <= fallback:
        raise SchemaError(f"The {what} table needs at least {fallback + 1} columns, found {list(columns)}.")
    return columns[fallback]


def _examples(values, n: int = 3) -> str:
    return ", ".join(repr(str(v)) for v in list(values)[:n])


def _join_report(cells: pd.Index, ids: pd.Index, what: str, n_matched: int) -> str:
    return (
        f"{n_matched} of {len(cells)} cells matched the {what} ids ({len(ids)} rows). "
        f"Counts ids look like {_examples(cells)}; {what} ids look like {_examples(ids)}. "
        "Check that both files come from the same dataset and use the same cell ids "
        "(and the counts table's orientation)."
    )


def _read_labels(path, cells: pd.Index, label_key: str | None, cell_types_file) -> pd.Series:
    """Cell-type labels indexed like ``cells`` (NaN where a cell has no label)."""
    table = _with_header(_read_raw(_check_file(path)), set(cells))
    id_col = table.columns[0]
    lab_col = _pick(table.columns, label_key, _LABEL_COLUMNS, 1, "labels")
    labels = pd.Series(table[lab_col].str.strip().to_numpy(), index=table[id_col].str.strip().to_numpy())
    if not labels.index.is_unique:
        raise SchemaError(f"Cell ids repeat in the labels file {Path(path).name}; keep one label per cell.")
    if cell_types_file is not None:
        labels = _map_clusters(labels, cell_types_file)
    matched = int(cells.isin(labels.index).sum())
    if matched == 0:
        raise JoinError("No cell got a label. " + _join_report(cells, labels.index, "labels", 0))
    if matched < len(cells):
        warnings.warn(f"{len(cells) - matched} of {len(cells)} cells have no label; their cell_type is missing.")
    return labels.reindex(cells)


def _map_clusters(labels: pd.Series, cell_types_file) -> pd.Series:
    table = _with_header(_read_raw(_check_file(cell_types_file)), set(labels.unique()))
    names = pd.Series(table.iloc[:, 1].str.strip().to_numpy(), index=table.iloc[:, 0].str.strip().to_numpy())
    missing = sorted(set(labels.unique()) - set(names.index))
    if missing:
        raise SchemaError(
            f"Cluster ids {missing[:5]} in the labels have no name in {Path(cell_types_file).name} "
            f"(it names {_examples(names.index, 5)}). Pass the matching cluster -> name table."
        )
    return labels.map(names)


def _read_coords(path, cells: pd.Index, x_key: str | None, y_key: str | None) -> pd.DataFrame:
    table = _with_header(_read_raw(_check_file(path)), set(cells))
    xc = _pick(table.columns, x_key, _X_COLUMNS, 1, "coordinates")
    yc = _pick(table.columns, y_key, _Y_COLUMNS, 2, "coordinates")
    ids = table.iloc[:, 0].str.strip()
    try:
        xy = table[[xc, yc]].astype(float).to_numpy()
    except ValueError as err:
        raise SchemaError(f"Coordinates in {Path(path).name} are not numeric ({err}). Check x/y columns.") from err
    out = pd.DataFrame(xy, index=pd.Index(ids.to_numpy()), columns=["x", "y"])
    if not out.index.is_unique:
        raise SchemaError(f"Cell ids repeat in {Path(path).name}; keep one position per cell.")
    return out


def _side_ids(path) -> set[str] | None:
    """First-column values of a side file (for orientation detection)."""
    return None if path is None else set(_read_raw(_check_file(path)).iloc[:, 0].str.strip())


# --------------------------------------------------------------------------- public readers
def read_reference(
    path, *, cell_type_key: str | None = None, labels=None, orientation: str = "auto", cell_types_file=None
) -> ad.AnnData:
    """Read a single-cell reference (h5ad or CSV/TSV, optionally gzipped).

    Parameters
    ----------
    path
        ``.h5ad`` (counts from X, layers['counts'] or .raw) or a counts table.
    cell_type_key
        obs column holding labels (h5ad), or the label column of the ``labels`` file.
        An h5ad obs column ``cell_type`` is used when neither is given.
    labels
        CSV/TSV of cell id, label (first column = cell id; header optional).
    orientation
        ``"auto"``, ``"cells_x_genes"`` or ``"genes_x_cells"`` (tables only).
    cell_types_file
        cluster id -> name table, when ``labels`` holds cluster ids.
    """
    adata = _read_counts(path, orientation, _side_ids(labels))
    if labels is not None:
        adata.obs[K.CELL_TYPE] = _read_labels(labels, adata.obs_names, cell_type_key, cell_types_file).to_numpy()
    elif cell_type_key is not None or K.CELL_TYPE in adata.obs:
        key = cell_type_key or K.CELL_TYPE
        if key not in adata.obs:
            raise SchemaError(f"No obs column {key!r} for cell types (columns: {list(adata.obs.columns)}).")
        adata.obs[K.CELL_TYPE] = adata.obs[key].astype(str).where(adata.obs[key].notna())
    if K.CELL_TYPE in adata.obs:
        adata.obs[K.CELL_TYPE] = adata.obs[K.CELL_TYPE].astype("category")
    adata.uns[K.STFUSION] = {K.PLATFORM: REFERENCE_PLATFORM, K.SOURCE: str(Path(path).resolve())}
    validate_reference(adata)
    return adata


def _obs_coords(adata: ad.AnnData, x_key: str | None, y_key: str | None) -> np.ndarray | None:
    if x_key is None and y_key is None:
        if K.SPATIAL in adata.obsm:
            return np.asarray(adata.obsm[K.SPATIAL], dtype=float)[:, :2]
        cols = {c.lower(): c for c in adata.obs.columns}
        pairs = [(cols[a], cols[b]) for a, b in zip(_X_COLUMNS, _Y_COLUMNS) if a in cols and b in cols]
        if not pairs:
            return None
        x_key, y_key = pairs[0]
    missing = [k for k in (x_key, y_key) if k not in adata.obs]
    if missing:
        raise SchemaError(f"Coordinate columns {missing} not in obs (columns: {list(adata.obs.columns)}).")
    return adata.obs[[x_key, y_key]].to_numpy(dtype=float)


def read_spatial_cells(
    path, *, coords=None, x_key: str | None = None, y_key: str | None = None,
    orientation: str = "auto", platform: str = "imaging", units: str = "um",
) -> ad.AnnData:
    """Read image-free spatial data (imaging cells or beads) with coordinates.

    Parameters
    ----------
    path
        ``.h5ad`` (coordinates from obsm['spatial'] or obs columns) or a counts table.
    coords
        CSV/TSV of cell id, x, y (header optional: ``"",x,y``, ``barcodes,xcoord,ycoord``).
        Cells are inner-joined on ids; no match at all raises :class:`JoinError`.
    x_key, y_key
        Coordinate column names (in ``coords`` or in the h5ad's obs).
    platform
        ``"imaging"`` or ``"beads"``.
    units
        Units of the coordinates: ``"um"``, ``"pixels"`` or ``"unknown"``.
    """
    if platform not in SPATIAL_PLATFORMS:
        raise SchemaError(f"platform must be one of {SPATIAL_PLATFORMS}, got {platform!r}.")
    if units not in COORDINATE_UNITS:
        raise SchemaError(f"units must be one of {COORDINATE_UNITS}, got {units!r}.")
    adata = _read_counts(path, orientation, _side_ids(coords))
    if coords is not None:
        table = _read_coords(coords, adata.obs_names, x_key, y_key)
        keep = adata.obs_names.isin(table.index)
        n = int(keep.sum())
        if n == 0:
            report = _join_report(adata.obs_names, table.index, "coordinates", 0)
            raise JoinError("Counts and coordinates do not join. " + report)
        if n < adata.n_obs:
            warnings.warn(f"{adata.n_obs - n} of {adata.n_obs} cells have no coordinates and are dropped.")
            adata = adata[keep].copy()
        xy = table.loc[adata.obs_names].to_numpy()
    else:
        xy = _obs_coords(adata, x_key, y_key)
    meta = {K.PLATFORM: platform, K.SOURCE: str(Path(path).resolve())}
    if xy is not None:
        adata.obsm[K.SPATIAL] = np.ascontiguousarray(xy, dtype=np.float64)
        meta[K.COORDINATE_UNITS] = units
    adata.uns[K.STFUSION] = meta
    validate_spatial_cells(adata)
    return adata


def shared_genes(reference: ad.AnnData, spatial: ad.AnnData) -> list[str]:
    """Genes measured in both datasets, sorted."""
    return sorted(set(map(str, reference.var_names)) & set(map(str, spatial.var_names)))


# --------------------------------------------------------------------------- shipped datasets
def read_osmfish_pair(directory) -> tuple[ad.AnnData, ad.AnnData]:
    """osmFISH somatosensory cortex + SMART-seq reference (stDiff's ``stdiff_osmfish/``).

    No cell-type labels ship with the reference. Coordinates (``obs.x_coord/y_coord``) span
    about 24,000 x 32,000 units, too large for µm in a mouse brain section (probably image
    pixels), so their units are recorded as ``"unknown"``. The spatial file holds 316 pairs
    of identical cells (same counts and position); they are kept as shipped.
    """
    d = Path(directory)
    ref = read_reference(d / "dataset2_seq_33.h5ad")
    sp = read_spatial_cells(d / "dataset2_spatial_33.h5ad", x_key="x_coord", y_key="y_coord", units="unknown")
    return ref, sp


def read_merfish_pair(directory) -> tuple[ad.AnnData, ad.AnnData]:
    """MERFISH hypothalamus + scRNA-seq reference (spacexr package data, ``spacexr_merfish/``).

    Coordinates are the cell centroids of Moffitt et al. 2018, in µm.
    """
    d = Path(directory)
    ref = read_reference(d / "ref_counts.csv", labels=d / "ref_cell_types.csv", orientation="genes_x_cells")
    sp = read_spatial_cells(d / "sp_counts.csv", coords=d / "sp_coords.csv", orientation="genes_x_cells", units="um")
    return ref, sp


def read_slideseq_pair(directory) -> tuple[ad.AnnData, ad.AnnData]:
    """Slide-seq cerebellum + single-nucleus reference (spacexr package data, ``spacexr_slideseq/``).

    Bead locations are in Slide-seq puck pixels (about 0.65 µm each in the original
    release), recorded as ``"pixels"``.
    """
    d = Path(directory)
    labels, names = d / "ref_meta_data.csv", d / "ref_cell_type_dict.csv"
    gxc, beads = "genes_x_cells", d / "sp_BeadLocationsForR.csv"
    ref = read_reference(d / "ref_dge.csv", labels=labels, cell_type_key="cluster", cell_types_file=names,
                         orientation=gxc)  # fmt: skip
    sp = read_spatial_cells(d / "sp_MappedDGEForR.csv", coords=beads, orientation=gxc, platform="beads", units="pixels")
    return ref, sp
