"""Copy a benchmark run's tables into benchmarks/results/NAME (the committed part).

Usage: python benchmarks/export_results.py RUN_DIR DEST_DIR

Copies summary.md/.csv, timings.csv, the resolved config and the boxplots, and writes
per_gene_pearson.csv.gz (gene-wise Pearson of every method and fold, and of each target for a
paper protocol's runs; the full per-gene table with every metric and the null permutations
stays in the run folder: it is large).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from stfusion.benchmark.report import load_cells


def export(run_dir: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("summary.md", "summary.csv", "timings.csv", "config.resolved.json"):
        shutil.copy2(run_dir / name, dest / name)
    for png in run_dir.glob("boxplot_*.png"):
        shutil.copy2(png, dest / png.name)
    genes, _ = load_cells(run_dir)
    pearson = genes[(genes.kind == "model") & (genes.metric == "pearson")]
    # a paper protocol scores every gene twice (target "paper" and "strict"): keep which is which
    columns = ["dataset", "fold", "method", *(["target"] if "target" in pearson else []), "gene", "value"]
    pearson[columns].to_csv(
        dest / "per_gene_pearson.csv.gz", index=False, float_format="%.5f"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    export(Path(sys.argv[1]), Path(sys.argv[2]))
