"""Normalisations: exact formulas, scanpy equivalence, zero-total spots, inputs untouched."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from scipy import sparse

from stfusion.data.normalize import (
    histogene_normalize,
    log1p_normalize_total,
    normalize,
    stnet_normalize,
)
from stfusion.errors import SchemaError


@pytest.fixture
def counts() -> np.ndarray:
    rng = np.random.default_rng(1)
    x = rng.poisson(rng.gamma(0.5, 4.0, size=(40, 25))).astype(np.int64)
    x[3] = 0  # a spot without reads
    return x


def test_stnet_matches_formula_and_rows_sum_to_one() -> None:
    x = np.array([[0, 1, 3], [2, 2, 0]])
    out = stnet_normalize(x)
    expected = np.log(np.array([[1, 2, 4], [3, 3, 1]]) / np.array([[7.0], [7.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0, rtol=1e-5)


def test_stnet_with_totals_over_all_genes(counts: np.ndarray) -> None:
    adata = ad.AnnData(X=sparse.csr_matrix(counts))
    adata.var_names = [f"g{i}" for i in range(counts.shape[1])]
    genes = ["g3", "g0", "g7"]
    out = normalize(adata, "stnet", genes=genes)
    total = counts.sum(axis=1, keepdims=True) + counts.shape[1]
    expected = np.log((counts[:, [3, 0, 7]] + 1.0) / total)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert np.all(np.isfinite(out))  # the zero-total spot included


def test_histogene_variants_exact() -> None:
    x = np.array([[1, 3], [0, 0], [5, 0]])
    paper = histogene_normalize(x, "paper")
    ref = histogene_normalize(x, "reference")
    np.testing.assert_allclose(paper[0], np.log1p([0.25e6, 0.75e6]), rtol=1e-6)
    np.testing.assert_allclose(ref[0], np.log10([1 + 2500.0, 1 + 7500.0]), rtol=1e-6)
    np.testing.assert_allclose(ref[2], [np.log10(1e4 + 1), 0.0], rtol=1e-6)
    assert np.all(paper[1] == 0) and np.all(ref[1] == 0)  # zero-total spot stays zero
    with pytest.raises(ValueError, match="variant"):
        histogene_normalize(x, "log2")


def test_log1p_matches_scanpy(counts: np.ndarray) -> None:
    keep = counts.sum(axis=1) > 0
    adata = ad.AnnData(X=counts[keep].astype(np.float32))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    ours = log1p_normalize_total(counts[keep])
    np.testing.assert_allclose(ours, adata.X, rtol=1e-5, atol=1e-6)


def test_log1p_selected_columns_with_total_over_all_genes(counts: np.ndarray) -> None:
    keep = counts.sum(axis=1) > 0
    full = ad.AnnData(X=counts[keep].astype(np.float32))
    sc.pp.normalize_total(full, target_sum=1e4)
    sc.pp.log1p(full)
    cols = [5, 1, 20]
    ours = log1p_normalize_total(counts[keep][:, cols], totals=counts[keep].sum(axis=1))
    np.testing.assert_allclose(ours, full.X[:, cols], rtol=1e-5, atol=1e-6)
    # Without totals the subset is renormalised: rows then sum to 1e4 in linear space.
    sub = log1p_normalize_total(counts[keep][:, cols])
    nz = counts[keep][:, cols].sum(axis=1) > 0
    np.testing.assert_allclose(np.expm1(sub[nz].astype(np.float64)).sum(axis=1), 1e4, rtol=1e-4)


def test_wrapper_log1p_equals_scanpy_on_sparse(counts: np.ndarray) -> None:
    keep = counts.sum(axis=1) > 0
    adata = ad.AnnData(X=sparse.csr_matrix(counts[keep]))
    adata.var_names = [f"g{i}" for i in range(counts.shape[1])]
    ref = adata.copy()
    ref.X = ref.X.astype(np.float32)
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    out = normalize(adata, "log1p", genes=["g2", "g9"])
    np.testing.assert_allclose(out, ref[:, ["g2", "g9"]].X.toarray(), rtol=1e-5, atol=1e-6)
    assert adata.X.dtype.kind == "i"  # untouched


def test_zero_total_spot_gives_zeros_not_nan(counts: np.ndarray) -> None:
    for out in (log1p_normalize_total(counts), histogene_normalize(counts), histogene_normalize(counts, "reference")):
        assert np.all(np.isfinite(out))
        assert np.all(out[3] == 0)


@pytest.mark.parametrize("as_sparse", [False, True])
def test_inputs_not_modified_and_dense_float32(counts: np.ndarray, as_sparse: bool) -> None:
    x = sparse.csr_matrix(counts) if as_sparse else counts.copy()
    before = x.toarray().copy() if as_sparse else x.copy()
    outs = [stnet_normalize(x), histogene_normalize(x), log1p_normalize_total(x)]
    after = x.toarray() if as_sparse else x
    np.testing.assert_array_equal(before, after)
    for out in outs:
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == counts.shape
    np.testing.assert_allclose(outs[2], log1p_normalize_total(counts), rtol=1e-6)


def test_wrapper_errors(counts: np.ndarray) -> None:
    adata = ad.AnnData(X=sparse.csr_matrix(counts))
    adata.var_names = [f"g{i}" for i in range(counts.shape[1])]
    with pytest.raises(SchemaError, match="2 of 3 requested genes"):
        normalize(adata, "log1p", genes=["g1", "nope", "nada"])
    with pytest.raises(ValueError, match="Unknown normalisation method"):
        normalize(adata, "tpm")
    with pytest.raises(SchemaError, match="Layer"):
        normalize(adata, "log1p", layer="counts")
    with pytest.raises(ValueError, match="totals has"):
        log1p_normalize_total(counts, totals=np.ones(3))
