"""Readers for legacy Spatial Transcriptomics (ST) sections (Ståhl et al. 2016 arrays).

A legacy ST section is three files: a counts table (spots x genes, rows named
``"{x}x{y}"`` by array column x and row y), a spot/alignment table
(``x y new_x new_y pixel_x pixel_y [selected]``) giving each array position's centre
in the H&E image, and the H&E image. :func:`read_st` reads that generic layout; the
other readers locate the files of known releases (her2st, STUtility, the XFuse toy
section) and add what those releases carry (labels, gene symbols, a tissue mask).

The physical scale is fitted from the spot grid (the array's known centre-to-centre
spacing over the neighbour distance in pixels, from an affine fit of array to pixel
coordinates; see :func:`stfusion.data.scale.grid_spacing_px`) unless
``microns_per_pixel`` is given.
"""

from __future__ import annotations

import gzip
import re
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from stfusion import _constants as K
from stfusion.data.counts import check_unique_genes, to_counts_csr
from stfusion.data.image import image_shape
from stfusion.data.section import section_from_image, spatial_info, validate_section
from stfusion.errors import EmptySectionError, InputFileError, JoinError

__all__ = [
    "STUTILITY_2K_SPACING_UM",
    "read_her2st",
    "read_st",
    "read_stutility",
    "read_xfuse_toy",
]

# ASSUMPTION, not a published figure: the STUtility mouse olfactory bulb sections use a
# "2k" ST array whose positions form a centred lattice (x + y even, neighbours at
# (±1, ±1) array units). We assume it keeps the 1k array's 200 µm pitch with rows
# interleaved, i.e. one array unit is 100 µm and nearest neighbours are
# 100·√2 ≈ 141.4 µm apart. Override with ``read_stutility(..., spot_spacing_um=...)``
# or give ``microns_per_pixel=`` directly when the true scale is known.
STUTILITY_2K_SPACING_UM = 141.4

MIN_MATCHED_FRACTION = 0.5  # of the (selected) spot-table rows that must join to counts rows
_SPOT_ID = re.compile(r"^-?\d+(\.\d+)?x-?\d+(\.\d+)?$")
_SPOT_COLUMNS = ("x", "y", "pixel_x", "pixel_y")
_TABLE_SUFFIXES = (".tsv.gz", ".tsv", ".txt.gz", ".txt", ".csv.gz", ".csv", ".gz")


# --------------------------------------------------------------------------- files
def _need_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"The {what} {path} does not exist (or is not a file). Check the path.")
    return path


def _section_name(path: Path) -> str:
    name = path.name
    for suffix in _TABLE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _read_header(path: Path) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt") as fh:
            line = fh.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"Cannot read the counts table {path}: {exc}. Is it a (gzipped) TSV file?") from exc
    return [field.strip() for field in line.rstrip("\r\n").split("\t")]


def _looks_like_spot_ids(names) -> bool:
    sample = [str(n).strip() for n in list(names)[:200]]
    return bool(sample) and np.mean([bool(_SPOT_ID.match(s)) for s in sample]) >= 0.9


def _read_counts(path: Path) -> tuple[np.ndarray, pd.Index, pd.Index]:
    """Counts as ``(values spots x genes, spot ids, gene names)``; orientation detected.

    The header is read by hand because pandas renames repeated column names
    (``Gene``, ``Gene.1``), which would hide duplicated genes.
    """
    header = _read_header(path)
    try:
        body = pd.read_csv(path, sep="\t", header=None, skiprows=1, index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise InputFileError(
            f"Cannot parse the counts table {path}: {exc}. Expected a tab-separated table, "
            "spots x genes with rows named '<x>x<y>' (or genes x spots)."
        ) from exc
    n = body.shape[1]
    if len(header) == n + 1:
        columns = header[1:]
    elif len(header) == n:
        columns = header
    else:
        raise InputFileError(
            f"The counts table {path} has {len(header)} header fields but {n + 1} fields per row. "
            "Check the delimiter (tabs) and that the header names every column."
        )
    rows = pd.Index(body.index.astype(str).str.strip())
    columns = pd.Index(columns)
    if not _looks_like_spot_ids(rows) and _looks_like_spot_ids(columns):
        return body.to_numpy().T, columns, rows  # genes x spots: transpose
    return body.to_numpy(), rows, columns


def _read_spot_table(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep="\t")
        if table.shape[1] == 1:
            table = pd.read_csv(path, sep=r"\s+")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise InputFileError(f"Cannot parse the spot table {path}: {exc}. Expected a tab-separated table.") from exc
    missing = [c for c in _SPOT_COLUMNS if c not in table.columns]
    if missing:
        raise InputFileError(
            f"The spot table {path} lacks the columns {missing} (found {list(table.columns)}). "
            "Expected a header 'x y new_x new_y pixel_x pixel_y [selected]', tab-separated."
        )
    for col in _SPOT_COLUMNS:
        table[col] = pd.to_numeric(table[col], errors="coerce")
    bad = int(table[["x", "y"]].isna().any(axis=1).sum())
    if bad:
        raise InputFileError(f"{bad} rows of the spot table {path} have a missing or non-numeric x or y. Fix them.")
    return table


def _select(table: pd.DataFrame, only_selected: bool, path: Path) -> pd.DataFrame:
    if only_selected and "selected" in table.columns:
        table = table[pd.to_numeric(table["selected"], errors="coerce") == 1]
        if table.empty:
            raise EmptySectionError(
                f"No row of the spot table {path} has selected == 1, so the section has no spots. "
                "Check the spot table, or pass only_selected=False to keep every array position."
            )
    if table.empty:
        raise EmptySectionError(f"The spot table {path} has no rows. Check the file.")
    return table.reset_index(drop=True)


# --------------------------------------------------------------------------- joining
def _spot_ids(x, y) -> pd.Index:
    xi = np.rint(np.asarray(x, dtype=float)).astype(int)
    yi = np.rint(np.asarray(y, dtype=float)).astype(int)
    return pd.Index([f"{a}x{b}" for a, b in zip(xi, yi)])


def _examples(ids) -> str:
    return ", ".join(repr(str(i)) for i in list(ids)[:3])


def _join_hint(count_ids: pd.Index, table: pd.DataFrame) -> str:
    if _spot_ids(table["y"], table["x"]).isin(count_ids).mean() >= MIN_MATCHED_FRACTION:
        return (
            "The ids match with x and y swapped: the counts rows are named '<row>x<column>'; "
            "swap the x and y columns of the spot table."
        )
    if not _looks_like_spot_ids(count_ids):
        return (
            "The counts rows are not named '<x>x<y>': check that the counts table has spots as rows "
            "(or as columns) named by array column and row."
        )
    return "Check that the counts table and the spot table belong to the same section."


def _join(count_ids: pd.Index, table: pd.DataFrame, counts_path: Path, spots_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(count_rows, spot_rows)`` of matched pairs, in counts order."""
    spot_ids = _spot_ids(table["x"], table["y"])
    for ids, what in ((count_ids, f"counts table {counts_path}"), (spot_ids, f"spot table {spots_path}")):
        if not ids.is_unique:
            dups = _examples(ids[ids.duplicated()].unique())
            raise JoinError(f"The {what} names some array positions twice (e.g. {dups}). Remove the duplicates.")
    pos = spot_ids.get_indexer(count_ids)
    count_rows = np.flatnonzero(pos >= 0)
    frac = len(count_rows) / len(spot_ids)
    if len(count_rows) == 0 or frac < MIN_MATCHED_FRACTION:
        selected = "selected " if "selected" in table.columns else ""
        raise JoinError(
            f"{len(count_rows)} of {len(count_ids)} count rows matched {len(spot_ids)} {selected}spot-table rows "
            f"({frac:.0%} of the spot rows; at least {MIN_MATCHED_FRACTION:.0%} must match). "
            f"Counts ids look like {_examples(count_ids)}, spot ids like {_examples(spot_ids)} "
            f"(made as '{{round(x)}}x{{round(y)}}' from the spot table). {_join_hint(count_ids, table)} "
            f"Files: {counts_path}, {spots_path}."
        )
    return count_rows, pos[count_rows]


# --------------------------------------------------------------------------- generic reader
def read_st(
    counts: str | Path,
    spots: str | Path,
    image: str | Path,
    *,
    library_id: str | None = None,
    spot_spacing_um: float = K.ST_SPOT_SPACING_UM,
    spot_diameter_um: float = K.ST_SPOT_DIAMETER_UM,
    microns_per_pixel: float | None = None,
    only_selected: bool = True,
    patient: str | None = None,
) -> ad.AnnData:
    """Read one legacy ST section into a validated stfusion section.

    Parameters
    ----------
    counts
        Counts TSV (optionally ``.gz``): spots x genes with rows ``"{x}x{y}"``, or genes x spots.
    spots
        Spot table with ``x y pixel_x pixel_y`` (and optionally ``selected``), tab-separated.
    image
        H&E image the ``pixel_x, pixel_y`` centres refer to.
    library_id
        Section id; defaults to the counts file name without its suffixes.
    spot_spacing_um, spot_diameter_um
        Array geometry (1k ST array: 200 µm centre to centre, 100 µm spots).
    microns_per_pixel
        Override of the scale fitted from the spot grid.
    only_selected
        Keep only spot-table rows with ``selected == 1`` when that column exists.
    patient
        Stored in ``uns["stfusion"]["patient"]``.

    Returns
    -------
    AnnData with raw counts, ``obsm["spatial"]`` = (pixel_x, pixel_y), ``obs`` array_col/array_row.
    """
    counts_path = _need_file(counts, "counts table")
    spots_path = _need_file(spots, "spot table")
    image_shape(image)  # fail fast (ImageError) before parsing a large counts table
    values, count_ids, genes = _read_counts(counts_path)
    check_unique_genes(genes)
    table = _select(_read_spot_table(spots_path), only_selected, spots_path)
    count_rows, spot_rows = _join(count_ids, table, counts_path, spots_path)
    x = to_counts_csr(values[count_rows], what=f"counts in {counts_path}")
    matched = table.iloc[spot_rows]
    obs = pd.DataFrame(
        {
            K.ARRAY_COL: np.rint(matched["x"].to_numpy(float)).astype(np.int64),
            K.ARRAY_ROW: np.rint(matched["y"].to_numpy(float)).astype(np.int64),
        }
    )
    meta = {K.PLATFORM: "st", K.SOURCE: str(counts_path.resolve())}
    if patient is not None:
        meta[K.PATIENT] = str(patient)
    return section_from_image(
        x,
        matched[["pixel_x", "pixel_y"]].to_numpy(dtype=float),
        image,
        obs_names=count_ids[count_rows],
        var_names=genes,
        library_id=library_id or _section_name(counts_path),
        spot_diameter_um=spot_diameter_um,
        spot_spacing_um=spot_spacing_um,
        microns_per_pixel=microns_per_pixel,
        obs=obs,
        meta=meta,
    )


# --------------------------------------------------------------------------- her2st
def _available(folder: Path, pattern: str, suffix: str) -> str:
    names = sorted(p.name[: -len(suffix)] for p in folder.glob(pattern))
    return ", ".join(names) if names else "none"


def _attach_label(adata: ad.AnnData, table: pd.DataFrame, column: str, path: Path) -> None:
    """Put ``table["label"]`` into ``obs[column]``, joined on rounded array (x, y)."""
    table = table.dropna(subset=["x", "y"])
    labels = pd.Series(table["label"].astype(str).to_numpy(), index=_spot_ids(table["x"], table["y"]))
    labels = labels[~labels.index.duplicated(keep="first")]
    own = _spot_ids(adata.obs[K.ARRAY_COL], adata.obs[K.ARRAY_ROW])
    values = labels.reindex(own).to_numpy()
    if pd.isna(values).all():
        warnings.warn(f"No spot of the section matched a row of {path}; obs['{column}'] is all missing.", stacklevel=3)
    adata.obs[column] = pd.Categorical(values)


def _read_label_table(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, sep="\t")
    missing = [c for c in ("x", "y", "label") if c not in table.columns]
    if missing:
        raise InputFileError(f"The label table {path} lacks the columns {missing} (found {list(table.columns)}).")
    return table


def read_her2st(root: str | Path, section: str, **kw) -> ad.AnnData:
    """Read one section of the her2st release (Andersson et al. 2021).

    Files: ``data/ST-cnts/<S>.tsv.gz``, ``data/ST-spotfiles/<S>_selection.tsv`` and the one
    JPEG under ``data/ST-imgs/*/<S>/``. Adds ``obs["cluster_label"]`` from
    ``res/ST-cluster/lbl/<S>-cluster-annotation.tsv.gz`` and ``obs["region_label"]`` from
    ``data/ST-pat/lbl/<S>_labeled_coordinates.tsv`` when those files exist. Both label
    files name their rows by pixel position, not array id, so they are joined on their
    array ``x, y`` columns (rounded; the pathologist files hold fractional coordinates).
    ``kw`` goes to :func:`read_st` (``patient`` defaults to the section's first letter).
    """
    root = Path(root)
    data = root / "data"
    counts = data / "ST-cnts" / f"{section}.tsv.gz"
    if not counts.is_file():
        raise InputFileError(
            f"her2st section {section!r} not found: {counts} does not exist. Sections available under "
            f"{root}: {_available(data / 'ST-cnts', '*.tsv.gz', '.tsv.gz')}."
        )
    images = sorted((data / "ST-imgs").glob(f"*/{section}/*.jpg"))
    if len(images) != 1:
        with_images = sorted({p.parent.name for p in (data / "ST-imgs").glob("*/*/*.jpg")})
        raise InputFileError(
            f"Expected one H&E JPEG at {data / 'ST-imgs' / '*' / section / '*.jpg'}, found {len(images)} "
            f"({[str(p) for p in images]}). Sections with an image: {', '.join(with_images) or 'none'}. "
            "Use read_st(counts, spots, image) to pick the image yourself."
        )
    kw.setdefault("library_id", section)
    kw.setdefault("patient", section[0])
    adata = read_st(counts, data / "ST-spotfiles" / f"{section}_selection.tsv", images[0], **kw)
    cluster = root / "res" / "ST-cluster" / "lbl" / f"{section}-cluster-annotation.tsv.gz"
    if cluster.is_file():
        _attach_label(adata, _read_label_table(cluster), K.CLUSTER_LABEL, cluster)
    region = data / "ST-pat" / "lbl" / f"{section}_labeled_coordinates.tsv"
    if region.is_file():
        _attach_label(adata, _read_label_table(region), K.REGION_LABEL, region)
    return adata


# --------------------------------------------------------------------------- STUtility
def _gene_symbols(gene_ids: pd.Index, genes_file: Path) -> pd.Index:
    """Map Ensembl ids (with or without version) to symbols; unmapped ids are kept."""
    table = pd.read_csv(genes_file, sep="\t")
    missing = [c for c in ("gene_id", "gene_name") if c not in table.columns]
    if missing:
        raise InputFileError(f"The gene table {genes_file} lacks the columns {missing} (found {list(table.columns)}).")
    table = table.dropna(subset=["gene_id", "gene_name"])
    by_id = dict(zip(table["gene_id"].astype(str), table["gene_name"].astype(str)))
    by_stem = dict(zip(table["gene_id"].astype(str).str.split(".").str[0], table["gene_name"].astype(str)))
    return pd.Index([by_id.get(g) or by_stem.get(g.split(".")[0]) or g for g in gene_ids.astype(str)])


def read_stutility(
    directory: str | Path,
    section: str = "MOB1",
    *,
    spot_spacing_um: float = STUTILITY_2K_SPACING_UM,
    **kw,
) -> ad.AnnData:
    """Read a section of the STUtility example data (``MOB<n>.tsv.gz`` etc.).

    ``var_names`` are gene symbols from ``mouse_genes.tsv.gz``; ``var["gene_ids"]`` keeps
    the Ensembl ids. Two ids with one symbol are kept apart, the later ones renamed
    ``Symbol-1``, ``Symbol-2``… in file order (``anndata.utils.make_index_unique``), not
    summed. The scale assumes :data:`STUTILITY_2K_SPACING_UM`; override it with
    ``spot_spacing_um=`` or ``microns_per_pixel=``. ``kw`` goes to :func:`read_st`.
    """
    directory = Path(directory)
    counts = directory / f"{section}.tsv.gz"
    if not counts.is_file():
        available = _available(directory, "alignment_table_*.tsv", ".tsv").replace("alignment_table_", "")
        raise InputFileError(
            f"STUtility section {section!r} not found: {counts} does not exist. "
            f"Sections available in {directory}: {available}."
        )
    genes_file = _need_file(directory / "mouse_genes.tsv.gz", "gene table (gene_id gene_type gene_name)")
    kw.setdefault("library_id", section)
    adata = read_st(
        counts,
        directory / f"alignment_table_{section}.tsv",
        directory / f"{section}.jpg",
        spot_spacing_um=spot_spacing_um,
        **kw,
    )
    ids = adata.var_names.copy()
    adata.var[K.GENE_IDS] = ids.to_numpy()
    adata.var_names = ad.utils.make_index_unique(_gene_symbols(ids, genes_file))
    return validate_section(adata)


# --------------------------------------------------------------------------- XFuse toy
def read_xfuse_toy(directory: str | Path, **kw) -> ad.AnnData:
    """Read the XFuse toy section (``counts.tsv``, ``spots.tsv``, ``image.jpg``, ``mask.png``).

    A 1k-like array (200 µm spacing by default). The tissue mask's absolute path, when
    present, goes to ``uns["spatial"][library]["metadata"]["tissue_mask_path"]``.
    ``kw`` goes to :func:`read_st`.
    """
    directory = Path(directory)
    kw.setdefault("library_id", directory.name)
    adata = read_st(directory / "counts.tsv", directory / "spots.tsv", directory / "image.jpg", **kw)
    mask = directory / "mask.png"
    if mask.is_file():
        spatial_info(adata)[K.METADATA][K.TISSUE_MASK_PATH] = str(mask.resolve())
    return adata
