"""Tables and figures of a benchmark run, rebuilt from its stored cells."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from stfusion.io.atomic import atomic_path

HISTOLOGY_COLUMNS = {
    "mean_pearson": "mean r",
    "median_pearson": "median r",
    "top50_pearson": "top-50 r",
    "n_sig_bh": "BH-sig. genes",
    "mean_auroc": "AUROC",
    "mean_pearson_smoothed": "r vs smoothed",
    "coverage_80": "coverage 80%",
    "coverage_90": "coverage 90%",
    "coverage_95": "coverage 95%",
    "width_90": "width 90%",
    "null_mean_pearson": "null mean r (max)",
    "null_top50_pearson": "null top-50 r (max)",
    "null_n_sig_bh": "null BH-sig. (max)",
    "seconds": "seconds",
    "peak_rss_mb": "peak RSS MB",
}


def read_cell_table(path: Path) -> pd.DataFrame:
    """A stored cell's rows. Text columns are never parsed as missing: pandas would read the
    kind ``null`` or a gene named ``NA`` as NaN; only empty numeric fields are missing."""
    return pd.read_csv(path, keep_default_na=False, na_values={"value": ["", "nan", "NaN"], "permutation": [""]})


def load_cells(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All per-gene rows and one timing row per cell."""
    rows, timings = [], []
    for csv in sorted((run_dir / "cells").rglob("*.csv")):
        df = read_cell_table(csv)
        rows.append(df)
        t = json.loads(csv.with_suffix(".json").read_text())
        first = df.iloc[0]
        timings.append({k: first[k] for k in ("dataset", "protocol", "fold", "method", "kind")} | t)
    if not rows:
        return pd.DataFrame(), pd.DataFrame()
    return pd.concat(rows, ignore_index=True), pd.DataFrame(timings)


def _fold_stats(df: pd.DataFrame) -> pd.Series:
    with warnings.catch_warnings():  # all-NaN metrics (e.g. no AUROC) give NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        return _fold_stats_inner(df)


def _fold_stats_inner(df: pd.DataFrame) -> pd.Series:
    from stfusion.metrics import significant_genes, topk_mean

    r = df.loc[df.metric == "pearson", "value"].to_numpy()
    p = df.loc[df.metric == "pvalue", "value"].to_numpy()
    stats = {
        "mean_pearson": np.nanmean(r),
        "median_pearson": np.nanmedian(r),
        "top50_pearson": topk_mean(r, 50),
        "n_sig_bh": significant_genes(p) if len(p) else np.nan,
        "mean_auroc": np.nanmean(df.loc[df.metric == "auroc", "value"]),
        "mean_pearson_smoothed": np.nanmean(df.loc[df.metric == "pearson_smoothed", "value"]),
    }
    # interval coverage (mean over genes) only where a method has intervals: other tables keep their columns
    for metric in sorted(m for m in df.metric.unique() if str(m).startswith(("coverage_", "width_"))):
        stats[metric] = np.nanmean(df.loc[df.metric == metric, "value"])
    return pd.Series(stats)


def histology_summary(genes: pd.DataFrame, timings: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, method): fold statistics averaged over folds, null beside them."""
    model = genes[genes.kind == "model"]
    per_fold = model.groupby(["dataset", "method", "fold"]).apply(_fold_stats, include_groups=False)
    if isinstance(per_fold, pd.Series):  # folds with and without interval columns: pandas stacks them
        per_fold = per_fold.unstack()
    summary = per_fold.groupby(["dataset", "method"]).mean()
    null = genes[genes.kind == "null"]
    if len(null):
        per_perm = null.groupby(["dataset", "method", "permutation", "fold"]).apply(_fold_stats, include_groups=False)
        per_perm = per_perm.groupby(["dataset", "method", "permutation"]).mean()
        worst = per_perm.groupby(["dataset", "method"]).max()
        summary["null_mean_pearson"] = worst["mean_pearson"]
        summary["null_top50_pearson"] = worst["top50_pearson"]
        summary["null_n_sig_bh"] = worst["n_sig_bh"]
    t = timings[timings.kind == "model"].groupby(["dataset", "method"]).agg(seconds=("seconds", "sum"), peak_rss_mb=("peak_rss_mb", "max"))
    return summary.join(t).reset_index()


def imputation_summary(genes: pd.DataFrame, timings: pd.DataFrame) -> pd.DataFrame:
    """Medians over all held-out genes, and Li 2022's accuracy score across methods (from means)."""
    from stfusion.metrics import accuracy_score

    names = {"pearson": "PCC", "ssim": "SSIM", "rmse": "RMSE", "js": "JS"}
    out = []
    for dataset, df in genes.groupby("dataset"):
        med = df.pivot_table(index="method", columns="metric", values="value", aggfunc="median").rename(columns=names)
        mean = df.pivot_table(index="method", columns="metric", values="value", aggfunc="mean").rename(columns=names)
        table = med[list(names.values())].add_prefix("median ")
        table["AS"] = accuracy_score(mean[list(names.values())])
        t = timings[timings.dataset == dataset].groupby("method").agg(
            seconds=("seconds", "sum"), peak_rss_mb=("peak_rss_mb", "max"), rss_increase_mb=("rss_increase_mb", "max"))
        out.append(table.join(t).assign(dataset=dataset).reset_index())
    return pd.concat(out, ignore_index=True)


def boxplots(genes: pd.DataFrame, run_dir: Path) -> list[Path]:
    """Gene-wise Pearson per method, one figure per dataset (as in the papers' figures)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    paths = []
    model = genes[(genes.kind == "model") & (genes.metric == "pearson")]
    for dataset, df in model.groupby("dataset"):
        order = df.groupby("method")["value"].median().sort_values().index.tolist()
        data = [df.loc[df.method == m, "value"].dropna().to_numpy() for m in order]
        fig, ax = plt.subplots(figsize=(1.1 * len(order) + 2, 4))
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(order) + 1), order, rotation=30, ha="right")
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_ylabel("gene-wise Pearson r")
        ax.set_title(dataset)
        fig.tight_layout()
        path = run_dir / f"boxplot_{dataset}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def _cell(v, floatfmt: str) -> str:
    if isinstance(v, (float, np.floating)):
        return "—" if np.isnan(v) else format(v, floatfmt)
    return str(v)


COARSE = ("BH-sig", "seconds", "RSS", "rss")  # counts averaged over folds, times, memory: one decimal


def _markdown(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = [_cell(v, ".1f" if any(c in col for c in COARSE) else floatfmt) for col, v in zip(cols, row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _not_run(run_dir: Path) -> list[str]:
    """Summary lines for methods the runner could not run (an optional package missing)."""
    path = run_dir / "skipped.json"
    skipped = json.loads(path.read_text()) if path.exists() else {}
    if not skipped:
        return []
    return ["## Not run", "", *[f"- {method}: {why}" for method, why in skipped.items()], ""]


def write_outputs(run_dir: str | Path) -> dict[str, Path]:
    """per_gene.csv, timings.csv, summary.csv, summary.md and boxplots."""
    run_dir = Path(run_dir)
    genes, timings = load_cells(run_dir)
    if genes.empty:
        return {}
    paths = {"per_gene": run_dir / "per_gene.csv", "timings": run_dir / "timings.csv"}
    genes.to_csv(paths["per_gene"], index=False)
    timings.to_csv(paths["timings"], index=False)
    from stfusion.benchmark.papers import PAPER_PROTOCOLS

    paper = genes.protocol.isin(list(PAPER_PROTOCOLS))
    pair = (genes.protocol == "gene_kfold") & ~paper
    parts, md = [], ["# Benchmark summary", ""]
    if paper.any():
        frames, lines = paper_summaries(genes[paper], timings, run_dir)
        parts += frames
        md += lines
    if (~pair & ~paper).any():
        hist = histology_summary(genes[~pair & ~paper], timings[~timings.protocol.isin(["gene_kfold", *PAPER_PROTOCOLS])])
        parts.append(hist)
        for dataset, df in hist.groupby("dataset"):
            show = df.drop(columns="dataset").rename(columns=HISTOLOGY_COLUMNS).sort_values("mean r", ascending=False)
            md += [f"## {dataset} ({genes.loc[genes.dataset == dataset, 'protocol'].iloc[0]})", "", _markdown(show), ""]
    if pair.any():
        imp = imputation_summary(genes[pair], timings[timings.protocol == "gene_kfold"])
        parts.append(imp)
        for dataset, df in imp.groupby("dataset"):
            md += [f"## {dataset} (gene_kfold)", "", _markdown(df.drop(columns="dataset").sort_values("AS", ascending=False)), ""]
    md += _not_run(run_dir)
    paths["summary_csv"] = run_dir / "summary.csv"
    pd.concat(parts, ignore_index=True).to_csv(paths["summary_csv"], index=False)
    paths["summary_md"] = run_dir / "summary.md"
    paths["summary_md"].write_text("\n".join(md) + "\n")
    boxplots(genes[~paper | (genes.get("target") == "paper")], run_dir)
    return paths


def paper_summaries(genes: pd.DataFrame, timings: pd.DataFrame, run_dir: Path) -> tuple[list[pd.DataFrame], list[str]]:
    """Each paper protocol's own aggregation of its datasets, the published numbers beside it."""
    from stfusion.benchmark.papers import get_protocol

    resolved = run_dir / "config.resolved.json"
    params = {d["name"]: d.get("protocol_params", {}) for d in json.loads(resolved.read_text()).get("datasets", [])} \
        if resolved.exists() else {}  # fmt: skip
    frames, md = [], []
    for dataset, df in genes.groupby("dataset"):
        protocol = get_protocol(df.protocol.iloc[0], **params.get(dataset, {}))
        table = protocol.summarise(df)
        t = timings[(timings.dataset == dataset) & (timings.kind == "model")].groupby("method").agg(
            seconds=("seconds", "sum"), peak_rss_mb=("peak_rss_mb", "max"))
        table = table.join(t, on="method") if "method" in table.columns else table
        frames.append(table.assign(dataset=dataset, protocol=protocol.name))
        md += [f"## {dataset} ({protocol.name}: {protocol.paper})", "", f"Protocol: {protocol.source}", "",
               _markdown(table), ""]  # fmt: skip
        if protocol.published:
            md += ["Published:", "", *[f"- {k}: {v:g}" for k, v in protocol.published.items()], ""]
    return frames, md
