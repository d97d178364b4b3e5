"""The ``stfusion`` command line: a thin Typer app over the Python API.

Conventions every command follows: sections are ``.h5ad`` files made by ``stfusion read``;
``--seed`` makes a run repeatable; outputs are written atomically; errors print one line
and exit non-zero (``--debug`` shows the traceback).

This module builds :data:`app` from the command modules and defines :func:`main`. Layers, each
importing only the ones below it: :mod:`~stfusion.cli.options` (shared options and helpers) and
:mod:`~stfusion.cli.catalog` (what ``stfusion methods`` lists, as plain data),
:mod:`~stfusion.cli.config` (run configs and run records), the command modules
(:mod:`~stfusion.cli.read`, :mod:`~stfusion.cli.models`, :mod:`~stfusion.cli.xfuse`,
:mod:`~stfusion.cli.impute`, :mod:`~stfusion.cli.plot`, :mod:`~stfusion.cli.report`,
:mod:`~stfusion.cli.benchmark`), and this module. Heavy libraries are imported inside commands.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from stfusion.cli import benchmark, features, impute, models, plot, read, report, xfuse
from stfusion.cli.options import setup_logging

__all__ = ["app", "main"]

app = typer.Typer(
    name="stfusion",
    help="Predict spatial gene expression from H&E images and single-cell references.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: no <bool> on flags, brackets such as [selected] kept
)

COMMANDS = {  # in the order `stfusion --help` lists them
    "info": read.info_cmd,
    "demo": models.demo_cmd,
    "fit": models.fit_cmd,
    "predict": models.predict_cmd,
    "evaluate": models.evaluate_cmd,
    "features": features.features_cmd,
    "benchmark": benchmark.benchmark_cmd,
    "methods": models.methods_cmd,
    "report": report.report_cmd,
    "de": xfuse.de_cmd,
    "impute": impute.impute_cmd,
}
GROUPS = {"read": read.read_app, "plot": plot.plot_app}

HIDDEN = {"show": plot.show_cmd}  # old names kept working (deprecated aliases), not listed

for _name, _command in COMMANDS.items():
    app.command(_name)(_command)
for _name, _command in HIDDEN.items():
    app.command(_name, hidden=True)(_command)
for _name, _group in GROUPS.items():
    app.add_typer(_group, name=_name)


def _print_version(value: bool) -> None:
    if value:
        from stfusion import __version__

        typer.echo(f"stfusion {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit.")
    ] = False,
) -> None:
    setup_logging(logging.WARNING if quiet else logging.INFO)


# ----------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Console entry point: one-line errors unless ``--debug``. The ``stfusion`` logger's
    handlers, level and propagation are restored on return, so calling ``main`` from Python
    (a notebook, a workflow, the tests) leaves no logging set up behind it."""
    logger = logging.getLogger("stfusion")
    saved = list(logger.handlers), logger.level, logger.propagate
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


def _main(args: list[str]) -> int:
    command = typer.main.get_command(app)
    try:
        command.main(args=args, prog_name="stfusion", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("stfusion: aborted", err=True)
        return 130
    except Exception as exc:  # one line for users; the traceback with --debug
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # usage errors of the command parser
            exc.show()
            return exc.exit_code
        if "--debug" in args:
            raise
        from stfusion.errors import StfusionError

        kind = "error" if isinstance(exc, (StfusionError, OSError)) else f"unexpected error ({type(exc).__name__})"
        message = str(exc).replace("\n", " ") or type(exc).__name__
        typer.echo(f"stfusion: {kind}: {message} (run with --debug for the traceback)", err=True)
        return 1
    return 0
