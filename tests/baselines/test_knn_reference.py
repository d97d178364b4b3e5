"""kNN reference imputation (SpaGE-like) on a synthetic reference / spatial pair."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from stfusion import _constants as K
from stfusion.baselines.knn_reference import KNNReferenceImputer
from stfusion.errors import StfusionError

N_TYPES, N_GENES, MARKERS = 4, 40, 6


def synthetic_pair(seed=0, n_ref=600, n_sp=400):
    """Cell types with distinct programmes; spatial cells of known type, shallower and with gene capture bias."""
    rng = np.random.default_rng(seed)
    base = np.exp(rng.normal(0, 1, size=N_GENES))
    prof = np.tile(base, (N_TYPES, 1))
    for t in range(N_TYPES):
        prof[t, t * MARKERS : (t + 1) * MARKERS] *= 8.0
    prof /= prof.sum(axis=1, keepdims=True)
    genes = [f"gene{g:02d}" for g in range(N_GENES)]

    def cells(n, depth, efficiency, prefix):
        types = rng.integers(0, N_TYPES, size=n)
        rate = prof[types] * efficiency * rng.gamma(10, depth / 10, size=(n, 1))
        obs = pd.DataFrame({K.CELL_TYPE: types.astype(str)}, index=[f"{prefix}{i}" for i in range(n)])
        adata = ad.AnnData(X=sparse.csr_matrix(rng.poisson(rate)), obs=obs, var=pd.DataFrame(index=genes))
        return adata

    ref = cells(n_ref, 1500.0, 1.0, "ref")
    sp = cells(n_sp, 300.0, np.exp(rng.normal(0, 0.3, size=N_GENES)), "cell")
    sp.obsm[K.SPATIAL] = rng.uniform(0, 1000, size=(n_sp, 2))
    return ref, sp


def log1p_cp10k(x):
    x = np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=float)
    t = x.sum(axis=1, keepdims=True)
    return np.log1p(x / np.where(t > 0, t, 1) * 1e4)


def gene_pcc(a, b):
    return np.array([np.corrcoef(a[:, g], b[:, g])[0, 1] for g in range(a.shape[1])])


HIDDEN = [f"gene{t * MARKERS + j:02d}" for t in range(N_TYPES) for j in (0, 1)] + ["gene30", "gene35"]


def test_imputed_hidden_genes_correlate_with_truth_and_beat_shuffled_genes():
    ref, sp = synthetic_pair()
    ref_x, sp_x = ref.X.copy(), sp.X.copy()
    out = KNNReferenceImputer().fit(ref, sp).impute(HIDDEN)
    truth = log1p_cp10k(sp.X)[:, [sp.var_names.get_loc(g) for g in HIDDEN]]
    pcc = gene_pcc(out.X, truth)
    shuffled = gene_pcc(out.X[:, np.roll(np.arange(len(HIDDEN)), 2)], truth)  # gene labels shifted
    marker_pcc = pcc[:8]
    assert marker_pcc.mean() > 0.5, pcc
    assert marker_pcc.mean() - shuffled[:8].mean() > 0.4
    # input untouched, output shaped like the spatial data
    assert (ref.X != ref_x).nnz == 0 and (sp.X != sp_x).nnz == 0
    assert list(out.obs_names) == list(sp.obs_names) and list(out.var_names) == HIDDEN
    assert out.var["imputed"].all()
    np.testing.assert_array_equal(out.obsm[K.SPATIAL], sp.obsm[K.SPATIAL])


def test_hidden_genes_do_not_inform_their_own_imputation(tmp_path):
    ref, sp = synthetic_pair(seed=1)
    model = KNNReferenceImputer(k=20).fit(ref, sp)
    first = model.impute(HIDDEN[:4]).X
    scrambled = sp.copy()
    x = scrambled.X.toarray()
    cols = [sp.var_names.get_loc(g) for g in HIDDEN[:4]]
    x[:, cols] = np.random.default_rng(0).poisson(50, size=(sp.n_obs, 4))
    scrambled.X = sparse.csr_matrix(x)
    np.testing.assert_array_equal(KNNReferenceImputer(k=20).fit(ref, scrambled).impute(HIDDEN[:4]).X, first)
    again = KNNReferenceImputer.load(model.save(tmp_path / "knn")).impute(HIDDEN[:4])
    np.testing.assert_array_equal(again.X, first)
    np.testing.assert_array_equal(again.obsm[K.SPATIAL], sp.obsm[K.SPATIAL])


def test_k1_on_identical_data_returns_each_cells_own_reference_values():
    ref, _ = synthetic_pair(seed=2, n_ref=200)
    out = KNNReferenceImputer(k=1).fit(ref, ref.copy()).impute(["gene01", "gene20"])
    np.testing.assert_allclose(out.X, log1p_cp10k(ref.X)[:, [1, 20]], rtol=1e-5)


def test_clear_errors():
    ref, sp = synthetic_pair(seed=3, n_ref=100, n_sp=50)
    with pytest.raises(StfusionError, match="not in the reference"):
        KNNReferenceImputer().fit(ref, sp).impute(["nope"])
    with pytest.raises(StfusionError, match="impute fewer genes"):
        KNNReferenceImputer().fit(ref, sp).impute(list(ref.var_names[:-2]))
    with pytest.raises(StfusionError, match="share 0 genes"):
        other = sp.copy()
        other.var_names = [f"x{g}" for g in sp.var_names]
        KNNReferenceImputer().fit(ref, other)
