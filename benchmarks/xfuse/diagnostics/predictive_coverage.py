"""Are XFuse's predictive intervals honest? Coverage of measured spot counts (issue 6).

Loads a fitted XFuse model (default: the one ``mob_speed.py`` fits on all of MOB1) and draws
posterior predictive counts (negative binomial mixture, ``predict_samples(kind="counts")``)
and expected counts (``kind="mean"``) at every spot of MOB1 (the training section) and MOB2
(predicted from its image only), for the top 100 genes of the section. Reports, over spots x
genes, how often the measured count falls inside the central 50% / 80% / 95% predictive
interval, and the median coefficient of variation of the expected counts over posterior
samples (how much the model says it does not know about the mean, as opposed to counting noise).

Run (repository root, ~2 min)::

    nice env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/xfuse/diagnostics/predictive_coverage.py --model benchmarks/runs/xfuse_mob_speed/model

Writes benchmarks/xfuse/diagnostics/predictive_coverage.{md,json} (renamed from coverage.*: a coverage.py here shadowed the coverage package that numba imports).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent  # benchmarks/xfuse/diagnostics: results are written here
sys.path.insert(0, str(HERE.parent))  # benchmarks/xfuse: _mob.py and the benchmark scripts
import _mob as M  # noqa: E402
from mob_speed import DEFAULT_MODEL  # noqa: E402

LEVELS = (0.5, 0.8, 0.95)


def section_row(model, name: str, samples: int, trained: bool) -> dict:
    section = M.read(name)
    genes = [g for g in M.top_genes([section], 100) if g in set(model.genes_)]
    counts = M.dense(section[:, genes].X)
    draws = model.predict_samples(section, samples=samples, genes=genes, kind="counts")
    nu = model.predict_samples(section, samples=samples, genes=genes)
    row = {"section": name, "role": "training section" if trained else "image only", "spots": section.n_obs,
           "genes": len(genes), "samples": samples}
    for level in LEVELS:
        lo, hi = np.percentile(draws, [50 * (1 - level), 50 * (1 + level)], axis=0)
        row[f"coverage_{level:g}"] = float(((counts >= lo) & (counts <= hi)).mean())
    row["median_cv_expected"] = float(np.median(nu.std(0) / np.maximum(nu.mean(0), 1e-12)))
    row["median_cv_predictive"] = float(np.median(draws.std(0) / np.maximum(draws.mean(0), 1e-12)))
    return row


def main() -> None:
    from stfusion.models.api import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    M.set_threads(args.threads)
    prov = M.Provenance(0, args.threads, model=str(args.model))
    model = load_model(args.model)
    trained = {s["section"] for s in json.loads((args.model / "model.json").read_text())["training_data"]["sections"]}
    rows = [section_row(model, name, args.samples, trained=name in trained) for name in M.SECTIONS]
    prov.stop()
    body = f"""
Measured counts of every spot x top-100 gene against XFuse's posterior predictive counts
({args.samples} samples). **coverage_q**: the share of measured counts inside the central q
predictive interval (honest intervals: about q). **median_cv_expected**: median over spots x
genes of SD / mean of the expected counts across posterior samples;
**median_cv_predictive**: the same for the predictive counts.

{M.md_table(pd.DataFrame(rows))}
"""
    M.write_report(args.out / "predictive_coverage.md", "XFuse predictive interval coverage", prov, body)
    print(pd.DataFrame(rows).to_string())


if __name__ == "__main__":
    main()
