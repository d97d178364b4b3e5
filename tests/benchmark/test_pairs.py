"""Neighbour-pair merging: a matching of neighbours, summed counts, and its scoring."""

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

from stfusion.benchmark.pairs import merge_neighbour_pairs, neighbour_pairs, score_pair_deconvolution


def _grid_section(n=10, seed=0):
    rng = np.random.default_rng(seed)
    ax, ay = np.meshgrid(np.arange(n), np.arange(n))
    xy = np.column_stack([ax.ravel(), ay.ravel()]).astype(float) * 100 + 50
    counts = rng.poisson(5, (n * n, 4))
    a = ad.AnnData(sparse.csr_matrix(counts))
    a.obs_names = [f"s{i}" for i in range(n * n)]
    a.obsm["spatial"] = xy
    return a, xy


def test_pairs_are_disjoint_neighbours():
    _, xy = _grid_section()
    pairs = neighbour_pairs(xy, seed=3)
    assert len(np.unique(pairs)) == pairs.size  # each spot in at most one pair
    dist = np.linalg.norm(xy[pairs[:, 0]] - xy[pairs[:, 1]], axis=1)
    assert np.allclose(dist, 100)  # grid neighbours only (no diagonals at radius 1.25 x spacing)
    assert len(pairs) >= 40  # a maximal matching pairs most of the 100 spots
    assert not np.array_equal(pairs, neighbour_pairs(xy, seed=4))
    assert np.array_equal(pairs, neighbour_pairs(xy, seed=3))


def test_merged_counts_are_sums():
    section, _ = _grid_section()
    merged, table = merge_neighbour_pairs(section, seed=0)
    a = section[table.member_a].X.toarray()
    b = section[table.member_b].X.toarray()
    np.testing.assert_array_equal(merged.X.toarray(), a + b)
    assert merged.n_obs == len(table)


def test_scoring_direction_and_correlation():
    rng = np.random.default_rng(0)
    truth_a = rng.gamma(2, 2, (50, 6))
    truth_b = rng.gamma(2, 2, (50, 6))
    good_a = truth_a + rng.normal(0, 0.3, (200, 50, 6))
    good_b = truth_b + rng.normal(0, 0.3, (200, 50, 6))
    good = score_pair_deconvolution(good_a, good_b, truth_a, truth_b)
    assert good["direction_correct"] > 0.95 and good["pearson_components"] > 0.95
    swapped = score_pair_deconvolution(good_b, good_a, truth_a, truth_b)
    assert swapped["direction_correct"] < 0.05
    vague = score_pair_deconvolution(rng.normal(0, 5, (200, 50, 6)), rng.normal(0, 5, (200, 50, 6)), truth_a, truth_b)
    assert vague["fraction_called"] < 0.1  # no confidence, few calls
    assert good["n_called"] == pytest.approx(good["fraction_called"] * 300, abs=1)
