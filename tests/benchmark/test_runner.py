"""The benchmark runner end to end on tiny real data: outputs, numbers, resumability."""

import os

import pandas as pd
import pytest

from stfusion.benchmark import load_config, run_benchmark
from stfusion.benchmark.protocols import gene_kfold, leave_one_section_out, spot_holdout
from stfusion.cli import main
from tests.conftest import need

CONFIG = """
seed = 0
[[datasets]]
name = "toy"
reader = "xfuse_toy"
path = "xfuse_mob_toy"
genes = 10
min_counts = 100
protocol = "spot_holdout"
protocol_params = { fraction = 0.5 }

[[datasets]]
name = "merfish"
reader = "merfish_pair"
path = "spacexr_merfish"
protocol = "gene_kfold"
protocol_params = { k = 5 }

[[methods]]
name = "constant"
datasets = ["toy"]

[[methods]]
name = "nearest_neighbour"
datasets = ["toy"]

[[methods]]
name = "knn_reference"
datasets = ["merfish"]
"""


@pytest.fixture(scope="module")
def run(shared_data, tmp_path_factory):
    need(shared_data, "xfuse_mob_toy")
    need(shared_data, "spacexr_merfish")
    tmp = tmp_path_factory.mktemp("bench")
    cfg_path = tmp / "bench.toml"
    cfg_path.write_text(CONFIG)
    os.environ["STFUSION_SHARED_DATA"] = str(shared_data)
    try:
        out = run_benchmark(load_config(cfg_path), tmp / "run", progress=False)
    finally:
        os.environ.pop("STFUSION_SHARED_DATA")
    return cfg_path, out


def test_outputs_written(run):
    _, out = run
    for name in ("per_gene.csv", "timings.csv", "summary.csv", "summary.md", "config.resolved.json", "boxplot_toy.png"):
        assert (out / name).exists(), name
    timings = pd.read_csv(out / "timings.csv")
    assert (timings.seconds > 0).all() and (timings.peak_rss_mb > 0).all()
    assert len(timings) == 2 + 5  # two methods x one hold-out fold, five gene folds


def test_numbers_make_sense(run):
    _, out = run
    summary = pd.read_csv(out / "summary.csv").set_index(["dataset", "method"])
    # interpolation from neighbouring spots beats each gene's mean on held-out spots
    assert summary.loc[("toy", "nearest_neighbour"), "mean_pearson"] > summary.loc[("toy", "constant"), "mean_pearson"] + 0.1
    genes = pd.read_csv(out / "per_gene.csv")
    merfish = genes[(genes.dataset == "merfish") & (genes.metric == "pearson")]
    assert merfish.gene.nunique() == 132  # every gene measured in both held out exactly once (2 of 134 shared have no counts)
    assert summary.loc[("merfish", "knn_reference"), "AS"] == pytest.approx(1.0)  # the only method ranks first


def test_resume_does_not_recompute(run, shared_data, monkeypatch):
    cfg_path, out = run
    cells = sorted((out / "cells").rglob("*.csv"))
    stamps = [c.stat().st_mtime_ns for c in cells]
    monkeypatch.setenv("STFUSION_SHARED_DATA", str(shared_data))
    assert main(["benchmark", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    assert [c.stat().st_mtime_ns for c in sorted((out / "cells").rglob("*.csv"))] == stamps


def test_protocol_folds_are_disjoint(shared_data):
    from stfusion.io import read_merfish_pair, read_xfuse_toy

    section = read_xfuse_toy(need(shared_data, "xfuse_mob_toy"))
    (fold,) = spot_holdout([section], 0.5, seed=1)
    assert fold.test.n_obs == round(0.5 * section.n_obs)
    assert not set(fold.test.obs_names) & set(fold.train[0].obs_names)
    ref, sp = read_merfish_pair(need(shared_data, "spacexr_merfish"))
    folds = list(gene_kfold(ref, sp, k=5, seed=0))
    hidden = [g for f in folds for g in f.hidden_genes]
    assert len(hidden) == len(set(hidden)) == 132
    assert all(not set(f.hidden_genes) & set(f.train[1].var_names) for f in folds)
    with pytest.raises(Exception, match="at least two"):
        list(leave_one_section_out([section]))


def test_constant_prediction_scores_zero_not_nan():
    import anndata as ad
    import numpy as np
    from scipy import sparse

    from stfusion.benchmark.scoring import score_histology
    from stfusion.models.base import prediction_adata

    rng = np.random.default_rng(0)
    counts = rng.poisson(5, (30, 3))
    counts[:, 2] = 0  # a gene not expressed in the test section: r stays undefined
    test = ad.AnnData(sparse.csr_matrix(counts), obsm={"spatial": rng.random((30, 2)) * 100})
    test.var_names = ["a", "b", "c"]
    pred = prediction_adata(test, np.ones((30, 3)), ["a", "b", "c"], method="constant")
    table = score_histology(pred, test, ["a", "b", "c"]).set_index(["gene", "metric"]).value
    assert table[("a", "pearson")] == 0 and table[("b", "pearson")] == 0
    assert np.isnan(table[("c", "pearson")])
    assert table[("a", "pvalue")] == 1.0


def test_leave_one_patient_out_groups_sections():
    import anndata as ad
    import numpy as np

    from stfusion.benchmark.protocols import leave_one_patient_out

    def sec(sid, patient):
        a = ad.AnnData(np.ones((2, 2)))
        a.uns["stfusion"] = {"section_id": sid, "patient": patient}
        return a

    sections = [sec("B1", "B"), sec("C1", "C"), sec("C2", "C"), sec("D1", "D")]
    folds = list(leave_one_patient_out(sections))
    assert [f.name for f in folds] == ["B:B1", "C:C1", "C:C2", "D:D1"]
    c1 = folds[1]
    assert sorted(s.uns["stfusion"]["section_id"] for s in c1.train) == ["B1", "D1"]
    sections[0].uns["stfusion"].pop("patient")
    with pytest.raises(Exception, match="no patient"):
        list(leave_one_patient_out(sections))


def test_cell_tables_keep_text_that_looks_missing(tmp_path):
    from stfusion.benchmark.report import read_cell_table

    path = tmp_path / "c.csv"
    path.write_text("gene,metric,value,permutation,kind\nNA,pearson,,0,null\nNULL,pearson,0.5,,model\n")
    df = read_cell_table(path)
    assert df.gene.tolist() == ["NA", "NULL"] and df.kind.tolist() == ["null", "model"]
    assert df.value.isna().tolist() == [True, False] and df.permutation.isna().tolist() == [False, True]


def test_shards_share_one_run_without_computing_a_cell_twice(run, shared_data, tmp_path, monkeypatch):
    cfg_path, full = run
    monkeypatch.setenv("STFUSION_SHARED_DATA", str(shared_data))
    out = tmp_path / "sharded"
    assert main(["benchmark", str(cfg_path), "--out", str(out), "--no-progress", "--shard", "0/2"]) == 0
    first = sorted(p.relative_to(out) for p in (out / "cells").rglob("*.csv"))
    assert len(first) == 4  # cells 0, 2, 4, 6 of the 7 in the plan
    assert main(["benchmark", str(cfg_path), "--out", str(out), "--no-progress", "--shard", "1/2"]) == 0
    every = sorted(p.relative_to(out) for p in (out / "cells").rglob("*.csv"))
    assert len(every) == 7 and set(first) < set(every)
    assert every == sorted(p.relative_to(full) for p in (full / "cells").rglob("*.csv"))
    cols = ["dataset", "fold", "method", "gene", "metric"]
    a = pd.read_csv(out / "per_gene.csv").sort_values(cols).reset_index(drop=True)
    b = pd.read_csv(full / "per_gene.csv").sort_values(cols).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)  # the same numbers as one process
    assert main(["benchmark", str(cfg_path), "--out", str(out), "--shard", "2/2"]) != 0
