"""``stfusion fit``, ``predict``, ``evaluate``, ``methods`` and ``demo``: models from the shell.

``fit`` and ``predict`` take ``--config run.toml`` and leave a run record (:mod:`stfusion.cli.config`).
Registered by :mod:`stfusion.cli`; torch, anndata and the models are imported only when a command runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from stfusion.cli.config import ConfigOpt, RunDirOpt, recorded, run_fit
from stfusion.cli.options import GENES_FORMS, MppOpt, console, long_step, show_progress
from stfusion.cli.xfuse import predict_extended, predict_slide

log = logging.getLogger("stfusion")


# ----------------------------------------------------------------------------- fit
@recorded("fit")
def fit_cmd(
    method: Annotated[str, typer.Argument(help="Method name (see `stfusion methods`).")],
    sections: Annotated[list[Path], typer.Argument(help="Training sections (.h5ad from `stfusion read`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    genes: Annotated[Optional[str], typer.Option(help=f"Genes to model: {GENES_FORMS}, or N (top N by mean).")] = None,
    missing_genes: Annotated[
        str, typer.Option("--missing-genes", help="raise: stop when a --genes name is not in every section; drop: leave it out.")
    ] = "raise",
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
    calibration: Annotated[Optional[str], typer.Option(
        help="Hold out data to calibrate prediction intervals (predict --coverage): spots, sections, patient or auto.")] = None,
    calibration_fraction: Annotated[float, typer.Option(
        "--calibration-fraction", help="Share of each section's spots held out with --calibration spots.")] = 0.2,
    config: ConfigOpt = None,
) -> None:
    """Fit a model on sections and save it (weights + JSON model card + run record in OUT/run)."""
    run_fit(method=method, sections=sections, out=out, genes=genes, preset=preset, epochs=epochs, seed=seed,
            resolution_um=resolution_um, missing_genes=missing_genes, param=param, covariate=covariate,
            devices=devices, num_nodes=num_nodes, strategy=strategy, calibration=calibration,
            calibration_fraction=calibration_fraction)


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
    genes: Annotated[Optional[str], typer.Option(help=f"Genes to predict: {GENES_FORMS} (default: all the model's).")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Monte Carlo samples (models with uncertainty).")] = None,
    coverage: Annotated[Optional[float], typer.Option(
        help="Add prediction intervals (layers lower/upper) of this nominal coverage, e.g. 0.9.")] = None,
    interval: Annotated[str, typer.Option(
        help="Intervals from: auto, conformal (fit --calibration), model (the model's own SD).")] = "auto",
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
    if coverage is not None and (images is not None or mask or super_resolution is not None):
        raise typer.BadParameter("--coverage gives intervals for a section's spots, an --image slide or a --grid-um "
                                 "grid; drop --images, --mask and --super-resolution with it.")
    if images is not None:  # many slides, streamed, in parallel (stfusion.scale.batch)
        _predict_slides(model_dir, images, out, workers=workers, scheduler=scheduler, microns_per_pixel=microns_per_pixel)
        return
    if section is None and image is None:
        raise typer.BadParameter("Give a section .h5ad or --image SLIDE.")
    _refuse_options_the_model_lacks(model_dir, image, super_resolution, grid_um=grid_um, masks=mask, genes=genes, samples=samples)
    model = load_model(model_dir, progress=show_progress())
    what = f"predicting a {grid_um:g} µm grid" if grid_um is not None else "predicting"
    with long_step(f"{what} ({Path(model_dir).name})"):
        if section is not None and extended:
            pred = predict_extended(model, section, out, grid_um=grid_um, masks=mask, genes=genes, samples=samples)
        elif image is not None:
            pred = predict_slide(model, image, out, microns_per_pixel, grid_um=grid_um, masks=mask, genes=genes, samples=samples)
        elif super_resolution is not None:
            pred = model.predict_super_resolution(read_h5ad(section), super_resolution)
        elif coverage is not None:
            pred = model.predict(read_h5ad(section), coverage=coverage, interval=interval)
        else:
            pred = model.predict(read_h5ad(section))
        if coverage is not None and (image is not None or extended):
            pred = model.add_intervals(pred, coverage, interval)
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


def _refuse_options_the_model_lacks(model_dir: Path, image: Optional[Path], super_resolution: Optional[int],
                                    **options: Any) -> None:
    """From the model card, before the model is loaded: options its method cannot take are usage errors."""
    from stfusion.models.api import read_card
    from stfusion.models.registry import get

    cls = get(str(read_card(model_dir).get("method")))
    given = [f"--{k.replace('_', '-')}" for k, v in options.items() if v not in (None, [], ())]
    if given and not hasattr(cls, "predict_grid"):
        raise typer.BadParameter(f"{cls.__name__} models do not take {', '.join(given)} (XFuse does); drop it.")
    if super_resolution is not None and not getattr(cls, "has_super_resolution", False):
        raise typer.BadParameter(f"{cls.__name__} has no super-resolution; drop --super-resolution.")
    if image is not None and not hasattr(cls, "predict_image"):
        raise typer.BadParameter(f"{cls.__name__} cannot predict from an image alone; give a section .h5ad.")


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

    p = ad.read_h5ad(pred)
    if "imputation" in p.uns.get("stfusion", {}):
        _evaluate_imputation(p, truth, as_json)
        return
    t = read_h5ad(truth)
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


def _evaluate_imputation(pred: Any, truth: Path, as_json: bool) -> None:
    """``stfusion evaluate IMPUTED.h5ad SPATIAL.h5ad``: the imputed genes the spatial file measured,
    scored per gene on log1p counts per 10k (Li et al. 2022 metrics: PCC, SSIM, RMSE, JS)."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from stfusion.benchmark.scoring import score_imputation
    from stfusion.cli.impute import read_spatial_h5ad
    from stfusion.errors import StfusionError

    measured, counts = read_spatial_h5ad(truth)
    t = ad.AnnData(X=counts, obs=pd.DataFrame(index=measured.obs_names), var=pd.DataFrame(index=measured.var_names))
    cells = [c for c in pred.obs_names if c in set(t.obs_names)]
    genes = [g for g in pred.var_names[pred.var["imputed"].to_numpy(bool)] if g in set(t.var_names)]
    if not genes or not cells:
        raise StfusionError(f"{truth} measures none of the imputed genes in the same cells ({len(genes)} genes, "
                            f"{len(cells)} cells shared). Impute measured genes as a hold-out check: "
                            "stfusion impute ... --genes GENE1,GENE2.")  # fmt: skip
    table = score_imputation(pred, t[cells].copy(), genes)
    if as_json:
        typer.echo(table.to_json(orient="records"))
        return
    r = table.loc[table.metric == "pearson", "value"].to_numpy()
    typer.echo(f"{len(cells)} cells, {len(genes)} imputed genes scored against {truth.name}: "
               f"median PCC {np.nanmedian(r):.3f}, mean PCC {np.nanmean(r):.3f}")


def methods_cmd() -> None:
    """List every model and baseline with a one-line description, and the benchmark protocols."""
    from rich.table import Table

    from stfusion.cli.catalog import method_rows

    table = Table()
    for col in ("name", "input", "uncertainty", "super-res."):
        table.add_column(col, no_wrap=True)
    table.add_column("description", overflow="fold")
    for name, kind, uncertainty, superres, description in method_rows():
        table.add_row(name, kind, "yes" if uncertainty else "no", "yes" if superres else "no", description)
    console().print(table)
    console().print(protocols_table())


def protocols_table():
    """The benchmark protocols a config's ``protocol = "..."`` takes: stfusion's splits (scored on
    the strict target) and the papers' protocols (scored as published and strictly)."""
    from rich.table import Table

    from stfusion.cli.catalog import PROTOCOLS

    table = Table(title="Benchmark protocols (`protocol = ...` in a benchmark config)")
    for col in ("protocol", "data", "scored on"):
        table.add_column(col, no_wrap=True)
    table.add_column("source", overflow="fold")
    for name, row in PROTOCOLS.items():
        table.add_row(name, *row)
    return table


def demo_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("demo_output"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    xfuse: Annotated[bool, typer.Option("--xfuse/--no-xfuse", help="Also fit XFuse on it (1-2 min) and score the maps.")] = True,
) -> None:
    """Run the built-in example: a synthetic section, plotted, and XFuse's proof of principle on it."""
    from stfusion.demo import run_demo

    run_demo(out, seed=seed, xfuse=xfuse)
