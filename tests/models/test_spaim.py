"""SpaIM: architecture, losses, held-out gene imputation, and the reference code's defects not repeated."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from scipy import sparse

from stfusion import _constants as K
from stfusion.baselines.knn_reference import KNNReferenceImputer
from stfusion.data.splits import gene_kfold
from stfusion.data.synthetic import make_synthetic_pair
from stfusion.errors import StfusionError
from stfusion.io.reference import read_merfish_pair, shared_genes
from stfusion.metrics.core import pearson
from stfusion.models.base import NotFittedError
from stfusion.models.spaim import SpaIM, SpaIMNet, UnimputableGenesError, gram_matrix, spaim_loss
from stfusion.models.spaim.model import _augment, _device, cluster_means, log1p_expression, reference_clusters
from tests.conftest import need

TINY = {"epochs": 3, "batch_size": 8, "hidden": (32, 16)}


def tiny_pair(seed=0):
    return make_synthetic_pair(n_ref_cells=200, n_spatial_cells=90, n_genes=30, n_types=3, seed=seed)


def truth_of(spatial, genes):
    return log1p_expression(spatial.X).toarray()[:, spatial.var_names.get_indexer(genes)]


def expressed(ref, sp):
    genes = shared_genes(ref, sp)
    ok = (np.asarray(ref[:, genes].X.sum(0)).ravel() > 0) & (np.asarray(sp[:, genes].X.sum(0)).ravel() > 0)
    return [g for g, keep in zip(genes, ok) if keep]


def heldout_scores(ref, sp, hold):
    """Mean PCC of SpaIM (fast preset), its gene-shuffled control and the kNN baseline on ``hold``."""
    truth = truth_of(sp, hold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pred = SpaIM.fast().fit_impute(ref, sp, hold).X
    knn = KNNReferenceImputer().fit(ref, sp).impute(hold).X
    shuffled = np.mean([np.nanmean(pearson(truth, np.roll(pred, s, axis=1))) for s in (1, 2, 3)])
    return np.nanmean(pearson(truth, pred)), shuffled, np.nanmean(pearson(truth, knn))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted():
    ref, sp = tiny_pair()
    hold = list(sp.var_names[::3])  # 10 genes, more than one batch of 4
    model = SpaIM(**{**TINY, "batch_size": 4}).fit(ref, sp[:, [g for g in sp.var_names if g not in hold]].copy())
    return model, ref, sp, hold


# --------------------------------------------------------------------------- net and losses
def test_net_follows_the_rest_architecture():
    net = SpaIMNet(n_clusters=7, n_cells=50)
    widths = {n: (m.linear.in_features, m.linear.out_features, m.norm is not None) for n, m in net.named_children()}
    assert widths["st_content1"] == (50, 512, True) and widths["st_content2"] == (512, 256, True)
    assert widths["st_style1"] == (50, 512, True) and widths["st_style2"] == (512, 256, True)
    assert widths["sc_content2"] == (7, 256, True) and widths["sc_content1"] == (256, 512, True)
    assert widths["gen_style2"] == (1, 256, True) and widths["gen_style1"] == (1, 512, True)
    assert widths["dec2"] == (256, 512, True) and widths["dec1"] == (512, 50, False)  # linear output layer
    out = net(torch.rand(6, 7), torch.rand(6, 50))
    assert out["real"].shape == out["fake"].shape == (6, 50)
    # the shared decoder: fuse content * style at depth 2, decode, add depth-1 fusion, decode
    expect = net.dec1(net.dec2(out["sc_content2"] * out["gen_style2"]) + out["sc_content1"] * out["gen_style1"])
    torch.testing.assert_close(out["fake"], expect)
    assert (out["st_content1"] >= 0).all()  # ReLU after LayerNorm
    # the generator's style comes from a constant input: the same for every gene
    assert torch.equal(out["gen_style1"][0], out["gen_style1"][5])


def test_losses_match_their_formulas():
    torch.manual_seed(0)
    keys = ("st_content1", "sc_content1", "st_content2", "sc_content2", "st_style1", "gen_style1", "st_style2",
            "gen_style2", "real", "fake")  # fmt: skip
    out = {k: torch.rand(5, 8) for k in keys}
    spatial = torch.rand(5, 8)
    f = out["gen_style1"]
    np.testing.assert_allclose(gram_matrix(f).numpy(), (f @ f.T / 40).numpy(), rtol=1e-6)
    total, parts = spaim_loss(out, spatial)

    def cos(a, b):
        return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean()

    content = sum(((out[f"st_content{d}"] - out[f"sc_content{d}"]) ** 2).mean() for d in (1, 2))
    style = sum(((gram_matrix(out[f"gen_style{d}"]) - gram_matrix(out[f"st_style{d}"])) ** 2).mean() for d in (1, 2))
    torch.testing.assert_close(parts["content"], content)
    torch.testing.assert_close(parts["style"], style)
    torch.testing.assert_close(parts["cos_gen"], 1 - cos(out["real"], out["fake"]))
    torch.testing.assert_close(parts["cos_auto"], 1 - cos(out["real"], spatial))
    torch.testing.assert_close(total, content + style + parts["cos_gen"] + parts["cos_auto"])


def test_augmentation_adds_masked_copies_of_the_content():
    content, target = torch.rand(20, 6) + 0.1, torch.rand(20, 9)
    gen = torch.Generator().manual_seed(0)
    c, t = _augment(content, target, copies=3, frac=0.5, gen=gen)
    assert c.shape == (80, 6) and t.shape == (80, 9)
    torch.testing.assert_close(c[:20], content)
    torch.testing.assert_close(t[60:], target)
    extra = c[20:].reshape(3, 20, 6)
    assert 0.35 < float((extra == 0).float().mean()) < 0.65
    assert bool(((extra == 0) | (extra == content)).all())


# --------------------------------------------------------------------------- preprocessing
def test_content_is_the_cluster_mean_of_log1p_cp10k():
    ref, _ = tiny_pair()
    codes, names, how = reference_clusters(ref)
    assert how == K.CELL_TYPE and names == ["type_0", "type_1", "type_2"]
    content = cluster_means(log1p_expression(ref.X), codes, 3)
    x = ref.X.toarray().astype(float)
    logx = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    for k, name in enumerate(names):
        np.testing.assert_allclose(content[k], logx[ref.obs[K.CELL_TYPE] == name].mean(0), rtol=1e-5)
    raw = log1p_expression(ref.X, target_sum=None).toarray()  # the reference code's choice
    np.testing.assert_allclose(raw, np.log1p(x), rtol=1e-6)


def test_target_sum_false_from_a_toml_config_means_raw_log1p():
    assert SpaIM(target_sum=False).hyperparams["target_sum"] is None
    assert SpaIM(target_sum=None).hyperparams["target_sum"] is None
    assert SpaIM().hyperparams["target_sum"] == 1e4


def test_kmeans_clusters_without_labels_recover_the_cell_types():
    from sklearn.metrics import adjusted_rand_score

    ref, _ = make_synthetic_pair(n_ref_cells=300, n_genes=40, n_types=3, marker_fold=12.0, seed=1)
    unlabelled = ref.copy()
    del unlabelled.obs[K.CELL_TYPE]
    codes, names, how = reference_clusters(unlabelled, n_clusters=3)
    assert how == "kmeans" and len(names) == 3
    assert torch.get_num_threads() == 1  # scanpy's thread limits do not leak into torch
    assert adjusted_rand_score(ref.obs[K.CELL_TYPE], codes) > 0.9
    codes_default, _, how_default = reference_clusters(unlabelled)
    assert how_default in ("leiden", "kmeans") and codes_default.min() >= 0


# --------------------------------------------------------------------------- imputation quality
def test_synthetic_heldout_genes_beat_the_shuffled_gene_control():
    ref, sp = make_synthetic_pair(n_ref_cells=600, n_spatial_cells=400, n_genes=120, markers_per_type=10,
                                  spatial_depth=1000.0)  # fmt: skip
    hold = gene_kfold(expressed(ref, sp), k=5, seed=0)[0]
    spaim, shuffled, knn = heldout_scores(ref, sp, hold)
    print(f"synthetic fold 0: SpaIM {spaim:.3f}, shuffled {shuffled:.3f}, kNN {knn:.3f}")
    assert spaim > 0.15 and spaim > shuffled + 0.1, (spaim, shuffled, knn)


@pytest.mark.shared_data
def test_merfish_heldout_genes_beat_the_shuffled_gene_control(shared_data):
    ref, sp = read_merfish_pair(need(shared_data, "spacexr_merfish"))
    hold = gene_kfold(expressed(ref, sp), k=5, seed=0)[0]
    spaim, shuffled, knn = heldout_scores(ref, sp, hold)
    print(f"MERFISH fold 0: SpaIM {spaim:.3f}, shuffled {shuffled:.3f}, kNN {knn:.3f}")
    assert spaim > 0.2 and spaim > shuffled + 0.1, (spaim, shuffled, knn)
    assert spaim > knn - 0.1  # comparable to kNN (not reliably better: see the report)


# --------------------------------------------------------------------------- the reference code's defects
def test_every_requested_gene_is_predicted_not_only_the_last_batch(fitted):
    model, _, sp, hold = fitted
    assert model.hyperparams["batch_size"] < len(hold)
    together = model.impute(hold).X
    assert together.shape == (sp.n_obs, len(hold))
    pieces = np.hstack([model.impute(hold[i : i + 3]).X for i in range(0, len(hold), 3)])
    one_by_one = np.hstack([model.impute([g]).X for g in hold])
    np.testing.assert_allclose(together, pieces, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5, atol=1e-6)
    assert (together >= 0).all() and (together.std(axis=0) > 0).all()


def test_output_is_cells_by_genes_in_the_requested_order(fitted):
    model, _, sp, hold = fitted
    out = model.impute(hold)
    assert list(out.obs_names) == list(sp.obs_names) and list(out.var_names) == hold
    assert out.var["imputed"].all() and out.uns[K.STFUSION]["method"] == "spaim"
    np.testing.assert_array_equal(out.obsm[K.SPATIAL], sp.obsm[K.SPATIAL])
    perm = list(np.random.default_rng(0).permutation(hold))
    permuted = model.impute(perm)
    assert list(permuted.var_names) == perm
    np.testing.assert_allclose(permuted[:, hold].X, out.X, rtol=1e-5, atol=1e-6)


def test_cpu_by_default_and_auto_uses_cuda_only_when_available(fitted, monkeypatch):
    model = fitted[0]
    assert SpaIM().hyperparams["device"] == "cpu"
    assert all(p.device.type == "cpu" for p in model.net_.parameters())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _device("auto").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _device("auto").type == "cuda"


# --------------------------------------------------------------------------- reproducibility, persistence
def test_same_seed_same_model_and_inputs_untouched():
    ref, sp = tiny_pair(seed=2)
    ref_x, sp_x = ref.X.copy(), sp.X.copy()
    genes = list(sp.var_names[:5])
    train = [g for g in sp.var_names if g not in genes]
    a = SpaIM(**TINY, dropout=0.5).fit(ref, sp, train).impute(genes).X
    b = SpaIM(**TINY, dropout=0.5).fit(ref, sp, train).impute(genes).X
    c = SpaIM(**TINY, dropout=0.5, seed=1).fit(ref, sp, train).impute(genes).X
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert (ref.X != ref_x).nnz == 0 and (sp.X != sp_x).nnz == 0


def test_save_load_impute_identical(fitted, tmp_path):
    model, _, sp, hold = fitted
    path = model.save(tmp_path / "spaim")
    tensors = torch.load(path / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    card = json.loads((path / "model.json").read_text())
    assert card["method"] == "spaim" and card["n_clusters"] == 3 and card["clusters"] == ["type_0", "type_1", "type_2"]
    assert card["n_spatial_cells"] == sp.n_obs and card["seed"] == 0 and card["genes"] == model.genes_
    assert len(card["spatial_obs_names_sha256"]) == 64 and card["hyperparams"]["hidden"] == [32, 16]
    again = SpaIM.load(path)
    out, out2 = model.impute(hold), again.impute(hold)
    np.testing.assert_array_equal(out2.X, out.X)
    assert list(out2.obs_names) == list(out.obs_names) and list(out2.var_names) == hold
    np.testing.assert_array_equal(out2.obsm[K.SPATIAL], out.obsm[K.SPATIAL])


# --------------------------------------------------------------------------- errors
def test_clear_errors(fitted, tmp_path):
    model, ref, sp, _ = fitted
    with pytest.raises(NotFittedError, match="not fitted"):
        SpaIM().impute(["gene_000"])
    with pytest.raises(UnimputableGenesError, match="not in the reference: \\['nope'\\]"):
        model.impute(["gene_000", "nope"])
    zeroed = ref.copy()
    x = zeroed.X.toarray()
    x[:, 4] = 0
    zeroed.X = sparse.csr_matrix(x)
    genes = [g for g in sp.var_names if g != "gene_004"]
    with pytest.warns(UserWarning, match="no counts"):
        m = SpaIM(**TINY).fit(zeroed, sp, genes + ["gene_004"])  # dropped from training with a warning
    assert "gene_004" not in m.genes_
    with pytest.raises(UnimputableGenesError, match="zero counts in the reference.*gene_004"):
        m.impute(["gene_001", "gene_004"])
    with pytest.raises(UnimputableGenesError, match="zero counts in the reference.*gene_004"):
        SpaIM(**TINY).fit_impute(zeroed, sp, ["gene_004"])  # checked before training
    with pytest.raises(StfusionError, match="not measured in both"):
        SpaIM(**TINY).fit(ref, sp, ["gene_001", "nope"])
    other = sp.copy()
    other.var_names = [f"x{g}" for g in sp.var_names]
    with pytest.raises(StfusionError, match="share 0 genes"):
        SpaIM(**TINY).fit(ref, other)
    with pytest.raises(StfusionError, match="not a saved SpaIM"):
        SpaIM.load(tmp_path)
