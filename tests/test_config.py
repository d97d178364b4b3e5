"""TOML run configs for fit/predict, run records, --quiet, and API = CLI from one config."""

from __future__ import annotations

import json
import logging
import tomllib

import anndata as ad
import numpy as np
import pytest

from stfusion.benchmark.config import ConfigError
from stfusion.cli import main
from stfusion.cli.config import fit_from_config, load_run_config, predict_from_config
from stfusion.data.synthetic import make_synthetic_section
from stfusion.io import write_h5ad

# morphology_rf: a seeded histology model (random forest on patch features), fits in about a second
FIT = '''seed = 3

[fit]
method = "morphology_rf"
sections = ["train.h5ad"]
out = "model"
genes = 4
[fit.params]
n_estimators = 20

[predict]
model = "model"
section = "test.h5ad"
out = "pred.h5ad"
'''


@pytest.fixture(scope="module")
def sections(tmp_path_factory):
    root = tmp_path_factory.mktemp("sections")
    for i, name in enumerate(("train", "test")):
        s = make_synthetic_section(root / f"img{i}", grid=(6, 6), n_genes=5, microns_per_pixel=2.0,
                                   spot_shape="round", seed=i)
        write_h5ad(s, root / f"{name}.h5ad")
    return root


@pytest.fixture()
def project(sections, tmp_path):
    """A folder with the two sections (symlinked) and run.toml."""
    for name in ("train.h5ad", "test.h5ad"):
        (tmp_path / name).symlink_to(sections / name)
    (tmp_path / "run.toml").write_text(FIT)
    return tmp_path


def _write(project, text):
    path = project / "bad.toml"
    path.write_text(text)
    return path


def test_cli_fit_predict_from_config_write_run_records(project):
    assert main(["fit", "--config", str(project / "run.toml")]) == 0
    run = project / "model" / "run"
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "ok" and record["seed"] == 3  # top-level seed reached the model
    assert record["command_line"].startswith("stfusion fit morphology_rf ")
    assert {"stfusion", "torch", "anndata", "numpy", "python"} <= set(record["environment"])
    resolved = tomllib.loads((run / "config.toml").read_text())["fit"]
    assert resolved["method"] == "morphology_rf" and resolved["seed"] == 3
    assert resolved["sections"] == [str(project / "train.h5ad")]
    assert "wrote" in (run / "stfusion.log").read_text()
    assert not any(isinstance(h, logging.FileHandler) for h in logging.getLogger("stfusion").handlers)

    assert main(["predict", "-c", str(project / "run.toml")]) == 0
    assert (project / "pred.h5ad").is_file()
    pred_run = json.loads((project / "pred.run" / "run.json").read_text())
    assert pred_run["command"] == "predict" and pred_run["seed"] == 3


def test_flags_override_config(project):
    assert main(["fit", "--config", str(project / "run.toml"), "--genes", "2", "--out", str(project / "m2")]) == 0
    card = json.loads((project / "m2" / "model.json").read_text())
    assert len(card["genes"]) == 2
    assert not (project / "model").exists()


def test_rerunning_the_stored_config_reproduces_the_model(project):
    assert main(["fit", "--config", str(project / "run.toml")]) == 0
    first = json.loads((project / "model" / "model.json").read_text())
    stored = project / "model" / "run" / "config.toml"
    copy = project / "again.toml"
    copy.write_text(stored.read_text().replace(str(project / "model"), str(project / "model_again")))
    assert main(["fit", "--config", str(copy)]) == 0
    again = json.loads((project / "model_again" / "model.json").read_text())
    assert again["genes"] == first["genes"] and again["hyperparams"] == first["hyperparams"]
    a = main(["predict", str(project / "model"), str(project / "test.h5ad"), "-o", str(project / "a.h5ad")])
    b = main(["predict", str(project / "model_again"), str(project / "test.h5ad"), "-o", str(project / "b.h5ad")])
    assert a == b == 0
    np.testing.assert_array_equal(ad.read_h5ad(project / "a.h5ad").X, ad.read_h5ad(project / "b.h5ad").X)


def test_python_api_and_cli_give_identical_numbers_from_one_config(project):
    """The acceptance check: same config and seed, identical predictions from Python and the shell."""
    assert main(["fit", "--config", str(project / "run.toml")]) == 0
    assert main(["predict", "--config", str(project / "run.toml")]) == 0
    cli = ad.read_h5ad(project / "pred.h5ad")
    fit_from_config(project / "run.toml", out=project / "py_model")
    py = predict_from_config(project / "run.toml", model_dir=project / "py_model")
    assert list(py.var_names) == list(cli.var_names) and list(py.obs_names) == list(cli.obs_names)
    np.testing.assert_array_equal(np.asarray(py.X), np.asarray(cli.X))
    assert float(np.std(np.asarray(cli.X))) > 0  # a real prediction, not all constant
    other = fit_from_config(project / "run.toml", out=None, seed=4)
    assert not np.array_equal(other.predict(ad.read_h5ad(project / "test.h5ad")).X, cli.X)  # the seed matters


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (FIT.replace("genes = 4", "genes = 4\nepoch = 3"), ["[fit]", "'epoch'", "did you mean 'epochs'"]),
        (FIT.replace("genes = 4", 'genes = 4\nepochs = "3"'), ["[fit] epochs = '3'", "expected int", "epochs = 3"]),
        (FIT.replace('["train.h5ad"]', '["train.h5ad", "nope.h5ad"]'), ["sections[1] = 'nope.h5ad'", "no such file",
                                                                         "relative to the config file"]),
        (FIT.replace('sections = ["train.h5ad"]', 'sections = "train.h5ad"'), ["sections", "expected a list"]),
        (FIT.replace("seed = 3", "sed = 3"), ["unknown keys", "'sed'", "did you mean 'seed'"]),
        ('[[datasets]]\nname = "x"\n', ["benchmark config", "stfusion benchmark"]),
        ("[predict]\nsection = 'test.h5ad'\n", ["has no [fit] table"]),
        ("[fit\n", ["not valid TOML"]),
    ],
)
def test_bad_configs_name_the_key_and_the_fix(project, capsys, text, words):
    path = _write(project, text)
    with pytest.raises(ConfigError) as err:
        load_run_config(path, "fit")
    for word in words:
        assert word in str(err.value)
    assert main(["fit", "--config", str(path)]) == 1  # the CLI: one line, exit 1, nothing written
    assert "stfusion: error:" in capsys.readouterr().err
    assert not (project / "model").exists()


def test_failed_fit_leaves_its_record_and_no_model(project):
    path = _write(project, FIT.replace("n_estimators = 20", "n_estimators = -1"))
    assert main(["fit", "--config", str(path)]) == 1
    assert not (project / "model").exists()
    record = json.loads((project / "model.failed-run" / "run.json").read_text())
    assert record["status"].startswith("failed")


def test_quiet_prints_nothing(project, capfd):
    capfd.readouterr()
    assert main(["--quiet", "fit", "--config", str(project / "run.toml")]) == 0
    assert main(["--quiet", "predict", "--config", str(project / "run.toml")]) == 0
    assert main(["--quiet", "plot", "map", str(project / "pred.h5ad"), "-g", "marker_0", "-o",
                 str(project / "m.png")]) == 0  # fmt: skip
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert "wrote" in (project / "model" / "run" / "stfusion.log").read_text()  # the log file still has INFO
    assert main(["info", str(project / "test.h5ad")]) == 0  # leaves the logger at INFO for other tests


def test_quiet_benchmark_prints_nothing(project, capfd):
    (project / "bench.toml").write_text('''name = "tiny"
[[datasets]]
name = "synthetic"
reader = "h5ad"
path = "."
sections = ["train.h5ad", "test.h5ad"]
genes = 3
protocol = "leave_one_section_out"

[[methods]]
name = "constant"
''')
    capfd.readouterr()
    assert main(["--quiet", "benchmark", str(project / "bench.toml"), "--out", str(project / "bench")]) == 0
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert (project / "bench" / "summary.md").is_file()
    assert main(["benchmark", str(project / "bench.toml"), "--out", str(project / "bench")]) == 0  # resumed
    assert "constant" in capfd.readouterr().out  # without --quiet the summary is printed
