"""``stfusion read visium|st|her2st|stutility`` and ``stfusion info``:
spatial data in, validated sections (``.h5ad``) out, and a look at them.

Registered by :mod:`stfusion.cli`; anndata and the readers are imported only when a command runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from stfusion.cli.options import MppOpt, console

read_app = typer.Typer(help="Read spatial data into a validated section (.h5ad).", no_args_is_help=True,
                      rich_markup_mode=None)
log = logging.getLogger("stfusion")

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output .h5ad file.")]


def _write_section(adata, out: Path) -> None:
    from stfusion.io import write_h5ad

    write_h5ad(adata, out)
    log.info(f"wrote {out} ({adata.n_obs} spots x {adata.n_vars} genes)")


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


# ----------------------------------------------------------------------------- info
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
    console().print(table)

