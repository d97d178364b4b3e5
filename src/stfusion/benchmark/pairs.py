"""Neighbour-pair merging (XFuse, Extended Data Fig. 1d).

Neighbouring spots are merged into pairs by summing their counts; a model is trained on the
merged data and asked to predict each component spot. Scored by (1) the direction: among
(pair, gene) cases where one component is predicted higher with at least 95% posterior
credibility, the fraction where the measured counts agree; and (2) the Pearson correlation of
predicted vs measured component expression.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse
from scipy.spatial import cKDTree

from stfusion import _constants as K
from stfusion.data.scale import grid_spacing_px
from stfusion.errors import StfusionError

MEMBER_A, MEMBER_B = "member_a", "member_b"


def neighbour_pairs(coords: np.ndarray, seed: int = 0, radius_factor: float = 1.25) -> np.ndarray:
    """A random maximal matching of neighbouring spots: (n_pairs, 2) row indices.

    Spots are visited in a seeded random order; each unpaired spot is paired with a random
    unpaired neighbour (centre distance ≤ ``radius_factor`` × grid spacing). Spots left
    without an unpaired neighbour stay single.
    """
    coords = np.asarray(coords, dtype=float)
    rng = np.random.default_rng(seed)
    radius = radius_factor * grid_spacing_px(coords)
    neighbours = cKDTree(coords).query_ball_point(coords, radius)
    paired = np.zeros(len(coords), dtype=bool)
    pairs = []
    for i in rng.permutation(len(coords)):
        if paired[i]:
            continue
        free = [j for j in neighbours[i] if j != i and not paired[j]]
        if free:
            j = free[rng.integers(len(free))]
            paired[[i, j]] = True
            pairs.append((i, j))
    if not pairs:
        raise StfusionError("No neighbouring spots to pair: is the section a single spot or are spots far apart?")
    return np.asarray(pairs, dtype=int)


def merge_neighbour_pairs(section: ad.AnnData, seed: int = 0) -> tuple[ad.AnnData, pd.DataFrame]:
    """Merge neighbouring spots into pairs by summing counts.

    Returns the merged section (one observation per pair, at the pair's midpoint; obs
    ``member_a``/``member_b`` name the component spots; ``obsm["area_centres"]`` holds the
    two member centres, x_a, y_a, x_b, y_b, so the measured area is the union of the two
    spot discs) and the pair table. Spots left single are dropped from the merged section.
    """
    pairs = neighbour_pairs(np.asarray(section.obsm[K.SPATIAL]), seed=seed)
    x = sparse.csr_matrix(section.X)
    merged_x = x[pairs[:, 0]] + x[pairs[:, 1]]
    names = section.obs_names.to_numpy()
    table = pd.DataFrame(
        {MEMBER_A: names[pairs[:, 0]], MEMBER_B: names[pairs[:, 1]]},
        index=[f"pair{i}" for i in range(len(pairs))],
    )
    merged = ad.AnnData(X=merged_x, obs=table.copy(), var=section.var.copy())
    xy = np.asarray(section.obsm[K.SPATIAL], dtype=float)
    merged.obsm[K.SPATIAL] = (xy[pairs[:, 0]] + xy[pairs[:, 1]]) / 2
    merged.obsm[K.AREA_CENTRES] = np.hstack([xy[pairs[:, 0]], xy[pairs[:, 1]]])  # the area: both members' discs
    merged.uns = {k: v for k, v in section.uns.items()}
    return merged, table


def score_pair_deconvolution(
    samples_a: np.ndarray,
    samples_b: np.ndarray,
    truth_a: np.ndarray,
    truth_b: np.ndarray,
    credibility: float = 0.95,
) -> dict[str, float]:
    """Score component predictions of merged pairs.

    ``samples_a``/``samples_b``: posterior samples (n_samples, n_pairs, n_genes) of the
    expression of each component; ``truth_a``/``truth_b``: measured values (n_pairs, n_genes).
    Cases with equal measured values are not scored for direction.
    """
    p_a_higher = (samples_a > samples_b).mean(axis=0)
    called = (p_a_higher >= credibility) | (p_a_higher <= 1 - credibility)
    decided = truth_a != truth_b
    use = called & decided
    correct = (p_a_higher >= credibility) == (truth_a > truth_b)
    mean_a, mean_b = samples_a.mean(axis=0), samples_b.mean(axis=0)
    pred = np.concatenate([mean_a.ravel(), mean_b.ravel()])
    true = np.concatenate([np.asarray(truth_a, float).ravel(), np.asarray(truth_b, float).ravel()])
    return {
        "n_called": int(use.sum()),
        "fraction_called": float(use.sum() / max(decided.sum(), 1)),
        "direction_correct": float(correct[use].mean()) if use.any() else float("nan"),
        "pearson_components": float(np.corrcoef(pred, true)[0, 1]),
    }
