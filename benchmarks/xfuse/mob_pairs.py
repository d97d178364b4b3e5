"""XFuse neighbour-pair deconvolution on STUtility MOB1 and MOB2 (issue 6, acceptance item 2).

Neighbouring spots are merged into pairs (counts summed; the measured area is the union of
both spot discs, ``obsm["area_centres"]``); XFuse is fitted on the merged section only and
asked for the expected counts of each member spot. Scored with
:func:`stfusion.benchmark.pairs.score_pair_deconvolution`: among (pair, gene) cases whose
members differ in measured counts and where one member is predicted higher with >= 95%
posterior credibility, the fraction whose measured counts agree (target >= 0.90, paper 0.95),
and the Pearson r of predicted vs measured member counts (beside the "half of the pair"
prediction, which cannot tell members apart).

Run (from the repository root; about 25-30 min per section on one thread)::

    nice env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/xfuse/mob_pairs.py

Writes benchmarks/xfuse/mob_pairs.{md,csv,json} and mob_pairs_elbo_MOB{1,2}.{csv,png}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _mob as M  # noqa: E402

CREDIBILITY = 0.95


def member_centres(section, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(n_pairs, 2) full-resolution centres of members a and b."""
    from stfusion import _constants as K

    xy = pd.DataFrame(np.asarray(section.obsm[K.SPATIAL], float), index=section.obs_names)
    return xy.loc[table["member_a"]].to_numpy(), xy.loc[table["member_b"]].to_numpy()


def run_section(name: str, args: argparse.Namespace, out: Path) -> dict:
    from stfusion.benchmark.pairs import merge_neighbour_pairs, score_pair_deconvolution
    from stfusion.models.xfuse import XFuse

    section = M.read(name)
    merged, table = merge_neighbour_pairs(section, seed=args.seed)
    genes = M.top_genes([merged], args.genes)
    params = {**({"steps": args.steps} if args.steps else {}), **json.loads(args.params)}
    model = XFuse(preset="fast", seed=args.model_seed, progress=False, **params)
    t0 = time.perf_counter()
    model.fit([merged], genes=genes)
    fit_s = time.perf_counter() - t0
    xa, xb = member_centres(section, table)
    n = len(table)
    t0 = time.perf_counter()
    # one call for both members: they share every posterior sample (a paired comparison)
    nu = model.predict_samples(section, areas=np.vstack([xa, xb]), samples=args.samples, genes=genes)
    pred_s = time.perf_counter() - t0
    sa, sb = nu[:, :n], nu[:, n:]
    draws = model.predict_samples(section, areas=np.vstack([xa, xb]), samples=args.samples, genes=genes, kind="counts")
    counts = pd.DataFrame(M.dense(section[:, genes].X), index=section.obs_names, columns=genes)
    ta, tb = counts.loc[table["member_a"]].to_numpy(), counts.loc[table["member_b"]].to_numpy()
    score = score_pair_deconvolution(sa, sb, ta, tb, credibility=CREDIBILITY)
    half = (ta + tb) / 2
    ma, mb = sa.mean(0), sb.mean(0)
    gene_r = M.genewise_pearson(np.vstack([ma, mb]), np.vstack([ta, tb]))
    pred_calls = _predictive_calls(draws[:, :n], draws[:, n:], ta, tb, CREDIBILITY)
    if args.save_cases:  # per (pair, gene) case, for diagnostics/pairs_ceiling.py
        np.savez_compressed(out / f"mob_pairs_cases_{name}.npz", p_a_higher=(sa > sb).mean(0), mean_a=sa.mean(0),
                            mean_b=sb.mean(0), truth_a=ta, truth_b=tb, genes=np.asarray(genes))
    M.write_elbo(model.history_, out / f"mob_pairs_elbo_{name}", f"XFuse on merged pairs of {name} ({len(genes)} genes)")
    return {
        "section": name,
        "spots": section.n_obs,
        "pairs": n,
        "genes": len(genes),
        "samples": args.samples,
        "n_called": score["n_called"],
        "fraction_called": score["fraction_called"],
        "direction_correct": score["direction_correct"],
        **pred_calls,
        "pearson_components": score["pearson_components"],
        "pearson_components_log1p": float(np.corrcoef(np.log1p(np.concatenate([ma, mb]).ravel()),
                                                       np.log1p(np.concatenate([ta, tb]).ravel()))[0, 1]),
        "pearson_half_pair": float(np.corrcoef(np.concatenate([half, half]).ravel(),
                                               np.concatenate([ta, tb]).ravel())[0, 1]),
        "median_gene_r_within": float(np.nanmedian(_within_pair_r(ma, mb, ta, tb))),
        "median_gene_r_components": float(np.nanmedian(gene_r)),
        "steps": len(model.history_),
        "metagenes": model.expr_.n_active,
        "fit_seconds": round(fit_s, 1),
        "predict_seconds": round(pred_s, 1),
    }


def _predictive_calls(ca, cb, ta, tb, credibility: float) -> dict:
    """Direction calls on posterior predictive counts (negative binomial draws, samples x pairs x
    genes): a member is called higher when P(its count > the other's) >= credibility. Ties
    (e.g. both 0) count for neither side, so the two probabilities are computed separately."""
    call_a = (ca > cb).mean(0) >= credibility
    call_b = (cb > ca).mean(0) >= credibility
    decided = ta != tb
    use = (call_a | call_b) & decided
    correct = np.where(call_a, ta > tb, tb > ta)
    return {"n_called_predictive": int(use.sum()), "fraction_called_predictive": float(use.sum() / max(decided.sum(), 1)),
            "direction_correct_predictive": float(correct[use].mean()) if use.any() else float("nan")}


def _within_pair_r(ma, mb, ta, tb) -> np.ndarray:
    """Per gene: Pearson r over pairs of predicted vs measured member difference (a - b)."""
    return M.genewise_pearson(ma - mb, ta - tb)


def pair_arguments(doc: str) -> argparse.ArgumentParser:
    """The options the neighbour-pair scripts share: sections, genes, samples, steps."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--sections", nargs="+", default=list(M.SECTIONS))
    ap.add_argument("--genes", type=int, default=100)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--steps", type=int, default=None, help="override the fast preset's steps (smoke tests)")
    return ap


def main() -> None:
    ap = pair_arguments(__doc__)
    ap.add_argument("--params", default="{}", help='XFuse hyperparameters over the fast preset, JSON (e.g. \'{"expr_lr": 0.03}\')')
    ap.add_argument("--seed", type=int, default=0, help="seed of the pairing and (unless --model-seed) of the model")
    ap.add_argument("--model-seed", type=int, default=None,
                    help="XFuse's seed alone, keeping the pairs of --seed (fits to pool in diagnostics/pairs_ceiling.py)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=M.HERE)
    ap.add_argument("--save-cases", action="store_true",
                    help="also write mob_pairs_cases_<section>.npz (posterior P(a > b), means, measured counts)")
    args = ap.parse_args()
    args.model_seed = args.seed if args.model_seed is None else args.model_seed
    logging.basicConfig(level=logging.WARNING)
    M.set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    prov = M.Provenance(args.seed, args.threads, preset="fast", steps=args.steps or "preset (2000)", params=args.params,
                        model_seed=args.model_seed,
                        credibility=CREDIBILITY, pairing="stfusion.benchmark.pairs.merge_neighbour_pairs(seed)")
    rows = []
    for name in args.sections:  # the tables are rewritten after each section
        rows.append(run_section(name, args, args.out))
        _write(rows, args, prov)


def _write(rows: list[dict], args: argparse.Namespace, prov) -> None:
    prov.stop()
    df = pd.DataFrame(rows)
    df.to_csv(args.out / "mob_pairs.csv", index=False, float_format="%.4f")
    cols = ["section", "pairs", "genes", "n_called", "fraction_called", "direction_correct", "n_called_predictive",
            "fraction_called_predictive", "direction_correct_predictive", "metagenes", "pearson_components",
            "pearson_components_log1p", "pearson_half_pair", "median_gene_r_within", "fit_seconds"]
    body = f"""
XFuse (fast preset) fitted on each section with neighbouring spots merged into pairs
(counts summed, area = union of both discs); posterior samples ({args.samples}) of the expected
counts of every member spot, drawn jointly for both members. Top {args.genes} genes by mean
count of the merged section.

- **direction_correct**: among (pair, gene) cases with different measured member counts and a
  direction called at {CREDIBILITY:.0%} posterior credibility (P(a > b) >= {CREDIBILITY} or <= {1 - CREDIBILITY:.2f}),
  the fraction where the measured counts agree. Target >= 0.90; paper 0.95.
- **fraction_called**: called cases / cases with different measured member counts.
- **\*_predictive**: the same calls made on posterior predictive counts (negative binomial
  draws, one per posterior sample): P(count a > count b) >= {CREDIBILITY} or P(count b > count a) >= {CREDIBILITY}.
- **pearson_components**: Pearson r of posterior-mean vs measured member counts over all
  members x genes (log1p: the same on log1p of both). **pearson_half_pair**: the same for
  predicting each member as half its pair (a prediction that cannot tell members apart).
- **median_gene_r_within**: median over genes of the Pearson r over pairs between predicted
  and measured member differences (a - b): 0 for any prediction that cannot tell members apart.

{M.md_table(df[cols])}
"""
    title = "XFuse neighbour-pair deconvolution, " + " and ".join(df["section"])
    M.write_report(args.out / "mob_pairs.md", title, prov, body)
    print(df[cols].to_string())


if __name__ == "__main__":
    main()
