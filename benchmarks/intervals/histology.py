"""Coverage of prediction intervals for the histology models and baselines (issue 26 items 1, 3, 4).

For every method and setting: observed coverage (mean over genes of each gene's fraction of test
spots inside the interval) at nominal 50/80/90/95% and the mean interval width, in the space of
the prediction's X (log1p(counts / spot total x 1e4) for every method here). Settings:

- ``her2st_loso``: her2st patient C (C2-C6), leave one section out; calibrated on the training
  sections' held-out spots (``calibration="spots"``: a spatially blocked 20% of each training
  section's spots, not trained on) and on a held-out training section (``"sections"``: the last
  training section, not trained on).
- ``her2st_c_to_b4``: trained on C2-C6, tested on B4 (patient B); calibrated on patient C only
  (spots / sections as above). ``b4_half``: the ``sections`` model recalibrated on a blocked 50%
  of B4's spots and scored on B4's other half (calibrating on the new patient), beside the
  C-calibrated intervals on the same half (``sections@half``).
- ``mob_holdout``: STUtility MOB1 and MOB2, 50% of each section's spots hidden (seeded, as the
  ``spot_holdout`` protocol); calibrated on a blocked 20% of the held-in half. Methods with an SD
  (GP, XFuse) are also scored with their own intervals (``model``: X ± z SD) and, for XFuse,
  with the conformal recalibration of its posterior SD (SD-normalised scores).

Run from the repository root (writes ``benchmarks/intervals/results/``)::

    nice .venv/bin/python benchmarks/intervals/histology.py --out benchmarks/intervals/results

Patches of a section are read once per patch size and reused by every fit (a cache in this script:
the same pixels, so the same numbers, as reading them again).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from stfusion.data.splits import spot_holdout
from stfusion.metrics.coverage import coverage, interval_width
from stfusion.models import registry
from stfusion.models.conformal import LEVELS, blocked_spot_holdout, prediction_space, split_for_calibration, truth_in_space

log = logging.getLogger("coverage")
DATA = Path(os.environ.get("STFUSION_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
HER2_C = ["C2", "C3", "C4", "C5", "C6"]


# --------------------------------------------------------------------------- patch cache (same pixels, read once)
_FULL: dict[str, np.ndarray] = {}  # image path -> the full section's spot centres
_CACHE: dict[tuple, tuple[dict, np.ndarray]] = {}


def _install_patch_cache() -> None:
    from stfusion.baselines import image_regression
    from stfusion.data import patches as P
    from stfusion.models.histogene import model as hg
    from stfusion.models.stnet import model as st

    original = P.read_patches

    def cached(section, centers_px, size_um, out_px, **kw):
        lib = next(iter(section.uns["spatial"].values()))
        path = str(lib["metadata"]["source_image_path"])
        key = (path, float(size_um), int(out_px), float(lib["microns_per_pixel"]))
        centers = np.asarray(centers_px, dtype=np.float64)
        if key not in _CACHE:
            full = _FULL.get(path, centers)
            _CACHE[key] = ({tuple(c): i for i, c in enumerate(full)}, original(section, full, size_um, out_px))
        index, arr = _CACHE[key]
        try:
            rows = [index[tuple(c)] for c in centers]
        except KeyError:
            return original(section, centers, size_um, out_px, **kw)
        return arr[rows]

    for mod in (image_regression, st, hg):
        mod.read_patches = cached


# --------------------------------------------------------------------------- data
def read_her2st(ids):
    from stfusion.io import read_her2st

    out = []
    for s in ids:
        sec = read_her2st(DATA / "her2st", s)
        totals = np.asarray(sec.X.sum(axis=1)).ravel()
        sec = sec[totals >= 1].copy()  # as the benchmark's min_counts = 1
        _FULL[str(next(iter(sec.uns["spatial"].values()))["metadata"]["source_image_path"])] = np.asarray(
            sec.obsm["spatial"], dtype=np.float64)
        out.append(sec)
    return out


def read_mob():
    from stfusion.io import read_stutility

    out = []
    for s in ("MOB1", "MOB2"):
        sec = read_stutility(DATA / "stutility_mob", s)
        totals = np.asarray(sec.X.sum(axis=1)).ravel()
        sec = sec[totals >= 1].copy()
        _FULL[str(next(iter(sec.uns["spatial"].values()))["metadata"]["source_image_path"])] = np.asarray(
            sec.obsm["spatial"], dtype=np.float64)
        out.append(sec)
    return out


# --------------------------------------------------------------------------- scoring
def score(model, pred, test, setting, fold, method, calibration, interval="auto") -> list[dict]:
    genes = list(pred.var_names)
    sub = pred[list(test.obs_names)].copy()
    truth = truth_in_space(test, genes, prediction_space(sub))
    rows = []
    for level in LEVELS:
        iv = model.add_intervals(sub.copy(), level, interval)
        lo, hi = np.asarray(iv.layers["lower"], float), np.asarray(iv.layers["upper"], float)
        cov, pooled = coverage(truth, lo, hi)
        width = interval_width(lo, hi)
        rows += [{"setting": setting, "fold": fold, "method": method, "calibration": calibration, "nominal": level,
                  "gene": g, "coverage": c, "width": w} for g, c, w in zip(genes, cov, width)]
    return rows


def make(name, params):
    return registry.get(name)(**params)


# --------------------------------------------------------------------------- settings
def her2st_settings(methods, genes, rows, timings, b4=True):
    sections = read_her2st(HER2_C + (["B4"] if b4 else []))
    c_secs, b4_sec = sections[:5], (sections[5] if b4 else None)
    for label, (name, params) in methods.items():
        for i, test in enumerate(c_secs):
            train = [s for j, s in enumerate(c_secs) if j != i]
            for kind in ("spots", "sections"):
                t0 = time.perf_counter()
                model = make(name, params).fit(train, genes=genes, calibration=kind)
                pred = model.predict(test)
                rows += score(model, pred, test, "her2st_loso", HER2_C[i], label, kind)
                timings.append({"setting": "her2st_loso", "fold": HER2_C[i], "method": label, "calibration": kind,
                                "seconds": time.perf_counter() - t0})
                log.info("her2st_loso %s %s %s %.0f s", label, HER2_C[i], kind, timings[-1]["seconds"])
        if b4_sec is None:
            continue
        half = blocked_spot_holdout(b4_sec, 0.5, seed=0)
        cal_b4, test_b4 = b4_sec[half].copy(), b4_sec[~half].copy()
        for kind in ("spots", "sections"):
            t0 = time.perf_counter()
            model = make(name, params).fit(c_secs, genes=genes, calibration=kind)
            pred = model.predict(b4_sec)
            rows += score(model, pred, b4_sec, "her2st_c_to_b4", "B4", label, kind)
            if kind == "sections":
                rows += score(model, pred, test_b4, "her2st_c_to_b4", "B4 half", label, "sections@half")
                model.calibrate(cal_b4, kind="b4_half")  # calibrating on the new patient
                rows += score(model, pred, test_b4, "her2st_c_to_b4", "B4 half", label, "b4_half")
            timings.append({"setting": "her2st_c_to_b4", "fold": "B4", "method": label, "calibration": kind,
                            "seconds": time.perf_counter() - t0})
            log.info("her2st_c_to_b4 %s %s %.0f s", label, kind, timings[-1]["seconds"])


def mob_settings(methods, n_genes, rows, timings, only=None):
    from stfusion.data.genes import resolve_genes

    sections = read_mob()
    for s in sections:
        sid = s.uns["stfusion"]["section_id"]
        if only and sid not in only:
            continue
        hidden = np.asarray(spot_holdout(s, 0.5, seed=0))
        train, test = s[~hidden].copy(), s[hidden].copy()
        genes = list(resolve_genes(n_genes, [train]))
        for label, (name, params) in methods.items():
            t0 = time.perf_counter()
            model = make(name, params).fit([train], genes=genes, calibration="spots")
            pred = model.predict(test)
            rows += score(model, pred, test, "mob_holdout", sid, label, "spots", "conformal")
            if "sd" in pred.layers:  # the model's own SD, and conformal scores not divided by it
                rows += score(model, pred, test, "mob_holdout", sid, label, "model", "model")
                seed = int(model.hyperparams.get("seed", 0) or 0)  # the same held-out spots as fit(calibration="spots")
                _, held, _ = split_for_calibration([train], "spots", 0.2, seed)
                model.calibrate(held, kind="spots", normalise=False)
                rows += score(model, pred, test, "mob_holdout", sid, label, "spots, unnormalised", "conformal")
            timings.append({"setting": "mob_holdout", "fold": sid, "method": label, "calibration": "spots",
                            "seconds": time.perf_counter() - t0})
            log.info("mob_holdout %s %s %.0f s", label, sid, timings[-1]["seconds"])


# --------------------------------------------------------------------------- tables
def summarise(per_gene: pd.DataFrame) -> pd.DataFrame:
    """Mean over genes per fold, then mean over folds; shortfall = nominal - observed."""
    per_fold = per_gene.groupby(["setting", "method", "calibration", "fold", "nominal"]).agg(
        coverage=("coverage", "mean"), width=("width", "mean")).reset_index()
    out = per_fold.groupby(["setting", "method", "calibration", "nominal"]).agg(
        coverage=("coverage", "mean"), coverage_min_fold=("coverage", "min"), width=("width", "mean")).reset_index()
    out["shortfall"] = out["nominal"] - out["coverage"]
    return out


def markdown(summary: pd.DataFrame) -> str:
    lines = []
    for setting, df in summary.groupby("setting", sort=False):
        wide = df.pivot_table(index=["method", "calibration"], columns="nominal",
                              values=["coverage", "coverage_min_fold", "width"])
        lines += [f"## {setting}", "", "| method | calibration | cov. 50% | cov. 80% | cov. 90% | cov. 95% | "
                  "worst fold 90% | width 80% | width 90% | width 95% |", "|---|---|---|---|---|---|---|---|---|---|"]
        for (method, cal), r in wide.iterrows():
            cells = ([f"{r[('coverage', lv)]:.3f}" for lv in LEVELS] + [f"{r[('coverage_min_fold', 0.9)]:.3f}"]
                     + [f"{r[('width', lv)]:.3f}" for lv in (0.8, 0.9, 0.95)])
            lines.append(f"| {method} | {cal} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def figures(summary: pd.DataFrame, out: Path) -> None:
    import matplotlib.pyplot as plt

    from stfusion.pl.coverage import coverage_plot

    for setting, df in summary.groupby("setting", sort=False):
        methods = list(dict.fromkeys(df["method"]))
        cols = min(3, len(methods))
        rows = -(-len(methods) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols + 1.5, 3.2 * rows), squeeze=False)
        for ax, m in zip(axes.ravel(), methods):
            d = df[df["method"] == m]
            t = d.assign(method=d["calibration"]).rename(columns={"coverage": "observed"})
            coverage_plot(t[["method", "nominal", "observed", "width"]], title=f"{setting}: {m}", ax=ax,
                          legend=ax is axes.ravel()[min(cols, len(methods)) - 1])
        for ax in axes.ravel()[len(methods):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / f"coverage_{setting}.png", dpi=100, bbox_inches="tight")
        plt.close(fig)


HER2_METHODS = {
    "constant": ("constant", {}),
    "histogram_regression": ("histogram_regression", {}),
    "colour_texture_ridge": ("colour_texture_ridge", {}),
    "depth_only": ("depth_only", {}),
    "stnet_fast6": ("stnet", {"preset": "fast", "epochs": 6}),
    "histogene_fast10": ("histogene", {"preset": "fast", "epochs": 10}),
}
MOB_METHODS = {
    "constant": ("constant", {}),
    "nearest_neighbour": ("nearest_neighbour", {}),
    "linear": ("linear", {}),
    "gaussian_process": ("gaussian_process", {}),
    "colour_texture_ridge": ("colour_texture_ridge", {}),
    # a small XFuse (20 µm/px, 64 px patches, depth 4, width 8, 300 steps) to fit the compute budget
    "xfuse_small": ("xfuse", {"preset": "fast", "resolution_um": 20.0, "patch_px": 64, "depth": 4, "base_width": 8,
                              "steps": 300, "metagene_interval": 50, "progress": False}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/intervals/results")
    ap.add_argument("--settings", default="her2st,mob")
    ap.add_argument("--her2st-methods", default=",".join(HER2_METHODS))
    ap.add_argument("--mob-methods", default=",".join(MOB_METHODS))
    ap.add_argument("--mob-genes", type=int, default=100)
    ap.add_argument("--mob-sections", default="MOB1,MOB2")
    ap.add_argument("--merge", nargs="*", default=None, metavar="RUN_DIR",
                    help="run nothing: concatenate the per-gene tables of earlier runs into --out and rebuild its tables")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(1)
    _install_patch_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge is not None:
        per_gene = pd.concat([pd.read_csv(Path(d) / "per_gene_coverage.csv.gz") for d in args.merge], ignore_index=True)
        times = pd.concat([pd.read_csv(Path(d) / "timings.csv") for d in args.merge], ignore_index=True)
        write_tables(per_gene, times, out, full=False)
        return
    rows, timings = [], []
    start = time.perf_counter()
    if "her2st" in args.settings:
        genes = [str(g) for g in np.load(DATA / "her2st" / "her_hvg_cut_1000.npy", allow_pickle=False)]
        her2 = {k: HER2_METHODS[k] for k in args.her2st_methods.split(",") if k}
        her2st_settings(her2, genes, rows, timings)
    if "mob" in args.settings:
        mob = {k: MOB_METHODS[k] for k in args.mob_methods.split(",") if k}
        mob_settings(mob, args.mob_genes, rows, timings, args.mob_sections.split(","))
    write_tables(pd.DataFrame(rows), pd.DataFrame(timings), out)
    (out / "run.json").write_text(json.dumps({"seconds": time.perf_counter() - start, "args": vars(args)}, indent=2))


def write_tables(per_gene: pd.DataFrame, times: pd.DataFrame, out: Path, full: bool = True) -> None:
    """summary.csv/.md, per_fold.csv (mean over genes per fold and level), per_gene_coverage_90.csv.gz
    (each gene at nominal 90%), figures; ``full``: also every gene at every level (for --merge)."""
    if full:
        per_gene.to_csv(out / "per_gene_coverage.csv.gz", index=False)
    per_gene[per_gene.nominal == 0.9].to_csv(out / "per_gene_coverage_90.csv.gz", index=False, float_format="%.4f")
    keys = ["setting", "method", "calibration", "fold", "nominal"]
    per_fold = per_gene.groupby(keys).agg(coverage=("coverage", "mean"), q10=("coverage", lambda v: v.quantile(0.1)),
                                          q90=("coverage", lambda v: v.quantile(0.9)), width=("width", "mean"),
                                          genes=("gene", "size")).reset_index()
    per_fold.to_csv(out / "per_fold.csv", index=False, float_format="%.4f")
    times.to_csv(out / "timings.csv", index=False, float_format="%.1f")
    summary = summarise(per_gene)
    summary.to_csv(out / "summary.csv", index=False, float_format="%.4f")
    (out / "summary.md").write_text("# Interval coverage (histology)\n\n" + markdown(summary))
    figures(summary, out)
    print(markdown(summary))


if __name__ == "__main__":
    main()
