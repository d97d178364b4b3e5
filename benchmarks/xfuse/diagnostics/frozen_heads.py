"""XFuse on the MOB1 hold-out fold: what limits the expression fit, with the networks fixed?

Takes a model fitted by ``holdout_variants.py --save DIR`` (MOB1 fold, seed 0), computes its
decoder features (posterior-mean latents, prediction frames) at every pixel of MOB1, and
refits only the expression part on them, full batch: scale and metagene heads, metagene
profiles L (N(0, 1) prior) and gene baselines t, u, by Adam on the collapsed negative-binomial
likelihood of the visible spots. Variants:

- heads: ``linear`` with 3 metagenes (1x1 convolutions, as stfusion's XFuse) or ``mlp`` with
  5 (one hidden layer of 32 with layer normalisation and leaky ReLU, separate for the scale
  and the metagenes, like the reference's heads);
- background: ``none`` (no zero-count pseudo-spot), ``mask`` (every non-tissue pixel within
  64 px of the tissue mask is background, as a 128 px training patch sees it) or ``near``
  (the same, less the pixels within one spot diameter of a visible spot).

Two rows fit the linear heads the way training does, on patches (``fit = patches``: each of
2,000 Adam steps sees the complete visible spots and the background pixels of 2 random
128 x 128 px windows centred on tissue, weighted to the whole tissue, no augmentation): does
the patch-wise objective itself stop short of the full-batch fit, or is it the joint training
(features changing under the heads)?

Two more rows start the linear heads, L, t and u from the fitted model's own values (``init =
model``, its metagenes, ``mask`` background), refitted and not: how far the joint fit is from
the full-batch optimum of the same problem.

Scores: median gene-wise Pearson r on log1p(counts / total x 1e4) on the visible (fitted) and
hidden spots, as ``holdout_variants.py``. The gap between ``none`` and ``mask`` is what the
background pseudo-spot costs the expression fit on these features.

Run (repository root, ~11 min on one thread after the fit)::

    nice env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/xfuse/holdout_variants.py --name fast --save benchmarks/runs/xfuse_fast_mob1
    nice env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/xfuse/diagnostics/frozen_heads.py benchmarks/runs/xfuse_fast_mob1

Writes benchmarks/xfuse/diagnostics/frozen_heads.{md,json}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

HERE = Path(__file__).resolve().parent  # benchmarks/xfuse/diagnostics: results are written here
sys.path.insert(0, str(HERE.parent))  # benchmarks/xfuse: _mob.py and the benchmark scripts
import _mob as M  # noqa: E402

OUT = HERE / "frozen_heads"
PATCH_REACH = 64  # background pixels within this many px of tissue take part (half a training patch)


def feature_map(model, section) -> tuple[torch.Tensor, object]:
    """Decoder features (pixels x channels) at posterior-mean latents, in prediction frames."""
    from stfusion.models.xfuse import predict as P
    from stfusion.models.xfuse.sampling import image_tensor

    net, data = model.net_, model._data(section)
    tile, c = P.frame_layout(model.hyperparams["patch_px"])
    h, w = data.shape
    img = image_tensor(data.image)
    out = torch.zeros(net.widths[0], h, w)
    with torch.no_grad():
        for i0, i1, j0, j1 in P._tiles(0, h, 0, w, tile):
            f = net.features(net.encode(P._input(img, i0 - c, i0 + tile + c, j0 - c, j0 + tile + c)).sample(mean=True))
            out[:, i0:i1, j0:j1] = f[0, :, c : c + i1 - i0, c : c + j1 - j0]
    return out.reshape(out.shape[0], -1).T.contiguous(), data


def spot_pixels(section, data) -> tuple[torch.Tensor, np.ndarray, int]:
    """(spot index per pixel, pixel index, number of spots) of a section's spot discs."""
    from stfusion.models.xfuse import data as D

    W = D.area_weights(D.area_spec(section), data.fx, data.fy, data.shape).tocoo()
    return torch.from_numpy(W.row.astype(np.int64)), W.col, W.shape[0]


def background_pixels(data, visible_px: np.ndarray, mode: str) -> np.ndarray:
    if mode == "none":
        return np.zeros(0, dtype=np.int64)
    tissue = data.tissue.copy()
    if mode == "near":
        spots = np.zeros(tissue.size, dtype=bool)
        spots[visible_px] = True
        tissue |= ndimage.distance_transform_edt(~spots.reshape(tissue.shape)) <= 2 * data.spot_radius_px * data.fx
    reach = ndimage.distance_transform_edt(~tissue) <= PATCH_REACH
    return np.flatnonzero((~tissue & reach).ravel())


class Heads(torch.nn.Module):
    def __init__(self, n_in: int, k: int, hidden: int) -> None:
        super().__init__()

        def mlp(n_out: int) -> torch.nn.Module:
            if not hidden:
                return torch.nn.Linear(n_in, n_out)
            return torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.LayerNorm(hidden), torch.nn.LeakyReLU(0.2),
                                       torch.nn.Linear(hidden, n_out))

        self.scale, self.meta = mlp(1), mlp(k)

    def area_sums(self, feats: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
        sa = torch.nn.functional.softplus(self.scale(feats)) * torch.softmax(self.meta(feats), 1)
        return torch.zeros(n, sa.shape[1]).index_add_(0, rows, sa)


def init_from(heads: Heads, L: torch.nn.Parameter, model, mu: torch.Tensor, sd: torch.Tensor) -> None:
    """Linear heads and L from the fitted model (its 1x1 heads act on unstandardised features)."""
    net, act = model.net_, model.expr_.active
    with torch.no_grad():
        for lin, conv, rows in ((heads.scale, net.scale_head, slice(None)), (heads.meta, net.metagene_head, act)):
            w, b = conv.weight[rows][:, :, 0, 0], conv.bias[rows]
            lin.weight.copy_(w * sd[None, :])
            lin.bias.copy_(b + (w * mu[None, :]).sum(1))
        L.copy_(model.expr_.L_mu[act])


def refit(feats, vis, hid, bg_px, counts, targets, t0, u0, k, hidden, f_modelled, iters, seed, model=None) -> dict:
    from stfusion.models.xfuse.likelihood import nb_log_prob

    torch.manual_seed(seed)
    mu, sd = feats[vis[1]].mean(0), feats[vis[1]].std(0) + 1e-6
    z = lambda px: (feats[px] - mu) / sd  # noqa: E731
    heads = Heads(feats.shape[1], k, hidden)
    L = torch.nn.Parameter(0.1 * torch.randn(k, counts.shape[1]))
    t, u = torch.nn.Parameter(t0.clone()), torch.nn.Parameter(u0.clone())
    if model is not None:
        init_from(heads, L, model, mu, sd)
    opt = torch.optim.Adam([*heads.parameters(), L, t, u], lr=1e-2)
    zv, zb = z(vis[1]), z(bg_px)

    def objective() -> torch.Tensor:
        r = heads.area_sums(zv, vis[0], vis[2]) @ torch.exp(L) * torch.exp(t)
        loss = -nb_log_prob(counts, r, u).sum() + 0.5 * (L**2).sum()
        if len(bg_px):
            r_bg = heads.area_sums(zb, torch.zeros(len(bg_px), dtype=torch.long), 1) @ torch.exp(L) * torch.exp(t)
            loss = loss + (r_bg * torch.nn.functional.softplus(u)).sum()  # -log NB(0 | r, p)
        return loss / vis[2]

    for _ in range(iters):
        loss = objective()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        loss = objective()
    out = {"loss_per_spot": float(loss)}
    with torch.no_grad():
        for name, (rows, px, n), y in (("visible", vis, targets[0]), ("hidden", hid, targets[1])):
            nu = (heads.area_sums(z(px), rows, n) @ torch.exp(L) * torch.exp(t + u)).double().numpy()
            out[name] = float(np.nanmedian(M.genewise_pearson(M.log1p_cp10k(nu, nu.sum(1) / f_modelled), y)))
    return out


def refit_patches(feats, vis, hid, bg_px, data, counts, targets, t0, u0, f_modelled, iters, seed,
                  k: int = 3, patch: int = 128, batch: int = 2) -> dict:
    """Linear heads fitted on random windows of the section, as training sees patches."""
    from stfusion.models.xfuse.likelihood import nb_log_prob

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    h, w = data.shape
    rows, px = vis[0].numpy(), vis[1]
    mu, sd = feats[px].mean(0), feats[px].std(0) + 1e-6
    zf = (feats - mu) / sd
    pi, pj = np.divmod(px, w)
    box = [np.full(vis[2], np.inf), np.full(vis[2], -np.inf), np.full(vis[2], np.inf), np.full(vis[2], -np.inf)]
    np.minimum.at(box[0], rows, pi), np.maximum.at(box[1], rows, pi), np.minimum.at(box[2], rows, pj), np.maximum.at(box[3], rows, pj)
    members = [np.flatnonzero(rows == i) for i in range(vis[2])]
    is_bg = np.zeros(h * w, dtype=bool)
    is_bg[bg_px] = True
    tissue = np.flatnonzero(data.tissue.ravel())
    weight = len(tissue) / patch**2 / batch
    heads = Heads(feats.shape[1], k, 0)
    L = torch.nn.Parameter(0.1 * torch.randn(k, counts.shape[1]))
    t, u = torch.nn.Parameter(t0.clone()), torch.nn.Parameter(u0.clone())
    opt = torch.optim.Adam([{"params": [*heads.parameters(), L], "lr": 1e-2}, {"params": [t, u], "lr": 1e-3}])
    for _ in range(iters):
        loss = 0.5 * (L**2).sum()
        for _ in range(batch):
            i0, j0 = np.divmod(tissue[rng.integers(len(tissue))], w)
            i0, j0 = i0 - patch // 2, j0 - patch // 2
            keep = np.flatnonzero((box[0] >= i0) & (box[1] < i0 + patch) & (box[2] >= j0) & (box[3] < j0 + patch))
            if len(keep):
                sel = np.concatenate([members[i] for i in keep])
                A = heads.area_sums(zf[px[sel]], torch.from_numpy(np.searchsorted(keep, rows[sel])), len(keep))
                loss = loss - weight * nb_log_prob(counts[keep], A @ torch.exp(L) * torch.exp(t), u).sum()
            ii, jj = np.mgrid[max(i0, 0) : min(i0 + patch, h), max(j0, 0) : min(j0 + patch, w)]
            win = (ii * w + jj).ravel()
            win = win[is_bg[win]]
            if len(win):
                A_bg = heads.area_sums(zf[win], torch.zeros(len(win), dtype=torch.long), 1)
                loss = loss + weight * (A_bg @ torch.exp(L) * torch.exp(t) * torch.nn.functional.softplus(u)).sum()
        opt.zero_grad()
        (loss / vis[2]).backward()
        opt.step()
    out = {"loss_per_spot": float("nan")}
    with torch.no_grad():
        for name, (r_, p_, n), y in (("visible", vis, targets[0]), ("hidden", hid, targets[1])):
            nu = (heads.area_sums(zf[p_], r_, n) @ torch.exp(L) * torch.exp(t + u)).double().numpy()
            out[name] = float(np.nanmedian(M.genewise_pearson(M.log1p_cp10k(nu, nu.sum(1) / f_modelled), y)))
    return out


def main() -> None:
    from stfusion.models.xfuse import XFuse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    M.set_threads(args.threads)
    prov = M.Provenance(seed=args.seed, threads=args.threads, model=str(args.model))
    model = XFuse.load(args.model)
    train, test, genes = M.holdout_fold("MOB1", args.seed)
    feats, data = feature_map(model, M.read("MOB1"))
    vis_rows, vis_px, n_vis = spot_pixels(train, data)
    hid_rows, hid_px, n_hid = spot_pixels(test, data)
    vis, hid = (vis_rows, vis_px, n_vis), (hid_rows, hid_px, n_hid)
    full_v, full_h = M.dense(train.X), M.dense(test.X)
    counts = torch.tensor(M.dense(train[:, genes].X), dtype=torch.float32)
    targets = (M.log1p_cp10k(counts.numpy(), full_v.sum(1)), M.log1p_cp10k(M.dense(test[:, genes].X), full_h.sum(1)))
    f_modelled = float(counts.sum()) / float(full_v.sum())
    t0, u0 = model.expr_.t.detach(), model.expr_.u.detach()
    rows = []
    for bg in ("none", "mask"):
        bg_px = background_pixels(data, vis_px, bg)
        res = refit_patches(feats, vis, hid, bg_px, data, counts, targets, t0, u0, f_modelled, 2000, args.seed)
        rows.append({"heads": "linear", "init": "random", "fit": "patches", "background": bg, "background_px": len(bg_px),
                     "metagenes": 3, **res})
        print(rows[-1], flush=True)
    for heads, hidden, k in (("linear", 0, 3), ("mlp", 32, 5)):
        for bg in ("none", "mask", "near"):
            bg_px = background_pixels(data, vis_px, bg)
            res = refit(feats, vis, hid, bg_px, counts, targets, t0, u0, k, hidden, f_modelled, args.iters, args.seed)
            rows.append({"heads": heads, "init": "random", "fit": "full batch", "background": bg, "background_px": len(bg_px),
                         "metagenes": k, **res})
            print(rows[-1], flush=True)
    k, bg_px = model.expr_.n_active, background_pixels(data, vis_px, "mask")
    res = refit(feats, vis, hid, bg_px, counts, targets, t0, u0, k, 0, f_modelled, args.iters, args.seed, model)
    rows.append({"heads": "linear", "init": "model", "fit": "full batch", "background": "mask", "background_px": len(bg_px), "metagenes": k, **res})
    res = refit(  # the fitted model itself on the same features and objective
        feats, vis, hid, bg_px, counts, targets, t0, u0, k, 0, f_modelled, 0, args.seed, model)
    rows.append({"heads": "linear", "init": "model, not refitted", "fit": "none", "background": "mask", "background_px": len(bg_px),
                 "metagenes": k, **res})
    df = pd.DataFrame(rows).sort_values("fit", kind="stable", key=lambda c: c.map({"full batch": 0, "patches": 1, "none": 2}))
    info = prov.stop()
    body = ("Expression part refitted full batch on the decoder features of a fitted model (see the script's "
            "docstring); median gene-wise Pearson r, top 100 genes, MOB1 fold of `mob_holdout.toml`.\n\n"
            + M.md_table(df) + "\n")
    M.write_report(OUT.with_suffix(".md"), "XFuse MOB1 fold: expression heads refitted on fixed features", prov, body)
    print(OUT.with_suffix(".md").read_text(), info["wall_seconds"])


if __name__ == "__main__":
    main()
