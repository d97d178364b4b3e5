"""Benchmark figures: one box per method ordered by median, null boxes, time and memory bars."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from stfusion.errors import StfusionError
from stfusion.pl import gene_boxplot, timing_bars
from stfusion.pl.boxplots import method_order


def _per_gene(null: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for method, centre in (("good", 0.5), ("bad", 0.05), ("mid", 0.3)):
        for fold in ("f1", "f2"):
            for g in range(40):
                rows.append((f"g{g}", "pearson", centre + 0.1 * rng.normal(), "d", fold, method, "model", np.nan))
                if null and method != "mid":
                    rows.append((f"g{g}", "pearson", 0.1 * rng.normal(), "d", fold, method, "null", 0.0))
        rows.append(("g0", "rmse", 1 - centre, "d", "f1", method, "model", np.nan))
    return pd.DataFrame(rows, columns=["gene", "metric", "value", "dataset", "fold", "method", "kind", "permutation"])


def _boxes(fig, prefix):
    return {p.get_gid().split(":", 1)[1]: p for ax in fig.axes for p in ax.patches if (p.get_gid() or "").startswith(prefix)}


def test_boxes_ordered_by_median_with_nulls():
    df = _per_gene()
    assert method_order(df) == ["bad", "mid", "good"]
    assert method_order(df, metric="rmse") == ["bad", "mid", "good"]  # lower RMSE is better: best still last
    fig = gene_boxplot(df, dataset="d")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["bad", "mid", "good"]
    assert set(_boxes(fig, "box:")) == {"bad", "mid", "good"}
    assert set(_boxes(fig, "null:")) == {"bad", "good"}  # "mid" has no null runs
    # the median line of "good" sits near 0.5, far above its null box's
    medians = {ln.get_gid(): ln.get_ydata()[0] for ln in ax.lines if ln.get_gid()}
    assert medians["median:good"] == pytest.approx(np.median(df.value[(df.method == "good") & (df.kind == "model") & (df.metric == "pearson")]))
    assert medians["median:good"] > medians["null_median:good"] + 0.3
    plt.close(fig)
    fig = gene_boxplot(df, dataset="d", show_null=False)
    assert not _boxes(fig, "null:")
    plt.close(fig)


def test_missing_metric_says_what_is_there():
    with pytest.raises(StfusionError, match="metrics present"):
        gene_boxplot(_per_gene(), metric="ssim")


def test_timing_bars_sum_real_runs_only():
    timings = pd.DataFrame({
        "dataset": "d", "fold": ["f1", "f2", "f1", "f1"], "method": ["a", "a", "a", "b"],
        "kind": ["model", "model", "null", "model"], "seconds": [2.0, 3.0, 100.0, 1.0], "peak_rss_mb": [10, 30, 500, 20],
    })
    fig = timing_bars(timings, dataset="d")
    seconds_ax, memory_ax = fig.axes
    widths = {t.get_text(): b.get_width() for t, b in zip(seconds_ax.get_yticklabels(), seconds_ax.patches)}
    assert widths == {"b": 1.0, "a": 5.0}  # the null run's 100 s is not counted
    assert sorted(b.get_width() for b in memory_ax.patches) == [20, 30]
    plt.close(fig)
