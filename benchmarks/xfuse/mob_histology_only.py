"""XFuse expression from histology alone: train on MOB1, predict MOB2 from its image (issue 6, item 4).

The model is fitted on all MOB1 spots (counts + image); MOB2's spots are predicted from MOB2's
image only (``XFuse.predict`` reads no counts: the latent state comes from the encoder, the
expression parameters from the trained posterior). Scored per gene with
:func:`stfusion.benchmark.scoring.score_histology` (Pearson on log1p(counts / spot total x 1e4))
over MOB2's spots, for the top 100 genes by mean in MOB1 and for all 1,000 genes, beside the
constant baseline (r = 0 by construction) and the image-feature baselines of the evaluation
issue trained the same way (MOB1 -> MOB2).

By default the model is the one ``mob_speed.py`` fitted (MOB1, all 1,000 genes, fast preset,
seed 0, saved under benchmarks/runs/xfuse_mob_speed/model); ``--refit`` fits a new one here.

Run (repository root)::

    nice env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/xfuse/mob_histology_only.py

Writes benchmarks/xfuse/mob_histology_only.{md,csv,json} (per-method summary) and
mob_histology_only_genes.csv (per-gene Pearson r).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _mob as M  # noqa: E402

BASELINES = ("constant", "colour_texture_ridge", "histogram_regression", "morphology_rf")
DEFAULT_MODEL = M.REPO / "benchmarks" / "runs" / "xfuse_mob_speed" / "model"


def xfuse_model(args: argparse.Namespace, train, genes: list[str]):
    from stfusion.models.api import load_model
    from stfusion.models.xfuse import XFuse

    if not args.refit and (args.model / "weights.pt").is_file():
        model = load_model(args.model)
        if model.state_.get("training_sections") == ["MOB1"] and set(genes) <= set(model.genes_):
            return model, f"loaded {args.model.relative_to(M.REPO) if args.model.is_relative_to(M.REPO) else args.model}"
        logging.warning("%s was not trained on MOB1 with the needed genes; refitting.", args.model)
    model = XFuse(preset="fast", seed=args.seed, progress=False, **({"steps": args.steps} if args.steps else {}))
    model.fit([train], genes=genes)
    return model, "fitted here"


def score(pred, test, genes: list[str]) -> pd.Series:
    from stfusion.benchmark.scoring import score_histology

    df = score_histology(pred, test, genes)
    return df[df.metric == "pearson"].set_index("gene")["value"].reindex(genes)


def run_baselines(train, test, genes: list[str], seed: int) -> dict[str, tuple[pd.Series, float]]:
    from stfusion.benchmark.config import MethodSpec
    from stfusion.benchmark.runner import make_model

    out = {}
    for name in BASELINES:
        t0 = time.perf_counter()
        model = make_model(MethodSpec(name=name), seed)
        model.fit([train], genes=genes)
        out[name] = (score(model.predict(test), test, genes), time.perf_counter() - t0)
    return out


def summary_rows(per_gene: pd.DataFrame, top100: list[str]) -> pd.DataFrame:
    rows = []
    for method in per_gene.columns:
        for label, gs in (("top 100 by MOB1 mean", top100), ("all 1000", list(per_gene.index))):
            r = per_gene.loc[gs, method].to_numpy(float)
            rows.append({"method": method, "genes": label, "mean r": np.nanmean(r), "median r": np.nanmedian(r),
                         "top-10 mean r": np.mean(np.sort(r[np.isfinite(r)])[-10:]),
                         "genes r > 0.3": int(np.sum(r > 0.3))})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--refit", action="store_true")
    ap.add_argument("--steps", type=int, default=None, help="with --refit: override the preset's steps")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=M.HERE)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    M.set_threads(args.threads)
    prov = M.Provenance(args.seed, args.threads, train="MOB1 (all spots)", test="MOB2 (image only)")
    train, test = M.read("MOB1"), M.read("MOB2")
    genes = list(train.var_names)
    top100 = M.top_genes([train], 100)
    model, how = xfuse_model(args, train, genes)
    t0 = time.perf_counter()
    pred = model.predict(test[:, []].copy(), samples=args.samples, genes=genes)  # no counts reach the model
    pred_s = time.perf_counter() - t0
    per_gene = pd.DataFrame({"xfuse": score(pred, test, genes)})
    timings = {"xfuse": pred_s}
    for name, (r, sec) in run_baselines(train, test, genes, args.seed).items():
        per_gene[name], timings[name] = r, sec
    prov.info.update(xfuse_model=how, xfuse_steps=model.state_.get("steps_run"), samples=args.samples)
    prov.stop()
    per_gene.insert(0, "gene_id", train.var.loc[per_gene.index, "gene_ids"].to_numpy())
    per_gene.insert(1, "in_top100", per_gene.index.isin(top100))
    per_gene.round(4).to_csv(args.out / "mob_histology_only_genes.csv", index_label="gene")
    summ = summary_rows(per_gene.drop(columns=["gene_id", "in_top100"]), top100)
    summ.to_csv(args.out / "mob_histology_only.csv", index=False, float_format="%.4f")
    best = per_gene.sort_values("xfuse", ascending=False).head(15)
    best_tab = best[["in_top100", "xfuse", *BASELINES[1:]]].reset_index(names="gene")
    body = f"""
XFuse fitted on MOB1 (all {train.n_obs} spots, {len(genes)} genes, fast preset; model {how},
{model.state_.get('steps_run')} steps). MOB2's {test.n_obs} spots predicted from MOB2's image alone
(the section passed to ``predict`` has no genes: no counts reach the model), {args.samples} posterior
samples. Pearson r per gene on log1p(counts / spot total x 1e4) over MOB2's spots
(``score_histology``; a constant prediction scores 0). Baselines trained on MOB1 the same way.

{M.md_table(summ)}

Top 15 genes by XFuse r (all 1000; in_top100: among the top 100 by MOB1 mean):

{M.md_table(best_tab)}

Per-gene r of every method: mob_histology_only_genes.csv. Seconds (fit + predict for the
baselines; predict only for XFuse): {', '.join(f'{k} {v:.0f}' for k, v in timings.items())}.
"""
    M.write_report(args.out / "mob_histology_only.md", "XFuse expression from histology alone: MOB1 -> MOB2", prov, body)
    print(summ.to_string())


if __name__ == "__main__":
    main()
