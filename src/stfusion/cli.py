"""The ``stfusion`` command line: a thin Typer app over the Python API.

Conventions every command follows: sections are ``.h5ad`` files made by ``stfusion read``;
``--seed`` makes a run repeatable; outputs are written atomically; errors print one line
and exit non-zero (``--debug`` shows the traceback).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from stfusion.config import ConfigOpt, RunDirOpt, recorded, show_progress

app = typer.Typer(
    name="stfusion",
    help="Predict spatial gene expression from H&E images and single-cell references.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
read_app = typer.Typer(help="Read spatial data into a validated section (.h5ad).", no_args_is_help=True)
app.add_typer(read_app, name="read")

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output .h5ad file.")]
MppOpt = Annotated[
    Optional[float], typer.Option("--microns-per-pixel", help="Override the scale of the full-resolution image.")
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
) -> None:
    _setup_logging(logging.WARNING if quiet else logging.INFO)


def _setup_logging(level: int) -> None:
    """Configure the ``stfusion`` logger only (never the root logger)."""
    from rich.logging import RichHandler

    logger = logging.getLogger("stfusion")
    logger.setLevel(level)
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(RichHandler(show_path=False, show_time=False, console=_console(stderr=True)))
    logger.propagate = False


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True)


def _write_section(adata, out: Path) -> None:
    from stfusion.io import write_h5ad

    write_h5ad(adata, out)
    logging.getLogger("stfusion").info(f"wrote {out} ({adata.n_obs} spots x {adata.n_vars} genes)")


# ----------------------------------------------------------------------------- read
@read_app.command("visium")
def read_visium_cmd(
    outs_dir: Annotated[Path, typer.Argument(help="Space Ranger 'outs' folder.")],
    out: OutOpt,
    fullres_image: Annotated[Optional[Path], typer.Option(help="Full-resolution H&E (TIFF/JPEG).")] = None,
    microns_per_pixel: MppOpt = None,
) -> None:
    """Read a 10x Visium Space Ranger outs folder."""
    from stfusion.io import read_visium

    _write_section(read_visium(outs_dir, fullres_image=fullres_image, microns_per_pixel=microns_per_pixel), out)


@read_app.command("st")
def read_st_cmd(
    counts: Annotated[Path, typer.Option(help="Counts table (spots x genes, ids '{x}x{y}').")],
    spots: Annotated[Path, typer.Option(help="Spot/alignment table (x y new_x new_y pixel_x pixel_y [selected]).")],
    image: Annotated[Path, typer.Option(help="H&E image.")],
    out: OutOpt,
    spot_spacing_um: Annotated[float, typer.Option(help="Centre-to-centre spot distance (µm).")] = 200.0,
    spot_diameter_um: Annotated[float, typer.Option(help="Spot diameter (µm).")] = 100.0,
    microns_per_pixel: MppOpt = None,
    library_id: Annotated[Optional[str], typer.Option(help="Section id.")] = None,
) -> None:
    """Read a legacy Spatial Transcriptomics section."""
    from stfusion.io import read_st

    adata = read_st(
        counts,
        spots,
        image,
        library_id=library_id,
        spot_spacing_um=spot_spacing_um,
        spot_diameter_um=spot_diameter_um,
        microns_per_pixel=microns_per_pixel,
    )
    _write_section(adata, out)


@read_app.command("her2st")
def read_her2st_cmd(
    root: Annotated[Path, typer.Argument(help="her2st dataset root.")],
    section: Annotated[str, typer.Option(help="Section id, e.g. C2.")],
    out: OutOpt,
    microns_per_pixel: MppOpt = None,
) -> None:
    """Read one section of the HER2+ breast cancer ST dataset (Andersson et al. 2021)."""
    from stfusion.io import read_her2st

    _write_section(read_her2st(root, section, microns_per_pixel=microns_per_pixel), out)


@read_app.command("stutility")
def read_stutility_cmd(
    directory: Annotated[Path, typer.Argument(help="Folder with MOB<n>.tsv.gz, alignment tables and images.")],
    out: OutOpt,
    section: Annotated[str, typer.Option(help="Section id.")] = "MOB1",
    microns_per_pixel: MppOpt = None,
) -> None:
    """Read an STUtility example section (mouse olfactory bulb, 2k array)."""
    from stfusion.io import read_stutility

    _write_section(read_stutility(directory, section, microns_per_pixel=microns_per_pixel), out)


# ----------------------------------------------------------------------------- info / show
def section_summary(adata) -> dict:
    """Facts about a section for ``stfusion info``."""
    import numpy as np

    from stfusion import _constants as K
    from stfusion.data import section as S

    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    detected = np.asarray((adata.X > 0).sum(axis=1)).ravel()
    lib = S.spatial_info(adata)
    h, w = S.fullres_shape(adata)
    meta = S.section_meta(adata)
    return {
        "section": meta.get(K.SECTION_ID, S.library_id(adata)),
        "platform": meta.get(K.PLATFORM, "unknown"),
        "patient": meta.get(K.PATIENT),
        "spots": int(adata.n_obs),
        "genes": int(adata.n_vars),
        "image_width_px": w,
        "image_height_px": h,
        "image_path": str(S.fullres_path(adata)) if S.fullres_path(adata) else None,
        "microns_per_pixel": round(S.microns_per_pixel(adata), 5),
        "scale_source": lib.get(K.SCALE_SOURCE),
        "spot_diameter_px": round(S.spot_diameter_px(adata), 2),
        "counts_per_spot": {
            "total": int(totals.sum()),
            "min": int(totals.min()),
            "median": float(np.median(totals)),
            "mean": round(float(totals.mean()), 2),
            "max": int(totals.max()),
        },
        "genes_detected_per_spot_median": float(np.median(detected)),
    }


@app.command("info")
def info_cmd(
    path: Annotated[Path, typer.Argument(help="Section .h5ad, or a model folder (prints its model card).")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Summarise a section (spots, genes, image size, scale, counts) or a model's card."""
    from stfusion.io import read_h5ad
    from stfusion.models.api import card_summary, read_card

    if path.is_dir():
        summary = read_card(path) if as_json else card_summary(path)
    else:
        summary = section_summary(read_h5ad(path))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.table import Table

    table = Table(title=str(path), show_header=False)
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        table.add_row(key.replace("_", " "), "—" if value is None else str(value))
    _console().print(table)


@app.command("show")
def show_cmd(
    path: Annotated[Path, typer.Argument(help="Section .h5ad.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output image (.png, .pdf, .svg).")],
    gene: Annotated[Optional[str], typer.Option(help="Colour spots by this gene instead of total counts.")] = None,
) -> None:
    """Draw the H&E with spots at their true diameter, coloured by total counts or a gene."""
    from stfusion.io import read_h5ad
    from stfusion.io.atomic import atomic_path
    from stfusion.pl import spot_overlay

    fig = spot_overlay(read_h5ad(path), gene=gene)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
    logging.getLogger("stfusion").info(f"wrote {out}")


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("demo_output"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    xfuse: Annotated[bool, typer.Option("--xfuse/--no-xfuse", help="Also fit XFuse on it (1-2 min) and score the maps.")] = True,
) -> None:
    """Run the built-in example: a synthetic section, plotted, and XFuse's proof of principle on it."""
    from stfusion.demo import run_demo

    run_demo(out, seed=seed, xfuse=xfuse)


# ----------------------------------------------------------------------------- models
def _parse_params(items: list[str]) -> dict:
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


def _genes_spec(genes: Optional[str]):
    return int(genes) if genes is not None and genes.isdigit() else genes


@app.command("fit")
@recorded("fit")
def fit_cmd(
    method: Annotated[str, typer.Argument(help="Method name (see `stfusion methods`).")],
    sections: Annotated[list[Path], typer.Argument(help="Training sections (.h5ad from `stfusion read`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    genes: Annotated[Optional[str], typer.Option(help="Gene list file, .npy of names, or N (top N by mean).")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Named set of hyperparameters, e.g. fast.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    resolution_um: Annotated[
        Optional[float], typer.Option("--resolution-um", help="Working resolution in µm per pixel (XFuse; default: the preset's).")
    ] = None,
    param: Annotated[list[str], typer.Option("--param", "-p", help="Hyperparameter key=value (repeatable).")] = [],  # noqa: B006
    covariate: Annotated[
        list[str],
        typer.Option("--covariate", help="NAME=V1,V2,... (one value per section, in order) or NAME=VALUE once per section (XFuse)."),
    ] = [],  # noqa: B006
    devices: Annotated[Optional[int], typer.Option(help="Processes/GPUs per machine for training (with --strategy ddp).")] = None,
    num_nodes: Annotated[Optional[int], typer.Option("--num-nodes", help="Machines taking part in DDP training.")] = None,
    strategy: Annotated[Optional[str], typer.Option(help="Lightning strategy: ddp (gloo on CPU), ddp_fork, ddp_spawn, auto.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Fit a model on sections and save it (weights + JSON model card + run record in OUT/run)."""
    from stfusion.cli_xfuse import parse_covariates
    from stfusion.io import read_h5ad
    from stfusion.models.api import fit, save_model

    params = _parse_params(param)
    for key, value in (("preset", preset), ("epochs", epochs), ("seed", seed), ("resolution_um", resolution_um)):
        if value is not None:
            params[key] = value
    data = [read_h5ad(p) for p in sections]
    covariates = parse_covariates(covariate, len(data))
    from stfusion.train.distributed import is_global_zero, trainer_settings

    with trainer_settings(devices=devices, num_nodes=num_nodes, strategy=strategy):
        model = fit(method, data, genes=_genes_spec(genes), covariates=covariates, progress=show_progress(), **params)
    if not is_global_zero():  # DDP: every process ran this command; rank 0 writes the model
        return
    save_model(model, out)
    logging.getLogger("stfusion").info(f"wrote {out} ({method}, {len(model.genes_)} genes)")


@app.command("predict")
@recorded("predict")
def predict_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model folder from `stfusion fit`.")],
    section: Annotated[Optional[Path], typer.Argument(help="Section .h5ad whose spots to predict.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Predictions .h5ad.")] = Path("predictions.h5ad"),
    image: Annotated[Optional[Path], typer.Option(help="H&E-only slide to predict instead of a section.")] = None,
    microns_per_pixel: MppOpt = None,
    super_resolution: Annotated[
        Optional[int], typer.Option("--super-resolution", help="Sub-patches per spot area (4, 9, 25) for models with super-resolution.")
    ] = None,
    grid_um: Annotated[Optional[float], typer.Option("--grid-um", help="Predict a grid of cells this size (µm) over the tissue; also writes OME-TIFF + PNGs.")] = None,
    mask: Annotated[list[Path], typer.Option("--mask", help="Predict this annotated area (PNG/NPY at full resolution; repeatable).")] = [],  # noqa: B006
    genes: Annotated[Optional[str], typer.Option(help="Genes to predict: file or comma-separated names.")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Monte Carlo samples (models with uncertainty).")] = None,
    config: ConfigOpt = None,
    run_dir: RunDirOpt = None,
    images: Annotated[Optional[str], typer.Option(help="Folder or glob of H&E-only slides: --out is then a folder; finished slides are skipped.")] = None,
    workers: Annotated[int, typer.Option(help="Dask worker processes for --images (local cluster).")] = 1,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of an existing Dask scheduler for --images.")] = None,
) -> None:
    """Predict expression for a section's spots, tile an H&E-only slide (--image) or many (--images)."""
    from stfusion.cli_xfuse import predict_extended
    from stfusion.io import read_h5ad, write_h5ad
    from stfusion.models.api import load_model

    extended = grid_um is not None or mask or genes is not None or samples is not None
    if images is not None and (extended or super_resolution is not None or section is not None or image is not None):
        raise typer.BadParameter("--images predicts each slide with the model's defaults; it takes no section, "
                                 "--image, --grid-um, --mask, --genes, --samples or --super-resolution.")
    if super_resolution is not None and extended:
        raise typer.BadParameter("--super-resolution cannot be combined with --grid-um/--mask/--genes/--samples.")
    if images is not None:  # many slides, streamed, in parallel (stfusion.scale.batch)
        from stfusion.scale.batch import predict_slides

        table = predict_slides(model_dir, images, out, workers=workers, scheduler=scheduler, microns_per_pixel=microns_per_pixel)
        typer.echo(table.status.value_counts().to_string())
        if (table.status == "failed").any():
            raise typer.Exit(1)
        return
    model = load_model(model_dir, progress=show_progress())
    if section is not None and extended:
        pred = predict_extended(model, section, out, grid_um=grid_um, masks=mask, genes=genes, samples=samples)
    elif image is not None:
        from stfusion.cli_xfuse import predict_slide

        pred = predict_slide(model, image, out, microns_per_pixel, grid_um=grid_um, masks=mask, genes=genes, samples=samples)
    elif section is not None and super_resolution is not None:
        if not getattr(model, "has_super_resolution", False):
            raise typer.BadParameter(f"{type(model).__name__} has no super-resolution; drop --super-resolution.")
        pred = model.predict_super_resolution(read_h5ad(section), super_resolution)
    elif section is not None:
        pred = model.predict(read_h5ad(section))
    else:
        raise typer.BadParameter("Give a section .h5ad or --image SLIDE.")
    write_h5ad(pred, out)
    logging.getLogger("stfusion").info(f"wrote {out} ({pred.n_obs} x {pred.n_vars})")


# ----------------------------------------------------------------------------- evaluation
@app.command("evaluate")
def evaluate_cmd(
    pred: Annotated[Path, typer.Argument(help="Predicted expression .h5ad (from `stfusion predict`).")],
    truth: Annotated[Path, typer.Argument(help="Measured section .h5ad (raw counts).")],
    as_json: Annotated[bool, typer.Option("--json", help="Per-gene scores as JSON records.")] = False,
) -> None:
    """Score one prediction against measured counts (primary target: log1p counts per 10k)."""
    import anndata as ad

    from stfusion.benchmark.scoring import score_histology
    from stfusion.io import read_h5ad
    from stfusion.metrics import significant_genes, topk_mean

    p, t = ad.read_h5ad(pred), read_h5ad(truth)
    from stfusion.metrics.evaluate import aligned_names

    spots, genes = aligned_names(p, t)
    table = score_histology(p, t[spots].copy(), genes)
    if as_json:
        typer.echo(table.to_json(orient="records"))
        return
    r = table.loc[table.metric == "pearson", "value"].to_numpy()
    pv = table.loc[table.metric == "pvalue", "value"].to_numpy()
    typer.echo(
        f"{len(spots)} spots, {len(genes)} genes: mean r {np.nanmean(r):.3f}, median r {np.nanmedian(r):.3f}, "
        f"top-50 r {topk_mean(r, 50):.3f}, BH-significant genes {significant_genes(pv)}"
    )


@app.command("benchmark")
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


@app.command("methods")
def methods_cmd() -> None:
    """List every model and baseline with a one-line description."""
    from rich.table import Table

    from stfusion.models.registry import available, get

    table = Table()
    for col in ("name", "input", "uncertainty", "super-res."):
        table.add_column(col, no_wrap=True)
    table.add_column("description")
    for name in available():
        cls = get(name)
        flags = ["yes" if getattr(cls, f, False) else "no" for f in ("has_uncertainty", "has_super_resolution")]
        table.add_row(name, getattr(cls, "input_kind", "?"), *flags, getattr(cls, "description", ""))
    _console().print(table)


from stfusion.cli_report import report_cmd  # noqa: E402
from stfusion.cli_xfuse import de_cmd  # noqa: E402
from stfusion.cli_impute import impute_cmd  # noqa: E402

app.command("report")(report_cmd)
app.command("de")(de_cmd)
app.command("impute")(impute_cmd)

from stfusion.cli_plot import plot_app  # noqa: E402

app.add_typer(plot_app, name="plot")


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
