"""The benchmark runner with a calibrated method: coverage and width per gene at 50/80/90/95%."""

import os

import numpy as np
import pytest

from stfusion.benchmark import load_config, run_benchmark
from stfusion.errors import ConfigError
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

[[methods]]
name = "constant"

[[methods]]
name = "nearest_neighbour"
label = "nn_calibrated"
calibration = "spots"
calibration_fraction = 0.3
"""


def test_runner_adds_coverage_for_calibrated_methods(shared_data, tmp_path):
    need(shared_data, "xfuse_mob_toy")
    cfg_path = tmp_path / "bench.toml"
    cfg_path.write_text(CONFIG)
    os.environ["STFUSION_SHARED_DATA"] = str(shared_data)
    try:
        out = run_benchmark(load_config(cfg_path), tmp_path / "run", progress=False)
    finally:
        os.environ.pop("STFUSION_SHARED_DATA")
    import pandas as pd

    genes = pd.read_csv(out / "per_gene.csv")
    cal = genes[genes.method == "nn_calibrated"]
    for level in (50, 80, 90, 95):
        cov = cal.loc[cal.metric == f"coverage_{level}", "value"]
        assert len(cov) == 10 and cov.between(0, 1).all()
        assert (cal.loc[cal.metric == f"width_{level}", "value"] > 0).all()
    widths = [cal.loc[cal.metric == f"width_{lv}", "value"].mean() for lv in (50, 80, 90, 95)]
    assert np.all(np.diff(widths) > 0)
    assert not genes.loc[genes.method == "constant", "metric"].str.startswith("coverage_").any()  # unchanged
    summary = pd.read_csv(out / "summary.csv")
    row = summary[summary.method == "nn_calibrated"].iloc[0]
    assert 0 < row["coverage_90"] <= 1
    assert np.isnan(summary[summary.method == "constant"].iloc[0]["coverage_90"])
    assert "coverage 90%" in (out / "summary.md").read_text()


def test_config_rejects_unknown_calibration(tmp_path):
    cfg = tmp_path / "b.toml"
    cfg.write_text(CONFIG.replace('calibration = "spots"', 'calibration = "cells"'))
    with pytest.raises(ConfigError, match="calibration must be one of"):
        load_config(cfg)
