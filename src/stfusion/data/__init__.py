"""Section data model, image access, preprocessing, splits and synthetic data."""

from stfusion.data.section import (
    assemble_section,
    fullres_path,
    fullres_shape,
    library_id,
    microns_per_pixel,
    section_from_image,
    section_meta,
    set_fullres_image,
    spatial_info,
    spot_coords,
    spot_diameter_px,
    validate_section,
)

__all__ = [
    "assemble_section",
    "fullres_path",
    "fullres_shape",
    "library_id",
    "microns_per_pixel",
    "section_from_image",
    "section_meta",
    "set_fullres_image",
    "spatial_info",
    "spot_coords",
    "spot_diameter_px",
    "validate_section",
]
