"""``stfusion report``: a self-contained HTML report of a benchmark run or a prediction.

Registered by :mod:`stfusion.cli`; :mod:`stfusion.report` is imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def report_cmd(
    source: Annotated[Path, typer.Argument(help="Benchmark run folder (`stfusion benchmark --out`) or prediction .h5ad (`stfusion predict`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path("report.html"),
    truth: Annotated[Optional[Path], typer.Option(help="Measured section .h5ad to score the prediction against.")] = None,
    super_resolved: Annotated[
        Optional[Path], typer.Option("--super-resolved", help="Super-resolved prediction .h5ad of the same section to draw too.")
    ] = None,
    gene: Annotated[list[str], typer.Option("--gene", "-g", help="Also draw this gene (repeatable).")] = [],  # noqa: B006
) -> None:
    """Write one HTML file (figures embedded, no external links): metrics tables, gene-wise
    Pearson boxplots, time and memory of a benchmark run; or maps of a prediction (best and
    median gene against --truth, super-resolved and uncertainty maps)."""
    from stfusion.cli.options import long_step
    from stfusion.report import build_report

    with long_step(f"writing the report of {source.name}"):
        build_report(source, out, truth=truth, super_resolved=super_resolved, genes=gene)
