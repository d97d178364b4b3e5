"""How much of the her2st patient C target can a spot-level predictor reach? (issue 5)

Two references for the HisToGene table, on each test section C2-C6, the 785 genes and the
primary target log1p(counts / spot total x 1e4), gene-wise Pearson r averaged over genes:

1. ``neighbour mean``: each spot predicted by the mean target of its k nearest spots in the
   same section (itself left out), k = 6 and 18. Spatial interpolation from *measured*
   neighbours, information no histology model has at test time.
2. ``smooth-rate ceiling``: a model-based estimate of the noise ceiling. The expression rate
   of each spot is taken to be the 18-nearest-neighbour mean of cp10k (itself included);
   counts are re-drawn from Poisson(rate x spot total / 1e4) and scored against the rate
   itself, i.e. what a perfect predictor of that smooth rate would score once counting noise
   at the measured depths is added. Optimistic about the noise (Poisson, no extra
   over-dispersion), pessimistic about the signal (smoothing removes real spot-to-spot
   variation); a rough scale, not a bound.

Run (repository root, ~1 min)::

    .venv/bin/python benchmarks/histogene/ceiling.py

Writes benchmarks/histogene/ceiling.{md,csv}; the HisToGene/ST-Net/ridge columns are read from
the committed summary tables (per-fold means from per_gene_pearson.csv.gz).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SECTIONS = ("C2", "C3", "C4", "C5", "C6")


def genewise_r(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    den = np.sqrt((a**2).sum(0) * (b**2).sum(0))
    return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1.0), 0.0)


def section_rows(root: Path, name: str, genes: np.ndarray, rng: np.random.Generator) -> dict:
    from sklearn.neighbors import kneighbors_graph

    from stfusion.io.legacy_st import read_her2st

    sec = read_her2st(root, name)
    x = np.asarray(sec.X.toarray() if sparse.issparse(sec.X) else sec.X, dtype=float)
    total = x.sum(1, keepdims=True)
    cols = [sec.var_names.get_loc(g) for g in genes if g in sec.var_names]
    cp10k = x / np.maximum(total, 1) * 1e4
    y = np.log1p(cp10k)[:, cols]
    row = {"section": name, "spots": sec.n_obs, "genes": len(cols)}
    for k in (6, 18):
        a = kneighbors_graph(sec.obsm["spatial"], k, include_self=False)
        row[f"neighbour_mean_k{k}"] = float(genewise_r(np.asarray(a @ y) / k, y).mean())
    a = kneighbors_graph(sec.obsm["spatial"], 18, include_self=True)
    rate = np.asarray(a @ cp10k) / 18
    drawn = rng.poisson(rate * total / 1e4).astype(float)
    y_drawn = np.log1p(drawn / np.maximum(drawn.sum(1, keepdims=True), 1) * 1e4)[:, cols]
    row["smooth_rate_ceiling"] = float(genewise_r(np.log1p(rate[:, cols]), y_drawn).mean())
    return row


def model_means(table: Path, methods: tuple[str, ...]) -> pd.DataFrame:
    """Per-fold mean Pearson of committed methods (rows: section, columns: method)."""
    df = pd.read_csv(table)
    df = df[df.method.isin(methods)].rename(columns={"fold": "section"})
    return df.groupby(["section", "method"]).value.mean().unstack()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("STFUSION_SHARED_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    root = args.data / "her2st"
    genes = np.load(root / "her_hvg_cut_1000.npy", allow_pickle=True).astype(str)
    rng = np.random.default_rng(args.seed)
    df = pd.DataFrame([section_rows(root, s, genes, rng) for s in SECTIONS]).set_index("section")
    models = model_means(HERE / "per_gene_pearson.csv.gz", ("histogene", "histogene_star", "colour_texture_ridge"))
    df = df.join(models)
    df.loc["mean"] = df.mean(numeric_only=True)
    df.round(3).to_csv(HERE / "ceiling.csv")
    lines = ["# her2st patient C: what a spot-level predictor can reach", "",
             f"Written by `ceiling.py` (see its docstring); seed {args.seed}, `.venv/bin/python benchmarks/histogene/ceiling.py`.",
             "Mean gene-wise Pearson r over the 785 genes on log1p(counts / spot total x 1e4).", "",
             "| " + " | ".join(["section", *df.columns]) + " |", "|" + "---|" * (len(df.columns) + 1)]
    for idx, r in df.iterrows():
        lines.append("| " + " | ".join([str(idx), *(f"{v:.0f}" if c in ("spots", "genes") else f"{v:.3f}" for c, v in r.items())]) + " |")
    (HERE / "ceiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
