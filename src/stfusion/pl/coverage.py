"""Calibration of prediction intervals: observed vs nominal coverage, one line per method.

Reads either a coverage table (columns ``nominal``, ``observed``, optional ``method``, ``q10``,
``q90``, ``width``; :func:`stfusion.metrics.coverage.coverage_table`) or the benchmark's tidy
per-gene table (``metric`` = ``coverage_50`` ... ``coverage_95``, ``value``, ``method``), which
:func:`coverage_from_per_gene` turns into the former.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from stfusion.errors import StfusionError  # noqa: E402
from stfusion.pl.style import REFERENCE_LINE, method_colors, styled  # noqa: E402


def coverage_from_per_gene(per_gene: pd.DataFrame, dataset: str | None = None) -> pd.DataFrame:
    """Observed coverage per method and nominal level from the benchmark's per-gene rows: the mean
    over genes within each fold, averaged over folds; ``q10``/``q90`` over all gene x fold values."""
    df = per_gene[per_gene["metric"].astype(str).str.startswith("coverage_")]
    if "kind" in df:
        df = df[df["kind"] != "null"]
    if dataset is not None and "dataset" in df:
        df = df[df["dataset"] == dataset]
    if df.empty:
        raise StfusionError("No coverage_* rows: run the benchmark with a method entry's calibration = ... "
                            "(or a method that predicts an SD).")
    df = df.assign(nominal=df["metric"].str.removeprefix("coverage_").astype(float) / 100.0)
    folds = "fold" if "fold" in df else None
    keys = ["method", "nominal"] + ([folds] if folds else [])
    per_fold = df.groupby(keys)["value"].mean().reset_index()
    table = per_fold.groupby(["method", "nominal"])["value"].mean().rename("observed").reset_index()
    spread = df.groupby(["method", "nominal"])["value"].quantile([0.1, 0.9]).unstack()
    spread.columns = ["q10", "q90"]
    return table.join(spread, on=["method", "nominal"])


@styled
def coverage_plot(table: pd.DataFrame, *, title: str | None = None, band: bool = True,
                  tolerance: float | None = 0.03, ax=None, legend: bool = True) -> Figure:
    """Observed vs nominal coverage: the diagonal is perfect calibration; below it, intervals are
    too narrow (over-confident). ``band``: the 10th-90th percentile over genes when the table has
    ``q10``/``q90``; ``tolerance``: a grey band of ± that many (default ±3 percentage points);
    ``ax``: draw into these axes (one panel of a larger figure) instead of a new figure."""
    if not {"nominal", "observed"} <= set(table.columns):
        if "metric" in table.columns:
            table = coverage_from_per_gene(table)
        else:
            raise StfusionError(f"a coverage table needs columns nominal and observed, got {list(table.columns)}.")
    table = table.assign(method=table["method"] if "method" in table else "intervals")
    methods = list(dict.fromkeys(table["method"]))
    colors = method_colors(methods)
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2 + 0.12 * max(len(str(m)) for m in methods) if len(methods) > 1 else 4.2, 4.0))
    else:
        fig = ax.figure
    lo = min(0.4, float(table["nominal"].min()) - 0.05, float(table["observed"].min()) - 0.05)
    ax.plot([lo, 1], [lo, 1], **REFERENCE_LINE, label="nominal")
    if tolerance:
        ax.fill_between([lo, 1], [lo - tolerance, 1 - tolerance], [lo + tolerance, 1 + tolerance],
                        color="0.9", zorder=0, label=f"±{100 * tolerance:g} points")
    for m in methods:
        d = table[table["method"] == m].sort_values("nominal")
        ax.plot(d["nominal"], d["observed"], "o-", color=colors[m], label=str(m), ms=4)
        if band and {"q10", "q90"} <= set(d.columns):
            ax.fill_between(d["nominal"], d["q10"], d["q90"], color=colors[m], alpha=0.15, lw=0)
    ax.set_xlim(lo, 1.0)
    ax.set_ylim(max(0.0, lo - 0.1), 1.0)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("observed coverage (mean over genes)")
    ax.set_aspect("equal", adjustable="box")
    if legend:
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    if title:
        ax.set_title(title)
    if ax.figure is fig and len(fig.axes) == 1:
        fig.tight_layout()
    return fig
