"""How far can neighbour-pair directions be called from MOB's measured member counts? (issue 6, item 2)

``mob_pairs.py`` scores XFuse's calls against the *measured* counts of each member spot, which
carry counting noise. This script puts the XFuse calls beside three references on the same
pairs (``merge_neighbour_pairs``, seed 0) and top-100 genes, over the (pair, gene) cases whose
members differ in measured counts:

- **oracle totals**: the direction of each member's *measured* total count (all genes). It
  knows something no model of the merged data can (how the pair's RNA splits between the
  members) but nothing gene-specific; stratified by how much the member totals differ.
- **oracle shares x totals**: each member's measured total times the gene's share of it in the
  member's *neighbours* (the mean of the other spots within 1.25 spot spacings, own pair
  excluded): measured totals plus the local expression profile.
- **image colour split** (no counts at all): the member whose disc has the larger mean blue
  share of its pixels (B / (R + G + B), haematoxylin-stained nuclei) is called higher for
  every gene; also on the 10% of pairs where the two discs differ most. Two more image cues, at
  XFuse's working resolution (10 µm/px): the member whose disc is darker (mean 255 - grey),
  and the member with more of its disc inside XFuse's tissue mask (pairs with equal coverage
  not called).
- **Gaussian-process deconvolution**: a per-gene GP over member positions observed only as pair
  sums (counts; squared-exponential kernel, hyperparameters of the GP baseline fitted on the pair
  midpoints to half the pair sums); the exact Gaussian posterior of the member difference,
  called at 95% like XFuse.
- **XFuse**: per-case files of ``mob_pairs.py --save-cases`` found under ``--cases`` (folder
  ``<section>``), with its calls split by posterior probability; where fits of the same pairs
  with other model seeds are there too (folders ``<section>_model_seed_<k>``), also their mean
  score, their posteriors pooled as an equal-weight mixture (a deep ensemble: the spread
  between fits stands for the uncertainty of the network weights, which each fit's posterior
  leaves out), and the cases that every fit calls the same way.

Run (repository root, seconds; the XFuse case files come from ``mob_pairs.py``)::

    nice env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/xfuse/mob_pairs.py --sections MOB1 --save-cases --out benchmarks/xfuse/diagnostics/pairs_cases/MOB1
    nice env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/xfuse/mob_pairs.py --sections MOB2 --save-cases --out benchmarks/xfuse/diagnostics/pairs_cases/MOB2
    for s in MOB1 MOB2; do for k in 1 2; do    # more fits of the same pairs (any number can be pooled)
      nice env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/xfuse/mob_pairs.py --sections $s --model-seed $k --save-cases --out benchmarks/xfuse/diagnostics/pairs_cases/${s}_model_seed_$k
    done; done
    .venv/bin/python benchmarks/xfuse/diagnostics/pairs_ceiling.py --cases benchmarks/xfuse/diagnostics/pairs_cases

Writes benchmarks/xfuse/diagnostics/pairs_ceiling.{md,json,csv}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from scipy.stats import norm

HERE = Path(__file__).resolve().parent  # benchmarks/xfuse/diagnostics: results are written here
sys.path.insert(0, str(HERE.parent))  # benchmarks/xfuse: _mob.py and the benchmark scripts
import _mob as M  # noqa: E402

CREDIBILITY = 0.95
TOTAL_RATIO_BINS = (0.0, 0.2, 0.4, 0.7, 1.0, np.inf)  # abs(log(total a / total b))


def pair_data(name: str) -> dict:
    from stfusion import _constants as K
    from stfusion.benchmark.pairs import merge_neighbour_pairs
    from stfusion.data.section import microns_per_pixel

    section = M.read(name)
    merged, table = merge_neighbour_pairs(section, seed=0)
    genes = M.top_genes([merged], 100)
    ia = section.obs_names.get_indexer(table["member_a"])
    ib = section.obs_names.get_indexer(table["member_b"])
    counts = M.dense(section[:, genes].X)
    return {"xy": np.asarray(section.obsm[K.SPATIAL], float) * microns_per_pixel(section), "ia": ia, "ib": ib,
            "totals": M.dense(section.X).sum(1), "counts": counts, "genes": genes, "blue": blue_share(section),
            **disc_image_cues(section)}


def disc_image_cues(section, resolution_um: float = 10.0) -> dict[str, np.ndarray]:
    """Per spot, from the section as XFuse prepares it at the ``fast`` preset's 10 µm/px
    (working image, tissue mask and spot discs of :mod:`stfusion.models.xfuse.data`):
    ``coverage``, the share of its disc's pixels that the mask calls tissue, and ``darkness``,
    the disc's mean of 255 - grey."""
    from stfusion.models.xfuse import data as D

    data = D.prepare_section(section, resolution_um, np.zeros(0))
    W = D.area_weights(D.area_spec(section), data.fx, data.fy, data.shape)
    size = np.asarray(W.sum(axis=1)).ravel()
    dark = 255.0 - data.image.astype(float).mean(axis=2)
    return {"coverage": W @ data.tissue.ravel().astype(float) / size, "darkness": W @ dark.ravel() / size}


def blue_share(section, px: int = 32) -> np.ndarray:
    """Per spot, the mean of B / (R + G + B) over the pixels of its 100 µm disc."""
    from stfusion.data.patches import read_patches
    from stfusion.data.section import spot_coords

    rgb = read_patches(section, spot_coords(section), 100.0, px).astype(float)
    yy, xx = np.mgrid[:px, :px]
    disc = (yy - (px - 1) / 2) ** 2 + (xx - (px - 1) / 2) ** 2 <= (px / 2) ** 2
    return (rgb[..., 2] / (rgb.sum(-1) + 1.0))[:, disc].mean(1)


def gp_deconvolution(d: dict) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and SD of (member a - member b) per pair and gene, from pair sums only."""
    from stfusion.baselines.gp import fit_hyperparameters, sq_exp_kernel

    ia, ib, xy, c = d["ia"], d["ib"], d["xy"], d["counts"]
    y = c[ia] + c[ib]
    hp = fit_hyperparameters((xy[ia] + xy[ib]) / 2, y / 2)
    n = len(ia)
    pts = np.vstack([xy[ia], xy[ib]])
    eye = np.eye(n)
    sum_op, diff_op = np.hstack([eye, eye]), np.hstack([eye, -eye])
    mean, sd = np.empty_like(y), np.empty_like(y)
    for g in range(y.shape[1]):
        k = hp["signal"][g] * sq_exp_kernel(pts, pts, hp["lengthscale"][g])
        ky = sum_op @ k @ sum_op.T + 2 * hp["noise"][g] * eye  # each member carries the noise of half a pair
        kdy = diff_op @ k @ sum_op.T
        mean[:, g] = kdy @ np.linalg.solve(ky, y[:, g] - 2 * hp["mean"][g])
        var = np.diag(diff_op @ k @ diff_op.T) - np.einsum("ij,ji->i", kdy, np.linalg.solve(ky, kdy.T))
        sd[:, g] = np.sqrt(np.clip(var, 1e-12, None))
    return mean, sd


def neighbour_shares(d: dict, radius_factor: float = 1.25) -> np.ndarray:
    """Per spot, each gene's share of the total in the spot's neighbours (own pair excluded)."""
    from stfusion.data.scale import grid_spacing_px

    xy, ia, ib = d["xy"], d["ia"], d["ib"]
    partner = np.full(len(xy), -1)
    partner[ia], partner[ib] = ib, ia
    near = cKDTree(xy).query_ball_point(xy, radius_factor * grid_spacing_px(xy))  # the pairing's radius
    shares = np.empty_like(d["counts"])
    for i, js in enumerate(near):
        js = [j for j in js if j not in (i, partner[i])] or [i]
        shares[i] = d["counts"][js].sum(0) / d["totals"][js].sum()
    return shares


def score(p_a_higher: np.ndarray, truth_a: np.ndarray, truth_b: np.ndarray) -> dict:
    """Calls at CREDIBILITY and the sign of the prediction over every decided case."""
    decided = truth_a != truth_b
    call_a, call_b = p_a_higher >= CREDIBILITY, p_a_higher <= 1 - CREDIBILITY
    use = (call_a | call_b) & decided
    a_true = truth_a > truth_b
    sign_ok = ((p_a_higher > 0.5) == a_true)[decided & (p_a_higher != 0.5)]
    return {"cases": int(decided.sum()), "called": int(use.sum()), "fraction_called": use.sum() / decided.sum(),
            "direction_correct": float((call_a == a_true)[use].mean()) if use.any() else np.nan,
            "sign_correct_all_cases": float(sign_ok.mean())}


def section_rows(name: str, cases_dir: Path | None) -> list[dict]:
    d = pair_data(name)
    ia, ib, c = d["ia"], d["ib"], d["counts"]
    ta, tb = c[ia], c[ib]
    rows = []
    log_ratio = np.log(d["totals"][ia] / d["totals"][ib])[:, None] * np.ones_like(ta)
    rows.append({"section": name, "method": "oracle totals (sign of measured total ratio)",
                 **score(np.where(log_ratio > 0, 1.0, 0.0), ta, tb)})
    for lo, hi in zip(TOTAL_RATIO_BINS[:-1], TOTAL_RATIO_BINS[1:]):
        m = (np.abs(log_ratio) >= lo) & (np.abs(log_ratio) < hi)
        s = score(np.where(log_ratio[m] > 0, 1.0, 0.0), ta[m], tb[m])
        rows.append({"section": name, "method": f"oracle totals, abs. log ratio of the totals in [{lo:g}, {hi:g})",
                     **s, "fraction_called": m[ta != tb].mean()})
    sh = neighbour_shares(d)
    pred_a, pred_b = sh[ia] * d["totals"][ia, None], sh[ib] * d["totals"][ib, None]
    rows.append({"section": name, "method": "oracle neighbour shares x measured totals",
                 **score(np.where(pred_a > pred_b, 1.0, np.where(pred_a < pred_b, 0.0, 0.5)), ta, tb)})
    colour = np.log(d["blue"][ia] / d["blue"][ib])[:, None] * np.ones_like(ta)
    measured = np.log(ta.sum(1) / tb.sum(1))  # measured split of the pair's top-gene counts
    rows.append({"section": name, "method": "image colour split (blue share of the disc)",
                 **score(np.where(colour > 0, 1.0, 0.0), ta, tb), "split_r": float(np.corrcoef(colour[:, 0], measured)[0, 1])})
    cover = np.log((d["coverage"][ia] + 0.01) / (d["coverage"][ib] + 0.01))
    rows.append({"section": name, "method": "tissue-mask coverage split (member with more of its disc on tissue)",
                 **score(np.where(cover[:, None] > 0, 1.0, np.where(cover[:, None] < 0, 0.0, 0.5)) * np.ones_like(ta), ta, tb),
                 "split_r": float(np.corrcoef(cover, measured)[0, 1])})
    dark = np.log(d["darkness"][ia] / d["darkness"][ib])
    rows.append({"section": name, "method": "image darkness split (member with the darker disc higher)",
                 **score(np.where(dark[:, None] > 0, 1.0, 0.0) * np.ones_like(ta), ta, tb),
                 "split_r": float(np.corrcoef(dark, measured)[0, 1])})
    top = np.abs(colour) >= np.quantile(np.abs(colour[:, 0]), 0.9)
    rows.append({"section": name, "method": "image colour split, 10% of pairs with the largest difference",
                 **score(np.where(colour[top] > 0, 1.0, 0.0), ta[top], tb[top]),
                 "fraction_called": (top & (ta != tb)).sum() / (ta != tb).sum()})
    mean, sd = gp_deconvolution(d)
    rows.append({"section": name, "method": "Gaussian-process deconvolution of pair sums",
                 **score(norm.cdf(mean / sd), ta, tb)})
    found = sorted(cases_dir.rglob(f"mob_pairs_cases_{name}.npz")) if cases_dir is not None else []
    cues = {"measured": measured, "colour": colour[:, 0], "coverage": cover, "darkness": dark}
    fits = [np.load(f) for f in found if f.parent.name == name or f.parent.name.startswith(f"{name}_model_seed_")]
    if fits:
        rows += xfuse_rows(name, fits[0], ta, tb, cues)
    if len(fits) > 1:
        rows += pooled_rows(name, fits, ta, tb)
    for f in found:  # other settings: folders <section>_<variant>
        variant = f.parent.name.removeprefix(f"{name}_")
        if f.parent.name.startswith(f"{name}_") and not variant.startswith("model_seed_"):
            rows += xfuse_rows(name, np.load(f), ta, tb, cues, label=f"XFuse, {variant.replace('_', ' ')}", by_probability=False)
    return rows


def pooled_rows(name: str, fits: list, ta: np.ndarray, tb: np.ndarray) -> list[dict]:
    """XFuse fits of the same pairs with different model seeds: each alone, their posteriors
    pooled as an equal-weight mixture, and the cases every fit calls the same way."""
    p = np.stack([z["p_a_higher"] for z in fits])
    alone = [score(q, ta, tb) for q in p]
    rows = [{"section": name, "method": f"XFuse, each of {len(fits)} fits (model seeds), mean",
             **{k: (round if k in ("cases", "called") else float)(np.mean([a[k] for a in alone])) for k in alone[0]}}]
    splits = np.stack([predicted_split(z) for z in fits])
    r = np.corrcoef(splits)[np.triu_indices(len(fits), 1)]
    rows[0]["split_r_between_fits"] = float(r.mean())  # how much the fits agree on each pair's split
    rows.append({"section": name, "method": f"XFuse, {len(fits)} fits pooled (mixture of their posteriors)",
                 **score(p.mean(0), ta, tb)})
    up, down = (p >= CREDIBILITY).all(0), (p <= 1 - CREDIBILITY).all(0)
    rows.append({"section": name, "method": f"XFuse, cases all {len(fits)} fits call the same way",
                 **score(np.where(up, 1.0, np.where(down, 0.0, 0.5)), ta, tb)})
    return rows


def predicted_split(z) -> np.ndarray:
    """Per pair, the log ratio of the members' summed top-gene expected counts in a case file."""
    return np.log(z["mean_a"].sum(1) / z["mean_b"].sum(1))


def xfuse_rows(name: str, z, ta: np.ndarray, tb: np.ndarray, cues: dict, label: str = "XFuse (mob_pairs.py)",
               by_probability: bool = True) -> list[dict]:
    """XFuse's calls from a case file, all and (``by_probability``) by posterior probability.
    ``cues``: per pair, the measured log ratio of the members' summed top-gene counts and the
    log ratios of their blue shares, tissue coverages and darkness, which the predicted split is set against."""
    if not (np.array_equal(z["truth_a"], ta) and np.array_equal(z["truth_b"], tb)):
        raise SystemExit(f"{name}: the XFuse case file holds other pairs or genes than this script's.")
    p = z["p_a_higher"]
    split = predicted_split(z)
    rows = [{"section": name, "method": label, **score(p, ta, tb),
             "split_r": float(np.corrcoef(split, cues["measured"])[0, 1]), "split_sd": float(split.std()),
             "measured_split_sd": float(cues["measured"].std()),
             "split_r_colour": float(np.corrcoef(split, cues["colour"])[0, 1]),
             "split_r_coverage": float(np.corrcoef(split, cues["coverage"])[0, 1]),
             "split_r_darkness": float(np.corrcoef(split, cues["darkness"])[0, 1])}]
    if not by_probability:
        return rows
    conf = np.maximum(p, 1 - p)
    for lo, hi in ((0.95, 0.99), (0.99, 1.0), (1.0, 1.01)):
        m = (conf >= lo) & (conf < hi)
        s = score(p[m], ta[m], tb[m])
        label = "= 1 (every sample)" if lo == 1.0 else f"in [{lo:g}, {hi:g})"
        rows.append({"section": name, "method": f"XFuse, calls with posterior probability {label}", **s,
                     "fraction_called": (m & (ta != tb)).sum() / (ta != tb).sum()})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=Path, default=None, help="folder of mob_pairs.py --save-cases files")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    prov = M.Provenance(0, 1, credibility=CREDIBILITY, cases=str(args.cases))
    df = pd.DataFrame([r for name in M.SECTIONS for r in section_rows(name, args.cases)])
    prov.stop()
    df.to_csv(args.out / "pairs_ceiling.csv", index=False, float_format="%.4f")
    body = f"""
Cases: (pair, gene) with different measured member counts (top 100 genes, pairs of
`merge_neighbour_pairs(seed=0)`). **called**: predictions with P(a > b) >= {CREDIBILITY} or
<= {1 - CREDIBILITY:.2f} (oracles: every case with a predicted difference; in the stratified rows
`fraction_called` is the stratum's share of all cases); **direction_correct**: the share of
called cases where the measured counts agree (target >= 0.90); **sign_correct_all_cases**:
the same for the sign of the prediction over every case. **split_r**: Pearson r over pairs of
the predicted log ratio of the members' summed top-100 counts (the colour split: of their blue
shares) against the measured one; **split_sd** / **measured_split_sd**: the spread of the
predicted and measured log ratios; **split_r_colour** / **split_r_coverage** /
**split_r_darkness**: Pearson r of XFuse's predicted log ratio with the members' log ratio of
blue shares / of tissue-mask coverage of their discs (the mask XFuse trains its zero-count
background on) / of their mean darkness (255 - grey) at XFuse's 10 µm/px. **split_r_between_fits**:
the mean Pearson r of the predicted log ratios between fits with different model seeds.

{M.md_table(df.astype(object).where(df.notna(), ""))}
"""
    M.write_report(args.out / "pairs_ceiling.md", "Neighbour-pair directions: references and XFuse", prov, body)
    print(df.to_string())


if __name__ == "__main__":
    main()
