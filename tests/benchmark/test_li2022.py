"""Li et al. 2022's imputation protocol: split, normalisation and metrics against hand-computed
cases written from QuKunLab/SpatialBenchmarking's formulas; errors; selectable from a config."""

from __future__ import annotations

import importlib.util

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from stfusion.benchmark import load_config, run_benchmark
from stfusion.benchmark.config import MethodSpec
from stfusion.benchmark.papers import PAPER, PAPER_PROTOCOLS, STRICT, get_protocol
from stfusion.benchmark.papers.li2022 import (
    Li2022Imputation,
    _li_normalised_reference,
    li_accuracy_score,
    li_gene_folds,
    li_metrics,
    li_shared_genes,
)
from stfusion.errors import ConfigError
from tests.conftest import need


def _pair(n_ref=40, n_sp=30, seed=0):
    rng = np.random.default_rng(seed)
    ref_genes = [f"G{i}" for i in range(14)]
    sp_genes = ["G9", "G2", "X1", "G5", "G0", "G7", "G1", "G3", "G11", "G4", "G6", "G8", "G10"]  # X1: not in the reference
    ref = ad.AnnData(X=sparse.csr_matrix(rng.poisson(3, (n_ref, len(ref_genes))).astype(np.float32)),
                     obs=pd.DataFrame(index=[f"c{i}" for i in range(n_ref)]), var=pd.DataFrame(index=ref_genes))
    sp = ad.AnnData(X=sparse.csr_matrix(rng.poisson(2, (n_sp, len(sp_genes))).astype(np.float32)),
                    obs=pd.DataFrame(index=[f"s{i}" for i in range(n_sp)]), var=pd.DataFrame(index=sp_genes))
    sp.obsm["spatial"] = rng.uniform(0, 100, (n_sp, 2))
    return ref, sp


def test_registered_and_described():
    assert PAPER_PROTOCOLS["li2022_imputation"] is Li2022Imputation
    d = Li2022Imputation.describe()
    assert d["data"] == "pair" and "SpatialBenchmarking" in d["source"] and "662" in d["paper"]
    assert Li2022Imputation.published["Tangram on osmFISH, median PCC"] == 0.343


def test_shared_genes_in_spatial_order_and_kfold_split():
    ref, sp = _pair()
    genes = li_shared_genes(ref, sp)
    # the spatial file's column order, genes the reference lacks left out (Li: Genes = spatial var_names)
    assert genes == ["G9", "G2", "G5", "G0", "G7", "G1", "G3", "G11", "G4", "G6", "G8", "G10"]
    from sklearn.model_selection import KFold  # the source's tool, called directly

    want = [[genes[i] for i in te] for _, te in KFold(n_splits=10, shuffle=True, random_state=3).split(genes)]
    folds = Li2022Imputation().folds((ref, sp), seed=3)
    assert [f.hidden_genes for f in folds] == want
    assert [len(w) for w in want] == [2, 2] + [1] * 8  # 12 genes into 10 folds
    assert sorted(g for f in folds for g in f.hidden_genes) == sorted(genes)  # each gene hidden once
    for f in folds:
        reference, spatial_train = f.train
        assert reference is ref and set(spatial_train.var_names) == set(genes) - set(f.hidden_genes)
        assert f.test.n_vars == sp.n_vars  # the full spatial data: raw truth and the strict target
    # unshuffled KFold keeps the order: first fold = first two genes
    assert li_gene_folds(genes, n_splits=10, shuffle=False)[0][1] == ["G9", "G2"]
    assert [f.hidden_genes for f in Li2022Imputation(random_state=7).folds((ref, sp), seed=0)] == \
        [[genes[i] for i in te] for _, te in KFold(10, shuffle=True, random_state=7).split(genes)]  # fmt: skip


def test_tangram_reference_normalisation_by_hand():
    # normalize_total with target_sum=None: each cell scaled to the median total, then log1p
    counts = np.array([[1.0, 1.0], [2.0, 6.0], [0.0, 3.0]])  # totals 2, 8, 3 -> median 3
    ref = ad.AnnData(X=sparse.csr_matrix(counts), obs=pd.DataFrame(index=["a", "b", "c"]),
                     var=pd.DataFrame(index=["x", "y"]))  # fmt: skip
    got = _li_normalised_reference(ref, ["x", "y"]).X.toarray()
    want = np.log1p(np.array([[1.5, 1.5], [0.75, 2.25], [0.0, 3.0]]))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert ref.X.toarray().tolist() == counts.tolist()  # our input is not modified


def test_metrics_by_hand():
    truth = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 3.0], [5.0, 0.0]])
    pred = np.array([[0.5, 2.0], [1.0, 2.0], [2.5, 2.0], [2.0, 2.0]])
    got = li_metrics(truth, pred)
    t, p = truth[:, 0], pred[:, 0]
    # PCC (scipy.stats.pearsonr)
    tc, pc = t - t.mean(), p - p.mean()
    pcc = (tc @ pc) / np.sqrt((tc @ tc) * (pc @ pc))
    # SSIM after scale_max; M = [raw.max(), impute.max()][raw.max() > impute.max()] = 1
    a, b = t / 5.0, p / 2.5
    mu1, mu2, s1, s2 = a.mean(), b.mean(), a.std(), b.std()
    s12 = ((a - mu1) * (b - mu2)).mean()
    c1, c2 = 0.01**2, 0.03**2
    ssim = (2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1) * (2 * s1 * s2 + c2) / (s1**2 + s2**2 + c2) \
        * (s12 + c2 / 2) / (s1 * s2 + c2 / 2)  # fmt: skip
    # RMSE after z-score (ddof 0)
    rmse = np.sqrt((((t - t.mean()) / t.std() - (p - p.mean()) / p.std()) ** 2).mean())
    # JS after scale_plus: 0.5 KL(P||M) + 0.5 KL(Q||M), natural log, 0 log 0 = 0
    P, Q = t / 8.0, p / 6.0
    M = (P + Q) / 2
    kl = lambda x, y: sum(xi * np.log(xi / yi) for xi, yi in zip(x, y) if xi > 0)  # noqa: E731
    js = 0.5 * kl(P, M) + 0.5 * kl(Q, M)
    np.testing.assert_allclose([got[k][0] for k in ("PCC", "SSIM", "RMSE", "JS")], [pcc, ssim, rmse, js], rtol=1e-12)
    # the hand numbers themselves (rounded): a regression guard on the formulas above
    np.testing.assert_allclose([pcc, ssim, rmse, js], [4 / np.sqrt(35), 0.61654, 0.80483, 0.06345], atol=5e-5)  # PCC: 4 / sqrt(14 x 2.5)
    # a constant prediction has no correlation (pearsonr: NaN); its z-scores are NaN -> 1e-20
    assert np.isnan(got["PCC"][1])
    # (z-scored truth against 1e-20: sqrt(mean(z^2)) = 1)
    np.testing.assert_allclose(got["RMSE"][1], 1.0)
    # a gene the method did not predict: CalculateMeteics' PCC 0, SSIM 0, RMSE 1.5, JS 1
    miss = li_metrics(truth, pred, predicted=np.array([True, False]))
    assert [miss[k][1] for k in ("PCC", "SSIM", "RMSE", "JS")] == [0.0, 0.0, 1.5, 1.0]
    assert miss["PCC"][0] == got["PCC"][0]


def test_ssim_uses_the_smaller_maximum_as_written():
    # after scale_max both maxima are 1; with an all-zero truth column (0/0 -> NaN -> 1e-20) the
    # raw maximum is 1e-20 < 1, and [raw.max(), impute.max()][raw.max() > impute.max()] = raw.max()
    truth = np.zeros((4, 1))
    pred = np.array([[1.0], [2.0], [3.0], [4.0]])
    a, b = np.full(4, 1e-20), pred[:, 0] / 4.0
    m = 1e-20
    mu1, mu2, s1, s2 = a.mean(), b.mean(), a.std(), b.std()
    s12 = ((a - mu1) * (b - mu2)).mean()
    c1, c2 = (0.01 * m) ** 2, (0.03 * m) ** 2
    want = (2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1) * (2 * s1 * s2 + c2) / (s1**2 + s2**2 + c2) \
        * (s12 + c2 / 2) / (s1 * s2 + c2 / 2)  # fmt: skip
    np.testing.assert_allclose(li_metrics(truth, pred)["SSIM"], [want], rtol=1e-9)


def test_accuracy_score_by_hand():
    means = pd.DataFrame({"PCC": [0.3, 0.1, 0.2], "SSIM": [0.2, 0.3, 0.1], "RMSE": [1.0, 1.2, 1.1],
                          "JS": [0.2, 0.1, np.nan]}, index=["a", "b", "c"])  # fmt: skip
    got = li_accuracy_score(means)
    # PCC: a 3, c 2, b 1; SSIM: b 3, a 2, c 1; RMSE (largest = 1): b 1, c 2, a 3;
    # JS with NaN -> 0 (fillna(0)): a 0.2 -> 1, b 0.1 -> 2, c 0 -> 3; all / 3, AS = sum / 4
    want = {"a": (3 + 2 + 3 + 1) / 12, "b": (1 + 3 + 1 + 2) / 12, "c": (2 + 1 + 2 + 3) / 12}
    np.testing.assert_allclose(got["AS"].to_numpy(), [want["a"], want["b"], want["c"]])
    assert got.loc["a", "PCC"] == 1.0 and got.loc["b", "RMSE"] == pytest.approx(1 / 3)


def test_section_data_and_too_few_genes_fail_clearly():
    protocol = get_protocol("li2022_imputation")
    with pytest.raises(ConfigError, match="li2022_imputation.*needs a \\(reference, spatial\\) pair reader"):
        protocol.check([ad.AnnData(np.ones((3, 2)))])
    ref, sp = _pair()
    with pytest.raises(ConfigError, match="into 20 folds.*share 12 genes"):
        get_protocol("li2022_imputation", n_splits=20).folds((ref, sp), seed=0)
    with pytest.raises(ConfigError, match="takes no parameters \\['k'\\]"):
        get_protocol("li2022_imputation", k=5)


def test_run_scores_paper_and_strict_rows_for_a_stfusion_method():
    ref, sp = _pair()
    protocol = Li2022Imputation()
    fold = protocol.folds((ref, sp), seed=0)[0]
    rows = protocol.run(MethodSpec(name="knn_reference", params={"k": 5, "n_comps": 3}), fold, protocol.genes(fold, None), 0)
    assert set(rows.target) == {PAPER, STRICT} and set(rows.metric) == {"PCC", "SSIM", "RMSE", "JS"}
    assert set(rows.gene) == set(fold.hidden_genes) and len(rows) == 2 * 4 * len(fold.hidden_genes)
    summary = protocol.summarise(rows.assign(method="knn"))
    assert list(summary.columns) == ["method", "target", "PCC", "SSIM", "RMSE", "JS", "AS", "genes"]
    assert summary.AS.eq(1.0).all()  # one method: best on every metric


def test_gene_without_reference_counts_is_scored_as_not_predicted():
    ref, sp = _pair()
    protocol = Li2022Imputation()
    fold = protocol.folds((ref, sp), seed=0)[0]
    genes = protocol.genes(fold, None)
    x = ref.X.toarray()
    x[:, ref.var_names.get_loc(genes[0])] = 0  # the reference never saw this test gene
    ref.X = sparse.csr_matrix(x)
    rows = protocol.run(MethodSpec(name="knn_reference", params={"k": 5, "n_comps": 3}), fold, genes, 0)
    paper = rows[(rows.target == PAPER) & (rows.gene == genes[0])].set_index("metric").value
    assert paper.to_dict() == {"PCC": 0.0, "SSIM": 0.0, "RMSE": 1.5, "JS": 1.0}  # CalculateMeteics' values
    others = rows[(rows.target == PAPER) & (rows.gene != genes[0]) & (rows.metric == "RMSE")].value
    assert (others != 1.5).all()


@pytest.mark.skipif(importlib.util.find_spec("tangram") is None, reason="tangram-sc not installed (stfusion[peers])")
def test_li_tangram_runs_on_a_tiny_pair():
    ref, sp = _pair(n_ref=60, n_sp=25)
    protocol = Li2022Imputation()
    fold = protocol.folds((ref, sp), seed=0)[0]
    genes = protocol.genes(fold, None)
    pred, predicted = protocol.predict(MethodSpec(name="tangram", params={"mode": "cells", "epochs": 20}), fold, genes, 0)
    assert pred.shape == (sp.n_obs, len(genes)) and predicted.all() and np.isfinite(pred).all()


def test_selectable_from_a_config(shared_data, tmp_path, monkeypatch):
    need(shared_data, "stdiff_osmfish")
    monkeypatch.setenv("STFUSION_SHARED_DATA", str(shared_data))
    (tmp_path / "li.toml").write_text(
        f'seed = 0\ndata_root = "{shared_data}"\n[[datasets]]\nname = "osmfish"\nreader = "osmfish_pair"\n'
        'path = "stdiff_osmfish"\nprotocol = "li2022_imputation"\nprotocol_params = { n_splits = 3 }\n'
        '[[methods]]\nname = "knn_reference"\n'
    )
    cfg = load_config(tmp_path / "li.toml")
    assert cfg.datasets[0].protocol == "li2022_imputation"
    out = run_benchmark(cfg, tmp_path / "run", progress=False)
    rows = pd.read_csv(out / "per_gene.csv")
    assert set(rows.target) == {PAPER, STRICT} and rows.fold.nunique() == 3
    assert rows[rows.target == PAPER].gene.nunique() == 33  # every osmFISH gene hidden once
    md = (out / "summary.md").read_text()
    assert "li2022_imputation" in md and "Tangram on osmFISH, median PCC: 0.343" in md
