"""ARI of k-means clusters of predicted expression against her2st's expression-cluster labels.

For each leave-one-section-out fold of patient C (the benchmark's folds), fit the model on
the other sections, predict the held-out one, cluster the predicted expression (log1p
cp10k of the 785 genes, 10 PCs, k-means with k = the number of labels) and compare with
``obs["cluster_label"]`` by the adjusted Rand index. Reference: the same clustering of
the *observed* expression. One fit per fold serves HisToGene and HisToGene* (same
weights; HisToGene* aggregates the 4x super-resolved sub-patches of each spot). Run from the repository root::

    OMP_NUM_THREADS=1 nice python benchmarks/histogene/ari.py --out benchmarks/histogene
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

from stfusion import io
from stfusion.benchmark.protocols import leave_one_section_out
from stfusion.data.genes import read_gene_list
from stfusion.metrics import ari_kmeans
from stfusion.models.base import dense, target_expression
from stfusion.models.histogene import HisToGene

HERE = Path(__file__).resolve().parent
N_PCS = 10


def _params(config: Path) -> dict:
    """Parameters of the config's plain ``histogene`` entry (HisToGene* reuses the same fit)."""
    raw = tomllib.loads(config.read_text())
    entry = next(m for m in raw["methods"] if m["name"] == "histogene" and not m.get("params", {}).get("aggregate_superres"))
    return dict(entry.get("params", {}))


def _sections(root: Path) -> list:
    out = []
    for sid in ("C2", "C3", "C4", "C5", "C6"):
        s = io.read_her2st(root / "her2st", sid)
        out.append(s[np.asarray(s.X.sum(axis=1)).ravel() >= 1].copy())
    return out


def _markdown(df: pd.DataFrame) -> str:
    head = "| " + " | ".join([df.index.name or "", *map(str, df.columns)]) + " |"
    sep = "|" + "---|" * (len(df.columns) + 1)
    body = ["| " + " | ".join([str(i), *(f"{v:.3f}" for v in row)]) + " |" for i, row in zip(df.index, df.to_numpy())]
    return "\n".join([head, sep, *body])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--config", type=Path, default=HERE / "histogene.toml")
    ap.add_argument("--data", type=Path, default=HERE.parents[1].parent / "shared" / "data")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    genes = read_gene_list(args.data / "her2st" / "her_hvg_cut_1000.npy")
    rows = []
    for fold in leave_one_section_out(_sections(args.data)):
        labels = fold.test.obs["cluster_label"].to_numpy()
        observed = target_expression(fold.test, genes)
        rows.append({"fold": fold.name, "method": "observed", "ari": ari_kmeans(observed, labels, seed=args.seed, n_pcs=N_PCS)})
        model = HisToGene(**_params(args.config), seed=args.seed).fit(fold.train, genes=genes)
        for label, star in (("histogene", False), ("histogene_star", True)):
            model.hyperparams["aggregate_superres"] = star
            pred = dense(model.predict(fold.test)[:, genes].X)
            rows.append({"fold": fold.name, "method": label, "ari": ari_kmeans(pred, labels, seed=args.seed, n_pcs=N_PCS)})
            print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "ari.csv", index=False)
    wide = table.pivot(index="fold", columns="method", values="ari")
    wide.loc["mean"] = wide.mean()
    (args.out / "ari.md").write_text(
        "ARI of k-means clusters (10 PCs, k = number of labels) vs her2st expression-cluster labels\n\n"
        + _markdown(wide.round(3)) + "\n")
    print(wide.round(3))


if __name__ == "__main__":
    main()
