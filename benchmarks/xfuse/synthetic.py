"""XFuse's synthetic proof of principle (paper Fig. 1d-e) on stfusion's generator.

For each seed: make the synthetic section (shapes of three colour-coded subtypes, 4 x 4
square measurement areas of 96 µm), fit XFuse with the settings of
``stfusion.models.xfuse.experiments.SYNTHETIC_PARAMS``, predict every full-resolution pixel
by Monte Carlo (20 posterior samples) and score:

- pixel-level AUC per subtype of the predicted expected count of its marker gene (target
  >= 0.98 each; the paper reports 1.00), beside the per-spot-average baseline;
- the mean predictive SD (of the called subtype's share of the markers' expression) of
  misclassified vs correctly classified shape pixels.

Writes ``results.csv`` (one row per seed and subtype), ``summary.md`` (tables, command,
machine, timings), ``elbo.png`` and the ground truth / inferred mean / inferred SD images of
the first seed. Run from the repository root::

    python benchmarks/xfuse/synthetic.py --seeds 0 1 2 --out benchmarks/xfuse/synthetic_results
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stfusion.models.xfuse.experiments import SYNTHETIC_PARAMS, run_synthetic, save_figures

HERE = Path(__file__).resolve().parent


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _elbo_plot(histories: dict[int, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for seed, hist in histories.items():
        steps = np.asarray([r["step"] for r in hist])
        elbo = np.asarray([r["elbo"] for r in hist])
        k = 10
        smooth = np.convolve(elbo, np.ones(k) / k, mode="valid")
        ax[0].plot(steps[k - 1 :], smooth, label=f"seed {seed}")
        ax[1].plot(steps, [r["metagenes"] for r in hist], label=f"seed {seed}")
    ax[0].set(xlabel="step", ylabel="ELBO (nats, 10-step mean)", title="ELBO")
    ax[1].set(xlabel="step", ylabel="active metagenes", title="drop-and-split")
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see run_synthetic)")
    ap.add_argument("--out", type=Path, default=HERE / "synthetic_results")
    ap.add_argument("--param", "-p", action="append", default=[], help="override a setting, e.g. -p depth=6")
    args = ap.parse_args(argv)
    args.params = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.param)}
    args.out.mkdir(parents=True, exist_ok=True)
    rows, runs, histories = [], [], {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            result, model, section = run_synthetic(tmp, seed=seed, samples=args.samples, threads=args.threads, **args.params)
            if seed == args.seeds[0]:
                save_figures(result, section, args.out)
        histories[seed] = model.history_
        for sub, auc in result.auc.items():
            rows.append({"seed": seed, "subtype": sub, "auc": auc, "baseline_auc": result.baseline_auc[sub]})
        runs.append({"seed": seed, "sd_misclassified": result.sd_misclassified, "sd_correct": result.sd_correct,
                     "misclassified_pixels": result.n_misclassified, "shape_pixels": result.n_shape_pixels,
                     "metagenes": result.metagenes, "steps": result.steps, "fit_s": result.fit_seconds,
                     "predict_s": result.predict_seconds})
        print(f"seed {seed}: AUC {result.auc} (per-spot average {result.baseline_auc}); SD misclassified "
              f"{result.sd_misclassified:.4f} vs correct {result.sd_correct:.4f}; fit {result.fit_seconds:.0f} s", flush=True)
    table, per_run = pd.DataFrame(rows), pd.DataFrame(runs)
    table.to_csv(args.out / "results.csv", index=False)
    per_run.to_csv(args.out / "runs.csv", index=False)
    _elbo_plot(histories, args.out / "elbo.png")
    _summary(args, table, per_run)


def _summary(args, table: pd.DataFrame, per_run: pd.DataFrame) -> None:
    by_sub = table.groupby("subtype")[["auc", "baseline_auc"]].agg(["mean", "min"])
    lines = [
        "# XFuse synthetic proof of principle",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Seeds: {args.seeds}; Monte Carlo samples: {args.samples}; settings: `{json.dumps({**SYNTHETIC_PARAMS, **args.params})}`  ",
        f"Machine: {os.cpu_count()} cores ({_cpu()}), torch {torch.__version__} with {args.threads} thread(s); "
        f"{datetime.date.today().isoformat()}",
        "",
        "Pixel-level AUC of each subtype's marker (all 384 x 384 pixels; target >= 0.98, paper 1.00):",
        "",
        "| subtype | XFuse mean | XFuse min | per-spot average mean | per-spot average min |",
        "|---|---|---|---|---|",
    ]
    for sub, r in by_sub.iterrows():
        lines.append(f"| {sub} | {r[('auc', 'mean')]:.4f} | {r[('auc', 'min')]:.4f} | "
                     f"{r[('baseline_auc', 'mean')]:.4f} | {r[('baseline_auc', 'min')]:.4f} |")
    lines += ["", "Predictive SD of the called subtype's share, shape pixels:", "",
              "| seed | misclassified | correct | misclassified pixels | metagenes | steps | fit (s) | predict (s) |",
              "|---|---|---|---|---|---|---|---|"]
    for _, r in per_run.iterrows():
        lines.append(f"| {int(r.seed)} | {r.sd_misclassified:.4f} | {r.sd_correct:.4f} | {int(r.misclassified_pixels)} / "
                     f"{int(r.shape_pixels)} | {int(r.metagenes)} | {int(r.steps)} | {r.fit_s:.0f} | {r.predict_s:.1f} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
