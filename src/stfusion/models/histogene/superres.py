"""Super-resolution by dense patch sampling (HisToGene), and its aggregation algebra.

With factor ``f = k²`` (4, 9, 25, ...), patches of the spot's side ``s`` are centred on a
grid of stride ``t = s / k``. The image is cut into sub-patches of side ``t`` on the grid
offset by ``s / 2``, so each patch covers exactly ``k x k`` sub-patches and each interior
sub-patch is covered by ``k²`` patches; a sub-patch's prediction is the mean of the
predictions of the patches covering it (fewer at the tissue edge).

The patch grid spans the spots' bounding box extended by ``k - 1`` strides, and keeps the
patches whose centre lies within ``radius`` (default: the spot pitch) of a spot centre, so
the tissue under the spots is covered and empty glass mostly is not.

HisToGene*: the spot's patch square contains exactly ``k²`` sub-patch centres. A
sub-patch's prediction is the expression of a spot-sized area centred there, so its share of
the spot is ``1 / k²`` of it in count-like space; the spot estimate is the *sum* of the
shares, i.e. ``log1p(sum_j expm1(pred_j) / k²)`` (the mean in cp10k space, back on log1p).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from stfusion import _constants as K
from stfusion.data.section import microns_per_pixel


@dataclass
class DenseGrid:
    """Patch centres and the sub-patch grid of one section (pixels, x = column)."""

    k: int
    side_px: float
    origin: np.ndarray  # (x, y) centre of patch (0, 0)
    patch_ij: np.ndarray  # (n_patches, 2) integer grid index of each kept patch
    shape: tuple[int, int]  # sub-patch grid size (nx, ny)

    @property
    def stride_px(self) -> float:
        return self.side_px / self.k

    @property
    def patch_centres(self) -> np.ndarray:
        return self.origin + self.patch_ij * self.stride_px

    def cell_centres(self, ab: np.ndarray) -> np.ndarray:
        """Centres of sub-patches with grid index ``ab`` (n, 2)."""
        return self.origin - self.side_px / 2 + (np.asarray(ab) + 0.5) * self.stride_px

    @property
    def phases(self) -> np.ndarray:
        """Phase of each patch (``(i mod k) * k + j mod k``): patches of one phase tile the image."""
        return (self.patch_ij[:, 0] % self.k) * self.k + self.patch_ij[:, 1] % self.k


def factor_to_k(factor: int) -> int:
    """``k`` with ``k² = factor`` (4 -> 2, 9 -> 3, 25 -> 5); raises for non-squares."""
    k = int(round(np.sqrt(factor)))
    if factor < 1 or k * k != factor:
        raise ValueError(f"super-resolution factor must be a square number (4, 9, 16, 25), got {factor}.")
    return k


def spot_pitch_px(spot_xy: np.ndarray) -> float:
    """Median nearest-neighbour distance between spot centres."""
    if len(spot_xy) < 2:
        return 0.0
    d, _ = cKDTree(spot_xy).query(spot_xy, k=2)
    return float(np.median(d[:, 1]))


def dense_grid(spot_xy: np.ndarray, side_px: float, factor: int, radius_px: float | None = None) -> DenseGrid:
    """Patch grid of stride ``side / k`` over the spots (see module docstring)."""
    k = factor_to_k(factor)
    spot_xy = np.asarray(spot_xy, dtype=float)
    t = side_px / k
    origin = spot_xy.min(axis=0) - (k - 1) * t
    n = np.floor((spot_xy.max(axis=0) + (k - 1) * t - origin) / t + 1e-9).astype(int) + 1
    ii, jj = np.meshgrid(np.arange(n[0]), np.arange(n[1]), indexing="ij")
    ij = np.column_stack([ii.ravel(), jj.ravel()])
    radius = radius_px if radius_px is not None else max(spot_pitch_px(spot_xy), side_px)
    dist, _ = cKDTree(spot_xy).query(origin + ij * t)
    ij = ij[dist <= radius + 1e-9]
    return DenseGrid(k=k, side_px=float(side_px), origin=origin, patch_ij=ij, shape=(int(n[0] + k - 1), int(n[1] + k - 1)))


def average_subpatches(patch_values: np.ndarray, patch_ij: np.ndarray, k: int, shape: tuple[int, int]):
    """Mean over the covering patches of every sub-patch.

    Returns ``(cell_ab (m, 2), values (m, G), cover (m,))`` for the ``m`` sub-patches covered
    by at least one patch; patch ``(i, j)`` covers sub-patches ``(i..i+k-1, j..j+k-1)``.
    """
    values = np.asarray(patch_values, dtype=np.float64)
    total = np.zeros((shape[0], shape[1], values.shape[1]))
    count = np.zeros(shape, dtype=np.int64)
    for da in range(k):
        for db in range(k):
            a, b = patch_ij[:, 0] + da, patch_ij[:, 1] + db
            np.add.at(total, (a, b), values)
            np.add.at(count, (a, b), 1)
    ab = np.argwhere(count > 0)
    cover = count[ab[:, 0], ab[:, 1]]
    return ab, total[ab[:, 0], ab[:, 1]] / cover[:, None], cover


def spot_members(grid: DenseGrid, spot_xy: np.ndarray) -> np.ndarray:
    """Sub-patch grid indices inside each spot's patch square: (n_spots, k², 2)."""
    t, k = grid.stride_px, grid.k
    corner = grid.origin - grid.side_px / 2  # lower edge of sub-patch 0
    lo = np.ceil((np.asarray(spot_xy, float) - grid.side_px / 2 - corner) / t - 0.5 - 1e-9).astype(int)
    da, db = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    offsets = np.column_stack([da.ravel(), db.ravel()])
    return lo[:, None, :] + offsets[None, :, :]


def aggregate_to_spots(cell_ab: np.ndarray, cell_log: np.ndarray, members: np.ndarray, shape: tuple[int, int]):
    """HisToGene* spot estimates from log1p sub-patch predictions: log1p(sum of 1/k² shares).

    Sub-patches of a spot that were not predicted are left out (their share is spread over
    the others). Returns (n_spots, G) and the number of sub-patches used per spot.
    """
    lookup = np.full(shape, -1, dtype=np.int64)
    lookup[cell_ab[:, 0], cell_ab[:, 1]] = np.arange(len(cell_ab))
    a = np.clip(members[..., 0], 0, shape[0] - 1)
    b = np.clip(members[..., 1], 0, shape[1] - 1)
    inside = (members[..., 0] == a) & (members[..., 1] == b)
    idx = np.where(inside, lookup[a, b], -1)  # (n_spots, k²)
    lin = np.expm1(np.clip(np.asarray(cell_log, dtype=np.float64), 0, None))
    used = (idx >= 0).sum(axis=1)
    shares = np.where((idx >= 0)[..., None], lin[np.maximum(idx, 0)], 0.0).sum(axis=1)
    return np.log1p(shares / np.maximum(used, 1)[:, None]), used


def plot_superres(sr, gene: str, *, ax=None, cmap: str = "viridis", show_image: bool = True):
    """Render one gene of a super-resolved AnnData as squares over the section's preview; returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from stfusion.data.section import spatial_info

    if gene not in sr.var_names:
        raise KeyError(f"{gene!r} is not among the predicted genes (e.g. {list(sr.var_names[:3])}).")
    info = sr.uns["stfusion"]["superres"]
    lib = spatial_info(sr)
    scalef = float(lib["scalefactors"].get("tissue_hires_scalef", 1.0))
    image = lib.get("images", {}).get("hires")
    fig = ax.figure if ax is not None else plt.figure(figsize=(6, 6))
    ax = ax or fig.add_subplot(111)
    if show_image and image is not None:
        ax.imshow(image)
    half = float(info["subpatch_px"]) / 2 * scalef
    xy = np.asarray(sr.obsm["spatial"], float) * scalef
    square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    values = np.asarray(sr[:, gene].X).ravel()
    coll = PolyCollection(xy[:, None, :] + square[None], array=values, cmap=cmap, linewidths=0)
    ax.add_collection(coll)
    ax.set_xlim(xy[:, 0].min() - 4 * half, xy[:, 0].max() + 4 * half)
    ax.set_ylim(xy[:, 1].max() + 4 * half, xy[:, 1].min() - 4 * half)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(f"{gene} ({info['factor']}x, sub-patch {info['subpatch_um']:.0f} µm)")
    fig.colorbar(coll, ax=ax, shrink=0.7, label=sr.uns["stfusion"].get("expression_space", ""))
    return fig


def superres_adata(section, grid, ab, values, cover, genes, patch_um: float, factor: int) -> ad.AnnData:
    """AnnData of sub-patches with centres, size and the section's spatial metadata."""
    mpp = microns_per_pixel(section)
    names = [f"sub_{a}_{b}" for a, b in ab]
    out = ad.AnnData(X=np.asarray(values, np.float32), obs=pd.DataFrame(
        {"grid_a": ab[:, 0], "grid_b": ab[:, 1], "n_covering": cover}, index=names), var=pd.DataFrame(index=list(genes)))
    out.obsm[K.SPATIAL] = grid.cell_centres(ab)
    if K.SPATIAL in section.uns:
        out.uns[K.SPATIAL] = copy.deepcopy(dict(section.uns[K.SPATIAL]))
        lib = next(iter(out.uns[K.SPATIAL].values()))
        lib[K.SCALEFACTORS][K.SPOT_DIAMETER_FULLRES] = grid.stride_px
    meta = dict(section.uns.get(K.STFUSION, {}))
    meta.update(method="histogene", expression_space="log1p_cp10k", superres={
        "factor": int(factor), "subpatch_um": float(grid.stride_px * mpp), "subpatch_px": float(grid.stride_px),
        "patch_um": float(patch_um), "stride_um": float(grid.stride_px * mpp)})
    out.uns[K.STFUSION] = meta
    return out

