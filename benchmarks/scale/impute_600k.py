"""Chunked kNN imputation of a synthetic 600,000-cell x 500-gene spatial table from a 50,000-cell reference.

Synthetic data (generated in the child process, in chunks, as sparse counts): 10 cell types with
gamma-distributed gene programmes over 600 genes; the reference (50,000 cells, depth ~2,000)
measures all 600, the spatial table (600,000 cells, depth ~300, per-gene capture noise) the
first 500. The kNN baseline (k=50, 30 PCs, 50,000-cell chunks) imputes the 100 unmeasured genes.
Peak RSS is the child's ru_maxrss (data generation included). Accuracy: mean Pearson r over the
100 genes against the spatial data's hidden expected expression (log1p of the Poisson means).

    .venv/bin/python benchmarks/scale/impute_600k.py
"""

from __future__ import annotations

import argparse

from _common import machine, run_child, write_results

CHILD = """
import sys, time
import numpy as np, anndata as ad, pandas as pd
from scipy import sparse
from stfusion.baselines.knn_reference import KNNReferenceImputer
n_sp, n_ref, n_genes, n_meas, chunk = (int(v) for v in sys.argv[1:6])
rng = np.random.default_rng(0)
profiles = rng.gamma(0.6, 1.0, (10, n_genes)) * (1 + 7 * (rng.random((10, n_genes)) < 0.05))
profiles /= profiles.sum(axis=1, keepdims=True)
capture = np.exp(rng.normal(0, 0.3, n_genes))
def counts(n, depth, cap, seed):
    r = np.random.default_rng(seed)
    types = r.integers(0, 10, n)
    blocks, truth = [], []
    for s in range(0, n, 50_000):
        t = types[s:s + 50_000]
        lam = profiles[t] * cap * depth * r.lognormal(0, 0.3, (len(t), 1))
        blocks.append(sparse.csr_matrix(r.poisson(lam).astype(np.float32)))
        truth.append(np.log1p(lam[:, n_meas:] / lam.sum(axis=1, keepdims=True) * 1e4).astype(np.float32) if cap is not None and n == n_sp else None)
    return sparse.vstack(blocks, format="csr"), types, truth
genes = [f"g{i}" for i in range(n_genes)]
t0 = time.perf_counter()
ref_x, _, _ = counts(n_ref, 2000.0, 1.0, 1)
sp_x, sp_types, truth = counts(n_sp, 300.0, capture, 2)
truth = np.vstack(truth) if truth[0] is not None else None
sp_x = sp_x[:, :n_meas]
ref = ad.AnnData(X=ref_x, var=pd.DataFrame(index=genes))
sp = ad.AnnData(X=sp_x, var=pd.DataFrame(index=genes[:n_meas]))
t1 = time.perf_counter()
model = KNNReferenceImputer(k=50, n_comps=30, chunk_size=chunk).fit(ref, sp)
out = model.impute(genes[n_meas:])
t2 = time.perf_counter()
r = [np.corrcoef(out.X[:, j], truth[:, j])[0, 1] for j in range(out.n_vars)]
RESULT = {"spatial_cells": n_sp, "reference_cells": n_ref, "measured_genes": n_meas, "imputed_genes": out.n_vars,
          "chunk_size": chunk, "spatial_nnz": int(sp_x.nnz), "generate_s": round(t1 - t0, 1),
          "impute_s": round(t2 - t1, 1), "mean_r_vs_truth": round(float(np.nanmean(r)), 3)}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spatial-cells", type=int, default=600_000)
    parser.add_argument("--reference-cells", type=int, default=50_000)
    parser.add_argument("--chunk-size", type=int, default=50_000)
    args = parser.parse_args()
    info = machine()
    res = run_child(CHILD, str(args.spatial_cells), str(args.reference_cells), "600", "500", str(args.chunk_size))
    row = {"method": "knn_reference", **res, "seed": 0, **info, "load_1m_after": machine()["load_1m"]}
    print(row, flush=True)
    write_results("impute_600k", [row], "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale/impute_600k.py",
                  "Peak RSS includes generating the synthetic data (sparse) in the same process. Target: <= 8 GB.")


if __name__ == "__main__":
    main()
