"""Synthetic data with known ground truth.

:func:`make_synthetic_section` is the XFuse paper's proof of principle: a surface with
non-overlapping circles, squares and rectangles, each of one transcriptional subtype; every
shape pixel emits on average ``reads_per_pixel`` reads of its subtype's marker gene, and the
counts of a measurement area are Poisson with mean the sum of the per-pixel rates inside it.
The image colour-codes the subtypes, so a model can learn expression from it; the per-pixel
truth is kept so that super-resolved predictions can be scored.

:func:`make_synthetic_pair` is a scRNA-seq reference + single-cell spatial pair with cell-type
gene programmes, for imputation tests.

Pixel convention: pixel ``(row i, column j)`` covers ``[j, j + 1) x [i, i + 1)``; an area's
box ``(x0, y0, x1, y1)`` is half-open and its centre, stored in ``obsm["spatial"]``, is
``((x0 + x1) / 2, (y0 + y1) / 2)``; a round spot holds the pixels whose centres
``(j + 0.5, i + 0.5)`` lie within its radius of the spot centre.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from PIL import Image

from stfusion import _constants as K
from stfusion.data.counts import to_counts_csr
from stfusion.data.section import section_from_image

BACKGROUND_RGB = (240, 232, 242)  # light pink-grey, like an empty slide
SHAPE_KINDS = ("circle", "square", "rectangle")
_MARGIN_PX = 2  # minimum gap between shapes


# --------------------------------------------------------------------------- shapes
def _shape_mask(kind: str, size: tuple[float, float]) -> np.ndarray:
    """Boolean mask of a shape in its own bounding box."""
    w, h = size
    nx, ny = int(np.ceil(w)), int(np.ceil(h))
    if kind != "circle":
        return np.ones((ny, nx), dtype=bool)
    yy, xx = np.mgrid[0:ny, 0:nx] + 0.5
    r = w / 2.0
    return (xx - nx / 2.0) ** 2 + (yy - ny / 2.0) ** 2 <= r**2


def _random_size(rng: np.random.Generator, kind: str, scale: float) -> tuple[float, float]:
    if kind == "circle":
        d = 2 * rng.uniform(8, 22) * scale
        return d, d
    if kind == "square":
        s = rng.uniform(16, 44) * scale
        return s, s
    w, h = rng.uniform(12, 60, size=2) * scale
    return w, h


def _place_shapes(rng: np.random.Generator, size_px: int, n_shapes: int, max_tries: int) -> tuple[np.ndarray, list]:
    """Rejection-sample non-overlapping shapes; returns an index map (-1 empty) and shape records."""
    index = np.full((size_px, size_px), -1, dtype=np.int32)
    shapes: list[tuple[str, tuple[int, int, int, int]]] = []
    scale = size_px / 384.0
    for _ in range(max_tries):
        if len(shapes) == n_shapes:
            break
        kind = SHAPE_KINDS[rng.integers(len(SHAPE_KINDS))]
        w, h = (max(2.0, v) for v in _random_size(rng, kind, scale))
        mask = _shape_mask(kind, (w, h))
        mh, mw = mask.shape
        if mh >= size_px or mw >= size_px:
            continue
        x0, y0 = int(rng.integers(0, size_px - mw + 1)), int(rng.integers(0, size_px - mh + 1))
        m = _MARGIN_PX
        ys, xs = slice(max(0, y0 - m), y0 + mh + m), slice(max(0, x0 - m), x0 + mw + m)
        if (index[ys, xs] >= 0).any():
            continue
        index[y0 : y0 + mh, x0 : x0 + mw][mask] = len(shapes)
        shapes.append((kind, (x0, y0, x0 + mw, y0 + mh)))
    return index, shapes


def _subtype_colors(n_subtypes: int) -> np.ndarray:
    """One saturated colour per subtype, hues evenly spaced."""
    rgb = [colorsys.hsv_to_rgb(i / n_subtypes, 0.75, 0.8) for i in range(n_subtypes)]
    return np.round(np.asarray(rgb) * 255).astype(np.uint8)


# --------------------------------------------------------------------------- areas
def _grid_edges(n: int, length: int) -> np.ndarray:
    return np.round(np.linspace(0, length, n + 1)).astype(int)


def _measurement_areas(size_px: int, grid: tuple[int, int], spot_shape: str, diameter: float | None):
    """Area index map (-1 outside), boxes (x0, y0, x1, y1), centres, grid indices, diameter (px)."""
    n_rows, n_cols = int(grid[0]), int(grid[1])
    if n_rows < 1 or n_cols < 1:
        raise ValueError(f"grid must be (rows, columns) with both >= 1, got {grid}.")
    ye, xe = _grid_edges(n_rows, size_px), _grid_edges(n_cols, size_px)
    cell = min(size_px / n_rows, size_px / n_cols)
    if spot_shape == "square":
        diameter = (size_px / n_rows + size_px / n_cols) / 2.0
    elif spot_shape == "round":
        diameter = 0.5 * cell if diameter is None else float(diameter)
        if not 0 < diameter <= cell:
            raise ValueError(f"Round spots need 0 < diameter <= {cell:.1f} px (the grid cell) to not overlap.")
    else:
        raise ValueError(f"spot_shape must be 'square' or 'round', got {spot_shape!r}.")
    area_map = np.full((size_px, size_px), -1, dtype=np.int32)
    yy, xx = np.mgrid[0:size_px, 0:size_px] + 0.5
    boxes, centres, rc = [], [], []
    for r in range(n_rows):
        for c in range(n_cols):
            i = len(boxes)
            cx, cy = (xe[c] + xe[c + 1]) / 2.0, (ye[r] + ye[r + 1]) / 2.0
            if spot_shape == "square":
                box = (xe[c], ye[r], xe[c + 1], ye[r + 1])
                area_map[box[1] : box[3], box[0] : box[2]] = i
            else:
                rad = diameter / 2.0
                box = (
                    max(0, int(np.floor(cx - rad))),
                    max(0, int(np.floor(cy - rad))),
                    min(size_px, int(np.ceil(cx + rad))),
                    min(size_px, int(np.ceil(cy + rad))),
                )
                sl = (slice(box[1], box[3]), slice(box[0], box[2]))
                inside = (xx[sl] - cx) ** 2 + (yy[sl] - cy) ** 2 <= rad**2
                area_map[sl][inside] = i
            boxes.append(box)
            centres.append((cx, cy))
            rc.append((r, c))
    return area_map, np.asarray(boxes, dtype=np.int64), np.asarray(centres), np.asarray(rc), float(diameter)


def _area_sums(area_map: np.ndarray, rates: np.ndarray, n_areas: int) -> np.ndarray:
    """Sum of each gene's per-pixel rate over each area: (n_areas, n_genes) float64."""
    sel = area_map.ravel() >= 0
    ids = area_map.ravel()[sel]
    flat = rates.reshape(rates.shape[0], -1)[:, sel]
    return np.stack([np.bincount(ids, weights=g.astype(np.float64), minlength=n_areas) for g in flat], axis=1)


# --------------------------------------------------------------------------- section
def make_synthetic_section(
    out_dir: str | Path,
    *,
    size_px: int = 384,
    n_shapes: int = 32,
    n_subtypes: int = 3,
    reads_per_pixel: float = 10.0,
    grid: tuple[int, int] = (4, 4),
    spot_shape: str = "square",
    spot_diameter_px: float | None = None,
    noise_sd: float = 10.0,
    n_genes: int | None = None,
    background_rate: float = 1.0,
    microns_per_pixel: float = 1.0,
    seed: int = 0,
    library_id: str | None = None,
) -> ad.AnnData:
    """A synthetic section in the spirit of the XFuse paper's proof of principle.

    Parameters
    ----------
    out_dir
        Folder the full-resolution PNG is written to (sections reference their image by path).
    size_px
        Side of the square surface, pixels.
    n_shapes
        Shapes to place (fewer when no free room is found after many tries).
    n_subtypes
        Transcriptional subtypes; gene ``marker_k`` is expressed only in subtype ``k`` shapes.
    reads_per_pixel
        Mean reads of the marker gene per shape pixel.
    grid
        ``(rows, columns)`` of measurement areas tiling the surface.
    spot_shape
        ``"square"``: the areas are the grid cells (spot diameter = the cell side);
        ``"round"``: round spots on the cell centres, diameter ``spot_diameter_px``
        (default half the cell side).
    noise_sd
        Standard deviation of the Gaussian noise added to the image (0-255 scale).
    n_genes
        Total genes (default ``n_subtypes``); genes beyond the markers are ``noise_j`` genes
        with ``background_rate`` reads per pixel everywhere.
    microns_per_pixel
        Physical scale recorded in the section (1 µm/px by default).
    seed
        Seed of ``np.random.default_rng``; shapes, image noise and counts use independent streams.

    Returns
    -------
    A valid stfusion section. Ground truth: ``uns["synthetic"]`` (``label_map`` H x W subtype,
    -1 background; ``rates`` genes x H x W float32; ``area_map`` H x W area index, -1 outside
    any area; ``gene_subtype``; shape records; colours), ``obsm["area_bbox"]`` (x0, y0, x1, y1),
    ``layers["expected"]`` (Poisson means of the counts).
    """
    n_genes = n_subtypes if n_genes is None else int(n_genes)
    if n_subtypes < 1 or n_genes < n_subtypes:
        raise ValueError(f"Need n_subtypes >= 1 and n_genes >= n_subtypes, got {n_subtypes} and {n_genes}.")
    if reads_per_pixel < 0 or background_rate < 0:
        raise ValueError("reads_per_pixel and background_rate must be non-negative.")
    rng_shapes, rng_image, rng_counts = np.random.default_rng(seed).spawn(3)
    index, shapes = _place_shapes(rng_shapes, int(size_px), int(n_shapes), max_tries=200 * max(1, n_shapes))
    shape_subtype = rng_shapes.permutation(np.arange(len(shapes)) % n_subtypes).astype(np.int32)
    label_map = np.where(index >= 0, shape_subtype[np.maximum(index, 0)], -1).astype(np.int32)

    gene_subtype = np.concatenate([np.arange(n_subtypes), np.full(n_genes - n_subtypes, -1)]).astype(np.int32)
    genes = [f"marker_{k}" for k in range(n_subtypes)] + [f"noise_{j}" for j in range(n_genes - n_subtypes)]
    rates = np.empty((n_genes, size_px, size_px), dtype=np.float32)
    for g, k in enumerate(gene_subtype):
        rates[g] = reads_per_pixel * (label_map == k) if k >= 0 else background_rate

    colors = _subtype_colors(n_subtypes)
    img = np.where(label_map[..., None] >= 0, colors[np.maximum(label_map, 0)], np.asarray(BACKGROUND_RGB))
    img = img + rng_image.normal(0.0, noise_sd, size=img.shape) if noise_sd > 0 else img
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)

    area_map, boxes, centres, rc, diameter = _measurement_areas(int(size_px), grid, spot_shape, spot_diameter_px)
    expected = _area_sums(area_map, rates, len(boxes))
    counts = rng_counts.poisson(expected)

    lib = library_id or f"synthetic_{seed}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{lib}.png"
    Image.fromarray(img).save(path)
    obs = pd.DataFrame({K.ARRAY_ROW: rc[:, 0], K.ARRAY_COL: rc[:, 1]})
    adata = section_from_image(
        counts,
        centres,
        path,
        obs_names=[f"{c}x{r}" for r, c in rc],  # "{x}x{y}": column x row, as legacy ST
        var_names=genes,
        library_id=lib,
        spot_diameter_um=diameter * float(microns_per_pixel),
        microns_per_pixel=float(microns_per_pixel),
        obs=obs,
        meta={K.PLATFORM: "synthetic", K.SOURCE: "stfusion.data.synthetic"},
    )
    adata.obsm[K.AREA_BBOX] = boxes
    adata.layers[K.LAYER_EXPECTED] = expected.astype(np.float64)
    adata.uns[K.SYNTHETIC] = {
        "label_map": label_map,
        "rates": rates,
        "area_map": area_map,
        "gene_subtype": gene_subtype,
        "shape_kind": np.asarray([s[0] for s in shapes], dtype=str),
        "shape_bbox": np.asarray([s[1] for s in shapes], dtype=np.int64).reshape(-1, 4),
        "shape_subtype": shape_subtype,
        "subtype_colors": colors,
        "background_color": np.asarray(BACKGROUND_RGB, dtype=np.uint8),
        "reads_per_pixel": float(reads_per_pixel),
        "background_rate": float(background_rate),
        "spot_shape": spot_shape,
        "area_radius_px": diameter / 2.0 if spot_shape == "round" else float("nan"),
        "noise_sd": float(noise_sd),
        "seed": int(seed),
    }
    return adata


# --------------------------------------------------------------------------- reference + spatial pair
def _nb_counts(rng: np.random.Generator, mean: np.ndarray, dispersion: float) -> np.ndarray:
    """Gamma-Poisson (negative binomial, variance ``mean + dispersion * mean**2``) counts."""
    if dispersion <= 0:
        return rng.poisson(mean)
    return rng.poisson(rng.gamma(shape=1.0 / dispersion, scale=mean * dispersion))


def _type_profiles(rng, n_genes: int, n_types: int, markers: int, fold: float) -> np.ndarray:
    """Per-type expression proportions (types x genes); type t's markers are genes t*m .. t*m+m-1."""
    base = np.exp(rng.normal(0.0, 1.0, size=n_genes))
    prof = base[None, :] * np.exp(rng.normal(0.0, 0.2, size=(n_types, n_genes)))
    for t in range(n_types):
        prof[t, t * markers : (t + 1) * markers] *= fold
    return prof / prof.sum(axis=1, keepdims=True)


def _spatial_layout(rng, n_cells: int, n_types: int, spacing_um: float, mixing: float):
    """Cells uniform in a square, in Voronoi regions of one type each; returns xy (µm), region, type."""
    side = np.sqrt(n_cells) * spacing_um
    xy = rng.uniform(0.0, side, size=(n_cells, 2))
    n_regions = 3 * n_types
    seeds = rng.uniform(0.0, side, size=(n_regions, 2))
    region_type = rng.permutation(np.arange(n_regions) % n_types)
    region = np.argmin(((xy[:, None, :] - seeds[None, :, :]) ** 2).sum(axis=2), axis=1)
    types = region_type[region]
    swap = rng.random(n_cells) < mixing
    types[swap] = rng.integers(0, n_types, size=int(swap.sum()))
    return xy, region, types


def _library(rng, n: int, depth: float) -> np.ndarray:
    return depth * np.exp(rng.normal(0.0, 0.25, size=n))


def make_synthetic_pair(
    n_ref_cells: int = 1000,
    n_spatial_cells: int = 800,
    n_genes: int = 60,
    n_types: int = 4,
    *,
    markers_per_type: int = 5,
    marker_fold: float = 8.0,
    dispersion: float = 0.2,
    ref_depth: float = 2000.0,
    spatial_depth: float = 300.0,
    platform_gene_sd: float = 0.3,
    mixing: float = 0.1,
    cell_spacing_um: float = 10.0,
    seed: int = 0,
) -> tuple[ad.AnnData, ad.AnnData]:
    """A synthetic scRNA-seq reference and single-cell spatial data of the same tissue.

    Cell types have gene programmes (shared base expression times type-specific noise, with
    ``markers_per_type`` marker genes ``marker_fold`` times higher in their type). Counts are
    gamma-Poisson with per-cell library sizes around ``ref_depth`` (reference) and
    ``spatial_depth`` (spatial); the spatial platform also has a per-gene capture efficiency
    (log-normal, sd ``platform_gene_sd``). Spatial cells lie in regions of one type each
    (a fraction ``mixing`` of cells get a random type), coordinates in µm in ``obsm["spatial"]``.

    Returns
    -------
    ``(reference, spatial)``: AnnData with integer CSR counts in ``X`` and the same genes;
    ``obs["cell_type"]`` in both (in the spatial data it is the ground truth), marker genes
    in ``uns["synthetic"]["marker_genes"]`` (types x markers).
    """
    if n_types < 1 or n_genes < n_types * markers_per_type:
        raise ValueError(
            f"n_genes ({n_genes}) must be at least n_types * markers_per_type ({n_types * markers_per_type})."
        )
    if min(n_ref_cells, n_spatial_cells) < n_types:
        raise ValueError("Need at least as many cells as cell types in both datasets.")
    rng_prog, rng_ref, rng_sp = np.random.default_rng(seed).spawn(3)
    prof = _type_profiles(rng_prog, n_genes, n_types, markers_per_type, marker_fold)
    efficiency = np.exp(rng_prog.normal(0.0, platform_gene_sd, size=n_genes))
    genes = [f"gene_{g:03d}" for g in range(n_genes)]
    type_names = np.asarray([f"type_{t}" for t in range(n_types)])
    markers = np.asarray(genes[: n_types * markers_per_type]).reshape(n_types, markers_per_type)
    truth = {"marker_genes": markers, "cell_types": type_names}

    ref_types = rng_ref.permutation(np.arange(n_ref_cells) % n_types)
    ref_mean = _library(rng_ref, n_ref_cells, ref_depth)[:, None] * prof[ref_types]
    reference = _pair_adata(_nb_counts(rng_ref, ref_mean, dispersion), genes, type_names[ref_types], "c")
    reference.layers[K.LAYER_EXPECTED] = ref_mean
    reference.uns[K.STFUSION] = {K.SECTION_ID: "synthetic_reference", K.PLATFORM: "scrna", K.SOURCE: "stfusion.data.synthetic"}
    reference.uns[K.SYNTHETIC] = dict(truth)

    xy, region, sp_types = _spatial_layout(rng_sp, n_spatial_cells, n_types, cell_spacing_um, mixing)
    sp_mean = _library(rng_sp, n_spatial_cells, spatial_depth)[:, None] * prof[sp_types] * efficiency[None, :]
    spatial = _pair_adata(_nb_counts(rng_sp, sp_mean, dispersion), genes, type_names[sp_types], "s")
    spatial.obs["region"] = region.astype(np.int64)
    spatial.obsm[K.SPATIAL] = xy
    spatial.layers[K.LAYER_EXPECTED] = sp_mean
    spatial.uns[K.STFUSION] = {
        K.SECTION_ID: "synthetic_spatial",
        K.PLATFORM: "imaging",
        K.SOURCE: "stfusion.data.synthetic",
        K.COORDINATE_UNITS: "um",
    }
    spatial.uns[K.SYNTHETIC] = {**truth, "platform_efficiency": efficiency}
    return reference, spatial


def _pair_adata(counts: np.ndarray, genes: list[str], cell_types: np.ndarray, prefix: str) -> ad.AnnData:
    obs = pd.DataFrame(
        {K.CELL_TYPE: pd.Categorical(cell_types)},
        index=[f"{prefix}{i:05d}" for i in range(counts.shape[0])],
    )
    return ad.AnnData(X=to_counts_csr(counts), obs=obs, var=pd.DataFrame(index=genes))
