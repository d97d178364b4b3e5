"""Protocol histogene2021_her2st: her2st scored as HisToGene / Hist2ST code scores it.

Expected values are written from the reference code's formulas in plain numpy/pandas
(scprep ``log(library_size_normalize(m[gene_set]))`` = log10(1 + 1e4 x / row sum of the
sub-matrix); ``get_R`` = scipy ``pearsonr`` per gene; ``np.nanmean`` per section, then the mean
over sections), never with the protocol's own functions.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from stfusion.benchmark import load_config, run_benchmark
from stfusion.benchmark.papers import PAPER, PAPER_PROTOCOLS, STRICT, get_protocol
from stfusion.benchmark.papers import histogene2021 as H
from stfusion.errors import ConfigError
from tests.conftest import REPO, need

NAME = "histogene2021_her2st"


def _r(a, b):
    """Pearson r of two vectors, from its definition."""
    a, b = np.asarray(a, float) - np.mean(a), np.asarray(b, float) - np.mean(b)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


# ----------------------------------------------------------------------------- formulas
def test_truth_is_log10_of_library_size_normalised_sub_matrix():
    counts = np.array([[1, 100, 3, 0],  # sub-matrix = genes 0 and 2
                       [0, 5, 0, 7],   # no counts in the sub-matrix: the row stays 0
                       [2, 0, 2, 1]])  # fmt: skip
    sub = counts[:, [0, 2]]
    expected = np.array([[np.log10(1 + 2500), np.log10(1 + 7500)],  # 1/4, 3/4 of 1e4
                         [0.0, 0.0],
                         [np.log10(1 + 5000), np.log10(1 + 5000)]])  # fmt: skip
    got = H.paper_expression(sub)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # the order matters: normalising over all genes first is not the papers' truth
    all_first = np.log10(1 + counts / counts.sum(1, keepdims=True) * 1e4)[:, [0, 2]]
    assert not np.allclose(all_first, expected)


def test_gene_pearson_drops_constant_genes_and_matches_the_definition():
    pred = np.array([[1.0, 0.3, 2.0], [2.0, 0.1, 2.0], [4.0, 0.2, 2.0], [3.0, 0.9, 2.0]])
    truth = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.7], [3.0, 2.0, 0.1], [1.0, 5.0, 0.2]])
    r, p = H.gene_pearson(pred, truth)
    np.testing.assert_allclose(r[:2], [_r(pred[:, 0], truth[:, 0]), _r(pred[:, 1], truth[:, 1])], rtol=1e-12)
    assert np.isnan(r[2]) and np.isnan(p[2])  # a constant prediction: pearsonr gives NaN
    assert 0 < p[0] < 1


def _rows(target, table):
    return pd.DataFrame([{"method": m, "fold": f, "gene": g, "metric": "pearson", "value": v, "target": target,
                          "kind": "model"} for (m, f), vals in table.items() for g, v in enumerate(vals)])  # fmt: skip


def test_summary_is_mean_over_sections_of_nan_dropping_gene_means():
    paper = _rows(PAPER, {("m", "C2"): [0.2, 0.4, np.nan, np.nan], ("m", "C3"): [0.1, 0.1, 0.1, 0.1],
                          ("k", "C2"): [np.nan] * 4, ("k", "C3"): [np.nan] * 4})  # fmt: skip
    strict = _rows(STRICT, {("m", "C2"): [0.2, 0.4, 0.0, 0.0], ("m", "C3"): [0.1, 0.1, 0.1, 0.1],
                            ("k", "C2"): [0.0] * 4, ("k", "C3"): [0.0] * 4})  # fmt: skip
    extra = paper.assign(kind="null", value=9.0)  # other kinds of rows never count
    summary = get_protocol(NAME).summarise(pd.concat([paper, strict, extra])).set_index("method")
    m = summary.loc["m"]
    # C2: nanmean(0.2, 0.4) = 0.3; C3: 0.1; mean over sections 0.2 (pooled genes would give 0.7 / 6)
    assert m["mean r (paper)"] == pytest.approx((0.3 + 0.1) / 2)
    assert m["mean r (strict)"] == pytest.approx((0.15 + 0.1) / 2)
    assert m["NaN genes dropped per section (paper)"] == pytest.approx(1.0) and m["sections"] == 2
    assert np.isnan(summary.loc["k", "mean r (paper)"]) and summary.loc["k", "mean r (strict)"] == 0.0
    assert list(summary.index) == ["m", "k"]  # best paper score first, NaN last


# ----------------------------------------------------------------------------- split and data kinds
def _section(sid):
    a = ad.AnnData(np.ones((3, 2), np.float32))
    a.uns["stfusion"] = {"section_id": sid, "patient": "C"}
    return a


def test_split_is_leave_one_section_out():
    sections = [_section(s) for s in ("C2", "C3", "C4", "C5", "C6")]
    folds = get_protocol(NAME).folds(sections, seed=0)
    assert [f.name for f in folds] == ["C2", "C3", "C4", "C5", "C6"]
    for f, test in zip(folds, sections):
        assert f.test is test and len(f.train) == 4 and all(t is not test for t in f.train)
    with pytest.raises(ConfigError, match="at least two sections"):
        get_protocol(NAME).folds(sections[:1], seed=0)


def test_pair_dataset_and_other_gene_choices_are_refused():
    protocol = get_protocol(NAME)
    with pytest.raises(ConfigError, match="histogene2021_her2st.*needs a section reader"):
        protocol.check((_section("ref"), _section("sp")))
    fold = protocol.folds([_section("C2"), _section("C3")], seed=0)[0]
    with pytest.raises(ConfigError, match="785 genes.*not the top 100"):
        protocol.genes(fold, 100)
    with pytest.raises(ConfigError, match="not found"):
        protocol.genes(fold, "nowhere/genes.npy")
    with pytest.raises(ConfigError, match="takes no parameters"):
        get_protocol(NAME, fold=3)


def test_selectable_from_the_committed_config():
    assert PAPER_PROTOCOLS[NAME] is H.HisToGene2021Her2st
    cfg = load_config(REPO / "benchmarks" / "histogene2021" / "her2st.toml")
    assert [d.protocol for d in cfg.datasets] == [NAME]
    assert {m.display for m in cfg.methods} >= {"stnet_fast", "histogene", "colour_texture_ridge"}


# ----------------------------------------------------------------------------- real data, end to end
class StrictTruth:
    """Stands in for a model: "predicts" the strict target of the section, from its counts."""

    def fit(self, sections, genes):
        self.genes = list(genes)
        return self

    def predict(self, section):
        x = np.asarray(section.X.toarray() if hasattr(section.X, "toarray") else section.X, float)
        totals = x.sum(1, keepdims=True)
        cols = [section.var_names.get_loc(g) for g in self.genes]
        return ad.AnnData(np.log1p(x[:, cols] / totals * 1e4), obs=pd.DataFrame(index=section.obs_names),
                          var=pd.DataFrame(index=self.genes))  # fmt: skip


def test_runner_scores_real_her2st_as_the_reference_code(shared_data, tmp_path, monkeypatch):
    root = need(shared_data, "her2st")
    monkeypatch.setenv("STFUSION_SHARED_DATA", str(shared_data))
    monkeypatch.setattr(H, "make_model", lambda method, seed: StrictTruth())
    (tmp_path / "bench.toml").write_text(
        'seed = 0\n[[datasets]]\nname = "her2st_C"\nreader = "her2st"\npath = "her2st"\nsections = ["C2", "C3"]\n'
        f'genes = "her2st/her_hvg_cut_1000.npy"\nprotocol = "{NAME}"\n[[methods]]\nname = "constant"\n'
    )
    out = run_benchmark(load_config(tmp_path / "bench.toml"), tmp_path / "run", progress=False)
    rows = pd.read_csv(out / "per_gene.csv")
    genes = list(np.load(root / "her_hvg_cut_1000.npy", allow_pickle=False))
    means = []
    for section in ("C2", "C3"):
        cnt = pd.read_csv(root / "data" / "ST-cnts" / f"{section}.tsv.gz", sep="\t", index_col=0)
        sub = cnt[genes].to_numpy(float)  # the sub-matrix first (HisToGene dataset.py), then normalise
        lib = sub.sum(1, keepdims=True)
        truth = np.log10(1 + sub / np.where(lib == 0, 1, lib) * 1e4)
        pred = np.log1p(cnt[genes].to_numpy(float) / cnt.to_numpy(float).sum(1, keepdims=True) * 1e4)
        with np.errstate(invalid="ignore", divide="ignore"):
            expected = np.array([_r(pred[:, j], truth[:, j]) if truth[:, j].std() > 0 else np.nan
                                 for j in range(len(genes))])  # fmt: skip
        got = rows[(rows.fold == section) & (rows.target == PAPER) & (rows.metric == "pearson")]
        assert list(got.gene) == genes
        np.testing.assert_allclose(got.value.to_numpy(), expected, rtol=1e-6, atol=1e-9)
        strict = rows[(rows.fold == section) & (rows.target == STRICT) & (rows.metric == "pearson")]
        assert np.nanmin(strict.value) > 0.999  # the stand-in predicts the strict truth itself
        means.append(np.nanmean(expected))
    summary = pd.read_csv(out / "summary.csv").set_index("method")
    assert summary.loc["constant", "mean r (paper)"] == pytest.approx(np.mean(means), rel=1e-6)
    assert 0.5 < np.mean(means) < 1  # strict target vs the papers' truth: close, not equal
    assert f"{NAME}: Pang, Su & Li 2021" in (out / "summary.md").read_text()
