"""XFuse's per-section expression field: geometry, prior, persistence, sections not trained on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stfusion import _constants as K
from stfusion.data.synthetic import make_synthetic_section
from stfusion.errors import StfusionError
from stfusion.models.xfuse import XFuse
from stfusion.models.xfuse.field import ExpressionField, Placement, read_field

TINY = {"resolution_um": 12.0, "patch_px": 64, "batch_size": 1, "depth": 3, "base_width": 4, "steps": 4,
        "metagene_interval": 0, "samples": 2, "progress": False}
FIELD = torch.arange(8 * 12, dtype=torch.float32).reshape(1, 1, 8, 12)  # cells of 4 px, value = flat index


def test_axis_aligned_frames_read_the_cells_they_cover() -> None:
    place = Placement.frames(0, [(8, 12)], side=16)  # rows 8-24, cols 12-28: cells 2-5 x 3-6
    out = read_field(FIELD, 4.0, 4.0, (4, 4), place.centre[0], place.mat[0])
    np.testing.assert_allclose(out[0, 0].numpy(), FIELD[0, 0, 2:6, 3:7].numpy(), atol=1e-5)


def test_rotated_patches_read_the_rotated_field() -> None:
    quarter = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # patch x -> section y
    out = read_field(FIELD, 4.0, 4.0, (4, 4), torch.tensor([20.0, 16.0]), quarter)[0, 0]
    expected = torch.rot90(FIELD[0, 0, 2:6, 3:7], k=1)  # patch row a, col b <- section row 2 + b, col 6 - a
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-4)
    far = read_field(FIELD, 4.0, 4.0, (4, 4), torch.tensor([500.0, 500.0]), torch.eye(2))
    assert far.abs().max() == 0  # zero outside the section


def test_pixels_blend_neighbouring_cells_and_the_prior_penalises_roughness() -> None:
    field = ExpressionField(["s"], [(8, 8)], n_metagenes=1, cell_px=4.0, smoothness=2.0)
    with torch.no_grad():
        field.maps[0][:, :, 1] = 1.0  # right column of cells
    px = field.read(Placement.frames(0, [(0, 0)], side=8), (8, 8))[0, 0]
    row = px[4].detach().numpy()  # pixel centres x = 0.5 .. 7.5; cell centres x = 2 and 6
    np.testing.assert_allclose(row[[0, 4, 6]], [0.0, 0.625, 0.875], atol=1e-5)  # bilinear; zero beyond the edge
    flat = -0.5 * 4  # 2 channels x 2 cells of value 1, prior SD 1
    assert float(field.log_prior()) == pytest.approx(flat - 0.5 * 2.0 * 4)  # 2 channels x 2 borders of difference 1


def test_fit_save_load_and_other_sections(tmp_path) -> None:
    section = make_synthetic_section(tmp_path / "syn", seed=0)
    with pytest.raises(StfusionError, match="expression_field_um"):
        XFuse(expression_field_um=-1, **TINY)
    model = XFuse(expression_field_um=100.0, seed=0, **TINY).fit([section])
    field = model.net_.field
    assert field is not None and model.card()["field"]["cell_px"] == pytest.approx(100.0 / 12.0)
    assert float(field.maps[0].detach().abs().max()) > 0  # trained
    model.save(tmp_path / "m")
    back = XFuse.load(tmp_path / "m")
    np.testing.assert_array_equal(model.predict(section).X, back.predict(section).X)
    plain = XFuse.load(tmp_path / "m")
    plain.net_.field = None  # one metagene here: the field moves the scale, so compare expected counts
    with_field, without = back.predict(section).layers["mean_counts"], plain.predict(section).layers["mean_counts"]
    assert not np.array_equal(with_field, without)
    # a section the model was not trained on gets no field
    other = section.copy()
    other.uns[K.STFUSION] = {**dict(other.uns[K.STFUSION]), K.SECTION_ID: "another"}
    np.testing.assert_array_equal(back.predict(other).layers["mean_counts"], without)
