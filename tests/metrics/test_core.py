"""Array metrics against scipy / scikit-learn / scikit-image references and hand computations."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats
from scipy.spatial.distance import jensenshannon
from skimage.metrics import structural_similarity
from sklearn.metrics import roc_auc_score

from stfusion.metrics import (
    accuracy_score,
    auroc_extremes,
    consistent_positive,
    interval_coverage,
    js_divergence,
    pearson,
    pearson_pvalues,
    rmse,
    significant_genes,
    spearman,
    ssim,
    topk_mean,
)


@pytest.fixture
def pair():
    """40 spots x 6 genes: correlated, with NaNs, ties, a constant gene and a sparse gene."""
    rng = np.random.default_rng(1)
    t = rng.poisson(3.0, size=(40, 6)).astype(float)  # many ties
    p = t + rng.normal(0, 2.0, size=t.shape)
    t[[0, 5], 0] = np.nan
    p[[5, 9, 11], 0] = np.nan
    p[:, 2] = 7.0  # constant prediction
    t[:, 3] = 0.0
    t[[3, 8], 3] = [4.0, 1.0]
    return t, p


def _valid(x, y):
    m = np.isfinite(x) & np.isfinite(y)
    return x[m], y[m]


def test_pearson_spearman_match_scipy(pair):
    t, p = pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r, rho = pearson(t, p), spearman(t, p)
    for g in range(t.shape[1]):
        x, y = _valid(t[:, g], p[:, g])
        if g == 2:
            assert np.isnan(r[g]) and np.isnan(rho[g])
            continue
        assert r[g] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
        assert rho[g] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert np.all(np.isfinite(np.delete(r, 2)))


def test_correlation_edge_cases():
    t = np.array([[1.0, 1.0, np.nan], [2.0, 0.1, 1.0], [3.0, 0.1, np.nan]])
    p = np.array([[2.0, 5.0, 1.0], [4.0, 6.0, 2.0], [7.0, 7.0, 3.0]])
    t[:, 1] = 0.1  # constant in floating point: exactly NaN, not a rounding artefact
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = pearson(t, p)
        pv = pearson_pvalues(t, p)
    assert r[0] == pytest.approx(stats.pearsonr(t[:, 0], p[:, 0]).statistic)
    assert np.isnan(r[1]) and np.isnan(r[2])  # constant; only one valid pair
    assert np.isnan(pv[1]) and np.isnan(pv[2])
    # 1-D input is one gene; sparse and DataFrame inputs work
    assert pearson(t[:, 0], p[:, 0]).shape == (1,)
    assert pearson(sparse.csr_matrix(np.nan_to_num(t)), pd.DataFrame(p))[0] == pytest.approx(r[0])
    with pytest.raises(ValueError, match="shape"):
        pearson(t, p[:, :2])


def test_pearson_pvalues_match_scipy(pair):
    t, p = pair
    pv = pearson_pvalues(t, p)
    for g in (0, 1, 3, 4, 5):
        x, y = _valid(t[:, g], p[:, g])
        assert pv[g] == pytest.approx(stats.pearsonr(x, y, alternative="greater").pvalue, rel=1e-9)
    assert np.isnan(pv[2])
    perfect = pearson_pvalues(np.arange(5.0), np.arange(5.0) * 2)
    assert perfect[0] == 0.0


def test_significant_genes_counts_bh_rejections():
    pv = np.array([0.001, 0.01, 0.02, 0.04, 0.5, np.nan])
    # BH on 5 finite p: thresholds 0.01, 0.02, 0.03, 0.04, 0.05 -> first four pass
    assert significant_genes(pv) == 4
    assert significant_genes(pv, method="bonferroni") == 2  # p < 0.01
    assert significant_genes([np.nan]) == 0


def test_rmse_plain_and_zscored(pair):
    t, p = pair
    r = rmse(t, p)
    for g in range(t.shape[1]):
        x, y = _valid(t[:, g], p[:, g])
        assert r[g] == pytest.approx(np.sqrt(np.mean((x - y) ** 2)))
        if g != 2:
            rz = rmse(t, p, zscore=True)[g]
            assert rz == pytest.approx(np.sqrt(np.mean((stats.zscore(x) - stats.zscore(y)) ** 2)))
    # constant prediction: z-scores 0, RMSE = sqrt(mean(z_truth^2)) = 1
    assert rmse(t, p, zscore=True)[2] == pytest.approx(1.0)
    assert rmse(np.ones((4, 1)), np.full((4, 1), 3.0), zscore=True)[0] == 0.0
    # z-scored RMSE ignores scale and shift of the prediction
    assert rmse(t[:, 1], 5 * t[:, 1] + 2, zscore=True)[0] == pytest.approx(0.0, abs=1e-12)


def test_ssim_hand_computed():
    x = np.array([0.0, 1.0, 2.0, 4.0])
    y = np.array([1.0, 1.0, 2.0, 2.0])
    # after max scaling: x = [0, .25, .5, 1], y = [.5, .5, 1, 1]
    mx, my = 0.4375, 0.75
    vx = np.mean(np.array([0, 0.25, 0.5, 1.0]) ** 2) - mx**2  # 0.13671875
    vy = 0.0625
    cxy = np.mean(np.array([0, 0.25, 0.5, 1.0]) * np.array([0.5, 0.5, 1, 1])) - mx * my  # 0.078125
    c1, c2 = 1e-4, 9e-4
    sx, sy = np.sqrt(vx), np.sqrt(vy)
    expected = (
        (2 * mx * my + c1) / (mx**2 + my**2 + c1)
        * (2 * sx * sy + c2) / (vx + vy + c2)
        * (cxy + c2 / 2) / (sx * sy + c2 / 2)
    )
    assert ssim(x, y)[0] == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.68358, abs=1e-5)  # l .87048 * c .92834 * s .84590
    assert ssim(x, x)[0] == pytest.approx(1.0)
    assert ssim(x, 3 * x)[0] == pytest.approx(1.0)  # max scaling removes scale
    assert ssim(np.zeros(4), np.zeros(4))[0] == pytest.approx(1.0)  # all zeros kept


def test_ssim_equals_skimage_single_global_window():
    """skimage's combined form equals l*c*s exactly because C3 = C2/2 (c*s collapses)."""
    rng = np.random.default_rng(2)
    t = rng.gamma(2.0, size=(49, 3))
    p = 0.6 * t + rng.gamma(1.0, size=t.shape)
    ours = ssim(t, p)
    for g in range(3):
        a, b = t[:, g] / t[:, g].max(), p[:, g] / p[:, g].max()
        ref = structural_similarity(
            a.reshape(7, 7), b.reshape(7, 7), win_size=7, data_range=1.0,
            gaussian_weights=False, use_sample_covariance=False,
        )
        assert ours[g] == pytest.approx(ref, rel=1e-10)


def test_js_matches_scipy_and_handles_zeros():
    rng = np.random.default_rng(3)
    t = rng.poisson(2.0, size=(30, 4)).astype(float)
    p = t + rng.normal(0, 1, size=t.shape)  # some negatives, clipped to 0
    t[:, 3] = 0.0
    js = js_divergence(t, p)
    for g in range(3):
        a, b = t[:, g], np.clip(p[:, g], 0, None)
        assert js[g] == pytest.approx(jensenshannon(a / a.sum(), b / b.sum()) ** 2, rel=1e-10)
    assert np.isnan(js[3])
    assert js_divergence([1.0, 0.0], [0.0, 1.0])[0] == pytest.approx(np.log(2))
    assert js_divergence([1.0, 2.0, np.nan], [2.0, 4.0, 5.0])[0] == pytest.approx(0.0, abs=1e-15)


def test_accuracy_score_hand_computed():
    table = pd.DataFrame(
        {"PCC": [0.5, 0.3, 0.3, np.nan], "SSIM": [0.4, 0.6, 0.2, np.nan],
         "RMSE": [0.9, 1.1, 1.0, np.nan], "JS": [0.2, 0.1, 0.3, np.nan]},
        index=["A", "B", "C", "none"],
    )
    as_ = accuracy_score(table)
    # ranks (best = 4): PCC A4 B2.5 C2.5 none1; SSIM A3 B4 C2 none1;
    # RMSE A4 B2 C3 none1; JS A3 B4 C2 none1
    expected = {"A": 14 / 16, "B": 12.5 / 16, "C": 9.5 / 16, "none": 4 / 16}
    assert as_.to_dict() == pytest.approx(expected)
    assert as_.name == "AS"
    with pytest.raises(ValueError, match="JS"):
        accuracy_score(table.drop(columns="JS"))


def test_auroc_extremes_matches_sklearn():
    rng = np.random.default_rng(4)
    t = rng.normal(size=(80, 3))
    p = t + rng.normal(0, 1.0, size=t.shape)
    p[:, 1] = np.round(p[:, 1])  # ties in pred
    t[0, 2] = np.nan
    auc = auroc_extremes(t, p, q=0.25)
    for g in range(3):
        x, y = _valid(t[:, g], p[:, g])
        lo, hi = np.quantile(x, 0.25), np.quantile(x, 0.75)
        sel = (x <= lo) | (x >= hi)
        assert auc[g] == pytest.approx(roc_auc_score(x[sel] >= hi, y[sel]), rel=1e-12)
    assert auc[0] > 0.8
    mostly_zero = np.zeros(20)
    mostly_zero[:3] = [1, 2, 3]
    assert np.isnan(auroc_extremes(mostly_zero, np.arange(20.0))[0])


def test_consistent_positive_matches_binomtest():
    r = pd.DataFrame(
        [[0.2, 0.3, 0.1, 0.4, 0.5], [0.2, -0.1, 0.3, -0.2, 0.1], [0.1, np.nan, 0.2, 0.3, -0.1]],
        index=["G1", "G2", "G3"], columns=list("abcde"),
    )
    out = consistent_positive(r)
    assert out["n_positive"].tolist() == [5, 3, 3]
    assert out["n_patients"].tolist() == [5, 5, 4]
    for g, k, n in [("G1", 5, 5), ("G2", 3, 5), ("G3", 3, 4)]:
        ref = stats.binomtest(k, n, 0.5, alternative="greater").pvalue
        assert out.loc[g, "p_value"] == pytest.approx(ref)
    assert out.loc["G1", "p_value"] == pytest.approx(1 / 32)
    assert out.loc["G1", "p_holm"] == pytest.approx(3 / 32)
    assert out.loc["G1", "p_bh"] == pytest.approx(3 / 32)
    assert consistent_positive(r.to_numpy()).index.tolist() == [0, 1, 2]


def test_topk_mean_and_interval_coverage():
    assert topk_mean([1, 5, np.nan, 3, 4], k=2) == 4.5
    assert topk_mean([1, 2], k=50) == 1.5
    assert np.isnan(topk_mean([np.nan]))
    t = np.array([[1.0, 0.0], [2.0, 5.0], [3.0, np.nan]])
    lo, hi = np.zeros_like(t), np.full_like(t, 2.0)
    per_gene, overall = interval_coverage(t, lo, hi)
    np.testing.assert_allclose(per_gene, [2 / 3, 1 / 2])
    assert overall == pytest.approx(3 / 5)


def test_metrics_are_vectorised_and_fast():
    rng = np.random.default_rng(5)
    t = rng.poisson(1.0, size=(5000, 785)).astype(float)
    p = t + rng.normal(size=t.shape)
    start = time.perf_counter()
    for f in (pearson, rmse, ssim, js_divergence):
        assert f(t, p).shape == (785,)
    assert time.perf_counter() - start < 5.0
    assert spearman(t, p).shape == (785,)
