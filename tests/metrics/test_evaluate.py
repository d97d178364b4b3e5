"""evaluate(): alignment by name, tidy output, refusal of non-overlapping inputs."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats

from stfusion import _constants as K
from stfusion.errors import StfusionError
from stfusion.metrics import AlignmentError, MetricError, aligned_names, evaluate, pearson


def _pair(n_spots=30, n_genes=5, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(4.0, size=(n_spots, n_genes)).astype(float)
    obs = pd.DataFrame(index=[f"spot{i}" for i in range(n_spots)])
    var = pd.DataFrame(index=[f"G{j}" for j in range(n_genes)])
    truth = ad.AnnData(X=sparse.csr_matrix(counts), obs=obs, var=var)
    truth.uns[K.STFUSION] = {K.SECTION_ID: "C2"}
    pred = ad.AnnData(X=counts + rng.normal(0, 2.0, size=counts.shape), obs=obs.copy(), var=var.copy())
    return pred, truth


def test_tidy_output_matches_direct_metrics():
    pred, truth = _pair()
    df = evaluate(pred, truth, metrics=("pearson", "spearman", "rmse", "rmse_z", "ssim", "js"))
    assert list(df.columns) == ["gene", "section", "metric", "value"]
    assert len(df) == 6 * 5 and set(df["section"]) == {"C2"}
    got = df[df.metric == "pearson"].set_index("gene")["value"]
    t = truth.X.toarray()
    for j, g in enumerate(truth.var_names):
        assert got[g] == pytest.approx(stats.pearsonr(t[:, j], pred.X[:, j]).statistic)
    assert evaluate(pred, truth, section="other")["section"].unique().tolist() == ["other"]
    del truth.uns[K.STFUSION]
    assert evaluate(pred, truth)["section"].unique().tolist() == ["section"]


def test_shuffled_order_gives_same_result():
    pred, truth = _pair()
    ref = evaluate(pred, truth, metrics=("pearson", "rmse", "ssim"))
    rng = np.random.default_rng(3)
    shuffled = pred[rng.permutation(pred.n_obs)][:, rng.permutation(pred.n_vars)].copy()
    shuffled.X = sparse.csr_matrix(shuffled.X)  # sparse prediction too
    out = evaluate(shuffled, truth, metrics=("pearson", "rmse", "ssim"))
    pd.testing.assert_frame_equal(out, ref)
    assert out["gene"].tolist()[:5] == list(truth.var_names)  # truth's order


def test_partial_overlap_warns_and_scores_shared(caplog):
    pred, truth = _pair()
    part = pred[5:, 1:].copy()
    with caplog.at_level(logging.WARNING, logger="stfusion"):
        df = evaluate(part, truth, metrics="pearson")
    assert "25 of 30 truth spots" in caplog.text
    assert "genes" not in caplog.text  # truth holding more genes than predicted is normal
    extra = pred.copy()
    extra.var_names = ["G0", "G1", "G2", "G3", "NEW"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stfusion"):
        evaluate(extra, truth, metrics="pearson")
    assert "4 of 5 predicted genes" in caplog.text  # predicted genes the truth lacks: warned
    assert df["gene"].tolist() == ["G1", "G2", "G3", "G4"]
    spots, genes = aligned_names(part[::-1].copy(), truth)
    assert list(spots) == [f"spot{i}" for i in range(5, 30)] and list(genes) == ["G1", "G2", "G3", "G4"]
    expected = pearson(truth.X.toarray()[5:, 1:], pred.X[5:, 1:])
    np.testing.assert_allclose(df["value"].to_numpy(), expected)


def test_no_overlap_raises_with_counts():
    pred, truth = _pair()
    other = pred.copy()
    other.obs_names = [f"x{i}" for i in range(other.n_obs)]
    with pytest.raises(AlignmentError, match=r"0 spots match \(truth 30, pred 30\) and 5 genes") as err:
        evaluate(other, truth)
    assert isinstance(err.value, StfusionError) and isinstance(err.value, ValueError)
    assert "'spot0'" in str(err.value) and "'x0'" in str(err.value)
    genes_off = pred[:, :2].copy()
    genes_off.var_names = ["A", "B"]
    with pytest.raises(AlignmentError, match=r"30 spots match .* 0 genes match \(truth 5, pred 2\)"):
        evaluate(genes_off, truth)


def test_layers_duplicates_and_unknown_metric():
    pred, truth = _pair()
    pred.layers["mean"] = pred.X.copy()
    pred.X = np.zeros_like(pred.X)
    a = evaluate(pred, truth, metrics="rmse", layer_pred="mean")
    b = evaluate(ad.AnnData(X=pred.layers["mean"], obs=pred.obs, var=pred.var), truth, metrics="rmse")
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(AlignmentError, match="layer 'sd' not found"):
        evaluate(pred, truth, layer_pred="sd")
    with pytest.raises(MetricError, match="unknown metric 'r2'"):
        evaluate(pred, truth, metrics=("pearson", "r2"))
    custom = evaluate(pred, truth, metrics=[lambda t, p: np.nanmean(t, axis=0)], layer_pred="mean")
    np.testing.assert_allclose(custom["value"], truth.X.toarray().mean(axis=0))
    dup = pred.copy()
    dup.var_names = ["G0", "G0", "G2", "G3", "G4"]
    with pytest.raises(AlignmentError, match="duplicated gene names"):
        evaluate(dup, truth)
