"""Run methods x datasets x protocols; resumable, with a progress bar.

Each finished cell (dataset, fold, method) is stored under ``RUN_DIR/cells`` and is not
recomputed when the run is started again. At the end the per-gene table, timings,
summary (Markdown + CSV) and boxplots are (re)written from all cells.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from stfusion.benchmark.config import BenchmarkConfig, DatasetSpec, MethodSpec
from stfusion.benchmark.measure import measure
from stfusion.benchmark.methods import make_model
from stfusion.benchmark.papers import PAPER_PROTOCOLS, get_protocol
from stfusion.benchmark.protocols import PROTOCOLS, Fold
from stfusion.benchmark.scoring import score_histology, score_imputation, score_intervals
from stfusion.io.atomic import atomic_path

log = logging.getLogger("stfusion")


# ----------------------------------------------------------------------------- data
def load_dataset(spec: DatasetSpec, cfg: BenchmarkConfig) -> Any:
    """Sections (list of AnnData) or a (reference, spatial) pair.

    Spots with fewer than ``spec.min_counts`` total counts are dropped from sections: the
    target log1p(counts / total × 1e4) is undefined for an empty spot.
    """
    data = _read_dataset(spec, cfg)
    if spec.is_pair or spec.min_counts <= 0:
        return data
    return [_drop_low_count_spots(s, spec.min_counts) for s in data]


def _drop_low_count_spots(section: ad.AnnData, min_counts: int) -> ad.AnnData:
    totals = np.asarray(section.X.sum(axis=1)).ravel()
    keep = totals >= min_counts
    if keep.all():
        return section
    sid = section.uns.get("stfusion", {}).get("section_id", "section")
    log.info(f"{sid}: dropped {int((~keep).sum())} of {section.n_obs} spots with < {min_counts} counts")
    return section[keep].copy()


def _read_dataset(spec: DatasetSpec, cfg: BenchmarkConfig) -> Any:
    from stfusion import io

    path = cfg.resolve(spec.path)
    kw = dict(spec.reader_params)
    if spec.is_pair:
        return getattr(io, f"read_{spec.reader}")(path, **kw)
    if spec.reader in ("her2st", "stutility"):
        reader = io.read_her2st if spec.reader == "her2st" else io.read_stutility
        return [reader(path, s, **kw) for s in spec.sections]
    if spec.reader == "xfuse_toy":
        return [io.read_xfuse_toy(path, **kw)]
    if spec.reader == "visium":
        return [io.read_visium(path / s if spec.sections else path, **kw) for s in (spec.sections or [""])]
    if spec.reader == "h5ad":
        return [io.read_h5ad(path / s) for s in spec.sections]
    raise ValueError(f"reader {spec.reader} needs explicit files; use h5ad")


def fold_genes(spec: DatasetSpec, cfg: BenchmarkConfig, fold: Fold) -> list[str]:
    """Genes for a histology fold; a number N is resolved on the fold's training data only."""
    from stfusion.data.genes import resolve_genes

    g = spec.genes
    if g is None:
        g = 100
    if isinstance(g, str) and not g.isdigit():
        g = str(cfg.resolve(g))
    return list(resolve_genes(g, fold.train))


def iter_folds(spec: DatasetSpec, data: Any, seed: int) -> list[Fold]:
    if spec.protocol in PAPER_PROTOCOLS:
        protocol = get_protocol(spec.protocol, **spec.protocol_params)
        protocol.check(data)
        return protocol.folds(data, seed)
    protocol = PROTOCOLS[spec.protocol]
    params = dict(spec.protocol_params)
    if spec.protocol in ("spot_holdout", "gene_kfold"):
        params.setdefault("seed", seed)
    if spec.protocol == "gene_kfold":
        reference, spatial = data
        return list(protocol(reference, spatial, name=spec.name, **params))
    return list(protocol(data, **params))


# ----------------------------------------------------------------------------- cells
def _run_histology(method: MethodSpec, fold: Fold, genes: list[str], seed: int) -> pd.DataFrame:
    """Per-gene scores; with a calibration (the method entry's ``calibration``) or a predicted SD,
    also the coverage and width of the prediction intervals at 50/80/90/95% (``score_intervals``)."""
    model = make_model(method, seed)
    if method.calibration is None:
        model.fit(fold.train, genes=genes)  # unchanged: no data held out
    else:
        model.fit(fold.train, genes=genes, calibration=method.calibration,
                  calibration_fraction=method.calibration_fraction)
    pred = model.predict(fold.test)
    scores = score_histology(pred, fold.test, genes)
    if getattr(model, "calibration_", None) is None and "sd" not in pred.layers:
        return scores
    return pd.concat([scores, score_intervals(model, pred, fold.test, genes)], ignore_index=True)


def _run_imputation(method: MethodSpec, fold: Fold, spatial_full: ad.AnnData, seed: int) -> pd.DataFrame:
    reference, spatial_train = fold.train
    model = make_model(method, seed)
    model.fit(reference, spatial_train)
    pred = model.impute(fold.hidden_genes)
    return score_imputation(pred, spatial_full, fold.hidden_genes)


def _run_null(method: MethodSpec, fold: Fold, genes: list[str], seed: int) -> pd.DataFrame:
    from stfusion.baselines.null import ShuffledNull

    null = ShuffledNull(lambda: make_model(method, seed), n_permutations=method.null_permutations, seed=seed)
    null.fit(fold.train, genes=genes)
    frames = []
    for i, pred in enumerate(null.predict_all(fold.test)):
        frames.append(score_histology(pred, fold.test, genes).assign(permutation=i))
    return pd.concat(frames, ignore_index=True)


@dataclass
class Cell:
    dataset: DatasetSpec
    fold: Fold
    method: MethodSpec
    kind: str  # "model" or "null"

    @property
    def key(self) -> str:
        safe = self.fold.name.replace(":", "_").replace("/", "_")
        return f"{self.dataset.name}/{self.method.display}/{self.kind}/{safe}"


def run_cell(cell: Cell, cfg: BenchmarkConfig, data: Any, out: Path) -> None:
    """Compute one cell and store its per-gene scores and timing."""
    d, f, m = cell.dataset, cell.fold, cell.method
    if d.protocol in PAPER_PROTOCOLS:
        protocol = get_protocol(d.protocol, **d.protocol_params)
        genes = protocol.genes(f, d.genes)
        result, meas = measure(lambda: protocol.run(m, f, genes, cfg.seed))
    elif d.is_pair:
        result, meas = measure(lambda: _run_imputation(m, f, data[1], cfg.seed))
    else:
        genes = fold_genes(d, cfg, f)
        runner = _run_null if cell.kind == "null" else _run_histology
        result, meas = measure(lambda: runner(m, f, genes, cfg.seed))
    result = result.assign(dataset=d.name, protocol=d.protocol, fold=f.name, method=m.display, kind=cell.kind)
    target = out / "cells" / f"{cell.key}.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    timing = {"seconds": meas.seconds, "peak_rss_mb": meas.peak_rss_mb, "rss_increase_mb": meas.rss_increase_mb}
    with atomic_path(target.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(timing))
    with atomic_path(target) as tmp:  # the CSV last: its presence marks the cell as done
        result.to_csv(tmp, index=False)


def plan_cells(cfg: BenchmarkConfig, dataset: DatasetSpec, folds: list[Fold]) -> list[Cell]:
    cells = []
    for method in cfg.methods:
        if method.datasets is not None and dataset.name not in method.datasets:
            continue
        for fold in folds:
            cells.append(Cell(dataset, fold, method, "model"))
            if method.null_permutations > 0 and not dataset.is_pair and dataset.protocol not in PAPER_PROTOCOLS:
                cells.append(Cell(dataset, fold, method, "null"))
    return cells


# ----------------------------------------------------------------------------- driver
def _environment() -> dict[str, Any]:
    import os

    from stfusion import __version__

    return {
        "stfusion": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "numpy": np.__version__,
    }


def run_benchmark(cfg: BenchmarkConfig, out: str | Path, *, progress: bool = True,
                  shard: tuple[int, int] = (0, 1)) -> Path:
    """Run every cell not already done, then write the tables and figures (from every finished cell).

    ``shard=(i, n)``: run only the cells whose position in the plan (datasets, then methods,
    then folds) is ``i`` modulo ``n``, so ``n`` processes or machines sharing ``out`` run one
    benchmark together without computing a cell twice.
    """
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}.")
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from stfusion.benchmark.report import write_outputs

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.resolved.json").write_text(json.dumps({**cfg.as_dict(), "environment": _environment()}, indent=2))
    skipped: dict[str, str] = {}  # method label -> why it could not run
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    position = 0
    with Progress(*columns, disable=not progress, transient=False) as bar:
        for dataset in cfg.datasets:
            data = load_dataset(dataset, cfg)
            cells = plan_cells(cfg, dataset, iter_folds(dataset, data, cfg.seed))
            mine = [c for i, c in enumerate(cells, start=position) if i % count == index]
            position += len(cells)
            cells = mine
            task = bar.add_task(dataset.name, total=len(cells))
            for cell in cells:
                if not (out / "cells" / f"{cell.key}.csv").exists() and cell.method.display not in skipped:
                    bar.update(task, description=f"{dataset.name}: {cell.method.display} {cell.fold.name}")
                    _run_or_skip(cell, cfg, data, out, skipped)
                bar.advance(task)
    if count > 1 and (out / SKIPPED_FILE).exists():  # other shards' findings are kept
        skipped = {**json.loads((out / SKIPPED_FILE).read_text()), **skipped}
    (out / SKIPPED_FILE).write_text(json.dumps(skipped, indent=2))
    write_outputs(out)
    return out


SKIPPED_FILE = "skipped.json"


def _run_or_skip(cell: Cell, cfg: BenchmarkConfig, data: Any, out: Path, skipped: dict[str, str]) -> None:
    """Run a cell; a method whose optional package is missing is recorded as not run, and the run goes on."""
    from stfusion.errors import OptionalDependencyError

    try:
        run_cell(cell, cfg, data, out)
    except OptionalDependencyError as exc:
        skipped[cell.method.display] = str(exc)
        log.warning(f"{cell.method.display} not run: {exc}")
