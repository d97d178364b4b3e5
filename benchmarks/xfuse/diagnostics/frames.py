"""XFuse prediction frames: predicting in frames of the training patch size vs larger frames.

The network is trained on patches of ``patch_px`` (128 px in the fast preset); prediction runs
in frames and keeps each frame's centre (``stfusion.models.xfuse.predict``). This script
measures what the frame size does, in one run, with the same fitted models:

1. Synthetic section (seeds 0-2, the settings of ``synthetic.py``): the posterior-mean expected
   counts (20 samples) summed over the 16 measured areas, divided by the measured totals, per
   marker gene, and the pixel AUC, in frames of 128 px (= the training patch), 192, 256 and 640.
2. MOB1 50% spot hold-out (the hidden spots of ``mob_holdout.toml``, top 100 genes by mean of
   the visible spots, ``fast`` preset fitted on the visible spots): median gene-wise Pearson r
   on log1p(counts / spot total x 1e4) of the hidden spots, frames of 128 vs 640 px.
3. MOB1, all 1,000 genes on a 10 µm grid with ``mob_speed.py``'s saved model: seconds per
   prediction, frames of 128 vs 640 px, alternated over two rounds.

Run (repository root, ~25 min on one thread)::

    nice env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/xfuse/diagnostics/frames.py

Writes benchmarks/xfuse/diagnostics/frames.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent  # benchmarks/xfuse/diagnostics: results are written here
sys.path.insert(0, str(HERE.parent))  # benchmarks/xfuse: _mob.py and the benchmark scripts
import _mob as M  # noqa: E402
from holdout_variants import pearson_per_gene  # noqa: E402

FRAMES = (128, 192, 256, 640)
SPEED_MODEL = M.REPO / "benchmarks" / "runs" / "xfuse_mob_speed" / "model"


def with_frame(model, frame_px: int):
    """The same fitted model predicting in frames of ``frame_px`` (training is unaffected)."""
    model.hyperparams["patch_px"] = int(frame_px)
    return model


def synthetic_rows(seeds: list[int], samples: int) -> list[dict]:
    from scipy import sparse

    from stfusion.models.xfuse.experiments import pixel_aucs, posterior_grid, run_synthetic

    rows = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            _, model, section = run_synthetic(tmp, seed=seed, samples=2)
            trained = model.hyperparams["patch_px"]
            measured = np.asarray((section.X.toarray() if sparse.issparse(section.X) else section.X).sum(0)).ravel()
            for frame in FRAMES:
                with_frame(model, frame)
                pred = model.predict(section, samples=samples)
                ratio = pred.layers["mean_counts"].sum(0) / measured
                nu, _ = posterior_grid(model, section, samples)
                auc = pixel_aucs(nu.mean(axis=0), section.uns["synthetic"]["label_map"])
                rows.append({"seed": seed, "frame_px": frame, "training_patch_px": trained,
                             **{f"total_ratio_{g}": float(r) for g, r in zip(pred.var_names, ratio, strict=True)},
                             "min_pixel_auc": min(auc.values())})
            with_frame(model, trained)
    return rows


def holdout_rows(seed: int) -> list[dict]:
    from stfusion.models.xfuse import XFuse

    train, test, genes = M.holdout_fold("MOB1", seed)
    start = time.perf_counter()
    model = XFuse(preset="fast", progress=False, samples=10, seed=seed).fit([train], genes=genes)
    fit_s = time.perf_counter() - start
    rows = []
    for frame in (128, 640):
        r = pearson_per_gene(with_frame(model, frame).predict(test), test, genes)
        rows.append({"frame_px": frame, "median_r": float(np.nanmedian(r)), "mean_r": float(np.nanmean(r)),
                     "metagenes": model.expr_.n_active, "fit_s": round(fit_s, 1)})
    return rows


def speed_rows(rounds: int) -> list[dict]:
    from stfusion.models.api import load_model

    if not (SPEED_MODEL / "weights.pt").is_file():
        return []
    section = M.read("MOB1")
    rows = []
    for rnd in range(rounds):
        for frame in (128, 640):
            model = with_frame(load_model(SPEED_MODEL), frame)
            start = time.perf_counter()
            out = model.predict_grid(section, grid_um=10.0, genes=None, samples=10)
            rows.append({"round": rnd, "frame_px": frame, "cells": out.n_obs, "genes": out.n_vars,
                         "seconds": round(time.perf_counter() - start, 1)})
    return rows


def write(out: Path, prov: dict, syn: list[dict], hold: list[dict], speed: list[dict]) -> None:
    syn_df, hold_df, speed_df = pd.DataFrame(syn), pd.DataFrame(hold), pd.DataFrame(speed)
    ratio_cols = [c for c in syn_df.columns if c.startswith("total_ratio_")]
    by_frame = syn_df.groupby("frame_px")[[*ratio_cols, "min_pixel_auc"]].agg(["min", "max"])
    by_frame.columns = [f"{a} {b}" for a, b in by_frame.columns]
    parts = ["# XFuse prediction frames\n", "Written by `frames.py` (see its docstring).\n", prov_md(prov),
             "\n## 1. Synthetic: expected counts over the measured areas / measured totals (min and max over seeds)\n",
             M.md_table(by_frame.reset_index().astype(object)), "\nPer seed:\n", M.md_table(syn_df.astype(object)),
             "\n## 2. MOB1 50% hold-out, one fit, hidden spots\n", M.md_table(hold_df.astype(object))]
    if len(speed_df):
        parts += ["\n## 3. MOB1, 1,000 genes on a 10 µm grid (10 samples), alternated\n", M.md_table(speed_df.astype(object), "{:.1f}")]
    out.with_suffix(".md").write_text("\n".join(parts) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"provenance": prov, "synthetic": syn, "holdout": hold, "speed": speed},
                                                   indent=1))


def prov_md(prov: dict) -> str:
    return "\n".join(f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in prov.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "frames")
    ap.add_argument("--render", action="store_true", help="only re-write the .md from the .json of a finished run")
    args = ap.parse_args()
    if args.render:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        write(args.out, saved["provenance"], saved["synthetic"], saved["holdout"], saved["speed"])
        return
    M.set_threads(args.threads)
    prov = M.Provenance(seed=0, threads=args.threads)
    syn = synthetic_rows(args.seeds, args.samples)
    hold = holdout_rows(0)
    speed = speed_rows(args.rounds)
    write(args.out, prov.stop(), syn, hold, speed)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
