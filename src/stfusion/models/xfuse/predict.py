"""Monte Carlo prediction over the variational posterior.

Every prediction is a set of *areas*, each a non-negative weight per working pixel (a
sparse areas x pixels matrix ``W``): spot discs or boxes (weight 1 for member pixels, as in
training), annotation masks (the fraction of each working pixel the full-resolution mask
covers), or cells of a regular grid (:func:`grid_weights`). For each of N posterior samples
(Z from q(Z | image), L/E/F from their posteriors) the per-pixel ``s * a`` maps are summed
under each area, ``A_n = W @ (s a)_n`` (areas x metagenes), and the conditional mean
expression is ``nu_n = A_n @ exp(L_n) * exp(t + beta E_n + u + beta F_n)`` (areas x genes).
Genes enter only after ``A``, so memory grows with areas x genes, and gene chunks bound it
further.

The network runs over the bounding box of the tissue and the areas (plus a margin) in
*frames* the size of the training patches (``frame_px``), keeping the central half of each
(a tile of ``frame_px / 2`` with ``frame_px / 4`` of surrounding image each side), so slides
of any size predict in bounded memory. Frames of the training size matter: the deepest
levels of the U-Net see a training patch whole (2 x 2 pixels at depth 6 of a 128 px patch),
and in larger frames they see other context. On three synthetic sections (a network trained
on 128 px patches), the expected counts summed over the measured areas came to 0.81-1.10 of
the measured totals in 128 px frames, 0.72-1.35 in 192 px and 0.14-1.92 in 640 px frames
(benchmarks/xfuse/diagnostics/frames.md). The encoder runs once per group of frames; each sample runs
the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse

from stfusion.models.xfuse.data import SectionData
from stfusion.models.xfuse.likelihood import ExpressionModel
from stfusion.models.xfuse.nn import XFuseNet
from stfusion.models.xfuse.field import Placement
from stfusion.models.xfuse.gene_field import area_centres_um
from stfusion.models.xfuse.sampling import image_tensor, to_model_range

TARGET_SUM = 1e4
FRAME_PIXELS = 2**19  # pixels of the frames that go through the network together
GENE_CHUNK = 128


@dataclass
class Draws:
    """N posterior samples of the area sums and the global parameters."""

    A: np.ndarray  # (N, areas, M) float32
    weights: torch.Tensor  # (N, M, G): exp(L_n) * exp(offset_n + logit_n), nu_n = A_n @ weights_n
    totals_per_metagene: np.ndarray  # (N, M): weights summed over the modelled genes
    field_offsets: np.ndarray | None = None  # (areas, G) float32: the gene field's log-rate offsets

    def area_factor(self, genes: np.ndarray) -> np.ndarray | None:
        """exp(gene-field offset) per area and gene of ``genes`` (None without a field)."""
        return None if self.field_offsets is None else np.exp(self.field_offsets[:, genes].astype(np.float64))

    def nu(self, n: int, genes: np.ndarray, factor: np.ndarray | None) -> np.ndarray:
        """Sample ``n``'s expected counts (areas x genes); ``factor``: :meth:`area_factor` of ``genes``."""
        nu = (self.A[n] @ self.weights[n][:, genes].numpy()).astype(np.float64)
        return nu if factor is None else nu * factor

    def totals(self) -> np.ndarray:
        """(N, areas): expected counts summed over all modelled genes."""
        if self.field_offsets is None:
            return np.einsum("nam,nm->na", self.A, self.totals_per_metagene)
        n_genes = self.weights.shape[2]
        out = np.zeros(self.A.shape[:2])
        for c0 in range(0, n_genes, GENE_CHUNK):
            idx = np.arange(c0, min(n_genes, c0 + GENE_CHUNK))
            factor = self.area_factor(idx)
            for n in range(self.A.shape[0]):
                out[n] += self.nu(n, idx, factor).sum(1)
        return out


def _region(data: SectionData, W: sparse.csr_matrix, margin: int) -> tuple[int, int, int, int]:
    """Rows/columns bounding the tissue and every pixel with weight, plus ``margin``."""
    h, w = data.shape
    used = np.zeros(h * w, dtype=bool)
    used[np.unique(W.indices)] = True
    used |= data.tissue.ravel()
    if not used.any():
        used[:] = True
    ii, jj = np.divmod(np.flatnonzero(used), w)
    return (max(0, ii.min() - margin), min(h, ii.max() + 1 + margin), max(0, jj.min() - margin), min(w, jj.max() + 1 + margin))


def frame_layout(frame_px: int) -> tuple[int, int]:
    """(tile, context): each frame of ``frame_px`` keeps its central ``tile`` pixels."""
    tile = max(int(frame_px) // 2, 1)
    return tile, (int(frame_px) - tile) // 2


def _tiles(i0: int, i1: int, j0: int, j1: int, tile: int) -> list[tuple[int, int, int, int]]:
    return [(a, min(a + tile, i1), b, min(b + tile, j1)) for a in range(i0, i1, tile) for b in range(j0, j1, tile)]


def _input(image01: torch.Tensor, i0: int, i1: int, j0: int, j1: int) -> torch.Tensor:
    """(1, 3, i1-i0, j1-j0) crop in model range, white outside the image."""
    _, h, w = image01.shape
    out = torch.ones(3, i1 - i0, j1 - j0)
    a0, a1, b0, b1 = max(i0, 0), min(i1, h), max(j0, 0), min(j1, w)
    out[:, a0 - i0 : a1 - i0, b0 - j0 : b1 - j0] = image01[:, a0:a1, b0:b1]
    return to_model_range(out)[None]


def field_index(net: XFuseNet, data: SectionData) -> int | None:
    """The section's index in the expression field (:mod:`.field`) if the network was
    trained with one and on this section (same id and working shape), else None."""
    return None if net.field is None else net.field.index(data.name, data.shape)


def _tile_maps(net: XFuseNet, image01: torch.Tensor, tiles, n_samples: int, active: torch.Tensor,
               gen: torch.Generator | None, mean: bool, frame_px: int, section: int | None = None):
    """Yield (tile, sample index, s (h, w), a (M, h, w)) for every tile and sample.

    Each tile is the centre of a ``frame_px`` frame (white beyond the image); groups of
    frames go through the network together. ``section``: the section's index in the
    expression field (None: no field).
    """
    tile, c = frame_layout(frame_px)
    group = max(1, FRAME_PIXELS // (frame_px * frame_px))
    for k in range(0, len(tiles), group):
        part = tiles[k : k + group]
        x = torch.cat([_input(image01, i0 - c, i0 + tile + c, j0 - c, j0 + tile + c) for i0, _, j0, _ in part])
        place = None if section is None else Placement.frames(section, [(i0 - c, j0 - c) for i0, _, j0, _ in part], x.shape[-1])
        latents = net.encode(x)
        field = net.field_at(place, x.shape[-2:])
        for n in range(n_samples):
            feats = net.features(latents.sample(gen, mean=mean))
            s_all, a_all = net.scale(feats, field, x)[:, 0], net.activities(feats, active, field)
            for t, (i0, i1, j0, j1) in enumerate(part):
                rows, cols = slice(c, c + i1 - i0), slice(c, c + j1 - j0)
                yield (i0, i1, j0, j1), n, s_all[t, rows, cols], a_all[t, :, rows, cols]


@torch.no_grad()
def draw_areas(net: XFuseNet, expr: ExpressionModel, data: SectionData, W: sparse.csr_matrix,
               n_samples: int, seed: int, *, frame_px: int, mean: bool = False,
               progress: bool = False) -> Draws:
    """Area sums ``A`` and global draws for ``n_samples`` posterior samples (``mean``: posterior means).

    ``frame_px``: the side of the training patches (see the module docstring).

    Samples are drawn from generators seeded by ``seed``, so the same model, section and
    seed give the same samples; areas that cover the same pixels get the same latent draws.
    """
    from rich.progress import track
    net.eval()
    g_global = torch.Generator().manual_seed(int(seed))
    g_latent = torch.Generator().manual_seed(int(seed) + 7919)
    beta = torch.from_numpy(np.asarray(data.beta, dtype=np.float32))
    weights, totals = [], []
    for _ in range(n_samples):
        draw = expr.sample(g_global, mean=mean)
        offset, logit = expr.log_rate_and_logit(draw, beta)
        wt = torch.exp(draw["L"]) * torch.exp(offset + logit)
        weights.append(wt)
        totals.append(wt.sum(1).numpy())
    m = expr.n_active
    A = np.zeros((n_samples, W.shape[0], m), dtype=np.float32)
    tile, context = frame_layout(frame_px)
    i0, i1, j0, j1 = _region(data, W, margin=context)
    h, w = data.shape
    Wc = W.tocsc()
    image01 = image_tensor(data.image)
    tiles = _tiles(i0, i1, j0, j1, tile)
    maps = _tile_maps(net, image01, tiles, n_samples, expr.active, g_latent, mean, frame_px, field_index(net, data))
    for (a0, a1, b0, b1), n, s, act in track(maps, total=len(tiles) * n_samples, description="XFuse samples",
                                              disable=not progress, transient=True):
        rows = np.arange(a0, a1)[:, None] * w + np.arange(b0, b1)[None, :]
        sub = Wc[:, rows.ravel()]
        if sub.nnz == 0:
            continue
        sa = (s[None] * act).reshape(act.shape[0], -1).T.numpy()  # pixels x M
        A[n] += np.asarray(sub @ sa, dtype=np.float32)
    draws = Draws(A, torch.stack(weights), np.stack(totals))
    gf = expr.gene_field
    i = None if gf is None else gf.index(data.name, data.shape)
    if i is not None:  # a section the gene field was trained on: kriging means at the area centroids
        centres = area_centres_um(W, w, data.fx, data.fy, data.mpp)
        draws.field_offsets = gf.area_offsets(i, centres, np.arange(gf.n_genes))  # float32
    return draws


def expected_counts(draws: Draws, genes: np.ndarray | None = None) -> np.ndarray:
    """nu samples (N, areas, genes) for gene indices ``genes`` (default all)."""
    genes = np.arange(draws.weights.shape[2]) if genes is None else np.asarray(genes)
    factor = draws.area_factor(genes)
    return np.stack([draws.nu(n, genes, factor) for n in range(draws.A.shape[0])]).astype(np.float32)


def summarize(draws: Draws, genes: np.ndarray, modelled_fraction: float) -> dict[str, np.ndarray]:
    """Posterior means and SDs per area and gene of ``nu`` and of log1p(nu / total x 1e4).

    ``total`` (per sample and area) = sum of nu over all modelled genes / ``modelled_fraction``
    (the training share of counts the modelled genes hold), an estimate of the total over
    all genes. Computed in gene chunks (memory: areas x chunk).
    """
    n, n_areas, _ = draws.A.shape
    totals = draws.totals() / float(modelled_fraction)
    totals = np.maximum(totals, 1e-12)
    out = {k: np.empty((n_areas, len(genes)), dtype=np.float32) for k in ("mean", "sd", "mean_counts", "sd_counts")}
    for c0 in range(0, len(genes), GENE_CHUNK):
        idx = genes[c0 : c0 + GENE_CHUNK]
        s1 = np.zeros((n_areas, len(idx))), np.zeros((n_areas, len(idx)))
        s2 = np.zeros((n_areas, len(idx))), np.zeros((n_areas, len(idx)))
        factor = draws.area_factor(idx)
        for k in range(n):
            nu = draws.nu(k, idx, factor)
            y = np.log1p(nu / totals[k][:, None] * TARGET_SUM)
            for acc, v in ((0, nu), (1, y)):
                s1[acc][:] += v
                s2[acc][:] += v * v
        sl = slice(c0, c0 + len(idx))
        for acc, (mk, sk) in enumerate((("mean_counts", "sd_counts"), ("mean", "sd"))):
            mu = s1[acc] / n
            out[mk][:, sl] = mu
            out[sk][:, sl] = np.sqrt(np.maximum(s2[acc] / n - mu**2, 0.0) * (n / max(n - 1, 1)))
    return out


# --------------------------------------------------------------------------- grids
@dataclass
class Grid:
    """Cells of side ``grid_um`` over a section: ``rc`` (cells x 2: row, col), ``shape`` of the full grid."""

    grid_um: float
    rc: np.ndarray
    shape: tuple[int, int]
    W: sparse.csr_matrix

    def centres_px(self, mpp: float) -> np.ndarray:
        """Cell centres (x, y) in full-resolution pixels."""
        return (self.rc[:, ::-1] + 0.5) * self.grid_um / float(mpp)


def grid_weights(data: SectionData, grid_um: float, tissue_only: bool = True) -> Grid:
    """Cells of ``grid_um`` µm and their weights over the working pixels.

    Cells no smaller than a working pixel sum the pixels whose centres they hold; smaller
    cells interpolate the per-µm² density bilinearly and multiply by the cell area. With
    ``tissue_only`` only cells on tissue are kept (majority of member pixels, or the
    nearest pixel, is tissue).
    """
    h, w = data.shape
    rx, ry = data.mpp / data.fx, data.mpp / data.fy  # µm per working pixel
    g = float(grid_um)
    shape = (int(np.ceil(data.fullres_hw[0] * data.mpp / g)), int(np.ceil(data.fullres_hw[1] * data.mpp / g)))
    if g >= min(rx, ry):
        ii, jj = np.mgrid[0:h, 0:w]
        rows = np.minimum(((ii + 0.5) * ry // g).astype(np.int64), shape[0] - 1).ravel()
        cols = np.minimum(((jj + 0.5) * rx // g).astype(np.int64), shape[1] - 1).ravel()
        cell = rows * shape[1] + cols
        tissue = np.bincount(cell, weights=data.tissue.ravel(), minlength=shape[0] * shape[1])
        count = np.bincount(cell, minlength=shape[0] * shape[1])
        keep = np.flatnonzero((count > 0) & ((tissue >= 0.5 * count) if tissue_only else True))
        index = np.full(shape[0] * shape[1], -1, dtype=np.int64)
        index[keep] = np.arange(len(keep))
        sel = index[cell] >= 0
        W = sparse.csr_matrix((np.ones(int(sel.sum()), np.float32), (index[cell][sel], np.flatnonzero(sel))),
                              shape=(len(keep), h * w))
        return Grid(g, np.stack(np.divmod(keep, shape[1]), axis=1), shape, W)
    return _interpolated_grid(data, g, shape, rx, ry, tissue_only)


def _interpolated_grid(data: SectionData, g: float, shape, rx: float, ry: float, tissue_only: bool) -> Grid:
    h, w = data.shape
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]]
    y = (rr.ravel() + 0.5) * g / ry - 0.5  # cell centre in working-pixel index coordinates
    x = (cc.ravel() + 0.5) * g / rx - 0.5
    near = np.clip(np.round(y), 0, h - 1).astype(np.int64) * w + np.clip(np.round(x), 0, w - 1).astype(np.int64)
    keep = np.flatnonzero(data.tissue.ravel()[near]) if tissue_only else np.arange(rr.size)
    y, x = np.clip(y[keep], 0, h - 1), np.clip(x[keep], 0, w - 1)
    y0, x0 = np.minimum(np.floor(y).astype(np.int64), h - 2 if h > 1 else 0), np.minimum(np.floor(x).astype(np.int64), w - 2 if w > 1 else 0)
    dy, dx = y - y0, x - x0
    area = g * g / (rx * ry)
    rows, cols, vals = [], [], []
    for oy, ox, wt in ((0, 0, (1 - dy) * (1 - dx)), (0, 1, (1 - dy) * dx), (1, 0, dy * (1 - dx)), (1, 1, dy * dx)):
        rows.append(np.arange(len(keep)))
        cols.append(np.minimum(y0 + oy, h - 1) * w + np.minimum(x0 + ox, w - 1))
        vals.append(wt * area)
    W = sparse.csr_matrix((np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(len(keep), h * w))
    return Grid(g, np.stack([rr.ravel()[keep], cc.ravel()[keep]], axis=1), shape, W)


def mask_weights(data: SectionData, masks: list[np.ndarray]) -> sparse.csr_matrix:
    """Areas x working pixels: the fraction of each pixel each full-resolution mask covers."""
    from stfusion.errors import StfusionError
    from stfusion.models.xfuse.data import mask_fraction

    rows = []
    for k, m in enumerate(masks):
        m = np.asarray(m)
        if m.shape[:2] != tuple(data.fullres_hw):
            raise StfusionError(
                f"Mask {k} is {m.shape[1]}x{m.shape[0]} px but the section's full-resolution image is "
                f"{data.fullres_hw[1]}x{data.fullres_hw[0]} px; draw masks on the full-resolution image."
            )
        frac = mask_fraction(m.astype(bool) if m.ndim == 2 else m[..., 0] > 0, data.shape).ravel()
        rows.append(sparse.csr_matrix(frac[None]))
    return sparse.vstack(rows).tocsr() if rows else sparse.csr_matrix((0, data.shape[0] * data.shape[1]))


@torch.no_grad()
def mean_maps(net: XFuseNet, expr: ExpressionModel, data: SectionData,
              frame_px: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Posterior-mean scale (h', w') and activities (M, h', w') over the tissue region box."""
    i0, i1, j0, j1 = data.region_box(margin=4)
    s_map = np.zeros((i1 - i0, j1 - j0), dtype=np.float32)
    a_map = np.zeros((expr.n_active, i1 - i0, j1 - j0), dtype=np.float32)
    tiles = _tiles(i0, i1, j0, j1, frame_layout(frame_px)[0])
    maps = _tile_maps(net, image_tensor(data.image), tiles, 1, expr.active, None, mean=True, frame_px=frame_px,
                      section=field_index(net, data))
    for (a0, a1, b0, b1), _, s, act in maps:
        s_map[a0 - i0 : a1 - i0, b0 - j0 : b1 - j0] = s.numpy()
        a_map[:, a0 - i0 : a1 - i0, b0 - j0 : b1 - j0] = act.numpy()
    return s_map, a_map, (i0, i1, j0, j1)


def constant_prediction_warning(values: np.ndarray, n_metagenes: int | None, rtol: float = 1e-3) -> str | None:
    """A warning when predictions (spots x genes) are the same at every spot for every gene
    (each gene's spread below ``rtol`` x its mean): the model has learnt no tissue structure."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] < 2:
        return None
    spread = values.max(axis=0) - values.min(axis=0)
    if np.any(spread > rtol * np.maximum(np.abs(values).mean(axis=0), 1e-12)):
        return None
    return (f"xfuse: the predictions are constant over the {values.shape[0]} spots for every gene "
            f"(metagenes: {n_metagenes}): the model learnt no tissue structure. Train longer (steps or epochs), "
            "check that the section's image shows the tissue (stfusion plot spots), and see the fit's warnings.")


def predictive_counts(expr: ExpressionModel, nu: np.ndarray, beta: np.ndarray, idx: np.ndarray, seed: int) -> np.ndarray:
    """NB draws with mean ``nu``: r = nu / exp(logit), p = sigmoid(logit) (posterior-mean logit
    of genes ``idx`` given the covariate indicators ``beta``), from a generator seeded by ``seed``."""
    draw = expr.sample(mean=True)
    _, logit = expr.log_rate_and_logit(draw, torch.from_numpy(beta))
    logit = logit.detach().numpy()[idx]
    rng = np.random.default_rng(seed)
    r = np.maximum(nu / np.exp(logit), 1e-8)
    lam = rng.gamma(shape=r, scale=np.exp(logit))
    return rng.poisson(lam).astype(np.float32)
