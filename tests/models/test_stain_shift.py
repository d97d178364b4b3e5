"""Out-of-distribution stains at predict time: ST-Net, HisToGene and the image baselines record the
training sections' stain statistics at fit, and a section re-stained as by another lab gets a
warning (what differs, what to do) and the measure in uns["stfusion"]["stain_shift"]; the training
section itself does not."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from stfusion.baselines.image_regression import ColourTextureRidgeBaseline
from stfusion.data.section import fullres_path, set_fullres_image
from stfusion.data.shift import MIN_THRESHOLD
from stfusion.models.histogene import HisToGene
from stfusion.models.stnet import STNet
from tests.conftest import need

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_STNET = {"preset": "fast", "epochs": 1, "width": 8, "tta": False, "seed": 0}
TINY_HISTOGENE = {"dim": 32, "depth": 1, "heads": 2, "patch_px": 16, "epochs": 2, "dropout": 0.0, "seed": 0}
MODELS = {
    "stnet": lambda: STNet(**TINY_STNET),
    "histogene": lambda: HisToGene("fast", **TINY_HISTOGENE),
    "colour_texture_ridge": lambda: ColourTextureRidgeBaseline(),
}


@pytest.fixture(scope="module")
def sections(shared_data, tmp_path_factory):
    """The toy MOB section and the same tissue re-stained: 1.5x haematoxylin, 0.6x eosin, 10 % darker."""
    from skimage.color import hed2rgb, rgb2hed

    from stfusion.io import read_xfuse_toy

    section = read_xfuse_toy(need(shared_data, "xfuse_mob_toy"))
    rgb = np.asarray(Image.open(fullres_path(section)).convert("RGB"))
    hed = rgb2hed(rgb) * np.array([1.5, 0.6, 1.0])
    path = tmp_path_factory.mktemp("restained") / "restained.png"
    Image.fromarray(np.clip(np.rint(hed2rgb(hed) * 255 * 0.9), 0, 255).astype(np.uint8)).save(path)
    restained = section.copy()
    set_fullres_image(restained, path)
    return section, restained


def _warnings(caplog) -> list[str]:
    found = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return [m for m in found if "far outside the training" in m]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_restained_section_warns_and_records_the_measure(name, sections, caplog, tmp_path):
    from stfusion.models.api import load_model, save_model

    section, restained = sections
    model = MODELS[name]().fit([section], genes=list(section.var_names))
    with caplog.at_level(logging.WARNING, logger="stfusion"):
        same = model.predict(section)
    assert not _warnings(caplog)
    rec = same.uns["stfusion"]["stain_shift"]
    assert not rec["flagged"] and rec["score"] < rec["threshold"] and rec["threshold"] == MIN_THRESHOLD  # one section
    caplog.clear()
    loaded = load_model(save_model(model, tmp_path / name))  # the reference travels in the card
    with caplog.at_level(logging.WARNING, logger="stfusion"):
        shifted = loaded.predict(restained)
    rec = shifted.uns["stfusion"]["stain_shift"]
    assert rec["flagged"] and rec["score"] > 2.0, rec
    h, e, _ = rec["change_in_training_sd"]
    assert h > 1.0 and rec["statistics"][:2] == ["haematoxylin", "eosin"]  # more haematoxylin, as made
    (message,) = _warnings(caplog)
    assert "haematoxylin +" in message and "stain_norm='macenko'" in message and "score" in message
    assert "Mahalanobis" in rec["measure"]


def test_after_normalisation_the_advice_changes(sections, caplog):
    section, restained = sections
    from stfusion.data.shift import check_shift, fit_stain_reference, stain_features
    from stfusion.data.patches import read_patches
    from stfusion.data.section import spot_coords

    ref = fit_stain_reference([read_patches(section, spot_coords(section), 100, 32)], ["toy"])
    with caplog.at_level(logging.WARNING, logger="stfusion"):
        check_shift(ref, stain_features(read_patches(restained, spot_coords(restained), 100, 32))[0],
                    who="M", section="r", stain_norm="macenko")  # fmt: skip
    (message,) = _warnings(caplog)
    assert "even after macenko normalisation" in message


def test_stnet_checks_the_stain_of_an_he_only_slide(sections, caplog):
    from stfusion.data.section import microns_per_pixel

    section, restained = sections
    model = STNet(**TINY_STNET).fit([section], genes=list(section.var_names))
    mpp = microns_per_pixel(section)
    with caplog.at_level(logging.WARNING, logger="stfusion"):
        same = model.predict_image(fullres_path(section), microns_per_pixel=mpp)
    assert not _warnings(caplog) and not same.uns["stfusion"]["stain_shift"]["flagged"]
    with caplog.at_level(logging.WARNING, logger="stfusion"):
        other = model.predict_image(fullres_path(restained), microns_per_pixel=mpp)
    assert other.uns["stfusion"]["stain_shift"]["flagged"] and _warnings(caplog)
