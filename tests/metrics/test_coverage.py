"""stfusion.metrics.coverage: observed coverage, width, per group, over levels."""

import numpy as np
import pytest

from stfusion.metrics.coverage import binomial_band, coverage, coverage_by_group, coverage_table, interval_width


def test_coverage_and_width_by_hand():
    t = np.array([[0.0, 1.0], [2.0, 5.0], [np.nan, 3.0], [1.0, 1.0]])
    lo = np.array([[-1.0, 0.0], [0.0, 0.0], [0.0, 2.0], [1.5, -np.inf]])
    hi = np.array([[1.0, 2.0], [1.0, 4.0], [1.0, 4.0], [2.0, np.inf]])
    per_gene, overall = coverage(t, lo, hi)
    np.testing.assert_allclose(per_gene, [1 / 3, 3 / 4])
    assert overall == pytest.approx(4 / 7)
    w = interval_width(lo[:3], hi[:3])
    np.testing.assert_allclose(w, [(2 + 1 + 1) / 3, (2 + 4 + 2) / 3])
    assert interval_width(lo, hi)[1] == np.inf
    with pytest.raises(ValueError, match="lower > upper"):
        interval_width(hi[:3], lo[:3] - 1)


def test_by_group_and_table():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(400, 5))
    groups = np.repeat(["A", "B"], 200)
    iv = {c: (np.full(t.shape, -z), np.full(t.shape, z)) for c, z in ((0.8, 1.2816), (0.9, 1.6449), (0.95, 1.96))}
    table = coverage_table(t, iv)
    assert list(table.nominal) == [0.8, 0.9, 0.95]
    assert (np.abs(table.observed - table.nominal) < 4 * np.sqrt(0.09 / 2000) + 0.01).all()
    np.testing.assert_allclose(table.shortfall, table.nominal - table.observed)
    np.testing.assert_allclose(table.width, [2.5632, 3.2898, 3.92])
    by = coverage_by_group(t, *iv[0.9], groups)
    assert list(by.group) == ["A", "B"] and list(by.n_spots) == [200, 200]
    assert binomial_band(0.9, 100) == pytest.approx(0.06)
