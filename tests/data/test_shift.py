"""The shift statistic of stfusion.data.shift: stain statistics of patches, a threshold calibrated on
the training sections (leave-one-section-out), and what a section far outside them gets."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from stfusion.data.shift import MIN_THRESHOLD, ShiftReference, check_shift, stain_features


def test_stain_features_skip_background_and_see_more_haematoxylin():
    white = np.full((1, 16, 16, 3), 250, np.uint8)
    pink = np.tile(np.array([230, 140, 190], np.uint8), (1, 16, 16, 1))
    purple = np.tile(np.array([120, 70, 170], np.uint8), (1, 16, 16, 1))
    feats, keep = stain_features(np.concatenate([white, pink, purple]))
    assert keep.tolist() == [False, True, True] and np.isnan(feats[0]).all()
    assert feats[2, 0] > feats[1, 0]  # purple: more haematoxylin than pink
    with pytest.raises(ValueError, match="uint8"):
        stain_features(pink.astype(float))


def test_threshold_is_calibrated_on_the_training_sections():
    rng = np.random.default_rng(0)
    # three training sections whose centres differ by 0.3 SD per statistic, as serial sections might
    train = [rng.normal(off, 1.0, (300, 3)) for off in (0.0, 0.3, -0.3)]
    ref = ShiftReference.fit(train, ["a", "b", "c"], kind="features")
    loo = ref.section_scores
    assert set(loo) == {"a", "b", "c"} and all(0.05 < v < 1.2 for v in loo.values()), loo
    assert ref.threshold == pytest.approx(max(2 * max(loo.values()), MIN_THRESHOLD))
    same = ref.score(rng.normal(0.1, 1.0, (300, 3)))
    far = ref.score(rng.normal(3.0, 1.0, (300, 3)))
    assert not same["flagged"] and far["flagged"] and far["score"] > 4
    assert far["change_in_training_sd"][0] > 2
    # one training section: nothing to calibrate against, the threshold is one training SD
    one = ShiftReference.fit(train[:1], ["a"])
    assert one.section_scores == {} and one.threshold == MIN_THRESHOLD
    # the reference is JSON and comes back the same
    again = ShiftReference.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert again.score(rng.normal(3.0, 1.0, (300, 3)))["flagged"]


def test_too_little_tissue_gives_no_statistic(caplog):
    assert ShiftReference.fit([np.full((2, 3), np.nan)], ["a"]) is None
    assert check_shift(None, np.zeros((10, 3)), who="M", section="s") is None
    ref = ShiftReference.fit([np.random.default_rng(0).normal(size=(50, 3))], ["a"]).to_dict()
    assert check_shift(ref, np.full((10, 3), np.nan), who="M", section="s") is None


def test_warning_names_what_differs_and_what_to_do(caplog):
    rng = np.random.default_rng(1)
    ref = ShiftReference.fit([rng.normal(0, 1, (200, 3))], ["a"], kind="stain",
                             names=["haematoxylin", "eosin", "residual"]).to_dict()  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="stfusion"):
        rec = check_shift(ref, rng.normal([2.5, -2.0, 0.0], 1, (200, 3)), who="ST-Net", section="B4")
    assert rec["flagged"]
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "ST-Net" in msg and "B4" in msg and "haematoxylin +2." in msg and "eosin -2." in msg
    assert "stain_norm='macenko'" in msg
