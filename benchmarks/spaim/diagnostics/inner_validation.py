"""Choose between SpaIM's two benchmarked variants without the test genes (nested validation).

For each pair, only the genes of the benchmark's fold 0 *training* set are used: they are split
again into 5 inner folds (seed 1); each variant is fitted without an inner fold and scored on it
(median gene-wise PCC over all inner held-out genes, Li et al. 2022 metrics). The benchmark's
held-out genes of fold 0 are never seen.

Usage: OMP_NUM_THREADS=1 python benchmarks/spaim/diagnostics/inner_validation.py OUT.csv [VARIANT ...]
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pandas as pd
import torch

from stfusion.benchmark.protocols import gene_kfold
from stfusion.benchmark.scoring import score_imputation
from stfusion.data.splits import gene_kfold as kfold
from stfusion.io import reference as readers
from stfusion.models.spaim import SpaIM

DATA = Path(__file__).resolve().parents[4] / "shared" / "data"
PAIRS = {"osmfish": "stdiff_osmfish", "merfish": "spacexr_merfish", "slideseq": "spacexr_slideseq"}
FAST = {"epochs": 100, "batch_size": 32, "hidden": (256, 128)}
VARIANTS = {"spaim_fast": FAST, "spaim_fast_dropout": {**FAST, "dropout": 0.5}}


def inner_scores(name: str, folder: str, variants: list[str]) -> pd.DataFrame:
    reference, spatial = getattr(readers, f"read_{name}_pair")(DATA / folder)
    outer = next(iter(gene_kfold(reference, spatial, k=5, seed=0, name=name)))
    visible = outer.train[1]  # spatial data without the outer held-out genes
    genes = [g for g in visible.var_names if g in set(reference.var_names)]
    rows = []
    for i, hidden in enumerate(kfold(genes, k=5, seed=1)):
        train = visible[:, [g for g in genes if g not in set(hidden)]].copy()
        for label in variants:
            pred = SpaIM(**VARIANTS[label], seed=0).fit(reference, train).impute(list(hidden))
            rows.append(score_imputation(pred, visible, list(hidden)).assign(dataset=name, inner_fold=i, method=label))
    return pd.concat(rows, ignore_index=True)


def main(out: str, variants: list[str]) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    scores = pd.concat([inner_scores(n, f, variants) for n, f in PAIRS.items()], ignore_index=True)
    table = scores.pivot_table(index=["dataset", "method"], columns="metric", values="value", aggfunc="median")
    table.round(4).to_csv(out)
    print(table.round(3).to_string())


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:] or list(VARIANTS))
