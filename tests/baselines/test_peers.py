"""Tangram and gimVI through their packages: held-out genes beat a shuffled-gene control; clean errors.

Tests of a peer skip when its package is not installed (``pip install 'stfusion[peers]'``).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

from stfusion import _constants as K
from stfusion.baselines import peers
from stfusion.baselines.peers import GimVIImputer, TangramImputer, peer_available
from stfusion.data.synthetic import make_synthetic_pair
from stfusion.errors import OptionalDependencyError
from stfusion.metrics.core import pearson
from stfusion.models.registry import get
from stfusion.models.spaim.model import log1p_expression
from tests.conftest import need

need_tangram = pytest.mark.skipif(not peer_available("tangram"), reason="tangram-sc not installed: pip install 'stfusion[peers]'")
need_scvi = pytest.mark.skipif(not peer_available("scvi"), reason="scvi-tools not installed: pip install 'stfusion[peers]'")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pair():
    ref, sp = make_synthetic_pair(n_ref_cells=400, n_spatial_cells=300, n_genes=40, n_types=4, seed=0)
    hold = list(sp.var_names[::4])  # 10 genes, 5 of them markers
    return ref, sp, hold


def heldout_vs_shuffled(model, pair):
    """Mean PCC of the held-out genes, and of the same predictions with gene labels shifted."""
    ref, sp, hold = pair
    train = [g for g in sp.var_names if g not in hold]
    ref_x, sp_names = ref.X.copy(), list(sp.var_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.fit(ref, sp[:, train].copy()).impute(hold)
    assert (ref.X != ref_x).nnz == 0 and list(sp.var_names) == sp_names  # inputs untouched
    assert list(out.obs_names) == list(sp.obs_names) and list(out.var_names) == hold and out.var["imputed"].all()
    np.testing.assert_array_equal(out.obsm[K.SPATIAL], sp.obsm[K.SPATIAL])
    truth = log1p_expression(sp.X).toarray()[:, sp.var_names.get_indexer(hold)]
    shuffled = np.mean([np.nanmean(pearson(truth, np.roll(out.X, s, axis=1))) for s in (1, 2, 3)])
    return np.nanmean(pearson(truth, out.X)), shuffled, out


@need_tangram
@pytest.mark.parametrize("mode", ["clusters", "cells"])
def test_tangram_heldout_genes_beat_shuffled_genes(pair, mode):
    pcc, shuffled, out = heldout_vs_shuffled(TangramImputer(mode=mode, epochs=300), pair)
    assert pcc > 0.25 and pcc - shuffled > 0.15, (pcc, shuffled)
    assert out.uns[K.STFUSION]["method"] == "tangram"


@need_scvi
@pytest.mark.parametrize("readout", ["normalized", "counts"])
def test_gimvi_heldout_genes_beat_shuffled_genes(pair, readout):
    pcc, shuffled, _ = heldout_vs_shuffled(GimVIImputer(readout=readout, epochs=100), pair)
    assert pcc > 0.15 and pcc - shuffled > 0.1, (pcc, shuffled)


@need_tangram
def test_tangram_is_seeded_and_leaves_global_state_alone(pair):
    ref, sp, hold = pair
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    a = TangramImputer(mode="cells", epochs=50, seed=2).fit(ref, sp).impute(hold[:3]).X
    assert np.array_equal(np.random.get_state()[1], before)
    assert root.level == level and root.handlers == handlers  # Tangram sets INFO / basicConfig otherwise
    b = TangramImputer(mode="cells", epochs=50, seed=2).fit(ref, sp).impute(hold[:3]).X
    np.testing.assert_array_equal(a, b)


@need_tangram
def test_gene_names_differing_only_in_case_stay_apart(pair):
    ref, sp, _ = pair
    ref, sp = ref.copy(), sp.copy()
    for a in (ref, sp):
        names = list(a.var_names)
        names[0], names[1] = "Abc", "ABC"  # two different marker genes of type 0
        a.var_names = names
    keep = [g for g in sp.var_names if g not in ("Abc", "ABC")]
    out = TangramImputer(epochs=100).fit(ref, sp[:, keep].copy()).impute(["Abc", "ABC"])
    truth = log1p_expression(sp.X).toarray()[:, [0, 1]]
    assert not np.allclose(out.X[:, 0], out.X[:, 1])
    assert np.all(np.diag(np.corrcoef(truth.T, out.X.T)[:2, 2:]) > 0.2)


def test_missing_package_says_how_to_install(pair, monkeypatch):
    ref, sp, hold = pair
    monkeypatch.setattr(peers, "peer_available", lambda module: False)
    with pytest.raises(OptionalDependencyError, match=r"pip install 'stfusion\[peers\]'"):
        TangramImputer().fit(ref, sp)
    with pytest.raises(OptionalDependencyError, match="scvi-tools"):
        GimVIImputer().fit(ref, sp)


def test_registered_and_validated():
    assert get("tangram") is TangramImputer and get("gimvi") is GimVIImputer
    assert TangramImputer.input_kind == GimVIImputer.input_kind == "reference"
    with pytest.raises(ValueError, match="mode"):
        TangramImputer(mode="constrained")
    with pytest.raises(ValueError, match="readout"):
        GimVIImputer(readout="scale")


def test_benchmark_reports_a_missing_peer_and_goes_on(shared_data, tmp_path, monkeypatch):
    from stfusion.benchmark import load_config, run_benchmark

    need(shared_data, "spacexr_merfish")
    config = tmp_path / "peers.toml"
    config.write_text(f"""
seed = 0
data_root = "{shared_data}"
[[datasets]]
name = "merfish"
reader = "merfish_pair"
path = "spacexr_merfish"
protocol = "gene_kfold"
protocol_params = {{ k = 5 }}
[[methods]]
name = "tangram"
[[methods]]
name = "knn_reference"
""")
    monkeypatch.setattr(peers, "peer_available", lambda module: False)
    run = run_benchmark(load_config(config), tmp_path / "run", progress=False)
    summary = (run / "summary.md").read_text()
    assert "knn_reference" in summary and "## Not run" in summary
    assert "- tangram: Tangram needs the package 'tangram-sc'" in summary
    assert not (run / "cells" / "merfish" / "tangram").exists()


@pytest.mark.parametrize("which", ["tangram_clusters", "tangram_cells", "gimvi"])
def test_save_load_imputes_the_same_values(pair, tmp_path, which):
    if not peer_available("scvi" if which == "gimvi" else "tangram"):
        pytest.skip("peer package not installed: pip install 'stfusion[peers]'")
    ref, sp, hold = pair
    model = GimVIImputer(epochs=5) if which == "gimvi" else TangramImputer(mode=which.split("_")[1], epochs=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = model.fit(ref, sp[:, 10:].copy()).impute(hold[:3])
        again = type(model).load(model.save(tmp_path / which)).impute(hold[:3])
    np.testing.assert_allclose(again.X, first.X, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(again.obsm[K.SPATIAL], sp.obsm[K.SPATIAL])
    assert list(again.obs_names) == list(sp.obs_names)
