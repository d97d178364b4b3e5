"""XFuse speed and memory on this machine (issue 6, acceptance item 5).

1. Fit XFuse (fast preset) on one MOB section (MOB1, all spots, all 1,000 genes) with 2 torch
   threads; record the ELBO every step, the time until the ELBO plateaus and the peak RSS.
2. In a fresh process (so its peak RSS is its own): load the model and predict all 1,000
   genes on a 10 µm grid over the section's tissue (``predict_grid``, default 10 samples);
   record the wall time and peak RSS.

Plateau: the first step from which the 100-step trailing mean of the ELBO stays within 1% of
the total rise (final minus first-step ELBO) of its final value (the mean of the last 100 steps); see ``_mob.plateau``. The
first runs measured the 1% against the final value itself, which is not invariant to a
constant added to the ELBO and is strict when the final ELBO lies near zero; that time is
still reported beside it. Peak RSS:
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of each process.

The saved model (benchmarks/runs/xfuse_mob_speed/model, not committed) is also what
``mob_histology_only.py`` predicts MOB2 with.

Run (repository root)::

    nice env OMP_NUM_THREADS=2 .venv/bin/python benchmarks/xfuse/mob_speed.py --threads 2

Writes benchmarks/xfuse/mob_speed.{md,csv,json} and mob_speed_elbo.{csv,png}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _mob as M  # noqa: E402

DEFAULT_MODEL = M.REPO / "benchmarks" / "runs" / "xfuse_mob_speed" / "model"


def fit(args: argparse.Namespace) -> dict:
    from stfusion.models.api import save_model
    from stfusion.models.xfuse import XFuse

    section = M.read(args.section)
    genes = list(section.var_names)
    model = XFuse(preset="fast", seed=args.seed, progress=False, **({"steps": args.steps} if args.steps else {}))
    load0 = M._load()
    t0 = time.perf_counter()
    model.fit([section], genes=genes)
    fit_s = time.perf_counter() - t0
    load1 = M._load()
    rss = M.peak_rss_mb()
    save_model(model, args.model)
    df = M.history_frame(model.history_)
    mark = M.plateau(df, window=args.window, tol=args.tol, relative_to="rise")
    mark_final = M.plateau(df, window=args.window, tol=args.tol, relative_to="final")
    M.write_elbo(model.history_, args.out / "mob_speed_elbo",
                 f"XFuse fast preset, {args.section}, {len(genes)} genes, {args.threads} threads", args.window, mark)
    return {"stage": "fit", "section": args.section, "genes": len(genes), "spots": section.n_obs,
            "steps": len(model.history_), "metagenes": model.expr_.n_active, "fit_seconds": round(fit_s, 1),
            "seconds_per_step": round(fit_s / max(len(model.history_), 1), 3),
            "plateau_step": mark["plateau_step"], "plateau_minutes": round(mark["plateau_seconds"] / 60, 2),
            "plateau_rule": f"{args.window}-step trailing mean of the ELBO within {args.tol:.0%} of the total rise (final minus first-step ELBO) of its final value from then on",
            "plateau_step_final_rule": mark_final["plateau_step"],
            "plateau_minutes_final_rule": round(mark_final["plateau_seconds"] / 60, 2),
            "peak_rss_mb": round(rss, 1), "load_start": load0, "load_end": load1}


def grid(args: argparse.Namespace) -> dict:
    from stfusion.models.api import load_model

    section = M.read(args.section)
    model = load_model(args.model)
    load0 = M._load()
    t0 = time.perf_counter()
    out = model.predict_grid(section, grid_um=args.grid_um, genes=None, samples=args.samples)
    grid_s = time.perf_counter() - t0
    return {"stage": "grid", "section": args.section, "genes": out.n_vars, "grid_um": args.grid_um,
            "cells": out.n_obs, "samples": args.samples, "grid_seconds": round(grid_s, 1),
            "peak_rss_mb": round(M.peak_rss_mb(), 1), "load_start": load0, "load_end": M._load()}


def run_grid_subprocess(args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--stage", "grid", "--threads", str(args.threads), "--section", args.section,
           "--model", str(args.model), "--samples", str(args.samples), "--grid-um", str(args.grid_um)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(res.stdout.strip().splitlines()[-1])


def _plateau_cell(minutes: float, step: int, steps: int) -> str:
    if step >= steps:
        return f"not reached before the last step ({minutes:.1f} min)"
    return f"{minutes:.1f} min (step {step} of {steps})"


def report(args: argparse.Namespace, prov: M.Provenance, f: dict, g: dict) -> None:
    rows = [
        ("fit: time until ELBO plateau", _plateau_cell(f["plateau_minutes"], f["plateau_step"], f["steps"]), "<= 15 min"),
        ("fit: the same, 1% of the final value (first runs' rule)",
         _plateau_cell(f["plateau_minutes_final_rule"], f["plateau_step_final_rule"], f["steps"]), "-"),
        ("fit: total time, fast preset", f"{f['fit_seconds'] / 60:.1f} min ({f['seconds_per_step']} s/step)", "-"),
        ("fit: peak RSS", f"{f['peak_rss_mb'] / 1024:.2f} GB", "<= 4 GB"),
        (f"predict {g['genes']} genes on a {g['grid_um']:g} µm grid ({g['cells']} cells, {g['samples']} samples)",
         f"{g['grid_seconds'] / 60:.2f} min", "<= 2 min"),
        ("predict: peak RSS (own process)", f"{g['peak_rss_mb'] / 1024:.2f} GB", "-"),
    ]
    table = M.md_table(pd.DataFrame(rows, columns=["measure", "measured", "target"]))
    body = f"""
XFuse, fast preset, section {args.section} ({f['spots']} spots, {f['genes']} genes), seed {args.seed},
{args.threads} torch threads on a machine with {os.cpu_count()} cores shared with other jobs
(load average below). Plateau rule: {f['plateau_rule']}. Peak RSS: getrusage ru_maxrss of the
process (fit and grid prediction run in separate processes).

{table}

Load average during the fit: start {f['load_start']}, end {f['load_end']}; during the grid
prediction: start {g['load_start']}, end {g['load_end']}. Final metagenes: {f['metagenes']}.
ELBO curve: mob_speed_elbo.png / .csv (every step; seconds since the start of training).
"""
    M.write_report(args.out / "mob_speed.md", "XFuse speed and memory, one MOB section", prov, body)
    pd.DataFrame([f, g]).to_csv(args.out / "mob_speed.csv", index=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", choices=["all", "grid"], default="all")
    ap.add_argument("--section", default="MOB1")
    ap.add_argument("--steps", type=int, default=None, help="override the fast preset's steps (smoke tests)")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--grid-um", type=float, default=10.0)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--tol", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--out", type=Path, default=M.HERE)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    M.set_threads(args.threads)
    if args.stage == "grid":
        print(json.dumps(grid(args)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    prov = M.Provenance(args.seed, args.threads, preset="fast", steps=args.steps or "preset (2000)")
    f = fit(args)
    g = run_grid_subprocess(args)
    prov.stop()
    report(args, prov, f, g)
    print(json.dumps([f, g], indent=1))


if __name__ == "__main__":
    main()
