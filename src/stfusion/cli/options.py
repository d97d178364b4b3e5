"""Option types and helpers shared by the ``stfusion`` commands: ``--param``/``--genes``/
``--covariate`` parsing, progress bars, the console and the ``stfusion`` logger.

The bottom layer of :mod:`stfusion.cli`: it imports no other module of the package, so every
command module (and :mod:`stfusion.cli.config`) may import it.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated, Optional

import typer

log = logging.getLogger("stfusion")

MppOpt = Annotated[
    Optional[float], typer.Option("--microns-per-pixel", help="Override the scale of the full-resolution image.")
]


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
    """``--genes`` of ``stfusion fit``: a number N (top N genes) or a file name."""
    return int(genes) if genes is not None and genes.isdigit() else genes


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
    """A rich console that wraps softly (tables keep their width when piped)."""
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True)


def setup_logging(level: int) -> None:
    """Configure the ``stfusion`` logger only (never the root logger)."""
    from rich.logging import RichHandler

    log.setLevel(level)
    if not any(isinstance(h, RichHandler) for h in log.handlers):
        log.addHandler(RichHandler(show_path=False, show_time=False, console=console(stderr=True)))
    log.propagate = False
