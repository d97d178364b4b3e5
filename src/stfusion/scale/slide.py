"""Whole-slide prediction that streams the image and the results, so memory does not grow with area.

The slide is read through :class:`~stfusion.data.image.ImageReader`: a (pyramidal) TIFF or
OME-TIFF through tifffile's zarr store, only the tiles under each patch, from the coarsest
pyramid level that still has the resolution the model needs; JPEG/PNG through PIL as
elsewhere. Steps:

1. Tissue: a low-resolution overview (about 8 pixels per patch side, at most
   ``OVERVIEW_MAX_SIDE``; from a coarse pyramid level when the TIFF has one) marks
   background (mean RGB >= 235); spots whose field has no tissue pixel there are skipped.
2. Spots: a square or hexagonal lattice over the slide, spacing in µm (default: the model's).
3. Chunks of spots, in row order, are read at the model's field and size, kept when the
   patch holds tissue (:func:`stfusion.data.patches.is_tissue`), predicted, and their
   rows appended to a zarr group (:class:`stfusion.io.chunked.ChunkedTable`).
4. The rows are streamed into one ``.h5ad`` written atomically (the completed-output marker
   of :mod:`stfusion.scale.batch`); ``backed="r"`` opens it without loading ``X``.

Methods plug in through a :class:`SlideAdapter` that the model returns from its
``slide_adapter`` method (ST-Net, HisToGene); this module imports no model.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from stfusion import _constants as K
from stfusion.data.image import ImageReader
from stfusion.data.patches import is_tissue, patch_box
from stfusion.errors import ScaleError, StfusionError

log = logging.getLogger("stfusion")

OVERVIEW_MAX_SIDE = 4096
OVERVIEW_PX_PER_FIELD = 8
OVERVIEW_WHITE = 235  # lenient background level of the overview (the patch test is stricter)
LATTICES = ("square", "hex")
PSEUDO_BULK_KEY = "pseudo_bulk"


@dataclass
class SlideResult:
    """Where a slide's predictions went and what it took."""

    path: Path
    n_spots: int
    n_candidates: int
    n_lattice: int
    seconds: float
    level_tiles: int  # full-resolution TIFF tiles (or 256 x 256 px blocks) covering the slide


# --------------------------------------------------------------------------- scale
def slide_microns_per_pixel(path: str | Path) -> float | None:
    """µm per pixel of a TIFF/OME-TIFF from its metadata (OME PhysicalSizeX, else the resolution tags).

    None when the file says nothing usable (then pass it explicitly).
    """
    from stfusion.data.image import is_tiff

    if not is_tiff(path):
        return None
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if tif.is_ome:
            mpp = _ome_mpp(tif.ome_metadata)
            if mpp:
                return mpp
        page = tif.pages[0]
        tags = page.tags
        if "XResolution" not in tags or "ResolutionUnit" not in tags:
            return None
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
        if not num or unit not in (2, 3):  # inch, centimetre
            return None
        return (25400.0 if unit == 2 else 10000.0) * den / num


def _ome_mpp(xml: str | None) -> float | None:
    import re

    if not xml:
        return None
    size = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', xml)
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml)
    if not size:
        return None
    factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit.group(1) if unit else "µm")
    return float(size.group(1)) * factor if factor else None


def resolve_mpp(image: Any, microns_per_pixel: float | None) -> float:
    """The given scale, else the TIFF's own; a clear error when neither exists."""
    if microns_per_pixel is not None:
        if not microns_per_pixel > 0:
            raise ScaleError(f"microns_per_pixel must be positive, got {microns_per_pixel}.")
        return float(microns_per_pixel)
    mpp = None if isinstance(image, np.ndarray) else slide_microns_per_pixel(image)
    if mpp is None:
        raise ScaleError(
            f"No pixel size for {image if not isinstance(image, np.ndarray) else 'the array'}: the file has no "
            "OME PhysicalSizeX or TIFF resolution tags. Pass --microns-per-pixel."
        )
    return mpp


# --------------------------------------------------------------------------- spots
def spot_lattice(shape_hw: tuple[int, int], spacing_px: float, kind: str = "square") -> tuple[np.ndarray, np.ndarray]:
    """Centres (x, y; full-res pixel indices) and (row, col) of a spot lattice covering the image.

    ``square``: centres of contiguous squares of side ``spacing_px`` (as
    :func:`stfusion.models.stnet.tiling.tile_grid`). ``hex``: rows ``spacing * sqrt(3)/2``
    apart, odd rows shifted by half a spacing (Visium/ST-like centre-to-centre distance).
    """
    if kind not in LATTICES:
        raise StfusionError(f"Unknown spot lattice {kind!r}; use one of {LATTICES}.")
    h, w = shape_hw
    dy = spacing_px if kind == "square" else spacing_px * math.sqrt(3) / 2
    rows, cols = max(1, math.ceil(h / dy)), max(1, math.ceil(w / spacing_px))
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    rc = np.stack([r.ravel(), c.ravel()], axis=1)
    shift = 0.5 * (rc[:, 0] % 2) if kind == "hex" else 0.0
    x = (rc[:, 1] + 0.5 + shift) * spacing_px - 0.5
    y = (rc[:, 0] + 0.5) * dy - 0.5
    keep = (x < w) & (y < h)
    return np.stack([x, y], axis=1)[keep], rc[keep]


def tissue_candidates(reader: ImageReader, centers: np.ndarray, field_px: float, white: int = OVERVIEW_WHITE) -> np.ndarray:
    """Mask of spots whose field has at least one non-background pixel in a low-res overview."""
    h, w = reader.shape
    scale = min(1.0, OVERVIEW_PX_PER_FIELD / field_px, OVERVIEW_MAX_SIDE / max(h, w))
    oh, ow = max(1, round(h * scale)), max(1, round(w * scale))
    over = reader.read_region(0, 0, w, h, out_shape=(oh, ow))
    tissue = over.sum(axis=-1, dtype=np.uint16) < 3 * white  # mean RGB < white, without a float copy
    del over
    integral = np.zeros((oh + 1, ow + 1), np.int32)
    np.cumsum(tissue, axis=0, dtype=np.int32, out=integral[1:, 1:])
    np.cumsum(integral[1:, 1:], axis=1, out=integral[1:, 1:])
    half = field_px / 2
    sx, sy = ow / w, oh / h
    x0 = np.clip(np.floor((centers[:, 0] + 0.5 - half) * sx), 0, ow).astype(int)
    x1 = np.clip(np.ceil((centers[:, 0] + 0.5 + half) * sx), 0, ow).astype(int)
    y0 = np.clip(np.floor((centers[:, 1] + 0.5 - half) * sy), 0, oh).astype(int)
    y1 = np.clip(np.ceil((centers[:, 1] + 0.5 + half) * sy), 0, oh).astype(int)
    count = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return count > 0


def read_chunk(reader: ImageReader, centers: np.ndarray, field_um: float, mpp: float, out_px: int) -> np.ndarray:
    """uint8 patches (n, out_px, out_px, 3) of ``field_um`` at ``centers``."""
    out = np.empty((len(centers), out_px, out_px, 3), dtype=np.uint8)
    for i, c in enumerate(centers):
        out[i] = reader.read_region(*patch_box(c, field_um, mpp), out_shape=(out_px, out_px))
    return out


def level_tile_count(reader: ImageReader) -> int:
    """Tiles of the full-resolution level (its TIFF tile size, else 256 x 256 px blocks)."""
    h, w = reader.shape
    th, tw = 256, 256
    levels = reader._open()  # noqa: SLF001 (the reader's own level list)
    chunks = getattr(getattr(levels[0], "array", None), "chunks", None)
    if chunks is not None and len(chunks) >= 2:
        axes = levels[0].axes
        th, tw = chunks[axes.index("Y")], chunks[axes.index("X")]
    return math.ceil(h / th) * math.ceil(w / tw)


# --------------------------------------------------------------------------- driver
class SlideAdapter:
    """How a method predicts a chunk of slide spots: the protocol :func:`predict_slide` drives.

    A model supports whole-slide streaming by returning one of these from
    ``model.slide_adapter(lattice=, spacing_um=, chunk_spots=, window=)`` (ST-Net:
    :mod:`stfusion.models.stnet.slide`, HisToGene: :mod:`stfusion.models.histogene.slide`).
    This module imports no model: it only calls that method. A subclass sets ``genes``,
    ``field_um`` and ``out_px`` (patch side in µm and pixels), ``spacing_um`` (default lattice
    spacing), ``expression_space`` and ``provenance`` (recorded in ``uns``), and implements
    ``predict_chunk(reader, centers, rc, mpp)`` -> :meth:`block` rows, or None when no spot of
    the chunk holds tissue; ``chunks`` may group the spots otherwise (default: runs of
    ``chunk_spots`` in row order).
    """

    genes: list[str]
    field_um: float
    out_px: int
    spacing_um: float
    lattice: str
    expression_space: str
    provenance: dict[str, Any]
    obsm: dict[str, str] = {}
    pseudo_bulk_key = PSEUDO_BULK_KEY
    name_prefix = "spot"

    def __init__(self, lattice: str | None, spacing_um: float | None, chunk_spots: int) -> None:
        self.lattice = lattice or "square"
        if self.lattice not in LATTICES:
            raise StfusionError(f"Unknown spot lattice {self.lattice!r}; use one of {LATTICES}.")
        self._spacing = spacing_um
        self.chunk_spots = max(1, int(chunk_spots))

    def chunks(self, centers: np.ndarray, rc: np.ndarray, mpp: float) -> Iterator[np.ndarray]:
        for start in range(0, len(centers), self.chunk_spots):
            yield np.arange(start, min(start + self.chunk_spots, len(centers)))

    def predict_chunk(self, reader: ImageReader, centers: np.ndarray, rc: np.ndarray, mpp: float) -> dict[str, np.ndarray] | None:
        raise NotImplementedError

    def tissue_patches(self, reader: ImageReader, centers: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
        patches = read_chunk(reader, centers, self.field_um, mpp, self.out_px)
        keep = np.fromiter((is_tissue(p) for p in patches), dtype=bool, count=len(patches))
        return patches[keep], keep

    @staticmethod
    def block(values: np.ndarray, centers: np.ndarray, rc: np.ndarray, **extra: np.ndarray) -> dict[str, np.ndarray]:
        return {"X": np.asarray(values, np.float32), "spatial": centers.astype(np.float64),
                "row": rc[:, 0].astype(np.int64), "col": rc[:, 1].astype(np.int64), **extra}  # fmt: skip


def adapter_for(model: Any, *, lattice: str | None = None, spacing_um: float | None = None, chunk_spots: int = 256,
                window: int | None = None) -> SlideAdapter:  # fmt: skip
    """The slide adapter of a fitted model (``model.slide_adapter``: ST-Net, HisToGene)."""
    if not callable(getattr(model, "slide_adapter", None)):
        name = getattr(model, "name", type(model).__name__)
        raise StfusionError(f"Whole-slide streaming supports stnet and histogene, not {name!r}; "
                            "use model.predict_image for other methods.")  # fmt: skip
    return model.slide_adapter(lattice=lattice, spacing_um=spacing_um, chunk_spots=chunk_spots, window=window)


def predict_slide(
    model: Any,
    image: str | Path | np.ndarray,
    out: str | Path,
    microns_per_pixel: float | None = None,
    *,
    lattice: str | None = None,
    spacing_um: float | None = None,
    chunk_spots: int = 256,
    window: int | None = None,
    progress: bool = False,
) -> SlideResult:
    """Predict every tissue spot of an H&E-only slide, streaming, into ``out`` (``.h5ad``).

    Parameters
    ----------
    model
        A fitted model with a ``slide_adapter`` method (ST-Net, HisToGene; see :class:`SlideAdapter`).
    image
        Slide file (pyramidal TIFF / OME-TIFF, plain TIFF, JPEG, PNG) or an RGB array.
    out
        Output ``.h5ad``; written atomically at the end (parts go to a temporary folder beside it).
    microns_per_pixel
        Pixel size of the full-resolution image (default: from the TIFF metadata).
    lattice, spacing_um
        Spot lattice (``square``/``hex``) and centre-to-centre distance (µm); defaults per method.
    chunk_spots
        Spots read and predicted at a time (ST-Net; HisToGene predicts one window at a time).
    window
        HisToGene: side of a window (grid units) predicted as one sequence (default: half its position table).
    """
    start = time.perf_counter()
    mpp = resolve_mpp(image, microns_per_pixel)
    adapter = adapter_for(model, lattice=lattice, spacing_um=spacing_um, chunk_spots=chunk_spots, window=window)
    reader = ImageReader.from_array(np.asarray(image)) if isinstance(image, np.ndarray) else ImageReader(image)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with reader, tempfile.TemporaryDirectory(prefix=f".{out.stem}.", suffix=".parts", dir=out.parent) as parts:
        from stfusion.io.chunked import ChunkedTable

        table = ChunkedTable(Path(parts) / "rows.zarr", chunk_rows=max(256, chunk_spots))
        centers, rc = spot_lattice(reader.shape, adapter.spacing_um / mpp, adapter.lattice)
        cand = np.flatnonzero(tissue_candidates(reader, centers, adapter.field_um / mpp))
        bulk = np.zeros(len(adapter.genes), np.float64)
        for idx in _progress(adapter.chunks(centers[cand], rc[cand], mpp), progress, len(cand)):
            sel = cand[idx]
            block = adapter.predict_chunk(reader, centers[sel], rc[sel], mpp)
            if block is not None and len(block["X"]):
                bulk += block["X"].astype(np.float64).sum(axis=0)
                table.append(block)
        n = table.n_rows
        uns = _uns(model, adapter, image, mpp, n, len(centers), bulk / max(n, 1))
        var = pd.DataFrame({adapter.pseudo_bulk_key: (bulk / max(n, 1)).astype(np.float32)}, index=pd.Index(adapter.genes))
        table.write_h5ad(out, var=var, obs_names=lambda a, b: _names(table, a, b, adapter.name_prefix), obs={"grid_row": "row", "grid_col": "col"},
                         obsm={K.SPATIAL: "spatial", **adapter.obsm}, uns=uns)  # fmt: skip
        level_tiles = level_tile_count(reader)
    seconds = time.perf_counter() - start
    log.info(f"{out}: {n} tissue spots of {len(centers)} ({seconds:.1f} s)")
    return SlideResult(out, n, len(cand), len(centers), seconds, level_tiles)


def predict_slide_adata(model: Any, image: str | Path | np.ndarray, microns_per_pixel: float | None = None, **kwargs: Any) -> ad.AnnData:
    """:func:`predict_slide` into a temporary file, returned in memory (small slides)."""
    with tempfile.TemporaryDirectory(prefix="stfusion-slide-") as tmp:
        path = predict_slide(model, image, Path(tmp) / "slide.h5ad", microns_per_pixel, **kwargs).path
        return ad.read_h5ad(path)


def _names(table, start: int, stop: int, prefix: str) -> list[str]:
    if stop <= start:
        return []
    rows, cols = table.array("row")[start:stop], table.array("col")[start:stop]
    return [f"{prefix}_{r}_{c}" for r, c in zip(rows, cols, strict=True)]


def _uns(model, adapter, image, mpp: float, n: int, n_total: int, bulk: np.ndarray) -> dict[str, Any]:
    source = "array" if isinstance(image, np.ndarray) else str(Path(image).resolve())
    meta = {
        "method": model.name, "expression_space": adapter.expression_space, "source_image_path": source,
        "microns_per_pixel": float(mpp), "n_tiles": int(n), "n_tiles_total": int(n_total),
        "lattice": adapter.lattice, "spacing_um": float(adapter.spacing_um), "field_um": float(adapter.field_um),
        **adapter.provenance,
    }  # fmt: skip
    return {K.STFUSION: meta, adapter.pseudo_bulk_key: bulk.astype(np.float32)}


def _progress(chunks: Iterator[np.ndarray], show: bool, total: int) -> Iterator[np.ndarray]:
    if not show:
        yield from chunks
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("Predicting spots", total=total)
        for idx in chunks:
            yield idx
            bar.advance(task, len(idx))
