"""The command line: reading, info, show, and one-line errors with nothing half-written."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stfusion.cli import main
from tests.conftest import need


def _tiny_st(tmp_path, *, negative=False, fault=None):
    """A 5 x 5 legacy ST section on disk; ``fault`` breaks it in one way."""
    rng = np.random.default_rng(0)
    xs, ys = np.meshgrid(np.arange(1, 6), np.arange(1, 6))
    spots = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel()})
    spots["new_x"], spots["new_y"] = spots.x, spots.y
    spots["pixel_x"], spots["pixel_y"] = spots.x * 40.0, spots.y * 40.0
    spots["selected"] = 1
    counts = pd.DataFrame(
        rng.poisson(5, (25, 4)).astype(float), index=[f"{x}x{y}" for x, y in zip(spots.x, spots.y)], columns=list("ABCD")
    )
    if negative or fault == "negative":
        counts.iloc[0, 0] = -3
    if fault == "nan":
        counts.iloc[0, 0] = np.nan
    if fault == "fraction":
        counts.iloc[0, 0] = 0.5
    if fault == "duplicate":
        counts.columns = ["A", "B", "A", "D"]
    if fault == "nojoin":
        counts.index = [f"{i}.5x{i}.5" for i in range(25)]
    if fault == "outside":
        spots["pixel_x"] *= 10
    if fault == "empty":
        spots["selected"] = 0
    img = np.full((260, 260, 3), 240, np.uint8)
    img[20:230, 20:230] = 120
    Image.fromarray(img).save(tmp_path / "he.png")
    if fault == "corrupt":
        (tmp_path / "he.png").write_bytes(b"not an image at all" * 10)
    if fault == "missing":
        (tmp_path / "he.png").unlink()
    spots.to_csv(tmp_path / "spots.tsv", sep="\t", index=False)
    counts.to_csv(tmp_path / "counts.tsv", sep="\t")
    return ["--counts", str(tmp_path / "counts.tsv"), "--spots", str(tmp_path / "spots.tsv"), "--image", str(tmp_path / "he.png")]


def test_read_info_show_roundtrip(tmp_path, capsys):
    out = tmp_path / "s.h5ad"
    assert main(["read", "st", *_tiny_st(tmp_path), "--spot-spacing-um", "200", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["spots"] == 25 and info["genes"] == 4
    assert info["microns_per_pixel"] == pytest.approx(5.0)  # 200 µm over a 40 px grid
    assert info["spot_diameter_px"] == pytest.approx(20.0)  # 100 µm spots
    assert info["image_width_px"] == 260
    png = tmp_path / "overlay.png"
    assert main(["show", str(out), "--out", str(png), "--gene", "B"]) == 0
    assert Image.open(png).size[0] > 100


@pytest.mark.parametrize(
    "fault, words",
    [
        ("negative", "negative"),
        ("nan", "NaN"),
        ("fraction", "non-integer"),
        ("duplicate", "more than once"),
        ("nojoin", "matched"),
        ("outside", "outside"),
        ("empty", "no spots"),
        ("corrupt", "corrupt"),
        ("missing", "not found"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_output(tmp_path, capsys, fault, words):
    out = tmp_path / "bad.h5ad"
    code = main(["read", "st", *_tiny_st(tmp_path, fault=fault), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]


def test_no_scale_is_a_clear_error(tmp_path, capsys):
    args = _tiny_st(tmp_path)
    spots = pd.read_csv(tmp_path / "spots.tsv", sep="\t")
    spots.iloc[1:, spots.columns.get_loc("selected")] = 0  # one spot: no grid to fit
    spots.to_csv(tmp_path / "spots.tsv", sep="\t", index=False)
    assert main(["read", "st", *args, "--out", str(tmp_path / "one.h5ad")]) == 1
    assert "--microns-per-pixel" in capsys.readouterr().err
    assert main(["read", "st", *args, "--microns-per-pixel", "0.5", "--out", str(tmp_path / "one.h5ad")]) == 0


def test_debug_shows_traceback(tmp_path):
    from stfusion.errors import CountsError

    with pytest.raises(CountsError):
        main(["--debug", "read", "st", *_tiny_st(tmp_path, negative=True), "--out", str(tmp_path / "x.h5ad")])


def test_show_unknown_gene_fails_cleanly(tmp_path, capsys):
    out = tmp_path / "s.h5ad"
    assert main(["read", "st", *_tiny_st(tmp_path), "--out", str(out)]) == 0
    png = tmp_path / "o.png"
    assert main(["show", str(out), "--out", str(png), "--gene", "NOPE"]) == 1
    assert "NOPE" in capsys.readouterr().err
    assert not png.exists()


def test_missing_file_message(tmp_path, capsys):
    assert main(["info", str(tmp_path / "absent.h5ad")]) == 1
    assert "absent.h5ad" in capsys.readouterr().err


def test_read_her2st_cli(shared_data, tmp_path, capsys):
    root = need(shared_data, "her2st")
    out = tmp_path / "c2.h5ad"
    assert main(["read", "her2st", str(root), "--section", "C2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["platform"] == "st" and info["patient"] == "C"
    assert 0.68 <= info["microns_per_pixel"] <= 0.70


def test_demo_writes_plot(tmp_path):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    assert (tmp_path / "demo" / "overlay.png").stat().st_size > 10_000


def test_methods_lists_every_registered_name(capsys, monkeypatch):
    from stfusion.models.registry import available

    monkeypatch.setenv("COLUMNS", "200")
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in available())


def test_slide_options_a_model_cannot_take_are_refused_not_ignored(tmp_path):
    import typer

    from stfusion.cli.xfuse import predict_slide

    class TilesOnly:  # like ST-Net: predict_image(image, microns_per_pixel) and nothing else
        def predict_image(self, image_path, microns_per_pixel):
            raise AssertionError("should not be called")

    with pytest.raises(typer.BadParameter, match="without --grid-um, --samples"):
        predict_slide(TilesOnly(), tmp_path / "he.png", tmp_path / "p.h5ad", 1.0, grid_um=10.0, masks=[], genes=None, samples=3)
    with pytest.raises(typer.BadParameter, match="--microns-per-pixel"):
        predict_slide(TilesOnly(), tmp_path / "he.png", tmp_path / "p.h5ad", None, grid_um=None, masks=[], genes=None, samples=None)


@pytest.mark.parametrize("extra", [["--images", "slides/", "--grid-um", "10"], ["--super-resolution", "4", "--grid-um", "10"]])
def test_predict_option_combinations_that_would_be_ignored_are_refused(tmp_path, extra, capsys):
    assert main(["predict", str(tmp_path / "model"), *extra, "--out", str(tmp_path / "p.h5ad")]) != 0
    err = " ".join(capsys.readouterr().err.split())
    assert ("cannot be combined" in err) if "--super-resolution" in extra else ("with the model's defaults" in err)
    assert not (tmp_path / "p.h5ad").exists()


def test_covariates_as_one_list_or_once_per_section():
    import typer

    from stfusion.cli.options import parse_covariates

    expected = [{"batch": "a", "slide": "1"}, {"batch": "b", "slide": "1"}]
    assert parse_covariates(["batch=a,b", "slide=1,1"], 2) == expected
    assert parse_covariates(["batch=a", "slide=1", "batch=b", "slide=1"], 2) == expected
    for bad in (["batch=a"], ["batch=a,b", "batch=c"], ["batch"]):
        with pytest.raises(typer.BadParameter, match="per section"):
            parse_covariates(bad, 2)


def test_main_leaves_no_logging_set_up_behind_it():
    logger = logging.getLogger("stfusion")
    before = list(logger.handlers), logger.level, logger.propagate
    assert main(["methods"]) == 0
    assert (list(logger.handlers), logger.level, logger.propagate) == before
