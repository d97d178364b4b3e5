"""Gene-by-gene comparison of stfusion's li2022 run with Li et al.'s published per-gene files (osmFISH).

Reads the run's per-gene scores (``per_gene.csv`` or ``.csv.gz``: rows of gene, metric, value,
target, dataset, fold, method) and Li's ``<Method>_Metrics.txt`` (genes upper-case, one row per
gene) from ``../shared/data/reference_results/li2022_osmfish/``, and writes, per stfusion method
that has a published counterpart:

- ``reproduction_osmfish.csv``: one row per (method, metric): genes compared, folds present,
  published median over the same genes and over all Li's genes, ours under li2022 and under the
  strict target, the Pearson correlation of our per-gene values with Li's, mean |difference|,
  how many genes are lower than Li's;
- ``reproduction_osmfish_genes.csv``: every gene's published and reproduced values.

Usage (repository root)::

    python benchmarks/li2022/reproduction.py benchmarks/li2022/per_gene.csv.gz benchmarks/li2022
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "data" / "reference_results" / "li2022_osmfish"
COUNTERPART = {"tangram_cells": "Tangram", "tangram_clusters": "Tangram", "gimvi": "gimVI"}
METRICS = ("PCC", "SSIM", "RMSE", "JS")


def published(method: str, reference: Path = REFERENCE) -> pd.DataFrame:
    """Li's per-gene metrics of one method (index: upper-case gene)."""
    table = pd.read_csv(reference / f"{method}_Metrics.txt", sep="\t", index_col=0)
    table.index = table.index.str.upper()
    return table


def compare(rows: pd.DataFrame, reference: Path = REFERENCE) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = rows[(rows.dataset == "osmfish") & rows.method.isin(list(COUNTERPART))]
    summary, genes = [], []
    for method, df in rows.groupby("method"):
        li = published(COUNTERPART[method], reference)
        folds = df.fold.nunique()
        for metric in METRICS:
            ours = {t: df[(df.target == t) & (df.metric == metric)].set_index("gene").value for t in ("paper", "strict")}
            ours = {t: s.set_axis(s.index.str.upper()) for t, s in ours.items()}
            shared = ours["paper"].index.intersection(li.index)
            a, b = ours["paper"].loc[shared], li.loc[shared, metric]
            lower = (a < b) if metric in ("PCC", "SSIM") else (a > b)  # "worse than Li's" per metric
            summary.append({
                "method": method, "published_as": COUNTERPART[method], "metric": metric, "genes": len(shared),
                "folds": folds, "published_median_all_genes": float(li[metric].median()),
                "published_median_same_genes": float(b.median()), "ours_li2022_median": float(a.median()),
                "ours_strict_median": float(ours["strict"].loc[ours["strict"].index.intersection(shared)].median()),
                "per_gene_r_with_published": float(np.corrcoef(a, b)[0, 1]) if len(shared) > 2 else np.nan,
                "mean_abs_difference": float((a - b).abs().mean()), "genes_worse_than_published": int(lower.sum()),
            })  # fmt: skip
            genes.append(pd.DataFrame({"method": method, "metric": metric, "gene": shared, "published": b.to_numpy(),
                                       "ours_li2022": a.to_numpy()}))  # fmt: skip
    return pd.DataFrame(summary), pd.concat(genes, ignore_index=True) if genes else pd.DataFrame()


def fold_effect(genes: pd.DataFrame, path: Path) -> str:
    """gimVI's PCC median and gene-level agreement with Li's once the genes that ``fold_effect.py``
    held out together take their values from that run (``fold_effect.txt``)."""
    rows = [line.split() for line in path.read_text().splitlines()[2:] if line.strip()]
    together = {name.upper(): float(value) for name, value, _ in rows}
    g = genes[(genes.method == "gimvi") & (genes.metric == "PCC")].set_index("gene")
    mixed = g.ours_li2022.copy()
    for name, value in together.items():
        mixed[name] = value
    return (f"gimVI PCC with {', '.join(together)} held out together (fold_effect.txt): median {mixed.median():.3f} "
            f"(KFold {g.ours_li2022.median():.3f}, Li {g.published.median():.3f}); per-gene r with Li "
            f"{np.corrcoef(mixed, g.published)[0, 1]:.3f} (KFold {np.corrcoef(g.ours_li2022, g.published)[0, 1]:.3f}); "
            f"mean |difference| {(mixed - g.published).abs().mean():.3f}")


def main(per_gene: str, out: str) -> None:
    summary, genes = compare(pd.read_csv(per_gene))
    out_dir = Path(out)
    summary.to_csv(out_dir / "reproduction_osmfish.csv", index=False, float_format="%.4f")
    genes.to_csv(out_dir / "reproduction_osmfish_genes.csv", index=False, float_format="%.4f")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    effect = Path(__file__).with_name("fold_effect.txt")
    if effect.exists():
        print(fold_effect(genes, effect))


if __name__ == "__main__":
    main(*sys.argv[1:3])
