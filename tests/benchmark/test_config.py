"""Benchmark configuration: validation with clear errors."""

import pytest

from stfusion.benchmark import ConfigError, load_config

GOOD = """
seed = 3
data_root = "data"
[[datasets]]
name = "toy"
reader = "xfuse_toy"
path = "xfuse_mob_toy"
protocol = "spot_holdout"
protocol_params = { fraction = 0.5 }
[[methods]]
name = "constant"
"""


def _write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_good_config_resolves_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("STFUSION_SHARED_DATA", raising=False)
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.seed == 3 and cfg.methods[0].name == "constant"
    assert cfg.resolve("x") == (tmp_path / "data" / "x").resolve()


@pytest.mark.parametrize(
    "edit, message",
    [
        (('name = "constant"', 'name = "nope"'), "unknown method 'nope'"),
        (('reader = "xfuse_toy"', 'reader = "zarr"'), "unknown reader"),
        (('protocol = "spot_holdout"', 'protocol = "magic"'), "unknown protocol"),
        (("seed = 3", 'seed = 3\n[[datasets]]\nname = "x"'), "lacks 'reader'"),
        (('[[methods]]\nname = "constant"', '[[methods]]\nname = "constant"\ncolour = 1'), "unknown keys"),
        (('[[methods]]\nname = "constant"', '[[methods]]\nname = "constant"\ndatasets = ["other"]'), "unknown datasets"),
    ],
)
def test_bad_config_errors(tmp_path, edit, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, GOOD.replace(*edit)))


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "datasets = [["))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")
