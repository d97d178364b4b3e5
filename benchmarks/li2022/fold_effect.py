"""Does the fold assignment explain why gimVI scores above Li et al.'s per-gene file on osmFISH?

Our KFold(10) puts the five GABAergic markers (Gad2, Slc32a1, Vip, Crh, Crhbp) in five different
folds, so each is imputed with the other four among the training genes. This script holds the
five out together (one fold, every other shared gene for training) and scores them exactly as
the li2022_imputation protocol does (Li's gimVI_impute, raw-count truth, Li's PCC).

Usage (repository root): OMP_NUM_THREADS=1 python benchmarks/li2022/fold_effect.py > benchmarks/li2022/fold_effect.txt
"""

import time
from pathlib import Path

import numpy as np
import pandas as pd

from stfusion.benchmark.papers.li2022 import li_gimvi, li_metrics, li_shared_genes
from stfusion.io import read_osmfish_pair

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "stdiff_osmfish"
LI = Path(__file__).resolve().parents[3] / "shared" / "data" / "reference_results" / "li2022_osmfish" / "gimVI_Metrics.txt"
GROUP = ["Gad2", "Slc32a1", "Vip", "Crh", "Crhbp"]

reference, spatial = read_osmfish_pair(DATA)
shared = li_shared_genes(reference, spatial)
train = [g for g in shared if g not in GROUP]
t = time.time()
pred = li_gimvi(reference, spatial[:, train].copy(), shared, GROUP, epochs=200, seed=0)
x = spatial[:, GROUP].X
truth = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=float)
pcc = li_metrics(truth, pred)["PCC"]
li = pd.read_csv(LI, sep="\t", index_col=0)["PCC"]
print(f"gimVI, osmFISH, the five GABAergic markers held out together (seed 0, {time.time() - t:.0f} s):")
print("gene      together  Li et al.")
for g, v in zip(GROUP, pcc):
    print(f"{g:9s} {v:8.3f}  {li[g.upper()]:8.3f}")
