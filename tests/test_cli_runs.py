"""Run records that re-run, errors that come early and leave nothing behind, --missing-genes (issue 27
items 1, 2 and 8)."""

from __future__ import annotations

import json
import tomllib

import anndata as ad
import numpy as np
import pytest

from stfusion.cli import main
from stfusion.data.synthetic import make_synthetic_pair, make_synthetic_section
from stfusion.io import write_h5ad


@pytest.fixture(scope="module")
def sections(tmp_path_factory):
    root = tmp_path_factory.mktemp("sections")
    for i, name in enumerate(("train", "test")):
        s = make_synthetic_section(root / f"img{i}", grid=(6, 6), n_genes=5, microns_per_pixel=2.0,
                                   spot_shape="round", seed=i)  # fmt: skip
        write_h5ad(s, root / f"{name}.h5ad")
    return root


@pytest.fixture()
def project(sections, tmp_path, monkeypatch):
    """A working folder holding the two sections; the commands run from it with relative paths."""
    for name in ("train.h5ad", "test.h5ad"):
        (tmp_path / name).symlink_to(sections / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


FIT = ["fit", "morphology_rf", "train.h5ad", "--genes", "3", "-p", "n_estimators=5", "--seed", "1", "--out", "model"]


def test_run_records_rerun_with_config_from_any_folder(project, monkeypatch):
    assert main(FIT) == 0
    assert main(["predict", "model", "test.h5ad", "--out", "pred.h5ad"]) == 0
    stored = tomllib.loads((project / "model" / "run" / "config.toml").read_text())["fit"]
    assert stored["sections"] == [str(project / "train.h5ad")] and stored["out"] == str(project / "model")
    first = ad.read_h5ad(project / "pred.h5ad").X.copy()
    elsewhere = project / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["fit", "-c", "../model/run/config.toml"]) == 0
    assert main(["predict", "-c", "../pred.run/config.toml"]) == 0
    np.testing.assert_array_equal(ad.read_h5ad(project / "pred.h5ad").X, first)
    assert not list(elsewhere.iterdir())  # nothing written relative to the new folder


def test_fit_from_config_passes_resolution_um(project, monkeypatch):
    import stfusion.models.api as api
    from stfusion.cli.config import fit_from_config

    seen = {}
    monkeypatch.setattr(api, "fit", lambda method, data, **kw: seen.update(kw) or "model")
    (project / "run.toml").write_text('[fit]\nmethod = "xfuse"\nsections = ["train.h5ad"]\nresolution_um = 20\n')
    assert fit_from_config(project / "run.toml") == "model"
    assert seen["resolution_um"] == 20.0


def test_refused_predict_is_refused_before_loading_and_leaves_nothing(project, monkeypatch, capsys):
    import stfusion.models.api as api

    assert main(FIT) == 0
    monkeypatch.setattr(api, "load_model", lambda *a, **k: pytest.fail("the model was loaded before refusing"))
    assert main(["predict", "model", "test.h5ad", "--grid-um", "10", "--out", "g.h5ad"]) == 2
    assert "do not take --grid-um" in " ".join(capsys.readouterr().err.split())
    assert not (project / "g.h5ad").exists() and not (project / "g.run").exists()


def test_unknown_method_is_refused_at_once_with_a_suggestion(project, capsys):
    assert main(["fit", "st-net", "missing.h5ad", "--out", "m"]) == 2  # refused before the section is read
    err = " ".join(capsys.readouterr().err.split())
    assert "Did you mean 'stnet'" in err and "missing.h5ad" not in err
    assert sorted(p.name for p in project.iterdir()) == ["test.h5ad", "train.h5ad"]  # no m.failed-run


def test_missing_genes_drop_keeps_the_present_genes(project, capsys):
    genes = "marker_0,marker_1,NOT_A_GENE"
    assert main([*FIT[:3], "--genes", genes, "--out", "m"]) == 1
    assert "--missing-genes drop" in capsys.readouterr().err
    assert main([*FIT[:3], "--genes", genes, "--missing-genes", "drop", "--out", "m"]) == 0
    assert json.loads((project / "m" / "model.json").read_text())["genes"] == ["marker_0", "marker_1"]
    assert "1 of 3 requested genes" in " ".join(capsys.readouterr().err.split())


def test_swapped_reference_and_spatial_are_named(tmp_path, capsys):
    ref, sp = make_synthetic_pair(n_ref_cells=60, n_spatial_cells=40, n_genes=12, n_types=2, seed=1)
    for a in (ref, sp):
        a.uns.clear()
    ref.write_h5ad(tmp_path / "ref.h5ad")
    sp.write_h5ad(tmp_path / "sp.h5ad")
    args = ["impute", "knn", "--reference", str(tmp_path / "sp.h5ad"), "--spatial", str(tmp_path / "ref.h5ad"),
            "--out", str(tmp_path / "out.h5ad")]  # fmt: skip
    assert main(args) == 2
    assert "look swapped" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "out.h5ad").exists()


def test_fit_and_predict_run_as_long_steps(project, monkeypatch):
    """Steps that can run for minutes (fitting, predicting) report progress: a spinner on a terminal,
    periodic log lines off it (stfusion.cli.options.long_step)."""
    import contextlib

    import stfusion.cli.config as C
    import stfusion.cli.models as M

    steps = []

    @contextlib.contextmanager
    def record(what, *a, **k):
        steps.append(what)
        yield

    monkeypatch.setattr(C, "long_step", record)
    monkeypatch.setattr(M, "long_step", record)
    assert main(FIT) == 0
    assert main(["predict", "model", "test.h5ad", "--out", "pred.h5ad"]) == 0
    assert steps == ["fitting morphology_rf", "predicting (model)"]


def test_predict_on_the_wrong_data_fails_early_and_leaves_only_a_failed_record(project, capsys):
    assert main(FIT) == 0
    other = ad.read_h5ad(project / "test.h5ad")
    other.var_names = [g.upper() for g in other.var_names]
    write_h5ad(other, project / "human.h5ad")
    assert main(["predict", "model", "human.h5ad", "--out", "p.h5ad"]) == 1
    assert "has 0 of the model's 3 genes" in " ".join(capsys.readouterr().err.split())
    assert not (project / "p.h5ad").exists() and not (project / "p.run").exists()
    assert json.loads((project / "p.failed-run" / "run.json").read_text())["status"].startswith("failed")


def test_fit_calibration_and_predict_coverage_give_intervals(project):
    assert main([*FIT[:-2], "--calibration", "spots", "--calibration-fraction", "0.3", "--out", "cal"]) == 0
    assert json.loads((project / "cal" / "model.json").read_text())["calibration"]["kind"] == "spots"
    assert main(["predict", "cal", "test.h5ad", "--coverage", "0.8", "--out", "p.h5ad"]) == 0
    pred = ad.read_h5ad(project / "p.h5ad")
    assert pred.uns["stfusion"]["coverage"]["nominal"] == 0.8
    assert (pred.layers["lower"] <= pred.X).all() and (pred.X <= pred.layers["upper"]).all()
    assert main(["predict", "cal", "test.h5ad", "--coverage", "0.8", "--samples", "3", "--out", "q.h5ad"]) != 0
    assert main([*FIT[:-2], "--calibration", "nonsense", "--out", "bad"]) != 0


def test_predict_coverage_on_an_he_only_slide(project, sections):
    """`predict MODEL --image SLIDE --coverage 0.8`: the slide's spots get the model's conformal intervals."""
    fit = ["fit", "stnet", "train.h5ad", "--genes", "3", "--preset", "fast", "-p", "epochs=1", "--seed", "1",
           "--calibration", "spots", "--out", "net"]
    assert main(fit) == 0
    slide = next((sections / "img1").glob("*.png"))
    args = ["predict", "net", "--image", str(slide), "--microns-per-pixel", "2.0", "--coverage", "0.8", "--out", "s.h5ad"]
    assert main(args) == 0
    pred = ad.read_h5ad(project / "s.h5ad")
    info = pred.uns["stfusion"]["coverage"]
    assert info["nominal"] == 0.8 and info["calibration"] == "spots" and pred.n_obs > 0
    assert (pred.layers["lower"] <= pred.X).all() and (pred.X <= pred.layers["upper"]).all()
    assert (pred.layers["upper"] > pred.layers["lower"]).any()
    assert main([*args[:-2], "--mask", "m.png", "--out", "t.h5ad"]) != 0  # masks take no intervals
