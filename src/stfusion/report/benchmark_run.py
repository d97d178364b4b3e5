"""The report of a benchmark run folder (made by ``stfusion benchmark``).

Reads ``per_gene.csv``, ``timings.csv``, ``summary.csv`` and ``config.resolved.json`` (or
rebuilds the tables from ``cells/`` when the run was interrupted before they were written)
and lays out, per dataset: the metrics table per method, gene-wise Pearson boxplots, observed vs
nominal coverage of the prediction intervals (for methods that have them), time and memory per
method, and the best-predicted genes of the best method.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from stfusion.errors import InputFileError
from stfusion.report.html import Page

log = logging.getLogger("stfusion")

IMPUTATION_PROTOCOL = "gene_kfold"
COARSE = ("BH-sig", "seconds", "RSS", "rss", "folds")
TOP_GENES = 10
TIMING_NUMBERS = ("seconds", "peak_rss_mb", "rss_increase_mb")
LAST_COLUMNS = ("seconds", "peak RSS MB")
COVERAGE_CAPTION = ("Observed vs nominal coverage of the prediction intervals (mean over genes per fold, averaged "
                    "over folds; band: 10th-90th percentile over genes; grey: ±3 points). Below the diagonal the "
                    "intervals are too narrow.")


@dataclass
class BenchmarkRun:
    """The tables of one run folder."""

    path: Path
    per_gene: pd.DataFrame
    timings: pd.DataFrame
    summary: pd.DataFrame
    config: dict

    @property
    def datasets(self) -> list[str]:
        """Datasets with results, in the order of the configuration."""
        present = list(dict.fromkeys(self.per_gene["dataset"]))
        configured = [d.get("name") for d in self.config.get("datasets", [])]
        return [d for d in configured if d in present] + [d for d in present if d not in configured]

    def protocol(self, dataset: str) -> str:
        return str(self.per_gene.loc[self.per_gene["dataset"] == dataset, "protocol"].iloc[0])


def read_timings(path: Path) -> pd.DataFrame:
    """``timings.csv``; text is never parsed as missing (pandas reads the kind ``null`` as NaN)."""
    return pd.read_csv(path, keep_default_na=False, na_values={c: ["", "nan", "NaN"] for c in TIMING_NUMBERS})


EXPORTED = "per_gene_pearson.csv.gz"  # benchmarks/export_results.py: the committed part of a run


def is_benchmark_run(path: Path) -> bool:
    """A run folder (``per_gene.csv`` or ``cells/``) or its export (``per_gene_pearson.csv.gz`` + ``summary.csv``)."""
    exported = (path / EXPORTED).exists() and (path / "summary.csv").exists()
    return path.is_dir() and ((path / "per_gene.csv").exists() or (path / "cells").is_dir() or exported)


def load_run(run_dir: str | Path) -> BenchmarkRun:
    """Read a run folder's tables; raise :class:`InputFileError` when it is not one."""
    run_dir = Path(run_dir)
    if not is_benchmark_run(run_dir):
        raise InputFileError(
            f"{run_dir} is not a benchmark run folder (no per_gene.csv, cells/ or {EXPORTED}). "
            "Make one with `stfusion benchmark CONFIG.toml --out RUN_DIR`, or pass a prediction .h5ad."
        )
    config_path = run_dir / "config.resolved.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    per_gene, timings = _gene_tables(run_dir, config)
    if per_gene.empty:
        raise InputFileError(f"{run_dir} holds no finished cells yet; let `stfusion benchmark` finish at least one.")
    summary = pd.read_csv(run_dir / "summary.csv") if (run_dir / "summary.csv").exists() else _summarise(per_gene, timings)
    return BenchmarkRun(run_dir, per_gene, timings, summary, config)


def _gene_tables(run_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    from stfusion.benchmark.report import load_cells, read_cell_table

    if (run_dir / "per_gene.csv").exists() and (run_dir / "timings.csv").exists():
        return read_cell_table(run_dir / "per_gene.csv"), read_timings(run_dir / "timings.csv")
    if (run_dir / "cells").is_dir():
        log.info(f"{run_dir}: tables not written yet; rebuilding them from cells/")
        return load_cells(run_dir)
    # an export keeps the real runs' Pearson r only; the protocol comes from the configuration
    per_gene = pd.read_csv(run_dir / EXPORTED, keep_default_na=False, na_values={"value": ["", "nan", "NaN"]})
    protocols = {d.get("name"): d.get("protocol", "unknown") for d in config.get("datasets", [])}
    per_gene = per_gene.assign(metric="pearson", kind="model", protocol=per_gene["dataset"].map(protocols).fillna("unknown"))
    timings = read_timings(run_dir / "timings.csv") if (run_dir / "timings.csv").exists() else pd.DataFrame()
    return per_gene, timings


def _summarise(per_gene: pd.DataFrame, timings: pd.DataFrame) -> pd.DataFrame:
    from stfusion.benchmark.report import histology_summary, imputation_summary

    pair = per_gene["protocol"] == IMPUTATION_PROTOCOL
    tpair = timings["protocol"] == IMPUTATION_PROTOCOL
    parts = []
    if (~pair).any():
        parts.append(histology_summary(per_gene[~pair], timings[~tpair]))
    if pair.any():
        parts.append(imputation_summary(per_gene[pair], timings[tpair]))
    return pd.concat(parts, ignore_index=True)


# ----------------------------------------------------------------------------- tables
def summary_table(run: BenchmarkRun, dataset: str) -> pd.DataFrame:
    """The dataset's metrics per method, best first, with the run's column names."""
    from stfusion.benchmark.report import HISTOLOGY_COLUMNS

    df = run.summary[run.summary["dataset"] == dataset].drop(columns="dataset").dropna(axis=1, how="all")
    df = df.rename(columns=HISTOLOGY_COLUMNS)
    key = "AS" if run.protocol(dataset) == IMPUTATION_PROTOCOL else "mean r"
    df = df.sort_values(key, ascending=False) if key in df else df
    return df[[c for c in df.columns if c not in LAST_COLUMNS] + [c for c in LAST_COLUMNS if c in df.columns]]


def top_genes(run: BenchmarkRun, dataset: str, method: str, n: int = TOP_GENES) -> pd.DataFrame:
    """The ``n`` genes with the highest mean Pearson r of ``method`` over folds."""
    df = run.per_gene
    sel = df[(df["dataset"] == dataset) & (df["method"] == method) & (df["metric"] == "pearson")]
    if "kind" in sel:
        sel = sel[sel["kind"] != "null"]
    agg = sel.groupby("gene")["value"].agg(["mean", "min", "count"]).sort_values("mean", ascending=False).head(n)
    return agg.reset_index().rename(columns={"mean": "mean r", "min": "worst fold r", "count": "folds"})


def overview_table(run: BenchmarkRun) -> pd.DataFrame:
    specs = {d.get("name"): d for d in run.config.get("datasets", [])}
    rows = []
    for dataset in run.datasets:
        sub = run.per_gene[run.per_gene["dataset"] == dataset]
        model = sub[sub["kind"] != "null"] if "kind" in sub else sub
        spec = specs.get(dataset, {})
        rows.append({
            "dataset": dataset,
            "protocol": run.protocol(dataset),
            "reader": spec.get("reader", "—"),
            "sections": ", ".join(spec.get("sections", [])) or "—",
            "folds": int(model["fold"].nunique()),
            "genes": int(model["gene"].nunique()),
            "methods": int(model["method"].nunique()),
        })
    return pd.DataFrame(rows)


def methods_table(run: BenchmarkRun) -> pd.DataFrame:
    rows = []
    for m in run.config.get("methods", []):
        rows.append({
            "method": m.get("label") or m.get("name"),
            "registry name": m.get("name"),
            "parameters": json.dumps(m.get("params", {})) if m.get("params") else "defaults",
            "null permutations": int(m.get("null_permutations", 0)),
            "datasets": ", ".join(m.get("datasets") or ["all"]),
        })
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- page
def _dataset_section(page: Page, run: BenchmarkRun, dataset: str) -> None:
    from stfusion.pl import gene_boxplot, timing_bars
    from stfusion.pl.coverage import coverage_from_per_gene, coverage_plot

    protocol = run.protocol(dataset)
    page.heading(f"{dataset} ({protocol})")
    table = summary_table(run, dataset)
    page.table(table, coarse=COARSE, highlight_first=True)
    per_gene = run.per_gene[run.per_gene["dataset"] == dataset]
    has_null = "kind" in per_gene and (per_gene["kind"] == "null").any()
    caption = "Gene-wise Pearson r per method (each value one gene in one fold; boxes without outliers)"
    caption += "; grey: the same method trained on shuffled labels." if has_null else "."
    page.figure(gene_boxplot(per_gene, metric="pearson", dataset=dataset), caption)
    if per_gene["metric"].astype(str).str.startswith("coverage_").any():
        page.figure(coverage_plot(coverage_from_per_gene(per_gene), title=dataset), COVERAGE_CAPTION)
    if not run.timings.empty and (run.timings["dataset"] == dataset).any():
        page.figure(timing_bars(run.timings, dataset=dataset), "Time summed over folds and peak resident memory per method.")
    best = str(table.iloc[0]["method"])
    page.heading(f"Best-predicted genes of {best}", level=3)
    page.table(top_genes(run, dataset, best), coarse=COARSE)


def benchmark_page(run: BenchmarkRun) -> Page:
    """The whole report of a run as a :class:`~stfusion.report.html.Page`."""
    env = run.config.get("environment", {})
    name = run.config.get("name") or run.path.name
    facts = [f"run folder {run.path.name}", f"seed {run.config.get('seed', '—')}"]
    facts += [f"{k} {v}" for k, v in env.items()]
    page = Page(title=f"stfusion benchmark report: {name}", subtitle="; ".join(facts))
    page.heading("Overview")
    page.table(overview_table(run))
    if run.config.get("methods"):
        page.table(methods_table(run))
    page.text("Histology datasets are scored on log1p(counts / spot total × 1e4) of held-out spots or sections; "
              "imputation datasets (gene_kfold) on genes hidden from the spatial data (Li et al. 2022 metrics, AS = accuracy score).")
    for dataset in run.datasets:
        _dataset_section(page, run, dataset)
    if run.config:
        page.heading("Configuration")
        page.details("config.resolved.json", json.dumps(run.config, indent=2))
    plt.close("all")
    return page
