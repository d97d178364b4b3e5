"""Copy the histogene2021 run's tables here (benchmarks/export_results.py), keeping the target.

Usage: python benchmarks/histogene2021/export.py RUN_DIR DEST_DIR

``export_results.export`` writes per_gene_pearson.csv.gz without the ``target`` column; a paper
protocol has two rows per gene (``paper`` and ``strict``), so the file is rewritten with it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export_results import export

from stfusion.benchmark.report import load_cells


def main(run_dir: Path, dest: Path) -> None:
    export(run_dir, dest)
    genes, _ = load_cells(run_dir)
    pearson = genes[(genes.kind == "model") & (genes.metric == "pearson")]
    pearson[["dataset", "fold", "method", "target", "gene", "value"]].to_csv(
        dest / "per_gene_pearson.csv.gz", index=False, float_format="%.5f"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
