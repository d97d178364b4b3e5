"""Leave-one-patient-out: selectable in a benchmark config (with test/training patients), never
trains on a section of the test patient; on the shared her2st data: train on patient C, test on B4."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from stfusion.benchmark import load_config, run_benchmark
from stfusion.benchmark.protocols import PROTOCOLS, leave_one_patient_out
from tests.conftest import need


def sec(sid: str, patient: str | None) -> ad.AnnData:
    a = ad.AnnData(np.ones((2, 2)))
    a.uns["stfusion"] = {"section_id": sid} | ({"patient": patient} if patient else {})
    return a


def ids(sections) -> list[str]:
    return sorted(s.uns["stfusion"]["section_id"] for s in sections)


def test_no_fold_trains_on_its_test_patient():
    rng = np.random.default_rng(0)
    for _ in range(20):  # random layouts of sections over patients
        patients = list(rng.choice(list("ABCD"), size=rng.integers(2, 9)))
        if len(set(patients)) < 2:
            continue
        sections = [sec(f"{p}{i}", p) for i, p in enumerate(patients)]
        folds = list(leave_one_patient_out(sections))
        assert sorted(f.name.split(":")[1] for f in folds) == ids(sections)  # every section tested once
        for f in folds:
            test_patient = f.test.uns["stfusion"]["patient"]
            assert f.extra["test_patient"] == test_patient
            assert all(s.uns["stfusion"]["patient"] != test_patient for s in f.train)
            assert len(f.train) == sum(p != test_patient for p in patients)


def test_test_and_training_patients_select_the_folds():
    sections = [sec("B4", "B"), sec("C2", "C"), sec("C3", "C"), sec("D1", "D")]
    (fold,) = leave_one_patient_out(sections, test_patients=["B"])
    assert fold.name == "B:B4" and ids(fold.train) == ["C2", "C3", "D1"]
    (fold,) = leave_one_patient_out(sections, test_patients="B", train_patients=["C"])
    assert ids(fold.train) == ["C2", "C3"] and fold.extra["train_patients"] == ["C"]
    folds = list(leave_one_patient_out(sections, test_patients=["C"], train_patients=["B"]))
    assert [f.name for f in folds] == ["C:C2", "C:C3"] and all(ids(f.train) == ["B4"] for f in folds)
    with pytest.raises(Exception, match="not among the sections' patients"):
        list(leave_one_patient_out(sections, test_patients=["E"]))
    with pytest.raises(Exception, match="no training section"):
        list(leave_one_patient_out(sections, test_patients=["B"], train_patients=["B"]))
    with pytest.raises(Exception, match="no patient"):
        list(leave_one_patient_out([sec("X1", None), sec("C2", "C")]))
    with pytest.raises(Exception, match="at least two patients"):
        list(leave_one_patient_out([sec("C2", "C"), sec("C3", "C")]))
    assert PROTOCOLS["leave_one_patient_out"] is leave_one_patient_out


CONFIG = """
seed = 0
[[datasets]]
name = "her2st_lopo"
reader = "her2st"
path = "her2st"
sections = ["B4", "C2"]
genes = 5
protocol = "leave_one_patient_out"
protocol_params = { test_patients = ["B"] }

[[methods]]
name = "constant"
"""


def test_runner_trains_on_patient_c_and_tests_on_b4(shared_data, tmp_path, monkeypatch):
    need(shared_data, "her2st")
    path = tmp_path / "lopo.toml"
    path.write_text(CONFIG)
    monkeypatch.setenv("STFUSION_SHARED_DATA", str(shared_data))
    cfg = load_config(path)
    assert cfg.datasets[0].protocol == "leave_one_patient_out"
    out = run_benchmark(cfg, tmp_path / "run", progress=False)
    genes = pd.read_csv(out / "per_gene.csv")
    assert set(genes.fold) == {"B:B4"} and set(genes.protocol) == {"leave_one_patient_out"}
    assert genes.gene.nunique() == 5
