"""Spatial helpers for evaluation: neighbour-smoothed truth and clustering agreement.

``smooth_neighbours`` gives ST-Net's "smoothed" ground truth (He et al. 2020, Nat Biomed Eng
4:827): each spot replaced by the mean of itself and its grid neighbours (3 x 3 on legacy ST
square grids, the 6 hexagonal neighbours on Visium). ``ari_kmeans`` scores how well k-means
clusters of (predicted) expression recover reference labels, as in Li et al. 2022
(Nat Methods 19:662) and the spatial-domain literature.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse
from scipy.spatial import cKDTree
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from stfusion import _constants as K

# neighbour radius in units of the median nearest-neighbour distance d: the first ring sits at
# d and d*sqrt(2) (square grid) or d (hexagonal grid); the next ring at 2d or d*sqrt(3).
SQUARE_RADIUS_FACTOR = 1.8
HEX_RADIUS_FACTOR = 1.4


def _nn_distance(coords: np.ndarray) -> float:
    """Median distance of each spot to its nearest distinct neighbour."""
    dist, _ = cKDTree(coords).query(coords, k=2)
    d = dist[:, 1]
    d = d[d > 0]
    if d.size == 0:
        raise ValueError("all spots share one position; cannot find neighbours")
    return float(np.median(d))


def _is_hexagonal(coords: np.ndarray, d: float) -> bool:
    """Interior spots of a hexagonal grid have 6 spots within 1.25 d, of a square grid 4."""
    k = min(7, len(coords))
    dist, _ = cKDTree(coords).query(coords, k=k)
    close = ((dist[:, 1:] > 0) & (dist[:, 1:] <= 1.25 * d)).sum(axis=1)
    return float(np.quantile(close, 0.75)) >= 5


def radius_graph(coords: np.ndarray, radius_factor: float | None = None) -> sparse.csr_matrix:
    """Neighbour graph of grid spots: within ``radius_factor`` x the median NN distance.

    The default factor is 1.4 on hexagonal grids and 1.8 on square grids (told apart by how
    many spots lie within 1.25 x the NN distance), halfway between the first and second rings.
    """
    coords = np.asarray(coords, dtype=float)
    if len(coords) < 2:
        return neighbour_graph(coords, 0.0)
    d = _nn_distance(coords)
    if radius_factor is None:
        radius_factor = HEX_RADIUS_FACTOR if _is_hexagonal(coords, d) else SQUARE_RADIUS_FACTOR
    return neighbour_graph(coords, radius_factor * d)


def neighbour_graph(coords: np.ndarray, radius: float, *, p: float = 2.0) -> sparse.csr_matrix:
    """Row-normalised adjacency (self included) of spots closer than ``radius`` (Minkowski p)."""
    coords = np.asarray(coords, dtype=float)
    n = len(coords)
    pairs = cKDTree(coords).query_pairs(radius, p=p, output_type="ndarray")
    rows = np.concatenate([np.arange(n), pairs[:, 0], pairs[:, 1]])
    cols = np.concatenate([np.arange(n), pairs[:, 1], pairs[:, 0]])
    adj = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    deg = np.asarray(adj.sum(axis=1)).ravel()
    return sparse.diags(1.0 / deg) @ adj


def _graph_from_section(adata: ad.AnnData, platform: str | None, factor: float | None) -> sparse.csr_matrix:
    platform = platform or adata.uns.get(K.STFUSION, {}).get(K.PLATFORM)
    obs = adata.obs
    has_array = K.ARRAY_COL in obs and K.ARRAY_ROW in obs
    if has_array and platform == "visium":
        # hex grid: neighbours at (dcol, drow) = (+-2, 0) or (+-1, +-1) -> distance 2 here
        col, row = obs[K.ARRAY_COL].to_numpy(float), obs[K.ARRAY_ROW].to_numpy(float)
        xy = np.column_stack([col, np.sqrt(3.0) * row])
        return neighbour_graph(xy, 2.0 + 1e-6)
    if has_array and (platform == "st" or K.SPATIAL not in adata.obsm):
        xy = np.column_stack([obs[K.ARRAY_COL].to_numpy(float), obs[K.ARRAY_ROW].to_numpy(float)])
        return radius_graph(xy, factor)
    if K.SPATIAL not in adata.obsm:
        raise ValueError(
            f"section has neither obs['{K.ARRAY_COL}'/'{K.ARRAY_ROW}'] nor obsm['{K.SPATIAL}']; "
            "pass the spot coordinates as an (n, 2) array instead"
        )
    return radius_graph(np.asarray(adata.obsm[K.SPATIAL], dtype=float), factor)


def smooth_neighbours(
    section_or_coords,
    X=None,
    *,
    platform: str | None = None,
    radius_factor: float | None = None,
):
    """Replace each spot by the mean of itself and its grid neighbours.

    Parameters
    ----------
    section_or_coords
        A section (AnnData) or an (n_spots, 2) array of spot positions (pixels or µm).
    X
        Values to smooth, (n_spots, n_genes) dense or sparse; default the section's ``X``.
    platform
        "visium" or "st"; default ``uns["stfusion"]["platform"]``.
    radius_factor
        Neighbours are spots within ``radius_factor`` x the median nearest-neighbour distance;
        default 1.4 on hexagonal and 1.8 on square grids (see :func:`radius_graph`).

    Neighbours of a section come from obs ``array_col``/``array_row``: on Visium the 6 hexagonal
    neighbours (dcol, drow) = (+-2, 0), (+-1, +-1); on legacy ST the radius rule on array
    coordinates, i.e. the 3 x 3 block |dcol| <= 1, |drow| <= 1 on square grids (and the 8
    surrounding spots of the diagonal 2k arrays, e.g. STUtility's MOB). For other or unknown
    platforms the radius rule runs on the pixel positions ``obsm["spatial"]`` (array
    coordinates alone cannot tell a Visium hex grid from a diagonal ST grid), and for a
    coordinate array on those positions. ``radius_factor`` is not used on Visium array
    coordinates. On the real
    legacy ST sections in shared data, 1.5 x NN (ST-Net's square-grid rule) misses 20-30% of
    the 3 x 3 neighbours found from array coordinates (spot positions are noisy and the scan
    slightly anisotropic); 1.8 x NN misses almost none.

    Returns
    -------
    Smoothed values of the same shape: a float ndarray, or CSR when ``X`` is sparse.
    """
    if isinstance(section_or_coords, ad.AnnData):
        graph = _graph_from_section(section_or_coords, platform, radius_factor)
        if X is None:
            X = section_or_coords.X
    else:
        if X is None:
            raise ValueError("pass X (the values to smooth) together with a coordinate array")
        xy = np.asarray(section_or_coords, dtype=float)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"coordinates must have shape (n_spots, 2), got {xy.shape}")
        graph = radius_graph(xy, radius_factor)
    if X.shape[0] != graph.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but there are {graph.shape[0]} spots")
    if sparse.issparse(X):
        return sparse.csr_matrix(graph @ X.astype(float))
    return np.asarray(graph @ np.asarray(X, dtype=float))


def ari_kmeans(
    expr,
    labels,
    n_clusters: int | None = None,
    seed: int = 0,
    *,
    n_pcs: int | None = None,
) -> float:
    """Adjusted Rand index between k-means clusters of ``expr`` and reference ``labels``.

    k-means (scikit-learn, ``n_init=10``, ``random_state=seed``) runs on ``expr`` (spots x
    genes, dense or sparse) as given: normalise/log it beforehand as you see fit. With
    ``n_pcs`` the data are first reduced to that many principal components. Spots whose
    label is missing (NaN/None) are left out. ``n_clusters`` defaults to the number of
    distinct labels.
    """
    lab = pd.Series(np.asarray(labels, dtype=object))
    keep = lab.notna().to_numpy()
    if expr.shape[0] != len(lab):
        raise ValueError(f"expr has {expr.shape[0]} rows but labels has {len(lab)}")
    data = expr[keep] if sparse.issparse(expr) else np.asarray(expr, dtype=float)[keep]
    lab = lab[keep].astype(str).to_numpy()
    k = int(n_clusters or len(np.unique(lab)))
    if k < 1 or k > len(lab):
        raise ValueError(f"cannot make {k} clusters from {len(lab)} labelled spots")
    if n_pcs is not None:
        n_comp = min(n_pcs, data.shape[1], data.shape[0])
        data = PCA(n_components=n_comp, random_state=seed).fit_transform(data)
    clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(data)
    return float(adjusted_rand_score(lab, clusters))
