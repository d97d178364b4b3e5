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
