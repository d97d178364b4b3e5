"""``stfusion plot``: one figure from the shell, saved with ``--out FILE.png|pdf|svg``.

Each subcommand draws with a :mod:`stfusion.pl` function (the same figure the Python API
returns) and writes it atomically. Registered by :mod:`stfusion.cli`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from stfusion.errors import StfusionError

plot_app = typer.Typer(help="Draw one figure and save it (--out FILE.png|pdf|svg).", no_args_is_help=True,
                      rich_markup_mode=None)
log = logging.getLogger("stfusion")

FORMATS = (".png", ".pdf", ".svg")
OutFig = Annotated[Path, typer.Option("--out", "-o", help="Figure file (.png, .pdf or .svg).")]
GeneOpt = Annotated[str, typer.Option("--gene", "-g", help="Gene to draw.")]
DpiOpt = Annotated[int, typer.Option(help="Resolution of raster output (dots per inch).")]


def save_figure(fig: Any, out: Path, dpi: int = 150, announce: bool = True) -> Path:
    """Write ``fig`` atomically to ``out`` (format from the suffix) and close it; log it unless not ``announce``."""
    import matplotlib.pyplot as plt

    from stfusion.io.atomic import atomic_path

    if out.suffix.lower() not in FORMATS:
        raise StfusionError(f"--out {out}: use a .png, .pdf or .svg file name.")
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    if announce:
        log.info(f"wrote {out}")
    return out


def _read(path: Path):
    """A section or a prediction .h5ad (predictions need not hold raw counts)."""
    import anndata as ad

    from stfusion.errors import InputFileError

    if not path.is_file():
        raise InputFileError(f"{path} not found. Give a section or prediction .h5ad.")
    return ad.read_h5ad(path)


@plot_app.command("spots")
def spots_cmd(
    section: Annotated[Path, typer.Argument(help="Section .h5ad (from `stfusion read`).")],
    out: OutFig,
    gene: Annotated[Optional[str], typer.Option("--gene", "-g", help="Colour by this gene (default: total counts).")] = None,
    dpi: DpiOpt = 150,
) -> None:
    """The H&E with spots at their true diameter, coloured by total counts or a gene."""
    from stfusion.pl import spot_overlay

    save_figure(spot_overlay(_read(section), gene=gene), out, dpi)


def show_cmd(
    section: Annotated[Path, typer.Argument(help="Section .h5ad (from `stfusion read`).")],
    out: OutFig,
    gene: Annotated[Optional[str], typer.Option("--gene", "-g", help="Colour by this gene (default: total counts).")] = None,
    dpi: DpiOpt = 150,
) -> None:
    """Deprecated alias of `stfusion plot spots` (hidden; kept so old scripts still run)."""
    log.warning("`stfusion show` is deprecated and will be removed: use `stfusion plot spots` (same options).")
    spots_cmd(section=section, out=out, gene=gene, dpi=dpi)


@plot_app.command("map")
def map_cmd(
    pred: Annotated[Path, typer.Argument(help="Prediction .h5ad (`stfusion predict`), or a section.")],
    gene: GeneOpt,
    out: OutFig,
    layer: Annotated[Optional[str], typer.Option(help="Draw this layer (e.g. sd) instead of X.")] = None,
    no_image: Annotated[bool, typer.Option("--no-image", help="Do not draw the H&E underneath.")] = False,
    dpi: DpiOpt = 150,
) -> None:
    """One gene over the H&E (spots or a super-resolved grid) with colour bar and scale bar."""
    from stfusion.pl import expression_map

    save_figure(expression_map(_read(pred), gene, layer=layer, show_image=not no_image), out, dpi)


@plot_app.command("panels")
def panels_cmd(
    pred: Annotated[Path, typer.Argument(help="Prediction .h5ad (`stfusion predict`).")],
    gene: GeneOpt,
    out: OutFig,
    truth: Annotated[Optional[Path], typer.Option(help="Measured section .h5ad: adds the measured panel.")] = None,
    dpi: DpiOpt = 150,
) -> None:
    """Side by side: measured (with --truth), predicted, and each uncertainty layer of one gene."""
    from stfusion.io import read_h5ad
    from stfusion.pl import comparison_panels

    measured = read_h5ad(truth) if truth is not None else None
    save_figure(comparison_panels(_read(pred), gene, truth=measured), out, dpi)


@plot_app.command("umap")
def umap_cmd(
    pred: Annotated[Path, typer.Argument(help="Prediction .h5ad holding spot embeddings (ST-Net writes obsm['X_stnet']).")],
    out: OutFig,
    gene: Annotated[Optional[str], typer.Option("--gene", "-g", help="Colour by a predicted gene or an obs column.")] = None,
    key: Annotated[str, typer.Option(help="obsm key of the embeddings.")] = "X_stnet",
    seed: Annotated[int, typer.Option(help="UMAP random state.")] = 0,
    dpi: DpiOpt = 150,
    color: Annotated[Optional[str], typer.Option("--color", hidden=True, help="Old name of --gene.")] = None,
) -> None:
    """UMAP (umap-learn) of the spot embeddings of a prediction."""
    from stfusion.cli.options import long_step
    from stfusion.pl import embedding_umap

    if gene is not None and color is not None and gene != color:
        raise typer.BadParameter("--color is the old name of --gene; give one of them.")
    data = _read(pred)
    with long_step(f"UMAP of {data.n_obs} spots"):
        fig = embedding_umap(data, gene or color, key=key, seed=seed)
    save_figure(fig, out, dpi)


@plot_app.command("attention")
def attention_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Saved HisToGene model folder.")],
    section: Annotated[Path, typer.Argument(help="Section .h5ad.")],
    spot: Annotated[str, typer.Option(help="Query spot: its name, or its index.")],
    out: OutFig,
    head: Annotated[Optional[int], typer.Option(help="One attention head (default: the mean over heads).")] = None,
    dpi: DpiOpt = 150,
) -> None:
    """Attention of one spot to every spot, per transformer layer (HisToGene)."""
    from stfusion.io import read_h5ad
    from stfusion.models.api import load_model
    from stfusion.pl import attention_map

    model = load_model(model_dir)
    if not hasattr(model, "attention"):
        raise StfusionError(f"{type(model).__name__} has no attention maps; use a HisToGene model.")
    data = read_h5ad(section)
    query: int | str = spot if spot in data.obs_names else int(spot) if spot.isdigit() else spot
    if isinstance(query, str) and query not in data.obs_names:
        raise StfusionError(f"Spot {spot!r} is neither a spot name of {section} nor an index.")
    save_figure(attention_map(data, model.attention(data, query), query, head=head), out, dpi)


@plot_app.command("boxplot")
def boxplot_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Benchmark run folder (`stfusion benchmark --out`).")],
    out: OutFig,
    metric: Annotated[str, typer.Option(help="Per-gene metric to draw.")] = "pearson",
    dataset: Annotated[Optional[str], typer.Option(help="Only this dataset.")] = None,
    dpi: DpiOpt = 150,
) -> None:
    """Boxplot of a per-gene metric per method of a benchmark run."""
    from stfusion.benchmark.report import read_cell_table
    from stfusion.errors import InputFileError
    from stfusion.pl import gene_boxplot

    table = run_dir / "per_gene.csv"
    if not table.is_file():
        raise InputFileError(f"{run_dir} has no per_gene.csv; give a finished `stfusion benchmark --out` folder.")
    save_figure(gene_boxplot(read_cell_table(table), metric=metric, dataset=dataset), out, dpi)
