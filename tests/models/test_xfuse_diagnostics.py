"""XFuse does not fail silently: a too-short fit and constant predictions warn with the cause and
the fix, and the model card records the number of metagenes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from stfusion.data.synthetic import make_synthetic_section
from stfusion.models.xfuse import XFuse
from stfusion.models.xfuse.predict import constant_prediction_warning
from stfusion.models.xfuse.training import one_metagene_warning

SHORT = {"resolution_um": 12.0, "patch_px": 64, "batch_size": 1, "depth": 3, "base_width": 4, "samples": 3,
         "progress": False}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_one_metagene_warning_names_the_cause_and_the_fix() -> None:
    assert one_metagene_warning(3, 100, 50) is None
    never = one_metagene_warning(1, 30, 50)
    assert "never split" in never and "raise steps above 63" in never and "below 24" in never
    assert "turns drop-and-split off" in one_metagene_warning(1, 30, 0)
    assert "dropped again" in one_metagene_warning(1, 1000, 50)


def test_constant_predictions_warn() -> None:
    flat = np.tile(np.array([[5.0, 0.2, 30.0]]), (40, 1))
    assert "constant over the 40 spots" in constant_prediction_warning(flat, 1)
    varied = flat.copy()
    varied[3, 1] = 0.3
    assert constant_prediction_warning(varied, 1) is None
    assert constant_prediction_warning(flat[:1], 1) is None


def test_too_short_fit_warns_and_the_card_records_the_metagenes(tmp_path, caplog) -> None:
    section = make_synthetic_section(tmp_path, seed=0)
    with caplog.at_level(logging.WARNING, logger="stfusion"):
        model = XFuse(steps=10, metagene_interval=50, seed=0, **SHORT).fit([section])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ended with 1 metagene" in w and "raise steps above 63" in w for w in warnings), warnings
    assert model.card()["metagenes"] == 1


def test_synthetic_summary_has_a_legend_and_a_labelled_sd_colour_bar(tmp_path, monkeypatch) -> None:
    import dataclasses
    import types

    from matplotlib.figure import Figure

    from stfusion.models.xfuse.experiments import SyntheticResult, save_figures

    saved = {}
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: (saved.__setitem__(str(path), fig), original(fig, path, **kw))[1])
    rng = np.random.default_rng(0)
    values = {"label_map": rng.integers(0, 2, (8, 9)), "mean": rng.random((2, 8, 9)), "sd": rng.random((2, 8, 9)),
              "share_sd": rng.random((8, 9)), "auc": {"subtype_0": 0.9, "subtype_1": 0.8}}
    result = SyntheticResult(**{f.name: values.get(f.name) for f in dataclasses.fields(SyntheticResult)})
    section = types.SimpleNamespace(uns={"synthetic": {"subtype_colors": [[200, 30, 30], [30, 30, 200]], "reads_per_pixel": 2.0}})
    paths = save_figures(result, section, tmp_path)
    fig = saved[str(paths["summary"])]
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert labels == ["subtype 0 (marker_0)", "subtype 1 (marker_1)"]
    colour_bar = [ax for ax in fig.axes if ax.get_ylabel()]
    assert [ax.get_ylabel() for ax in colour_bar] == ["SD of the share (0-1)"]


def test_a_nearly_flat_preview_has_plain_colour_bar_ticks(tmp_path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    from stfusion.models.xfuse.outputs import save_preview

    saved = {}
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: (saved.__setitem__("fig", fig), original(fig, path, **kw))[1])
    flat = 6.688375 + 1e-7 * np.random.default_rng(0).random((6, 7))
    save_preview(tmp_path / "p.png", flat, flat * 0 + 0.01, "Actb", 10.0)
    fig = saved["fig"]
    fig.canvas.draw()
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 2
    for bar in bars:
        assert not bar.yaxis.get_offset_text().get_text()  # no "1e-7+6.688375" above the bar
    assert fig.axes[0].images[0].get_clim()[1] - fig.axes[0].images[0].get_clim()[0] > 1e-3  # noise not stretched
