"""SpatialData export: spots, images and table land in one full-resolution pixel frame."""

import numpy as np
import pytest

from stfusion import _constants as K
from stfusion.data.section import spatial_info, spot_diameter_px
from stfusion.data.synthetic import make_synthetic_section

spatialdata = pytest.importorskip("spatialdata", reason="optional package spatialdata is not installed")


@pytest.fixture(scope="module")
def section(tmp_path_factory):
    sec = make_synthetic_section(tmp_path_factory.mktemp("syn"), size_px=128, n_shapes=6, grid=(4, 4), spot_shape="round", seed=1)
    info = spatial_info(sec)
    info[K.IMAGES][K.HIRES] = np.asarray(info[K.IMAGES][K.HIRES])[::2, ::2]  # a half-size hires image
    info[K.SCALEFACTORS][K.HIRES_SCALEF] = 0.5
    return sec


def test_roundtrip_zarr(section, tmp_path):
    from stfusion.io.spatialdata import write_spatialdata

    path = write_spatialdata(section, tmp_path / "s.zarr")
    back = spatialdata.read_zarr(path)
    table = back.tables["table"]
    shapes = next(iter(back.shapes.values()))
    assert table.n_obs == section.n_obs and list(table.var_names) == list(section.var_names)
    np.testing.assert_allclose(np.c_[shapes.geometry.x, shapes.geometry.y], section.obsm[K.SPATIAL])
    np.testing.assert_allclose(shapes["radius"], spot_diameter_px(section) / 2)
    with pytest.raises(Exception, match="exists"):
        write_spatialdata(section, path)


def test_image_maps_to_fullres_pixels(section):
    from spatialdata.transformations import get_transformation

    from stfusion.io.spatialdata import to_spatialdata

    sdata = to_spatialdata(section)
    info = spatial_info(section)
    assert list(sdata.images) == [f"{next(iter(section.uns[K.SPATIAL]))}_{K.HIRES}"]
    for key, img in sdata.images.items():
        res = key.rsplit("_", 1)[1]
        scalef = info[K.SCALEFACTORS][f"tissue_{res}_scalef"]
        matrix = get_transformation(img, "global").to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
        np.testing.assert_allclose(np.diag(matrix)[:2], 1 / scalef)
