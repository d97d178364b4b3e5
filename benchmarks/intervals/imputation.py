"""Observed coverage of TISSUE-style intervals for imputed genes (issue 26, item 2).

Gene folds on the three scRNA-seq + spatial pairs of ``../shared/data``: the genes both datasets
detect are split into ``--outer`` folds (seed); each fold is hidden from the spatial data, the
imputer is calibrated on the remaining (visible) genes with ``--inner``-fold cross-validation
(:func:`stfusion.models.conformal_impute.calibrate_imputer`), fitted on all visible genes, and
imputes the hidden fold; intervals at 80/90/95 % are checked against the hidden genes' measured
values. Every gene is hidden exactly once.

Truth: ``log1p(counts / cell total x 1e4)`` with the total over the *visible* genes (the panel the
imputer and its calibration saw: the intervals' declared target). ``cov90_strict`` also checks
90 % intervals against the strict target of stfusion's scoring (total over all measured genes,
hidden ones included), which no method sees.

Run from the repository root (about 15 minutes on 2 shared cores):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/intervals/imputation.py --out benchmarks/intervals
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

LEVELS = (0.8, 0.9, 0.95)
PAIRS = {"osmfish": ("read_osmfish_pair", "stdiff_osmfish"), "merfish": ("read_merfish_pair", "spacexr_merfish"),
         "slideseq": ("read_slideseq_pair", "spacexr_slideseq")}  # fmt: skip


def factories(names: list[str], tangram_epochs: int, gimvi_epochs: int) -> dict:
    from stfusion.baselines.knn_reference import KNNReferenceImputer
    from stfusion.baselines.peers import GimVIImputer, TangramImputer
    from stfusion.models.spaim import FAST, SpaIM

    table = {
        "knn_reference": (lambda: KNNReferenceImputer(), "KNNReferenceImputer(k=50, n_comps=30)"),
        "spaim_fast": (lambda: SpaIM(**FAST, seed=0), "SpaIM(epochs=100, batch_size=32, hidden=(256, 128), seed=0)"),
        "tangram_clusters": (lambda: TangramImputer(mode="clusters", epochs=tangram_epochs, seed=0),
                             f"TangramImputer(mode='clusters', epochs={tangram_epochs}, lr=0.1, seed=0)"),
        "gimvi": (lambda: GimVIImputer(epochs=gimvi_epochs, seed=0),
                  f"GimVIImputer(readout='normalized', epochs={gimvi_epochs}, seed=0)"),
    }  # fmt: skip
    return {n: table[n] for n in names}


def detected_genes(ref, sp) -> list[str]:
    shared = [g for g in sp.var_names if g in set(ref.var_names)]
    r = np.asarray(ref[:, shared].X.sum(axis=0)).ravel()
    s = np.asarray(sp[:, shared].X.sum(axis=0)).ravel()
    return [g for g, a, b in zip(shared, r, s) if a > 0 and b > 0]


def run_pair(name, ref, sp, methods, outer, inner, seed, log, cache=None):
    from stfusion.data.normalize import log1p_normalize_total
    from stfusion.metrics.core import interval_coverage
    from stfusion.models.conformal_impute import calibration_from_predictions, cross_validated_predictions

    genes = detected_genes(ref, sp)
    sp = sp[:, genes].copy()
    order = np.random.default_rng(seed).permutation(len(genes))
    folds = [[genes[i] for i in part] for part in np.array_split(order, outer)]
    all_totals = np.asarray(sp.X.sum(axis=1), dtype=np.float64).ravel()
    rows, timings = [], []
    for method, (make, desc) in methods.items():
        t0 = time.perf_counter()
        for f, hidden in enumerate(folds):
            held = set(hidden)
            visible = [g for g in genes if g not in held]
            sp_vis = sp[:, visible].copy()
            hit = None if cache is None else cache / f"{name}_{method}_outer{outer}_fold{f}_inner{inner}_seed{seed}.npz"
            if hit is not None and hit.exists():  # the imputers' outputs of an earlier run (fits skipped)
                with np.load(hit, allow_pickle=False) as a:
                    cv_pred, cv_truth, pred = a["cv_pred"], a["cv_truth"], a["pred"]
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cv_pred, cv_truth = cross_validated_predictions(make, ref, sp_vis, visible, n_folds=inner, seed=seed)
                    pred = np.asarray(make().fit(ref, sp_vis, visible).impute(hidden).X, dtype=np.float64)
                if hit is not None:
                    hit.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(hit, cv_pred=cv_pred, cv_truth=cv_truth, pred=pred)
            obs, coords = list(sp_vis.obs_names), np.asarray(sp_vis.obsm["spatial"])
            # what calibrate_imputer(make, ref, sp_vis, visible, n_folds=inner, seed=seed) returns
            calibs = {"tissue": calibration_from_predictions(cv_pred, cv_truth, visible, obs, coords, seed=seed),
                      # the same scores without the groups (one gene group, one cell group)
                      "tissue_nogroups": calibration_from_predictions(cv_pred, cv_truth, visible, obs, coords, seed=seed,
                                                                      gene_groups=1, cell_groups=1),
                      # plain split conformal: one group, constant variability (|residual| quantile)
                      "plain": calibration_from_predictions(cv_pred, cv_truth, visible, obs, coords, seed=seed,
                                                            offset=1e6, gene_groups=1, cell_groups=1)}  # fmt: skip
            totals = np.asarray(sp_vis.X.sum(axis=1), dtype=np.float64).ravel()
            truth = log1p_normalize_total(sp[:, hidden].X, 1e4, totals=totals)
            strict = log1p_normalize_total(sp[:, hidden].X, 1e4, totals=all_totals)
            for variant, calib in calibs.items():
                out = {"pair": name, "method": method, "intervals": variant, "fold": f}
                # diagnostics: the final model's prediction of the hidden genes vs the fold models' of the visible
                per = {"truth_sd": truth.std(axis=0), "pred_mean": pred.mean(axis=0),
                       "cv_pred_mean": np.full(len(hidden), cv_pred.mean()), "truth_mean": truth.mean(axis=0),
                       "cv_truth_mean": np.full(len(hidden), cv_truth.mean())}  # fmt: skip
                for level in LEVELS:
                    lo, hi = calib.intervals(pred, level)
                    assert (lo <= pred + 1e-9).all() and (pred <= hi + 1e-9).all()
                    cov, _ = interval_coverage(truth, lo, hi)
                    per[f"cov{round(level * 100)}"] = cov
                    per[f"width{round(level * 100)}"] = (hi - lo).mean(axis=0)
                    if level == 0.9:
                        per["cov90_strict"], _ = interval_coverage(strict, lo, hi)
                for j, g in enumerate(hidden):
                    rows.append({**out, "gene": g, **{k: float(v[j]) for k, v in per.items()}})
                log(f"{name} {method} {variant} fold {f}: {len(hidden)} hidden, cov90 {np.mean(per['cov90']):.3f}, "
                    f"width90 {np.mean(per['width90']):.2f}, gene groups {len(calib.gene_centres)}, "
                    f"cell groups {calib.params['cell_groups']}, {time.perf_counter() - t0:.0f} s")  # fmt: skip
        timings.append({"pair": name, "method": method, "settings": desc, "seconds": time.perf_counter() - t0,
                        "fits": outer * (inner + 1), "n_genes": len(genes), "n_cells": sp.n_obs})  # fmt: skip
    return rows, timings


def summarise(per_gene: pd.DataFrame) -> pd.DataFrame:
    keys = ["pair", "method", "intervals"]
    cols = [c for c in per_gene.columns if c.startswith(("cov", "width", "truth_", "pred_", "cv_"))]
    out = per_gene.groupby(keys, sort=False)[cols].mean().reset_index()
    out["n_genes"] = per_gene.groupby(keys, sort=False).size().to_numpy()
    # between-gene spread of coverage at 90 %: the standard error of the gene average
    out["cov90_se"] = per_gene.groupby(keys, sort=False)["cov90"].sem().to_numpy()
    return out


def render(out: Path, tag: str) -> str:
    """Markdown tables of ``{tag}_summary.csv`` (and ``{tag}_timings.csv`` when present)."""
    summary = pd.read_csv(out / f"{tag}_summary.csv")
    timings_path = out / f"{tag}_timings.csv"
    secs = {}
    if timings_path.exists():
        t = pd.read_csv(timings_path)
        secs = {(r.pair, r.method): r.seconds for r in t.itertuples()}
    lines = ["| pair | method | intervals | genes | cov 80 | cov 90 (± SE) | cov 95 | width 80 | width 90 | width 95 "
             "| truth SD | cov 90 strict | seconds |", "|" + "---|" * 13]  # fmt: skip
    for r in summary.itertuples():
        ok = all(abs(getattr(r, f"cov{lv}") - lv / 100) <= 0.03 for lv in (80, 90, 95))
        mark = "" if ok else " *"
        sec = secs.get((r.pair, r.method), float("nan")) if r.intervals == "tissue" else float("nan")
        lines.append(
            f"| {r.pair} | {r.method} | {r.intervals}{mark} | {r.n_genes} | {r.cov80:.3f} | {r.cov90:.3f} ± {r.cov90_se:.3f} "
            f"| {r.cov95:.3f} | {r.width80:.2f} | {r.width90:.2f} | {r.width95:.2f} | {r.truth_sd:.2f} "
            f"| {r.cov90_strict:.3f} | {'' if np.isnan(sec) else f'{sec:.0f}'} |"
        )  # fmt: skip
    text = "\n".join(lines) + "\n"
    (out / f"{tag}_summary.md").write_text(text)
    return text


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/intervals"))
    p.add_argument("--data", type=Path, default=Path(os.environ.get("STFUSION_SHARED_DATA", "../shared/data")))
    p.add_argument("--pairs", nargs="+", default=list(PAIRS))
    p.add_argument("--methods", nargs="+", default=["knn_reference", "spaim_fast", "tangram_clusters"])
    p.add_argument("--outer", type=int, default=3)
    p.add_argument("--inner", type=int, default=4)
    p.add_argument("--tangram-epochs", type=int, default=300)
    p.add_argument("--gimvi-epochs", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="imputation")
    p.add_argument("--cache", type=Path, default=None, help="keep/reuse the imputers' outputs here (not in the repo)")
    p.add_argument("--keep-timings", action="store_true",
                   help="leave {tag}_timings.csv as it is (a rerun from --cache times no fits)")
    p.add_argument("--render-only", action="store_true", help="only write {tag}_summary.md from the CSVs in --out")
    args = p.parse_args(argv)
    if args.render_only:
        print(render(args.out, args.tag))
        return

    import torch

    from stfusion import io

    torch.set_num_threads(1)
    log_path = args.out / f"{args.tag}_log.txt"
    args.out.mkdir(parents=True, exist_ok=True)

    def log(msg):
        line = f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {msg}"
        print(line, flush=True)
        with open(log_path, "a") as fh:
            fh.write(line + "\n")

    log(f"start: {' '.join(sys.argv)}; python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} cpus, {platform.processor() or platform.machine()}")  # fmt: skip
    methods = factories(args.methods, args.tangram_epochs, args.gimvi_epochs)
    rows, timings = [], []
    for name in args.pairs:
        reader, folder = PAIRS[name]
        ref, sp = getattr(io, reader)(args.data / folder)
        r, t = run_pair(name, ref, sp, methods, args.outer, args.inner, args.seed, log, args.cache)
        rows += r
        timings += t
        per_gene = pd.DataFrame(rows)
        per_gene.to_csv(args.out / f"{args.tag}_per_gene.csv.gz", index=False, float_format="%.5g")
        if not args.keep_timings:
            pd.DataFrame(timings).to_csv(args.out / f"{args.tag}_timings.csv", index=False, float_format="%.1f")
        summarise(per_gene).to_csv(args.out / f"{args.tag}_summary.csv", index=False, float_format="%.4f")
    render(args.out, args.tag)
    log("done")


if __name__ == "__main__":
    main()
