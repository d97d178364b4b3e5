"""Command-line pieces for models with areas, grids and uncertainty (XFuse).

``stfusion predict ... --grid-um / --mask / --genes / --samples`` (used by
:mod:`stfusion.cli.models`) and ``stfusion de``; ``--covariate`` of ``stfusion fit`` is parsed by
:func:`stfusion.cli.options.parse_covariates`. Registered from :mod:`stfusion.cli`; numpy and
torch are imported only when a command runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from stfusion.cli.options import GENES_FORMS, gene_names, long_step
from stfusion.errors import StfusionError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("stfusion")
PREVIEWS = 12  # PNG previews of a grid: the genes whose maps vary most


# ----------------------------------------------------------------------------- parsing
def read_mask(path: Path) -> np.ndarray:
    """A boolean full-resolution mask from a PNG/TIFF/JPEG (non-zero = inside) or .npy file."""
    import numpy as np

    if not path.is_file():
        raise StfusionError(f"Mask file not found: {path}.")
    if path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
    else:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        arr = np.asarray(Image.open(path).convert("L"))
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise StfusionError(f"Mask {path} must be a 2-D image or array, got shape {arr.shape}.")
    if not (arr > 0).any():
        raise StfusionError(f"Mask {path} is empty (no non-zero pixel).")
    return arr > 0


# ----------------------------------------------------------------------------- fit / predict
def predict_extended(model: Any, section_path: Path, out: Path, *, grid_um: Optional[float], masks: list[Path],
                     genes: Optional[str], samples: Optional[int]):
    """Predict with the area/grid/gene/sample options; a grid also writes OME-TIFF stacks, PNG
    previews and the CMYK metagene summary (``<stem>.summary.png``) next to ``out``."""
    from stfusion.io import read_h5ad

    if not hasattr(model, "predict_grid"):
        raise typer.BadParameter(f"{type(model).__name__} does not take --grid-um/--mask/--genes/--samples.")
    if grid_um is not None and masks:
        raise typer.BadParameter("Give either --grid-um or --mask, not both.")
    section = read_h5ad(section_path)
    model.check_section(section)  # the wrong data fails here, before any prediction
    kw = {"genes": gene_names(genes), "samples": samples}
    if grid_um is not None:
        pred = model.predict_grid(section, grid_um=grid_um, **kw)
        _write_grid_files(model, pred, out, section)
        return pred
    if masks:
        return model.predict_masks(section, {p.stem: read_mask(p) for p in masks}, **kw)
    return model.predict(section, **kw)


def predict_slide(model: Any, image: Path, out: Path, microns_per_pixel: Optional[float], *, grid_um: Optional[float],
                  masks: list[Path], genes: Optional[str], samples: Optional[int]):
    """``stfusion predict MODEL --image SLIDE``: the model's image-only prediction, with
    ``--grid-um/--genes/--samples`` where the model takes them (XFuse; its grid also writes
    the stacks, previews and summary as for a section); refused, never ignored, elsewhere."""
    import inspect

    if microns_per_pixel is None:
        raise typer.BadParameter("--image needs --microns-per-pixel (the slide's scale).")
    if not hasattr(model, "predict_image"):
        raise typer.BadParameter(f"{type(model).__name__} cannot predict from an image alone.")
    if masks:
        raise typer.BadParameter("--mask needs a section .h5ad (masks are drawn on its image); drop --image.")
    given = {"grid_um": grid_um, "genes": gene_names(genes), "samples": samples}
    given = {k: v for k, v in given.items() if v is not None}
    accepted = inspect.signature(model.predict_image).parameters
    refused = [f"--{k.replace('_', '-')}" for k in given if k not in accepted]
    if refused:
        raise typer.BadParameter(f"{type(model).__name__} predicts a slide without {', '.join(refused)}; drop it.")
    # a grid also gets the summary map: read the slide once, for both (XFuse.predict_image takes it read)
    slide = model.image_data(image, microns_per_pixel) if grid_um is not None and hasattr(model, "image_data") else None
    pred = model.predict_image(image if slide is None else slide, microns_per_pixel, **given)
    if grid_um is not None:
        _write_grid_files(model, pred, out, slide)
    return pred


def _write_grid_files(model: Any, pred: Any, out: Path, section: Any) -> None:
    """OME-TIFF stacks, PNG previews (:func:`stfusion.pl.grid.grid_preview`) of the most variable
    genes and the model's metagene summary map when it has one (:func:`stfusion.pl.grid.summary_map`),
    next to ``out`` (``<stem>.ome.tif``, ``<stem>_png/``, ``<stem>.summary.png``), all on µm axes
    from the image's corner."""
    from stfusion import _constants as K
    from stfusion.cli.plot import save_figure
    from stfusion.models.xfuse.outputs import _safe, grid_images, preview_genes, write_image_stack
    from stfusion.pl.grid import grid_preview, summary_map

    stem = out.name.split(".")[0]
    written = list(write_image_stack(pred, out.with_name(f"{stem}.ome.tif"), previews=0).values())
    um, genes = float(pred.uns[K.STFUSION][K.GRID_UM]), preview_genes(pred, PREVIEWS)
    origin = (int(pred.obs[K.GRID_ROW].min()), int(pred.obs[K.GRID_COL].min()))
    means = grid_images(pred)
    sds = grid_images(pred, K.LAYER_PRED_SD) if K.LAYER_PRED_SD in pred.layers else None
    png_dir = out.with_name(f"{stem}_png")
    png_dir.mkdir(parents=True, exist_ok=True)
    for g in genes:
        i = pred.var_names.get_loc(g)
        fig = grid_preview(means[i], None if sds is None else sds[i], g, um, origin)
        save_figure(fig, png_dir / f"{_safe(g)}.png", 120, announce=False)
    written.append(png_dir)
    if section is not None and hasattr(model, "summarized_map"):
        res = float(model.hyperparams["resolution_um"])
        fig = summary_map(model.summarized_map(section), res)
        written.append(save_figure(fig, out.with_name(f"{stem}.summary.png"), 120, announce=False))
    log.info("wrote %s", ", ".join(str(p) for p in written))


# ----------------------------------------------------------------------------- de
def de_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model folder from `stfusion fit` (a model with uncertainty).")],
    section: Annotated[Path, typer.Argument(help="Section .h5ad (its image is used).")],
    area_a: Annotated[Path, typer.Option("--area-a", help="Mask of area A (PNG/NPY at full resolution).")],
    area_b: Annotated[Path, typer.Option("--area-b", help="Mask of area B (PNG/NPY at full resolution).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output CSV.")] = Path("de.csv"),
    samples: Annotated[Optional[int], typer.Option(help="Monte Carlo samples.")] = None,
    genes: Annotated[Optional[str], typer.Option(help=f"Genes to compare: {GENES_FORMS} (default: all).")] = None,
) -> None:
    """Differential expression between two areas: posterior log2 fold changes, ranked by |mean|/SD."""
    from stfusion.io import read_h5ad
    from stfusion.io.atomic import atomic_path
    from stfusion.models.api import load_model

    model = load_model(model_dir)
    if not hasattr(model, "differential_expression"):
        raise typer.BadParameter(f"{type(model).__name__} has no posterior to compare areas with.")
    data = read_h5ad(section)
    model.check_section(data)
    with long_step("differential expression between the areas"):
        table = model.differential_expression(data, read_mask(area_a), read_mask(area_b),
                                              samples=samples, genes=gene_names(genes))
    with atomic_path(out) as tmp:
        table.to_csv(tmp)
    top = table.head(5)
    log.info("wrote %s (%d genes); top: %s", out, len(table),
             ", ".join(f"{g} {r.log2fc_mean:+.2f}" for g, r in top.iterrows()))
