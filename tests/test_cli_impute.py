"""``stfusion impute``: same values as the Python API and the benchmark path, output layout, one-line errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from stfusion import _constants as K
from stfusion.baselines.knn_reference import KNNReferenceImputer
from stfusion.baselines.peers import TangramImputer, peer_available
from stfusion.benchmark.config import MethodSpec
from stfusion.benchmark.protocols import gene_kfold
from stfusion.benchmark.runner import make_model
from stfusion.cli import main
from stfusion.data.synthetic import make_synthetic_pair
from stfusion.io.reference import read_reference
from stfusion.models.spaim import SpaIM

TINY = {"epochs": 3, "batch_size": 8, "hidden": [32, 16]}
TINY_ARGS = ["-p", "epochs=3", "-p", "batch_size=8", "-p", "hidden=[32,16]"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    """A synthetic pair on disk, and the pair as the CLI reads it back."""
    root = tmp_path_factory.mktemp("pair")
    ref, sp = make_synthetic_pair(n_ref_cells=240, n_spatial_cells=120, n_genes=30, n_types=3, seed=4)
    for a in (ref, sp):
        del a.uns[K.SYNTHETIC]  # arrays of strings: not needed here
    ref.write_h5ad(root / "ref.h5ad")
    sp.write_h5ad(root / "sp.h5ad")
    return root, read_reference(root / "ref.h5ad"), ad.read_h5ad(root / "sp.h5ad")


def _run(root, method, hold, *extra, out="out.h5ad"):
    genes = root / f"genes_{len(hold)}.txt"
    genes.write_text("\n".join(hold) + "\n")
    args = ["impute", method, "--reference", str(root / "ref.h5ad"), "--spatial", str(root / "sp.h5ad"),
            "--genes", str(genes), "--out", str(root / out), *extra]  # fmt: skip
    assert main(args) == 0
    return ad.read_h5ad(root / out)


def _fold(ref, sp, i=1):
    return list(gene_kfold(ref, sp, k=5, seed=0, name="synthetic"))[i]


def test_spaim_cli_equals_python_api_and_benchmark_path(pair_files):
    root, ref, sp = pair_files
    fold = _fold(ref, sp)
    hold = fold.hidden_genes
    out = _run(root, "spaim", hold, "--seed", "3", *TINY_ARGS)
    cli = out[:, hold].X
    train = [g for g in sp.var_names if g not in hold]
    api = SpaIM(**TINY, seed=3).fit(ref, sp[:, train].copy()).impute(hold).X
    np.testing.assert_allclose(cli, api, rtol=1e-5, atol=1e-6)
    bench = make_model(MethodSpec("spaim", params=dict(TINY)), seed=3).fit(*fold.train).impute(hold).X
    np.testing.assert_allclose(cli, bench, rtol=1e-5, atol=1e-6)
    assert np.std(cli) > 0


def test_knn_output_layout_marks_imputed_genes_and_keeps_the_counts(pair_files):
    root, ref, sp = pair_files
    hold = ["gene_002", "gene_017", "gene_025"]
    out = _run(root, "knn", hold)
    assert list(out.obs_names) == list(sp.obs_names)
    assert list(out.var_names[-3:]) == hold and out.n_vars == sp.n_vars
    assert out.var["imputed"].sum() == 3 and out.var.loc[hold, "imputed"].all()
    assert out.var["measured"].all()  # held-out measured genes: the truth stays in layers["counts"]
    np.testing.assert_array_equal(out[:, hold].layers[K.LAYER_COUNTS].toarray(), sp[:, hold].X.toarray())
    train = [g for g in sp.var_names if g not in hold]
    np.testing.assert_allclose(out[:, hold].X, KNNReferenceImputer().fit(ref, sp[:, train].copy()).impute(hold).X,
                               rtol=1e-5)  # fmt: skip
    measured = out[:, ~out.var["imputed"].to_numpy()]
    x = sp.X.toarray()
    expect = np.log1p(x / x.sum(1, keepdims=True) * 1e4)[:, sp.var_names.get_indexer(measured.var_names)]
    np.testing.assert_allclose(measured.X, expect, rtol=1e-5)
    np.testing.assert_array_equal(out.obsm[K.SPATIAL], sp.obsm[K.SPATIAL])
    assert out.uns[K.STFUSION]["imputation"]["method"] == "knn_reference"


def test_all_missing_imputes_the_reference_genes_the_spatial_data_lacks(pair_files, tmp_path):
    root, _, sp = pair_files
    sp[:, sp.var_names[5:]].copy().write_h5ad(tmp_path / "sp.h5ad")  # gene_000..004 unmeasured
    (tmp_path / "ref.h5ad").symlink_to(root / "ref.h5ad")
    args = ["impute", "knn", "--reference", str(tmp_path / "ref.h5ad"), "--spatial", str(tmp_path / "sp.h5ad"),
            "--out", str(tmp_path / "o.h5ad")]  # fmt: skip
    assert main(args) == 0
    out = ad.read_h5ad(tmp_path / "o.h5ad")
    assert list(out.var_names[out.var["imputed"].to_numpy()]) == [f"gene_{i:03d}" for i in range(5)]
    assert not out.var.loc[out.var["imputed"], "measured"].any()
    assert out[:, out.var["imputed"].to_numpy()].layers[K.LAYER_COUNTS].nnz == 0


def test_coverage_adds_calibrated_intervals_equal_to_the_python_api(pair_files):
    root, ref, sp = pair_files
    hold = ["gene_002", "gene_017", "gene_025"]
    out = _run(root, "knn", hold, "--coverage", "0.8", "--calibration-folds", "3", out="cov.h5ad")
    assert out.uns[K.STFUSION][K.COVERAGE]["nominal"] == pytest.approx(0.8)
    lo, hi, x = out.layers[K.LAYER_LOWER], out.layers[K.LAYER_UPPER], out.X
    assert (lo <= x + 1e-6).all() and (x <= hi + 1e-6).all()
    imputed = out.var["imputed"].to_numpy()
    assert (hi[:, imputed] - lo[:, imputed]).mean() > 0
    np.testing.assert_array_equal(lo[:, ~imputed], x[:, ~imputed])  # measured genes: the value itself
    train = [g for g in sp.var_names if g not in hold]
    model = KNNReferenceImputer().fit(ref, sp[:, train].copy())
    api = model.calibrate(ref, sp[:, train].copy(), n_folds=3, seed=0).impute(hold, coverage=0.8)
    np.testing.assert_allclose(out[:, hold].layers[K.LAYER_UPPER], api.layers[K.LAYER_UPPER], rtol=1e-5, atol=1e-6)
    bad = ["impute", "knn", "--reference", str(root / "ref.h5ad"), "--spatial", str(root / "sp.h5ad"),
           "--out", str(root / "bad.h5ad"), "--coverage", "90"]  # fmt: skip
    assert main(bad) != 0 and not (root / "bad.h5ad").exists()


@pytest.mark.skipif(not peer_available("tangram"), reason="tangram-sc not installed (pip install 'stfusion[peers]')")
def test_tangram_cli_equals_python_api(pair_files):
    root, ref, sp = pair_files
    hold = _fold(ref, sp, 2).hidden_genes
    out = _run(root, "tangram", hold, "--mode", "cells", "--seed", "1", "-p", "epochs=30", out="tg.h5ad")
    train = [g for g in sp.var_names if g not in hold]
    api = TangramImputer(mode="cells", epochs=30, seed=1).fit(ref, sp[:, train].copy()).impute(hold).X
    np.testing.assert_allclose(out[:, hold].X, api, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "Unknown method"),
        (["spaim", "--mode", "cells"], "--mode is Tangram's option"),
        (["knn", "--genes", "no_such_file.txt"], "--genes no_such_file.txt: no such file"),
    ],
)
def test_errors_are_one_line_and_write_nothing(pair_files, tmp_path, capsys, args, message):
    root, _, _ = pair_files
    out = tmp_path / "o.h5ad"
    code = main(["impute", args[0], "--reference", str(root / "ref.h5ad"), "--spatial", str(root / "sp.h5ad"),
                 "--out", str(out), *args[1:]])  # fmt: skip
    assert code != 0 and not out.exists()
    err = capsys.readouterr().err
    assert message in err.replace("\n", " ")
