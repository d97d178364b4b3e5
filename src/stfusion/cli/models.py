"""``stfusion fit``, ``predict``, ``evaluate``, ``methods`` and ``demo``: models from the shell.

``fit`` and ``predict`` take ``--config run.toml`` and leave a run record (:mod:`stfusion.cli.config`).
Registered by :mod:`stfusion.cli`; torch, anndata and the models are imported only when a command runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from stfusion.cli.config import ConfigOpt, RunDirOpt, recorded
from stfusion.cli.options import MppOpt, console, genes_spec, parse_covariates, parse_params, show_progress
from stfusion.cli.xfuse import predict_extended, predict_slide

log = logging.getLogger("stfusion")


# ----------------------------------------------------------------------------- fit
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
    from stfusion.io import read_h5ad
    from stfusion.models.api import fit, save_model
    from stfusion.train.distributed import is_global_zero, trainer_settings

    params = parse_params(param)
    for key, value in (("preset", preset), ("epochs", epochs), ("seed", seed), ("resolution_um", resolution_um)):
        if value is not None:
            params[key] = value
    data = [read_h5ad(p) for p in sections]
    covariates = parse_covariates(covariate, len(data))
    with trainer_settings(devices=devices, num_nodes=num_nodes, strategy=strategy):
        model = fit(method, data, genes=genes_spec(genes), covariates=covariates, progress=show_progress(), **params)
    if not is_global_zero():  # DDP: every process ran this command; rank 0 writes the model
        return
    save_model(model, out)
    log.info(f"wrote {out} ({method}, {len(model.genes_)} genes)")


# ----------------------------------------------------------------------------- predict
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
    from stfusion.io import read_h5ad, write_h5ad
    from stfusion.models.api import load_model

    extended = grid_um is not None or mask or genes is not None or samples is not None
    _refuse_ignored_options(section, image, images, super_resolution, extended)
    if images is not None:  # many slides, streamed, in parallel (stfusion.scale.batch)
        _predict_slides(model_dir, images, out, workers=workers, scheduler=scheduler, microns_per_pixel=microns_per_pixel)
        return
    model = load_model(model_dir, progress=show_progress())
    if section is not None and extended:
        pred = predict_extended(model, section, out, grid_um=grid_um, masks=mask, genes=genes, samples=samples)
    elif image is not None:
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
    log.info(f"wrote {out} ({pred.n_obs} x {pred.n_vars})")


def _refuse_ignored_options(section: Optional[Path], image: Optional[Path], images: Optional[str],
                            super_resolution: Optional[int], extended: bool) -> None:
    """Option combinations ``stfusion predict`` would otherwise ignore are usage errors."""
    if images is not None and (extended or super_resolution is not None or section is not None or image is not None):
        raise typer.BadParameter("--images predicts each slide with the model's defaults; it takes no section, "
                                 "--image, --grid-um, --mask, --genes, --samples or --super-resolution.")
    if super_resolution is not None and extended:
        raise typer.BadParameter("--super-resolution cannot be combined with --grid-um/--mask/--genes/--samples.")


def _predict_slides(model_dir: Path, images: str, out: Path, *, workers: int, scheduler: Optional[str],
                    microns_per_pixel: Optional[float]) -> None:
    """``--images``: every slide, streamed, in parallel; prints the status counts, exit 1 if one failed."""
    from stfusion.scale.batch import predict_slides

    table = predict_slides(model_dir, images, out, workers=workers, scheduler=scheduler, microns_per_pixel=microns_per_pixel)
    typer.echo(table.status.value_counts().to_string())
    if (table.status == "failed").any():
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- evaluate / methods / demo
def evaluate_cmd(
    pred: Annotated[Path, typer.Argument(help="Predicted expression .h5ad (from `stfusion predict`).")],
    truth: Annotated[Path, typer.Argument(help="Measured section .h5ad (raw counts).")],
    as_json: Annotated[bool, typer.Option("--json", help="Per-gene scores as JSON records.")] = False,
) -> None:
    """Score one prediction against measured counts (primary target: log1p counts per 10k)."""
    import anndata as ad
    import numpy as np

    from stfusion.benchmark.scoring import score_histology
    from stfusion.io import read_h5ad
    from stfusion.metrics import significant_genes, topk_mean
    from stfusion.metrics.evaluate import aligned_names

    p, t = ad.read_h5ad(pred), read_h5ad(truth)
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
    console().print(table)
    console().print(protocols_table())


def protocols_table():
    """The benchmark protocols a config's ``protocol = "..."`` takes: stfusion's splits (scored on
    the strict target) and the papers' protocols (scored as published and strictly)."""
    from rich.table import Table

    from stfusion.benchmark.papers import PAPER_PROTOCOLS
    from stfusion.benchmark.protocols import PROTOCOLS

    table = Table(title="Benchmark protocols (`protocol = ...` in a benchmark config)")
    for col in ("protocol", "data", "scored on", "source"):
        table.add_column(col, no_wrap=col != "source")
    for name, split in PROTOCOLS.items():
        data = "pair" if name == "gene_kfold" else "sections"
        table.add_row(name, data, "strict target", (split.__doc__ or "").strip().splitlines()[0])
    for name, cls in PAPER_PROTOCOLS.items():
        table.add_row(name, cls.data_kind, "paper + strict", f"{cls.paper}; {cls.source}")
    return table


def demo_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("demo_output"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    xfuse: Annotated[bool, typer.Option("--xfuse/--no-xfuse", help="Also fit XFuse on it (1-2 min) and score the maps.")] = True,
) -> None:
    """Run the built-in example: a synthetic section, plotted, and XFuse's proof of principle on it."""
    from stfusion.demo import run_demo

    run_demo(out, seed=seed, xfuse=xfuse)
