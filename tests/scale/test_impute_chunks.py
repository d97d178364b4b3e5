"""Chunked imputation equals the all-at-once result (kNN baseline, SpaIM prediction)."""

from __future__ import annotations

import numpy as np

from stfusion.baselines.knn_reference import KNNReferenceImputer
from stfusion.data.synthetic import make_synthetic_pair


def test_knn_chunks_over_cells_equal_one_pass():
    ref, sp = make_synthetic_pair(n_ref_cells=600, n_spatial_cells=1000, n_genes=40, seed=3)
    hidden = list(sp.var_names[:6])
    measured = sp[:, [g for g in sp.var_names if g not in hidden]].copy()
    whole = KNNReferenceImputer(k=15, n_comps=10, chunk_size=None).fit(ref, measured).impute(hidden)
    chunked = KNNReferenceImputer(k=15, n_comps=10, chunk_size=97).fit(ref, measured).impute(hidden)
    assert chunked.shape == (1000, 6) and list(chunked.obs_names) == list(sp.obs_names)
    np.testing.assert_allclose(chunked.X, whole.X, rtol=1e-6, atol=1e-6)
    # and the imputation is informative: correlated with the hidden truth
    from stfusion.data.normalize import log1p_normalize_total

    truth = log1p_normalize_total(sp.X, 1e4)[:, :6]
    r = [np.corrcoef(truth[:, j], chunked.X[:, j])[0, 1] for j in range(6)]
    assert np.nanmean(r) > 0.3


def test_spaim_predicts_gene_batches_into_one_table():
    from stfusion.models.spaim import SpaIM

    ref, sp = make_synthetic_pair(n_ref_cells=300, n_spatial_cells=200, n_genes=30, seed=1)
    genes = list(sp.var_names[:7])
    model = SpaIM(epochs=2, batch_size=4, hidden=(16, 8), n_clusters=3).fit(ref, sp[:, list(sp.var_names[7:])].copy())
    out = model.impute(genes)  # 7 genes in batches of 4
    model.hyperparams["batch_size"] = 100
    once = model.impute(genes)
    assert out.shape == (200, 7) and out.X.flags["C_CONTIGUOUS"] and (out.X >= 0).all()
    np.testing.assert_allclose(out.X, once.X, rtol=1e-5, atol=1e-6)
