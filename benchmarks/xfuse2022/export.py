"""Copy an xfuse2022 benchmark run's tables into a committed results folder.

Usage: python benchmarks/xfuse2022/export.py RUN_DIR DEST_DIR

Like benchmarks/export_results.py, but keeps the ``target`` column ("paper" / "strict") of the
per-gene table, which a paper protocol's rows carry: per_gene.csv.gz holds the gene-wise Pearson r
(and, for the pairs protocol, the calls and right calls per gene) of every method, fold and target.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from stfusion.benchmark.report import load_cells

METRICS = ("pearson", "calls", "calls_right")


def export(run_dir: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("summary.md", "summary.csv", "timings.csv", "config.resolved.json"):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, dest / name)
    for png in run_dir.glob("boxplot_*.png"):
        shutil.copy2(png, dest / png.name)
    genes, _ = load_cells(run_dir)
    rows = genes[(genes.kind == "model") & genes.metric.isin(METRICS)]
    rows[["dataset", "fold", "method", "target", "gene", "metric", "value"]].to_csv(
        dest / "per_gene.csv.gz", index=False, float_format="%.5f"
    )


if __name__ == "__main__":
    export(Path(sys.argv[1]), Path(sys.argv[2]))
