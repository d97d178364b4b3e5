"""Option types and helpers shared by the ``stfusion`` commands: ``--param``/``--genes``/
``--covariate`` parsing, progress bars, the console and the ``stfusion`` logger.

The bottom layer of :mod:`stfusion.cli`: it imports no other module of the package, so every
command module (and :mod:`stfusion.cli.config`) may import it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import Annotated, Optional

import typer

log = logging.getLogger("stfusion")

MppOpt = Annotated[
    Optional[float], typer.Option("--microns-per-pixel", help="Override the scale of the full-resolution image.")
]
GENES_FORMS = "a text file (one gene per line), a .npy array of names, or comma-separated names"
GENE_FILE_SUFFIXES = (".txt", ".npy", ".tsv", ".csv", ".list")
HEARTBEAT_S = 15.0  # off a terminal, a long step logs a line this often
PIPED_WIDTH = 200  # rich tables printed to a file or pipe are not cut at 80 columns


# ----------------------------------------------------------------------------- parsing
def parse_params(items: list[str]) -> dict:
    """``key=value`` pairs; values parsed as JSON when they can be (numbers, booleans, lists)."""
    params = {}
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"--param expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def genes_spec(genes: Optional[str]):
    """``--genes`` of ``stfusion fit``: a number N (top N genes), a file name or comma-separated names."""
    return int(genes) if genes is not None and genes.isdigit() else genes


def gene_names(spec: Optional[str]) -> list[str] | None:
    """``--genes`` of ``predict``, ``de`` and ``impute``: a text file (one name per line), a
    ``.npy`` array of names, or comma-separated names (None: the command's default)."""
    from pathlib import Path

    if spec is None:
        return None
    path = Path(spec).expanduser()
    if not path.is_file() and ("/" in spec or path.suffix.lower() in GENE_FILE_SUFFIXES):
        raise typer.BadParameter(f"--genes {spec}: no such file. Give {GENES_FORMS}.")
    if path.is_file():
        from stfusion.data.genes import read_gene_list

        names = list(dict.fromkeys(read_gene_list(path)))
    else:
        names = list(dict.fromkeys(g.strip() for g in spec.split(",") if g.strip()))
    if not names:
        raise typer.BadParameter(f"--genes {spec!r} lists no genes; give {GENES_FORMS}.")
    return names


def parse_covariates(items: list[str], n_sections: int) -> list[dict[str, str]] | None:
    """One ``{name: value}`` dict per section, from ``NAME=V1,V2,...`` (one value per section,
    in order: ``["batch=a,b", "slide=1,1"]``) or from ``NAME=VALUE`` repeated once per section
    (``["batch=a", "batch=b"]``)."""
    if not items:
        return None
    given: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"--covariate expects NAME=V1,V2,... (one value per section), got {item!r}.")
        name, values = item.split("=", 1)
        given.setdefault(name.strip(), []).append(values)
    out: list[dict[str, str]] = [{} for _ in range(n_sections)]
    for name, entries in given.items():
        vals = [v.strip() for v in entries[0].split(",")] if len(entries) == 1 else [v.strip() for v in entries]
        if len(vals) != n_sections or (len(entries) > 1 and any("," in v for v in entries)):
            raise typer.BadParameter(
                f"--covariate {name} gives {len(vals)} values for {n_sections} sections; give one per section, in order "
                f"({name}=V1,V2,... once, or {name}=VALUE once per section)."
            )
        for d, v in zip(out, vals, strict=True):
            d[name] = v
    return out


# ----------------------------------------------------------------------------- console and logging
def show_progress() -> bool:
    """Progress bars: on a terminal, unless ``--quiet`` (the ``stfusion`` logger above INFO)."""
    return sys.stderr.isatty() and log.isEnabledFor(logging.INFO)


def console(stderr: bool = False):
    """A rich console that wraps softly; printed tables (stdout) off a terminal are wide, so they are
    not cut at 80 columns. Log lines (stderr) keep rich's width."""
    from rich.console import Console

    width = PIPED_WIDTH if not stderr and not sys.stdout.isatty() else None
    return Console(stderr=stderr, soft_wrap=True, width=width)


@contextlib.contextmanager
def long_step(what: str, every_s: float = HEARTBEAT_S) -> Iterator[None]:
    """A step that may take long: on a terminal a spinner with the elapsed time (models'
    own progress bars show inside it); off a terminal a log line at the start, one every
    ``every_s`` seconds while it runs and one at the end. Silent with ``--quiet``."""
    if show_progress():
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=console(stderr=True), transient=True) as bar:
            bar.add_task(what, total=None)
            yield
        return
    if not log.isEnabledFor(logging.INFO):
        yield
        return
    start, stop = time.perf_counter(), threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            log.info(f"{what}: still running ({time.perf_counter() - start:.0f} s)")

    log.info(f"{what} ...")
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    log.info(f"{what}: done in {time.perf_counter() - start:.0f} s")


def setup_logging(level: int) -> None:
    """Configure the ``stfusion`` logger only (never the root logger)."""
    from rich.logging import RichHandler

    log.setLevel(level)
    if not any(isinstance(h, RichHandler) for h in log.handlers):
        log.addHandler(RichHandler(show_path=False, show_time=False, console=console(stderr=True)))
    log.propagate = False
