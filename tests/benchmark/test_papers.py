"""The paper-protocol framework: selectable in a config, run by the runner, summarised both ways."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stfusion.benchmark import load_config, run_benchmark
from stfusion.benchmark.methods import make_model
from stfusion.benchmark.papers import PAPER, PAPER_PROTOCOLS, STRICT, PaperProtocol, get_protocol
from stfusion.benchmark.papers.base import tidy
from stfusion.benchmark.protocols import spot_holdout
from stfusion.errors import ConfigError
from stfusion.models.base import target_expression
from tests.conftest import need


class HalfSpotsRawCounts(PaperProtocol):
    """A toy published protocol: half the spots hidden, Pearson of predicted vs raw counts."""

    name = "toy_raw_counts"
    paper = "Toy et al. 2000"
    source = "toy/repo, eval.py, score()"
    published = {"constant on toy, median r": 0.0}
    param_names = ("fraction",)

    def folds(self, data, seed):
        return list(spot_holdout(data, self.params.get("fraction", 0.5), seed))

    def genes(self, fold, requested):
        x = fold.train[0].X
        order = np.argsort(-np.asarray(x.mean(axis=0)).ravel())[:5]
        return [fold.train[0].var_names[i] for i in order]

    def run(self, method, fold, genes, seed):
        pred = make_model(method, seed).fit(fold.train, genes=genes).predict(fold.test)
        p = np.asarray(pred[:, genes].X, float)
        raw = np.asarray(fold.test[:, genes].X.toarray(), float)
        strict = target_expression(fold.test, genes)
        r = lambda a, b: np.array([np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(a.shape[1])])  # noqa: E731
        return pd.concat([tidy({"pearson": r(raw, p)}, genes, PAPER), tidy({"pearson": r(strict, p)}, genes, STRICT)])

    def summarise(self, rows):
        return (rows[rows.metric == "pearson"].groupby(["method", "target"])["value"].median()
                .unstack("target").rename(columns=lambda t: f"median r ({t})").reset_index())  # fmt: skip


@pytest.fixture
def toy_protocol(monkeypatch):
    monkeypatch.setitem(PAPER_PROTOCOLS, HalfSpotsRawCounts.name, HalfSpotsRawCounts)
    return HalfSpotsRawCounts


def test_paper_protocol_runs_from_a_config_and_is_summarised_both_ways(toy_protocol, shared_data, tmp_path, monkeypatch):
    need(shared_data, "xfuse_mob_toy")
    monkeypatch.setenv("STFUSION_SHARED_DATA", str(shared_data))
    (tmp_path / "bench.toml").write_text(
        'seed = 0\n[[datasets]]\nname = "toy"\nreader = "xfuse_toy"\npath = "xfuse_mob_toy"\nmin_counts = 100\n'
        'protocol = "toy_raw_counts"\nprotocol_params = { fraction = 0.5 }\n'
        '[[methods]]\nname = "nearest_neighbour"\n[[methods]]\nname = "constant"\n'
    )
    out = run_benchmark(load_config(tmp_path / "bench.toml"), tmp_path / "run", progress=False)
    rows = pd.read_csv(out / "per_gene.csv")
    assert set(rows.target) == {PAPER, STRICT} and rows.protocol.eq("toy_raw_counts").all()
    summary = pd.read_csv(out / "summary.csv").set_index("method")
    nn = summary.loc["nearest_neighbour"]
    assert nn["median r (paper)"] > 0.2 and nn["median r (strict)"] > 0.3, summary  # measured 0.29 / 0.46
    assert np.isnan(summary.loc["constant", "median r (paper)"])  # a constant has no correlation
    md = (out / "summary.md").read_text()
    assert "toy_raw_counts: Toy et al. 2000" in md and "toy/repo, eval.py, score()" in md
    assert "constant on toy, median r: 0" in md


def test_unknown_or_mismatched_protocols_fail_clearly(toy_protocol, tmp_path):
    (tmp_path / "bad.toml").write_text(
        '[[datasets]]\nname = "x"\nreader = "h5ad"\npath = "."\nsections = ["s.h5ad"]\nprotocol = "toy_raw_count"\n'
        '[[methods]]\nname = "constant"\n'
    )
    with pytest.raises(ConfigError, match="unknown protocol 'toy_raw_count'.*toy_raw_counts"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="takes no parameters \\['k'\\]; it takes \\['fraction'\\]"):
        get_protocol("toy_raw_counts", k=3)
    with pytest.raises(ConfigError, match="needs a section reader"):
        get_protocol("toy_raw_counts").check((object(), object()))
