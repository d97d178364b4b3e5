"""XFuse outputs: differential expression, summarized CMYK maps, image stacks and PNG previews."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from stfusion import _constants as K
from stfusion.errors import StfusionError


# --------------------------------------------------------------------------- DE
def de_table(nu: np.ndarray, genes: list[str], idx: np.ndarray) -> pd.DataFrame:
    """Differential expression from posterior samples ``nu`` (samples x 2 areas x modelled genes).

    Each area's expected counts are normalised to proportions over all modelled genes (so
    area size and depth cancel); per sample ``log2 FC = log2(prop_a / prop_b)``. Columns:
    posterior mean and SD of the log2 FC, ``p_up`` = P(log2 FC > 0), ``credibility`` =
    max(p_up, 1 - p_up), ``inv_cv`` = |mean| / SD, the mean proportions (per 10k) in each
    area. Rows (the requested genes) are ranked by ``inv_cv``, highest first.
    """
    nu = np.asarray(nu, dtype=np.float64)
    if nu.ndim != 3 or nu.shape[1] != 2:
        raise StfusionError(f"de_table needs samples x 2 areas x genes, got shape {nu.shape}.")
    totals = nu.sum(axis=2, keepdims=True)
    if (totals <= 0).any():
        raise StfusionError("An area has no predicted expression (empty mask or outside the tissue?); check the masks.")
    prop = nu / totals
    lfc = np.log2(np.maximum(prop[:, 0, idx], 1e-300)) - np.log2(np.maximum(prop[:, 1, idx], 1e-300))
    mean, sd = lfc.mean(axis=0), lfc.std(axis=0, ddof=1) if lfc.shape[0] > 1 else np.zeros(lfc.shape[1])
    p_up = (lfc > 0).mean(axis=0)
    inv_cv = np.abs(mean) / np.maximum(sd, 1e-12)
    table = pd.DataFrame({
        "log2fc_mean": mean, "log2fc_sd": sd, "p_up": p_up, "credibility": np.maximum(p_up, 1 - p_up),
        "inv_cv": inv_cv, "cp10k_a": prop[:, 0, idx].mean(axis=0) * 1e4, "cp10k_b": prop[:, 1, idx].mean(axis=0) * 1e4,
    }, index=pd.Index(genes, name="gene"))
    return table.sort_values("inv_cv", ascending=False)


# --------------------------------------------------------------------------- summary map
def _rescale(v: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(v, [1, 99]) if v.size else (0.0, 1.0)
    return np.clip((v - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(v)


def cmyk_summary(s_map: np.ndarray, a_map: np.ndarray, tissue: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """RGB uint8 image (tissue's size): C, M, Y = PC1-3 of the activities, K = -s, over tissue.

    Each channel is rescaled to [0, 1] between its 1st and 99th percentile over the tissue
    pixels; RGB = 255 (1 - CMY)(1 - K). Non-tissue pixels are white.
    """
    i0, i1, j0, j1 = box
    mask = tissue[i0:i1, j0:j1]
    out = np.full((*tissue.shape, 3), 255, dtype=np.uint8)
    if not mask.any():
        return out
    acts = a_map[:, mask].T.astype(np.float64)  # pixels x M
    pcs = np.zeros((acts.shape[0], 3))
    if acts.shape[1] > 1:
        centred = acts - acts.mean(axis=0)
        _, _, vt = np.linalg.svd(centred[:: max(1, len(centred) // 20000)], full_matrices=False)
        k = min(3, vt.shape[0])
        pcs[:, :k] = centred @ vt[:k].T
    cmy = np.stack([_rescale(pcs[:, c]) if np.ptp(pcs[:, c]) > 0 else np.zeros(len(pcs)) for c in range(3)], axis=1)
    k_channel = _rescale(-s_map[mask].astype(np.float64))
    rgb = 255.0 * (1 - cmy) * (1 - k_channel[:, None])
    region = out[i0:i1, j0:j1]
    region[mask] = np.round(rgb).astype(np.uint8)
    return out


# --------------------------------------------------------------------------- image stacks
def grid_images(pred: ad.AnnData, layer: str | None = None) -> np.ndarray:
    """genes x rows x cols float32 image of a grid prediction (NaN where no cell)."""
    meta = pred.uns.get(K.STFUSION, {})
    if K.GRID_SHAPE not in meta or K.GRID_ROW not in pred.obs:
        raise StfusionError("Not a grid prediction (no grid_shape / grid_row); make one with XFuse.predict_grid.")
    rows, cols = (int(v) for v in meta[K.GRID_SHAPE])
    r, c = pred.obs[K.GRID_ROW].to_numpy(), pred.obs[K.GRID_COL].to_numpy()
    r0, r1, c0, c1 = r.min(), r.max() + 1, c.min(), c.max() + 1
    values = np.asarray(pred.X if layer is None else pred.layers[layer], dtype=np.float32)
    img = np.full((pred.n_vars, r1 - r0, c1 - c0), np.nan, dtype=np.float32)
    img[:, r - r0, c - c0] = values.T
    return img


def write_image_stack(pred: ad.AnnData, path: str | Path, *, previews: int | None = 12) -> dict[str, Path]:
    """Write a grid prediction as OME-TIFF stacks (genes x H x W float32, µm per pixel) and PNG previews.

    ``path`` (e.g. ``pred.ome.tif``) gets the posterior means (X); ``<stem>.sd.ome.tif`` the
    SDs (``layers["sd"]``). Cells off tissue are NaN. PNG previews (mean and SD side by side,
    each with a colour bar) go to ``<stem>_png/<gene>.png``: every gene when there are at most
    ``previews`` (None: all), else the ``previews`` genes whose mean maps vary most across the
    cells (coefficient of variation of the predicted counts; the most highly expressed genes,
    often mitochondrial, tend to be the flattest). The stacks cover the bounding box of the
    predicted cells; its offset in grid cells is in the OME description (``grid_origin``).
    """
    import tifffile

    path = Path(path)
    stem = path.name.split(".")[0]
    um = float(pred.uns[K.STFUSION][K.GRID_UM])
    rows, cols = pred.obs[K.GRID_ROW].to_numpy(), pred.obs[K.GRID_COL].to_numpy()
    meta = {"axes": "CYX", "Channel": {"Name": list(pred.var_names)}, "PhysicalSizeX": um, "PhysicalSizeY": um,
            "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
    written = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    for key, layer, target in (("mean", None, path), ("sd", K.LAYER_PRED_SD, path.with_name(f"{stem}.sd.ome.tif"))):
        if layer is not None and layer not in pred.layers:
            continue
        tifffile.imwrite(target, grid_images(pred, layer), photometric="minisblack", metadata=meta,
                         description=None, software=f"stfusion grid_origin={int(rows.min())},{int(cols.min())}")
        written[key] = target
    png_dir = path.with_name(f"{stem}_png")
    genes = preview_genes(pred, previews)
    if genes:
        png_dir.mkdir(parents=True, exist_ok=True)
        means = grid_images(pred)
        sds = grid_images(pred, K.LAYER_PRED_SD) if K.LAYER_PRED_SD in pred.layers else None
        for g in genes:
            i = pred.var_names.get_loc(g)
            save_preview(png_dir / f"{_safe(g)}.png", means[i], None if sds is None else sds[i], g, um)
        written["png"] = png_dir
    return written


def preview_genes(pred: ad.AnnData, n: int | None) -> list[str]:
    """All genes if there are at most ``n`` (or ``n`` is None), else the ``n`` with the highest
    coefficient of variation of their predicted counts across cells (``layers["mean_counts"]``,
    else ``X``), in that order."""
    names = list(pred.var_names)
    if n is None or len(names) <= int(n):
        return names
    values = np.asarray(pred.layers[K.LAYER_MEAN_COUNTS] if K.LAYER_MEAN_COUNTS in pred.layers else pred.X, np.float64)
    mean = values.mean(axis=0)
    cv = np.where(mean > 0, values.std(axis=0) / np.where(mean > 0, mean, 1.0), 0.0)
    return [names[i] for i in np.argsort(-cv, kind="stable")[: int(n)]]


def save_summary(path: Path, rgb: np.ndarray, um: float) -> Path:
    """PNG of the CMYK summary map (:func:`cmyk_summary`, pixels of ``um`` µm) cropped to the
    tissue, with µm axes (from the image's corner)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows, cols = np.nonzero((rgb != 255).any(axis=2))
    if not len(rows):
        rows, cols = np.array([0, rgb.shape[0] - 1]), np.array([0, rgb.shape[1] - 1])
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crop = rgb[r0:r1, c0:c1]
    fig, ax = plt.subplots(figsize=(5, 5 * crop.shape[0] / max(crop.shape[1], 1) + 0.6))
    ax.imshow(crop, extent=(c0 * um, c1 * um, r1 * um, r0 * um), interpolation="nearest")
    ax.set_title("Metagene summary: C, M, Y = PC1-3 of activities, K = -scale", fontsize=9)
    ax.set_xlabel("µm")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))


def save_preview(path: Path, mean: np.ndarray, sd: np.ndarray | None, title: str, um: float) -> Path:
    """PNG of a mean (and SD) map with colour bars and a µm scale on the axes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from stfusion.pl.style import add_colorbar, colour_limits

    panels = [("mean", mean, "viridis")] + ([("SD", sd, "magma")] if sd is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    extent = (0, mean.shape[1] * um, mean.shape[0] * um, 0)
    for ax, (label, img, cmap) in zip(axes[0], panels, strict=True):
        vmin, vmax = colour_limits(img)  # a nearly flat map shows one colour, not its float noise
        im = ax.imshow(img, cmap=cmap, extent=extent, interpolation="nearest", vmin=vmin, vmax=vmax)
        ax.set_title(f"{title}: {label}")
        ax.set_xlabel("µm")
        add_colorbar(fig, im, ax)  # plain ticks: no '1e-7+6.688375' offset
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
