"""Benchmark figures: gene-wise scores per method (boxplots), time and memory per method (bars).

Both read the benchmark's tidy tables (``per_gene.csv``: gene, metric, value, dataset, fold,
method, kind; ``timings.csv``: dataset, fold, method, kind, seconds, peak_rss_mb).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from stfusion.errors import StfusionError  # noqa: E402
from stfusion.pl.style import NULL_COLOR, REFERENCE_LINE, method_colors, styled  # noqa: E402

METRIC_LABELS = {"pearson": "gene-wise Pearson r", "spearman": "gene-wise Spearman ρ", "ssim": "SSIM",
                 "rmse": "RMSE", "js": "JS divergence", "auroc": "AUROC"}
LOWER_IS_BETTER = ("rmse", "js")


def _select(per_gene: pd.DataFrame, metric: str, dataset: str | None) -> pd.DataFrame:
    df = per_gene[per_gene["metric"] == metric]
    if dataset is not None:
        df = df[df["dataset"] == dataset]
    if df.empty:
        have = sorted(per_gene["metric"].unique())
        raise StfusionError(f"No {metric!r} scores{f' for dataset {dataset!r}' if dataset else ''}; metrics present: {have}.")
    return df


def method_order(per_gene: pd.DataFrame, metric: str = "pearson", dataset: str | None = None) -> list[str]:
    """Methods sorted by their median score on real (non-null) runs, best last."""
    df = _select(per_gene, metric, dataset)
    if "kind" in df:
        df = df[df["kind"] != "null"]
    names = df.groupby("method")["value"].median().sort_values().index.tolist()
    return names[::-1] if metric in LOWER_IS_BETTER else names


@styled
def gene_boxplot(
    per_gene: pd.DataFrame,
    *,
    metric: str = "pearson",
    dataset: str | None = None,
    show_null: bool = True,
    title: str | None = None,
) -> Figure:
    """Boxplot of a per-gene metric per method (each value: one gene in one fold).

    Methods are ordered by their median, best on the right. When the table holds
    shuffled-label null runs (``kind == "null"``) and ``show_null``, a grey box of the null
    scores stands beside each method that has them.
    """
    df = _select(per_gene, metric, dataset)
    kinds = df["kind"] if "kind" in df else pd.Series("model", index=df.index)
    order = method_order(per_gene, metric, dataset)
    colours = method_colors(sorted(order))  # the same colour per method in every figure of a dataset
    has_null = show_null and (kinds == "null").any()
    fig, ax = plt.subplots(figsize=(1.0 * len(order) * (1.6 if has_null else 1) + 2.2, 3.8))
    for i, method in enumerate(order):
        mine = df["method"] == method
        model = df.loc[mine & (kinds != "null"), "value"].dropna().to_numpy()
        null = df.loc[mine & (kinds == "null"), "value"].dropna().to_numpy() if has_null else np.empty(0)
        offset = 0.2 if len(null) else 0.0
        box = ax.boxplot([model], positions=[i - offset], widths=0.35 if has_null else 0.6, showfliers=False,
                         patch_artist=True)
        box["boxes"][0].set(facecolor=colours[method], alpha=0.75)
        box["boxes"][0].set_gid(f"box:{method}")
        box["medians"][0].set_gid(f"median:{method}")
        if len(null):
            nb = ax.boxplot([null], positions=[i + offset], widths=0.35, showfliers=False, patch_artist=True)
            nb["boxes"][0].set(facecolor=NULL_COLOR, alpha=0.75)
            nb["boxes"][0].set_gid(f"null:{method}")
            nb["medians"][0].set_gid(f"null_median:{method}")
    ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
    ax.set_xlim(-0.6, len(order) - 0.4)
    if metric in ("pearson", "spearman"):
        ax.axhline(0, **REFERENCE_LINE)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    if has_null:
        ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=NULL_COLOR)], labels=["shuffled-label null"], loc="best")
    ax.set_title(title if title is not None else (dataset or ""))
    fig.tight_layout()
    return fig


@styled
def timing_bars(timings: pd.DataFrame, *, dataset: str | None = None, title: str | None = None) -> Figure:
    """Two bar charts per method: total seconds over folds and peak resident memory (MB).

    Only the real runs are counted (``kind != "null"``).
    """
    df = timings if dataset is None else timings[timings["dataset"] == dataset]
    if "kind" in df:
        df = df[df["kind"] != "null"]
    if df.empty:
        raise StfusionError(f"No timings{f' for dataset {dataset!r}' if dataset else ''}.")
    agg = df.groupby("method").agg(seconds=("seconds", "sum"), peak_rss_mb=("peak_rss_mb", "max")).sort_values("seconds")
    colours = method_colors(sorted(agg.index))
    fig, axes = plt.subplots(1, 2, figsize=(8, 0.35 * len(agg) + 1.4), sharey=True)
    for ax, column, label in zip(axes, ("seconds", "peak_rss_mb"), ("seconds (sum over folds)", "peak RSS (MB)"), strict=True):
        ax.barh(agg.index, agg[column], color=[colours[m] for m in agg.index])
        ax.set_xlabel(label)
        for y, value in enumerate(agg[column]):
            ax.annotate(f"{value:.1f}" if value < 100 else f"{value:.0f}", (value, y), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=7)
        ax.margins(x=0.18)
    fig.suptitle(title if title is not None else (dataset or "time and memory"))
    fig.tight_layout()
    return fig
