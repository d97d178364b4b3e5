"""Fast kriging means (truncated kernels, spline interpolation of long length scales) against
the plain float64 sum over every spot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stfusion.baselines.gp import sq_exp_kernel
from stfusion.models.xfuse import kriging
from stfusion.models.xfuse.kriging import kriging_mean


def _lattice(n_side: int, pitch: float = 100.0) -> np.ndarray:
    i, j = np.divmod(np.arange(n_side * n_side), n_side)
    return np.column_stack([(j + 0.5 * (i % 2)) * pitch, i * pitch * np.sqrt(3) / 2])


@pytest.fixture(scope="module")
def problem():
    """Spots, per-length-scale weights K^-1 f of GP draws (3 genes each) and the reference."""
    rng = np.random.default_rng(0)
    spots = _lattice(20)
    weights = []
    for k, ls in enumerate([50.0, 120.0, 400.0, 1500.0]):
        K = sq_exp_kernel(spots, spots, ls) + 1e-2 * np.eye(len(spots))
        f = np.linalg.cholesky(K) @ rng.standard_normal((len(spots), 3))
        weights.append(([k, k + 4, k + 8], ls, torch.from_numpy(np.linalg.solve(K, f).astype(np.float32))))
    return spots, weights


def _reference(points: np.ndarray, spots: np.ndarray, weights) -> np.ndarray:
    out = np.zeros((len(points), 12))
    for cols, ls, alpha in weights:
        out[:, cols] = sq_exp_kernel(points, spots, ls) @ alpha.numpy().astype(np.float64)
    return out


def test_grid_of_many_points_matches_the_plain_sum(problem) -> None:
    spots, weights = problem
    gx, gy = np.meshgrid(np.arange(0, 1900, 7.0), np.arange(0, 1650, 7.0))
    points = np.column_stack([gx.ravel(), gy.ravel()])
    assert kriging._node_grid(points, 400.0) is not None  # long length scales take the interpolated path
    assert kriging._node_grid(points, 50.0) is None
    fast = kriging_mean(points, spots, weights, 12)
    sub = np.random.default_rng(1).choice(len(points), 4000, replace=False)
    ref = _reference(points[sub], spots, weights)
    assert fast.dtype == np.float32
    assert np.abs(ref).max() > 1.0
    assert np.abs(fast[sub] - ref).max() < 1e-3


def test_few_points_far_points_and_nan_rows(problem) -> None:
    spots, weights = problem
    points = np.array([[150.0, 80.0], [900.0, 700.0], [np.nan, 3.0], [1e6, 1e6]])
    fast = kriging_mean(points, spots, weights, 12)
    ref = _reference(points, spots, weights)
    np.testing.assert_allclose(fast[[0, 1, 3]], ref[[0, 1, 3]], atol=1e-4)
    assert np.all(fast[2] == 0) and np.all(fast[3] == 0)
    assert np.all(kriging_mean(points[2:3], spots, weights, 12) == 0)


def test_blocks_partition_the_points() -> None:
    points = np.random.default_rng(2).uniform(0, 5000, size=(3 * kriging.BLOCK + 17, 2))
    blocks = kriging._blocks(points)
    assert max(len(b) for b in blocks) <= kriging.BLOCK
    np.testing.assert_array_equal(np.sort(np.concatenate(blocks)), np.arange(len(points)))
    line = np.column_stack([np.linspace(0, 1, 2 * kriging.BLOCK + 1), np.zeros(2 * kriging.BLOCK + 1)])
    np.testing.assert_array_equal(np.sort(np.concatenate(kriging._blocks(line))), np.arange(len(line)))
