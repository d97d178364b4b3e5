"""Many slides in parallel through Dask: ``stfusion predict MODEL_DIR --images DIR_OR_GLOB --out OUT_DIR``.

Each slide is one task on a ``dask.distributed`` cluster: a local one by default
(``LocalCluster``: ``workers`` processes, one thread each) or an existing one (``scheduler``
address, e.g. ``tcp://host:8786``; every worker must see the model folder, the slides and the
output folder at the same paths). A task loads the model and streams the slide into
``OUT_DIR/<slide>.h5ad`` (:func:`stfusion.scale.slide.predict_slide`), written atomically, so
a finished output is complete; re-running the command skips slides whose output exists
(resumable). One slide failing does not stop the others; ``OUT_DIR/summary.csv`` lists every
slide with its status, spots, seconds and error.
"""

from __future__ import annotations

import glob
import logging
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from stfusion.errors import InputFileError

log = logging.getLogger("stfusion")

SLIDE_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".btf", ".svs", ".jpg", ".jpeg", ".png")
SUMMARY_FILE = "summary.csv"


def list_slides(spec: str | Path) -> list[Path]:
    """Slides in a folder (by image suffix) or matching a glob pattern, sorted."""
    path = Path(spec)
    if path.is_dir():
        found = [p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(SLIDE_SUFFIXES)]
    else:
        found = [Path(p) for p in glob.glob(str(spec)) if Path(p).is_file()]
    if not found:
        raise InputFileError(f"No slide images found at {spec}. Pass a folder of TIFF/JPEG/PNG slides or a glob like 'slides/*.tif'.")
    return sorted(found)


def slide_name(path: Path) -> str:
    """File name without its image suffix (``a.ome.tif`` -> ``a``)."""
    name = path.name
    for suffix in SLIDE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def output_path(out_dir: Path, slide: Path) -> Path:
    return Path(out_dir) / f"{slide_name(slide)}.h5ad"


def predict_one(model_dir: str, slide: str, out: str, microns_per_pixel: float | None, options: dict[str, Any],
                torch_threads: int | None = None) -> dict[str, Any]:  # fmt: skip
    """One slide (runs on a Dask worker): load the model, stream the slide; never raises."""
    start = time.perf_counter()
    row: dict[str, Any] = {"slide": slide, "output": out, "status": "done", "spots": None, "seconds": None, "error": ""}
    try:
        if torch_threads:
            import torch

            torch.set_num_threads(int(torch_threads))
        from stfusion.models.api import load_model
        from stfusion.scale.slide import predict_slide

        result = predict_slide(load_model(model_dir), slide, out, microns_per_pixel, **options)
        row["spots"] = result.n_spots
    except Exception as exc:  # reported per slide in the summary; the other slides go on
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        log.debug(traceback.format_exc())
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def predict_slides(
    model_dir: str | Path,
    images: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    microns_per_pixel: float | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Predict every slide into ``out_dir`` through Dask, skipping finished ones; the summary table.

    Parameters
    ----------
    model_dir
        Saved ST-Net or HisToGene model.
    images
        Folder, glob pattern, or list of slide paths.
    out_dir
        Output folder: one ``<slide>.h5ad`` per slide and ``summary.csv``.
    workers
        Worker processes of the local cluster (ignored with ``scheduler``).
    scheduler
        Address of an existing Dask scheduler instead of a local cluster.
    microns_per_pixel
        Pixel size of every slide (default: from each TIFF's metadata).
    options
        Passed to :func:`stfusion.scale.slide.predict_slide` (``lattice``, ``spacing_um``, ``chunk_spots``, ``window``).
    """
    slides = list_slides(images) if isinstance(images, (str, Path)) else [Path(p) for p in images]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, todo = [], []
    for slide in slides:
        out = output_path(out_dir, slide)
        if out.is_file():
            rows.append({"slide": str(slide), "output": str(out), "status": "skipped", "spots": None, "seconds": 0.0, "error": ""})
        else:
            todo.append((str(Path(model_dir).resolve()), str(slide.resolve()), str(out.resolve())))
    log.info(f"{len(slides)} slides: {len(rows)} already done, {len(todo)} to predict")
    if todo:
        rows.extend(_run(todo, workers, scheduler, microns_per_pixel, options))
    table = pd.DataFrame(rows, columns=["slide", "output", "status", "spots", "seconds", "error"])
    _write_summary(table, out_dir / SUMMARY_FILE)
    failed = table[table.status == "failed"]
    for _, row in failed.iterrows():
        log.error(f"{row.slide}: {row.error}")
    return table


def _run(todo: list[tuple[str, str, str]], workers: int, scheduler: str | None, mpp: float | None,
         options: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
    from dask.distributed import Client, LocalCluster, as_completed

    if scheduler is None:
        cluster = LocalCluster(n_workers=max(1, int(workers)), threads_per_worker=1, processes=True,
                               dashboard_address=None)  # fmt: skip
        threads = 1
    else:
        cluster, threads = None, None
    try:
        with Client(scheduler if cluster is None else cluster) as client:
            futures = [client.submit(predict_one, m, s, o, mpp, options, threads, pure=False)
                       for m, s, o in todo]  # fmt: skip
            rows = []
            for future in as_completed(futures):
                row = future.result()
                log.info(f"{Path(row['slide']).name}: {row['status']} ({row['seconds']} s)")
                rows.append(row)
    finally:
        if cluster is not None:
            cluster.close()
    order = {s: i for i, (_, s, _) in enumerate(todo)}
    return sorted(rows, key=lambda r: order[r["slide"]])


def _write_summary(table: pd.DataFrame, path: Path) -> None:
    from stfusion.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
