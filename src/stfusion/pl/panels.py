"""Side-by-side panels of one gene: measured | predicted | uncertainty."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from stfusion import _constants as K  # noqa: E402
from stfusion.pl.maps import expression_map, gene_values, grid_label, superres_info, uncertainty_layers  # noqa: E402
from stfusion.pl.style import EXPRESSION_CMAP, PANEL_INCHES, UNCERTAINTY_CMAP, styled  # noqa: E402


def measured_expression(section: ad.AnnData, genes: Sequence[str]) -> ad.AnnData:
    """The section's measured log1p(counts / spot total × 1e4) of ``genes``: the scale predictions are on.

    Spot names, ``obsm["spatial"]`` and ``uns`` are kept, so the result draws like a prediction
    of the section (spots as circles of the spot diameter).
    """
    from stfusion.models.base import target_expression

    out = ad.AnnData(
        X=np.asarray(target_expression(section, list(genes)), dtype=np.float32),
        obs=pd.DataFrame(index=section.obs_names.copy()),
        var=pd.DataFrame(index=pd.Index(list(genes))),
    )
    if K.SPATIAL in section.obsm:
        out.obsm[K.SPATIAL] = np.asarray(section.obsm[K.SPATIAL]).copy()
    out.uns.update({k: section.uns[k] for k in (K.SPATIAL, K.STFUSION) if k in section.uns})
    return out


def _limits(arrays: list[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.zeros(1)
    return (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)


@styled
def comparison_panels(
    pred: ad.AnnData,
    gene: str,
    *,
    truth: ad.AnnData | None = None,
    uncertainty: Sequence[str] | None = None,
    shared_limits: bool = True,
    show_image: bool = True,
    title: str | None = None,
) -> Figure:
    """One row of maps of ``gene``: measured (when ``truth`` is given), predicted, and one per uncertainty layer.

    Parameters
    ----------
    pred
        A prediction (spots or a super-resolved grid) in log1p(counts / total × 1e4).
    gene
        The gene to draw.
    truth
        The measured section (raw counts), drawn as log1p(counts / spot total × 1e4): the
        prediction's scale. Its spots need not match the prediction's (e.g. a super-resolved grid).
    uncertainty
        Layers of ``pred`` to draw as uncertainty panels; default: every ``sd``/``sd_*`` layer.
    shared_limits
        Measured and predicted panels use one colour scale (the range of both).
    title
        Figure title (default: the gene).

    Returns
    -------
    The figure; panels in the order measured, predicted, uncertainty.
    """
    layers = list(uncertainty_layers(pred) if uncertainty is None else uncertainty)
    measured = measured_expression(truth, [gene]) if truth is not None else None
    panels: list[tuple[ad.AnnData, str | None, str, str | None]] = []  # (adata, layer, title, cmap)
    if measured is not None:
        panels.append((measured, None, "measured", None))
    grid = superres_info(pred)
    panels.append((pred, None, "predicted" + (f" ({grid_label(grid)})" if grid else ""), None))
    panels += [(pred, layer, f"uncertainty ({layer})", UNCERTAINTY_CMAP) for layer in layers]
    lo = hi = None
    if shared_limits and measured is not None:
        lo, hi = _limits([gene_values(measured, gene), gene_values(pred, gene)])
    fig, axes = plt.subplots(1, len(panels), figsize=((PANEL_INCHES + 0.8) * len(panels), PANEL_INCHES + 0.5),
                             squeeze=False, layout="constrained")
    for ax, (adata, layer, name, cmap) in zip(axes[0], panels, strict=True):
        is_expr = layer is None
        expression_map(
            adata, gene, layer=layer, ax=ax, title=name, show_image=show_image,
            vmin=lo if is_expr else None, vmax=hi if is_expr else None,
            cmap=cmap or EXPRESSION_CMAP, label="log1p cp10k" if is_expr else layer,
        )
    fig.suptitle(gene if title is None else title)
    return fig
