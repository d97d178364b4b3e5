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
    shard: Annotated[str, typer.Option(
        help="I/N: run only every N-th cell starting at I (0-based), so N processes share one --out.")] = "0/1",
) -> None:
    """Run a benchmark: per-gene CSV, Markdown summary, boxplots, time and memory per cell."""
    from stfusion.benchmark import load_config, run_benchmark

    try:
        index, count = (int(v) for v in shard.split("/"))
        if not 0 <= index < count:
            raise ValueError
    except ValueError:
        raise typer.BadParameter(f"--shard takes I/N with 0 <= I < N (e.g. 0/2 and 1/2), not {shard!r}.") from None
    quiet = not logging.getLogger("stfusion").isEnabledFor(logging.INFO)
    run = run_benchmark(load_config(config), out, progress=not (no_progress or quiet), shard=(index, count))
    if not quiet:
        typer.echo((run / "summary.md").read_text())
