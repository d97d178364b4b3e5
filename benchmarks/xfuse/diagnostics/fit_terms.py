"""XFuse on the MOB1 hold-out fold: the ELBO terms and drop-and-split rounds of one fit.

Fits the ``fast`` preset (plus ``--params``) on MOB1's visible spots (``spot_holdout`` seed 0,
top 100 genes), saves the model, and prints the drop-and-split rounds, the 100-step means of
the expression log-likelihood, the image log-likelihood and the ELBO at chosen steps, and the
median gene-wise r on the visible and hidden spots (as ``holdout_variants.py``), and on the
visible spots whether the expected counts follow the raw counts or the relative expression.

Run (repository root, ~40 min on one thread for 6,000 steps)::

    nice env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/xfuse/diagnostics/fit_terms.py --params '{"steps": 6000}' \
        --model benchmarks/runs/xfuse_fit_terms_6000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent  # benchmarks/xfuse/diagnostics: results are written here
sys.path.insert(0, str(HERE.parent))  # benchmarks/xfuse: _mob.py and the benchmark scripts
import _mob as M  # noqa: E402
from holdout_variants import median_r  # noqa: E402


def main() -> None:
    from stfusion.models.xfuse import XFuse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="{}")
    ap.add_argument("--model", type=Path, required=True, help="where to save (or, if it exists, load) the model")
    ap.add_argument("--at", type=int, nargs="+", default=[500, 1000, 2000, 3000, 4000, 4900, 5100, 5500, 6000])
    args = ap.parse_args()
    M.set_threads(1)
    train, test, genes = M.holdout_fold("MOB1", 0)
    if (args.model / "weights.pt").is_file():
        model = XFuse.load(args.model)
    else:
        model = XFuse(preset="fast", progress=False, samples=10, seed=0, **json.loads(args.params)).fit([train], genes=genes)
        model.save(args.model)
    for e in model.metagene_history_:
        print("round", e["step"], e["before"], "->", e["after"], "dropped", e["dropped"], "splits", e["splits"])
    hist = model.history_
    for step in [s for s in args.at if s <= len(hist)]:
        win = hist[max(0, step - 100) : step]
        print(f"step {step}: expr_loglik {np.mean([r['expr_loglik'] for r in win]):.0f}, "
              f"image_loglik {np.mean([r['image_loglik'] for r in win]):.0f}, elbo {np.mean([r['elbo'] for r in win]):.0f}, "
              f"metagenes {win[-1]['metagenes']}")
    print(f"median r visible {median_r(model.predict(train), train, genes):.3f}, hidden {median_r(model.predict(test), test, genes):.3f}")
    counts_vs_share(model, train, genes)
    activity_check(model, train, genes)


def counts_vs_share(model, part, genes: list[str]) -> None:
    """On the visible spots: does the model get the counts or the relative expression right?

    Median gene-wise r of the expected counts against the raw counts, of the modelled totals
    against the measured ones, and of log1p(expected count / *measured* spot total x 1e4)
    against the target (relative expression with the measured depth).
    """
    x = M.dense(part.X)
    xg = x[:, [part.var_names.get_loc(g) for g in genes]]
    nu = np.asarray(model.predict(part)[:, genes].layers["mean_counts"])
    truth = M.log1p_cp10k(xg, x.sum(1))
    print(f"visible spots: expected vs raw counts median r {np.nanmedian(M.genewise_pearson(nu, xg)):.3f}; "
          f"modelled totals r {np.corrcoef(nu.sum(1), xg.sum(1))[0, 1]:.3f}; "
          f"expected / measured total vs target median r "
          f"{np.nanmedian(M.genewise_pearson(np.log1p(nu / x.sum(1)[:, None] * 1e4), truth)):.3f}")



def activity_check(model, part, genes: list[str]) -> None:
    """On the visible spots: are the image-predicted metagene shares where the counts want them?

    Per spot, the non-negative least-squares mix of the model's own metagene profiles (posterior
    means, raw counts; dominated by high-count genes, a rough reference) gives "oracle" shares.
    Prints the median r of the target reached with those shares, and per metagene the
    correlation of the model's shares with them and the SD of each across spots.
    """
    import torch
    from scipy.optimize import nnls

    from stfusion.models.xfuse import data as D
    from stfusion.models.xfuse import predict as P

    net, expr = model._fitted()
    x = M.dense(part.X)
    xg = x[:, [part.var_names.get_loc(g) for g in genes]]
    draw = expr.sample(mean=True)
    offset, logit = expr.log_rate_and_logit(draw, torch.zeros(expr.n_effects))
    prof = (torch.exp(draw["L"]) * torch.exp(offset + logit)).detach().numpy()[:, [model.genes_.index(g) for g in genes]]
    w = np.stack([nnls(prof.T, c)[0] for c in xg])
    pred = w @ prof
    total = pred.sum(1, keepdims=True) / model.state_["modelled_fraction"]
    r = np.nanmedian(M.genewise_pearson(np.log1p(pred / np.maximum(total, 1e-12) * 1e4), M.log1p_cp10k(xg, x.sum(1))))
    data = model._data(part)
    W = D.area_weights(D.area_spec(part), data.fx, data.fy, data.shape)
    A = P.draw_areas(net, expr, data, W, 1, 0, mean=True, frame_px=model.hyperparams["patch_px"]).A[0]
    share, oracle = A / A.sum(1, keepdims=True), w / np.maximum(w.sum(1, keepdims=True), 1e-12)
    corr = [round(float(np.corrcoef(share[:, k], oracle[:, k])[0, 1]), 2) for k in range(share.shape[1])]
    print(f"visible spots: oracle-share median r {r:.4f}; model vs oracle share r per metagene {corr}; "
          f"share SD model {[round(float(v), 3) for v in share.std(0)]}, oracle {[round(float(v), 3) for v in oracle.std(0)]}")


if __name__ == "__main__":
    main()
