"""XFuse 2022's protocols (stfusion.benchmark.papers.xfuse2022): each step against plain numpy on a
small hand-made case, the pairs protocol's refusals, and runs from a config on the shared toy section."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stfusion import _constants as K
from stfusion.benchmark import load_config, run_benchmark
from stfusion.benchmark.config import MethodSpec
from stfusion.benchmark.papers import PAPER, STRICT, get_protocol
from stfusion.benchmark.papers.xfuse2022 import pair_scores, pooled_pair_summary
from stfusion.errors import ConfigError
from stfusion.models.base import Model, dense, prediction_adata
from tests.baselines.test_interpolation import make_section
from tests.conftest import need


# --------------------------------------------------------------------------- a hand-made section
def grid_section(section_id="S1", n_side=4, seed=0):
    """16 spots on a 4 x 4 grid (10 px apart), 4 genes of known counts."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(n_side), np.arange(n_side))
    coords = np.column_stack([gx.ravel(), gy.ravel()]) * 10.0 + 10.0
    counts = rng.poisson([5.0, 20.0, 8.0, 50.0], size=(len(coords), 4)) + 1
    s = make_section(coords, counts, genes=["a", "b", "c", "d"], section_id=section_id)
    s.uns.setdefault(K.STFUSION, {}).update({K.SECTION_ID: section_id, K.PLATFORM: "st"})
    return s


class FakeModel(Model):
    """Predicts fixed functions of the spot coordinates: X (target space) = x * (j + 1),
    ``mean_counts`` = y * (j + 1) + x², and with ``space="counts"`` X = y² * (j + 1)."""

    name = "fake"

    def __init__(self, space: str = "target", counts_layer: bool = False, seed: int = 0) -> None:
        super().__init__(space=space, counts_layer=counts_layer, seed=seed)

    def _fit(self, train_sections, genes=None):
        self.genes_ = list(genes)
        self.seen_ = [s.n_vars for s in train_sections]
        return self

    def _predict(self, section):
        FakeModel.last_input_vars = section.n_vars
        xy = np.asarray(section.obsm[K.SPATIAL], float)
        j = np.arange(1, len(self.genes_) + 1)[None, :]
        x, y = xy[:, [0]], xy[:, [1]]
        values = (y**2) * j if self.hyperparams["space"] == "counts" else x * j
        layers = {K.LAYER_MEAN_COUNTS: y * j + x**2} if self.hyperparams["counts_layer"] else None
        return prediction_adata(section, values, self.genes_, layers=layers, method=self.name)


@pytest.fixture
def fake(monkeypatch):
    from stfusion.models import registry

    real = registry.get
    monkeypatch.setattr(registry, "get", lambda name: FakeModel if name == "fake" else real(name))
    return FakeModel


def pearson(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def strict_target(section, genes):
    x = dense(section.X).astype(float)
    total = x.sum(axis=1, keepdims=True)
    cols = [list(section.var_names).index(g) for g in genes]
    return np.log1p(x[:, cols] / total * 1e4)


# --------------------------------------------------------------------------- hold-out
def test_holdout_split_genes_and_metric_match_a_hand_computation(fake):
    s = grid_section()
    protocol = get_protocol("xfuse2022_holdout", fraction=0.5, n_genes=2)
    (fold,) = protocol.folds([s], seed=3)
    hidden = np.zeros(16, bool)
    hidden[np.random.default_rng(3).choice(16, size=8, replace=False)] = True  # round(0.5 * 16) spots, seeded
    assert list(fold.test.obs_names) == list(s.obs_names[hidden])
    assert list(fold.train[0].obs_names) == list(s.obs_names[~hidden])

    counts = dense(s.X).astype(float)
    visible_mean = counts[~hidden].mean(axis=0)
    expected_genes = [["a", "b", "c", "d"][j] for j in np.argsort(-visible_mean, kind="stable")[:2]]
    genes = protocol.genes(fold, None)
    assert genes == expected_genes  # ranked on the visible spots only

    xy = np.asarray(s.obsm[K.SPATIAL])[hidden]
    cols = [["a", "b", "c", "d"].index(g) for g in genes]
    for spec, paper_pred in (
        (MethodSpec("fake", {"counts_layer": True}), lambda j: xy[:, 1] * (j + 1) + xy[:, 0] ** 2),  # mean counts
        (MethodSpec("fake"), lambda j: xy[:, 1] ** 2 * (j + 1)),  # refitted with space="counts"
    ):
        rows = protocol.run(spec, fold, genes, seed=0).assign(method=spec.name, fold=fold.name)
        paper = rows[(rows.target == PAPER) & (rows.metric == "pearson")].set_index("gene")["value"]
        strict = rows[(rows.target == STRICT) & (rows.metric == "pearson")].set_index("gene")["value"]
        truth_strict = strict_target(s[hidden], genes)
        for j, g in enumerate(genes):
            assert paper[g] == pytest.approx(pearson(counts[hidden][:, cols[j]], paper_pred(j)))
            assert strict[g] == pytest.approx(pearson(truth_strict[:, j], xy[:, 0] * (j + 1)), rel=1e-4)  # float32 target
        table = protocol.summarise(rows).set_index("fold")
        assert table.loc[fold.name, "median r (paper)"] == pytest.approx(np.median(paper.to_numpy()))
        assert table.loc[fold.name, "median r (strict)"] == pytest.approx(np.median(strict.to_numpy()))


# --------------------------------------------------------------------------- histology only
def test_histology_trains_on_one_section_and_predicts_another_from_its_image(fake):
    s1, s2 = grid_section("S1", seed=1), grid_section("S2", seed=2)
    protocol = get_protocol("xfuse2022_histology", n_genes=3)
    folds = protocol.folds([s1, s2], seed=0)
    assert [(f.name, f.train[0].uns[K.STFUSION][K.SECTION_ID], f.test.uns[K.STFUSION][K.SECTION_ID]) for f in folds] == [
        ("S2:from_S1", "S1", "S2"), ("S1:from_S2", "S2", "S1")]  # fmt: skip
    fold = folds[0]
    genes = protocol.genes(fold, None)
    mean1 = dense(s1.X).mean(axis=0)
    assert genes == [["a", "b", "c", "d"][j] for j in np.argsort(-mean1, kind="stable")[:3]]  # training section's ranking
    rows = protocol.run(MethodSpec("fake", {"counts_layer": True}), fold, genes, seed=0)
    assert FakeModel.last_input_vars == 0  # the test section reaches predict without counts
    xy = np.asarray(s2.obsm[K.SPATIAL])
    paper = rows[(rows.target == PAPER) & (rows.metric == "pearson")].set_index("gene")["value"]
    for j, g in enumerate(genes):
        truth = dense(s2[:, g].X).ravel().astype(float)
        assert paper[g] == pytest.approx(pearson(truth, xy[:, 1] * (j + 1) + xy[:, 0] ** 2))
    with pytest.raises(ConfigError, match="at least two sections"):
        protocol.check([s1])


# --------------------------------------------------------------------------- pairs
def test_pair_calls_and_pooled_pearson_match_a_hand_computation():
    # 2 pairs x 1 gene, 4 predictive draws each
    a = np.array([[[5.0], [1.0]], [[6.0], [1.0]], [[7.0], [2.0]], [[5.0], [2.0]]])
    b = np.array([[[1.0], [1.0]], [[2.0], [3.0]], [[1.0], [1.0]], [[0.0], [2.0]]])
    # pair 0: P(a > b) = 4/4 -> called a; pair 1: P(a > b) = 1/4, P(b > a) = 1/4 -> no call
    truth_a, truth_b = np.array([[3.0], [0.0]]), np.array([[4.0], [2.0]])  # pair 0: measured b > a: wrong
    out = pair_scores(a, b, a.mean(0), b.mean(0), truth_a, truth_b, credibility=0.95)
    assert out["calls"].tolist() == [1.0] and out["calls_right"].tolist() == [0.0]
    pred = np.concatenate([a.mean(0).ravel(), b.mean(0).ravel()])
    truth = np.concatenate([truth_a.ravel(), truth_b.ravel()])
    assert out["pearson"][0] == pytest.approx(pearson(truth, pred))

    # pooling two genes (rows of a tidy table) gives the Pearson of all values together
    rng = np.random.default_rng(0)
    ma, mb, ta, tb = (rng.normal(size=(5, 2)) for _ in range(4))
    stats = pair_scores(None, None, ma, mb, ta, tb, 0.95)
    df = pd.DataFrame({k: v for k, v in stats.items()}).assign(gene=["g0", "g1"])
    pooled = pooled_pair_summary(df)
    assert pooled["calls"] == 0 and np.isnan(pooled["calls right"])
    assert pooled["r components"] == pytest.approx(pearson(np.vstack([ta, tb]).ravel(), np.vstack([ma, mb]).ravel()))


def test_pairs_merges_adjacent_spots_and_scores_components_of_a_sampling_model(monkeypatch):
    from stfusion.models import registry

    s = grid_section()

    class Sampler(FakeModel):
        name = "sampler"

        def _fit(self, train_sections, genes=None):
            self.state_ = {"modelled_fraction": 1.0}
            Sampler.trained_on = train_sections[0]
            return super()._fit(train_sections, genes)

        def predict_samples(self, section, areas=None, samples=None, genes=None, kind="mean"):
            xy = np.asarray(areas, float)  # both members' centres: draws grow with x, plus +-0.5 noise
            jitter = np.where(np.arange(samples)[:, None, None] % 2 == 0, 0.5, -0.5)
            return (xy[None, :, [0]] + jitter) * np.arange(1, len(genes) + 1)[None, None, :] + (kind == "counts")

    monkeypatch.setattr(registry, "get", lambda name: Sampler)
    protocol = get_protocol("xfuse2022_pairs", samples=4)
    protocol.check([s])
    (fold,) = protocol.folds([s], seed=0)
    merged, table = fold.train[0], fold.extra["pairs"]
    counts = pd.DataFrame(dense(s.X), index=s.obs_names, columns=s.var_names)
    expected = counts.loc[table.member_a].to_numpy() + counts.loc[table.member_b].to_numpy()
    assert np.array_equal(dense(merged.X), expected)  # counts summed over each pair
    genes = protocol.genes(fold, None)
    assert genes == ["a", "b", "c", "d"]  # every gene is modelled and scored
    rows = protocol.run(MethodSpec("sampler"), fold, genes, seed=0)
    assert Sampler.trained_on is merged

    xy = pd.DataFrame(np.asarray(s.obsm[K.SPATIAL]), index=s.obs_names)
    xa, xb = xy.loc[table.member_a, 0].to_numpy(), xy.loc[table.member_b, 0].to_numpy()
    ta, tb = counts.loc[table.member_a].to_numpy(), counts.loc[table.member_b].to_numpy()
    # draws of a exceed those of b in every sample iff x_a - x_b > 1 (10 px apart: always when they differ)
    called = xa != xb
    want_calls = ((called[:, None]) & (ta != tb)).sum(axis=0)
    want_right = (called[:, None] & (ta != tb) & np.where((xa > xb)[:, None], ta > tb, tb > ta)).sum(axis=0)
    paper = rows[rows.target == PAPER].pivot(index="gene", columns="metric", values="value").loc[genes]
    assert paper["calls"].tolist() == want_calls.tolist() and paper["calls_right"].tolist() == want_right.tolist()
    mean_a = (xa[:, None] * np.arange(1, 5)) + 1  # mean of the counts draws
    mean_b = (xb[:, None] * np.arange(1, 5)) + 1
    for j, g in enumerate(genes):
        assert paper.loc[g, "pearson"] == pytest.approx(pearson(np.r_[ta[:, j], tb[:, j]], np.r_[mean_a[:, j], mean_b[:, j]]))
    summary = protocol.summarise(rows.assign(method="sampler", fold=fold.name)).set_index(["target", "fold"])
    assert summary.loc[(PAPER, "all"), "calls"] == want_calls.sum()
    assert summary.loc[(PAPER, "all"), "calls right"] == pytest.approx(want_right.sum() / want_calls.sum())


def test_pairs_refuses_data_without_a_neighbour_rule():
    protocol = get_protocol("xfuse2022_pairs")
    rng = np.random.default_rng(0)
    scattered = make_section(rng.uniform(10, 500, size=(60, 2)), rng.poisson(5, size=(60, 3)), section_id="cells")
    with pytest.raises(ConfigError, match="no neighbour rule to pair spots by"):
        protocol.check([scattered])
    beads = grid_section()
    beads.uns[K.STFUSION][K.PLATFORM] = "beads"
    with pytest.raises(ConfigError, match="'beads', which has no spot lattice"):
        protocol.check([beads])
    with pytest.raises(ConfigError, match="needs a section reader"):
        protocol.check((object(), object()))
    single = make_section([[10.0, 10.0]], [[1, 2, 3]], section_id="one")
    with pytest.raises(ConfigError, match="1 spot"):
        protocol.check([single])
    protocol.check([grid_section()])  # a spot array passes


# --------------------------------------------------------------------------- runs from a config on real data
TOY = 'seed = 0\n[[datasets]]\nname = "toy"\nreader = "xfuse_toy"\npath = "xfuse_mob_toy"\nmin_counts = 100\n'


@pytest.mark.parametrize(
    ("protocol", "params", "methods"),
    [("xfuse2022_holdout", "{ fraction = 0.5, n_genes = 5 }", ["nearest_neighbour", "linear", "constant"]),
     ("xfuse2022_pairs", "{ samples = 10 }", ["nearest_neighbour"])],
)  # fmt: skip
def test_runs_from_a_config_on_the_toy_section(protocol, params, methods, shared_data, tmp_path, monkeypatch):
    need(shared_data, "xfuse_mob_toy")
    monkeypatch.setenv("STFUSION_SHARED_DATA", str(shared_data))
    text = TOY + f'protocol = "{protocol}"\nprotocol_params = {params}\n' + "".join(
        f'[[methods]]\nname = "{m}"\n' for m in methods)
    (tmp_path / "bench.toml").write_text(text)
    out = run_benchmark(load_config(tmp_path / "bench.toml"), tmp_path / "run", progress=False)
    rows = pd.read_csv(out / "per_gene.csv")
    assert set(rows.target) == {PAPER, STRICT} and rows.protocol.eq(protocol).all()
    summary = pd.read_csv(out / "summary.csv")
    md = (out / "summary.md").read_text()
    assert f"{protocol}: Bergenstråhle et al." in md
    if protocol == "xfuse2022_holdout":
        nn = summary.set_index("method").loc["nearest_neighbour"]
        assert nn["median r (paper)"] > 0.1 and nn["median r (strict)"] > 0.1, summary
        assert np.isnan(summary.set_index("method").loc["constant", "median r (paper)"])
    else:
        nn = summary[(summary.method == "nearest_neighbour") & (summary.fold == "all")].set_index("target")
        assert (nn["calls"] == 0).all() and nn.loc[PAPER, "genes"] == 10  # no predictive samples: no calls
        assert nn.loc[PAPER, "r components"] > 0.3, summary
        assert "calls right (fraction)" in md  # the published numbers beside ours
