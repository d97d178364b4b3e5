"""The report of one prediction (``stfusion predict``), optionally scored against the measured section.

With the measured section, genes are scored as ``stfusion evaluate`` does (Pearson on
log1p(counts / spot total × 1e4)) and the maps show the best and the median gene; without
it, the genes whose prediction varies most over the tissue. A super-resolved grid
prediction is scored after averaging the grid cells that fall on each measured spot.
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import sparse
from scipy.spatial import cKDTree

from stfusion import _constants as K
from stfusion.errors import StfusionError
from stfusion.report.html import Page

N_TOP_TABLE = 10


# ----------------------------------------------------------------------------- scoring
def superres_at_spots(sr: ad.AnnData, truth: ad.AnnData) -> ad.AnnData:
    """A super-resolved prediction averaged over each measured spot, as a spot prediction.

    Grid cells whose centre lies within the spot radius (at least half a cell side) are
    averaged; a spot no centre falls on takes its nearest cell.
    """
    from stfusion.models.base import prediction_adata
    from stfusion.pl.maps import marker_size_px

    cell_xy = np.asarray(sr.obsm[K.SPATIAL], dtype=float)
    spot_xy = np.asarray(truth.obsm[K.SPATIAL], dtype=float)
    _, diameter = marker_size_px(truth)
    _, side = marker_size_px(sr)
    x = sr.X.toarray() if sparse.issparse(sr.X) else np.asarray(sr.X, dtype=float)
    tree = cKDTree(cell_xy)
    _, nearest = tree.query(spot_xy)
    values = np.empty((len(spot_xy), sr.n_vars))
    for i, members in enumerate(tree.query_ball_point(spot_xy, r=max(diameter, side) / 2)):
        values[i] = np.nanmean(x[members], axis=0) if members else x[nearest[i]]
    meta = sr.uns.get(K.STFUSION, {})
    return prediction_adata(truth, values, list(sr.var_names), method=str(meta.get("method", "prediction")))


def score_prediction(pred: ad.AnnData, truth: ad.AnnData) -> pd.DataFrame:
    """Per-gene scores (columns pearson, spearman, rmse, auroc, pearson_smoothed, pvalue), best r first."""
    from stfusion.benchmark.scoring import score_histology
    from stfusion.metrics.evaluate import aligned_names
    from stfusion.pl.maps import superres_info

    spot_pred = superres_at_spots(pred, truth) if superres_info(pred) else pred
    spots, genes = aligned_names(spot_pred, truth)
    tidy = score_histology(spot_pred, truth[spots].copy(), list(genes))
    table = tidy.pivot(index="gene", columns="metric", values="value")
    table.attrs["n_spots"] = len(spots)
    return table.sort_values("pearson", ascending=False)


def choose_genes(pred: ad.AnnData, scores: pd.DataFrame | None, extra: Sequence[str] = ()) -> list[tuple[str, str]]:
    """``(gene, why)`` to draw: best and median gene by Pearson r, or the two most variable
    predicted genes without scores; then any genes asked for."""
    chosen: list[tuple[str, str]] = []
    if scores is not None and len(scores):
        r = scores["pearson"].dropna()
        best = str(r.idxmax())
        median = str((r - r.median()).abs().idxmin())
        chosen.append((best, f"best gene, r = {r[best]:.3f}"))
        if median != best:
            chosen.append((median, f"median gene, r = {r[median]:.3f}"))
    else:
        x = pred.X.toarray() if sparse.issparse(pred.X) else np.asarray(pred.X, dtype=float)
        var = pd.Series(np.nanvar(x, axis=0), index=pred.var_names).sort_values(ascending=False)
        chosen += [(str(g), f"most variable prediction #{i + 1}") for i, g in enumerate(var.index[:2])]
    for gene in extra:
        if gene not in pred.var_names:
            raise StfusionError(f"--gene {gene!r} is not predicted; predicted genes include {list(pred.var_names[:5])}.")
        if gene not in [g for g, _ in chosen]:
            why = f"requested, r = {scores.loc[gene, 'pearson']:.3f}" if scores is not None and gene in scores.index else "requested"
            chosen.append((gene, why))
    return chosen


# ----------------------------------------------------------------------------- page
def _describe(pred: ad.AnnData, name: str) -> pd.DataFrame:
    from stfusion.pl.maps import microns_per_pixel_or_none, superres_info, uncertainty_layers

    meta = pred.uns.get(K.STFUSION, {})
    grid = superres_info(pred)
    mpp = microns_per_pixel_or_none(pred)
    rows = {
        "file": name,
        "method": meta.get("method", "—"),
        "section": meta.get(K.SECTION_ID, "—"),
        "observations": f"{pred.n_obs} {'grid cells' if grid else 'spots'}",
        "genes": pred.n_vars,
        "expression space": meta.get("expression_space", "—"),
        "µm per pixel": f"{mpp:.4g}" if mpp else "unknown (no scale bar)",
        "super-resolution": _grid_text(grid, mpp),
        "uncertainty layers": ", ".join(uncertainty_layers(pred)) or "none",
    }
    return pd.DataFrame({"": list(rows), "value": [str(v) for v in rows.values()]})


def _grid_text(grid: dict | None, mpp: float | None) -> str:
    from stfusion.pl.maps import grid_label

    if not grid:
        return "no"
    side = f" (cell side {float(grid[K.SUPERRES_SUBPATCH_PX]) * mpp:.1f} µm)" if mpp and K.SUPERRES_SUBPATCH_PX in grid else ""
    return grid_label(grid) + side


def _score_section(page: Page, scores: pd.DataFrame, label: str) -> None:
    from stfusion.metrics import significant_genes, topk_mean
    from stfusion.pl import gene_boxplot

    r = scores["pearson"].to_numpy()
    summary = pd.DataFrame([{
        "spots": scores.attrs.get("n_spots", "—"), "genes": len(scores), "mean r": np.nanmean(r),
        "median r": np.nanmedian(r), "top-50 r": topk_mean(r, 50), "BH-sig. genes": significant_genes(scores["pvalue"].to_numpy()),
        "AUROC": np.nanmean(scores["auroc"]), "r vs smoothed": np.nanmean(scores["pearson_smoothed"]),
    }])
    page.table(summary, coarse=("BH-sig",))
    tidy = pd.DataFrame({"gene": scores.index, "metric": "pearson", "value": r, "dataset": "", "method": label, "kind": "model"})
    page.figure(gene_boxplot(tidy, title=""), "Gene-wise Pearson r against the measured section.")
    top = scores.head(N_TOP_TABLE)[["pearson", "spearman", "rmse", "auroc", "pvalue"]].reset_index()
    page.heading(f"Best {len(top)} genes", level=3)
    top["pvalue"] = top["pvalue"].map(lambda v: f"{v:.2g}")  # p-values span many orders of magnitude
    page.table(top.rename(columns={"pearson": "r", "spearman": "ρ", "pvalue": "p"}))


def _maps_section(page: Page, pred: ad.AnnData, truth: ad.AnnData | None, genes: list[tuple[str, str]], heading: str) -> None:
    from stfusion.pl import comparison_panels
    from stfusion.pl.maps import superres_info

    page.heading(heading)
    what = "super-resolved grid" if superres_info(pred) else "spots"
    page.text(("Measured and predicted share one colour scale per gene. " if truth is not None else "")
              + f"Predicted {what} in log1p(counts / total × 1e4) over the H&E; scale bar in µm.")
    for gene, why in genes:
        fig = comparison_panels(pred, gene, truth=truth, title=f"{gene} ({why})")
        page.figure(fig, f"{gene}: {why}.")


def prediction_page(
    pred: ad.AnnData,
    *,
    truth: ad.AnnData | None = None,
    super_resolved: ad.AnnData | None = None,
    genes: Sequence[str] = (),
    name: str = "prediction",
) -> Page:
    """The report of a prediction: description, scores (with ``truth``) and maps.

    ``super_resolved``: a super-resolved grid prediction of the same section, drawn for the
    same genes in its own section.
    """
    from stfusion.pl.maps import superres_info

    meta = pred.uns.get(K.STFUSION, {})
    title = f"stfusion prediction report: {meta.get('method', 'prediction')} on {meta.get(K.SECTION_ID, name)}"
    page = Page(title=title, subtitle=name)
    page.heading("Prediction")
    page.table(_describe(pred, name))
    scores = None
    if truth is not None:
        scores = score_prediction(pred, truth)
        page.heading("Scores against the measured section")
        if superres_info(pred):
            page.text("Grid cells were averaged over each measured spot (the cells whose centre lies on the spot) before scoring.")
        _score_section(page, scores, str(meta.get("method", "prediction")))
    chosen = choose_genes(pred, scores, genes)
    _maps_section(page, pred, truth, chosen, "Maps")
    if super_resolved is not None:
        shown = [(g, why) for g, why in chosen if g in super_resolved.var_names]
        if not shown:
            raise StfusionError("The super-resolved prediction covers none of the genes shown; predict the same genes.")
        _maps_section(page, super_resolved, truth, shown, "Super-resolved maps")
    plt.close("all")
    return page
