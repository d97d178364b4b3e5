"""``stfusion benchmark``: datasets x protocols x methods from one TOML file.

Registered by :mod:`stfusion.cli`; :mod:`stfusion.benchmark` is imported only when the command runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer


def benchmark_cmd(
    config: Annotated[Path, typer.Argument(help="Benchmark TOML (datasets x protocols x methods).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder; a finished cell is not recomputed.")],
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide the progress bar.")] = False,
) -> None:
    """Run a benchmark: per-gene CSV, Markdown summary, boxplots, time and memory per cell."""
    from stfusion.benchmark import load_config, run_benchmark

    quiet = not logging.getLogger("stfusion").isEnabledFor(logging.INFO)
    run = run_benchmark(load_config(config), out, progress=not (no_progress or quiet))
    if not quiet:
        typer.echo((run / "summary.md").read_text())
