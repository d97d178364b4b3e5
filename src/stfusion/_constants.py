"""Every AnnData key stfusion reads or writes, named once.

Sections follow the scverse Visium conventions (scanpy ``read_visium``/squidpy):
raw counts in ``X``, spot centres in full-resolution pixels in ``obsm["spatial"]``,
images and scale factors under ``uns["spatial"][library_id]``.
"""

# obsm / uns
SPATIAL = "spatial"  # obsm key (x, y full-res pixels) and uns key (per-library dict)

# uns["spatial"][library_id][...]
IMAGES = "images"
SCALEFACTORS = "scalefactors"
METADATA = "metadata"
MICRONS_PER_PIXEL = "microns_per_pixel"  # of the full-resolution image
FULLRES_SHAPE = "fullres_shape"  # (height, width) of the full-resolution image, pixels
SCALE_SOURCE = "scale_source"  # how microns_per_pixel was found: visium | grid | override

# image keys inside uns["spatial"][library_id]["images"]
HIRES = "hires"
LOWRES = "lowres"

# scale factor keys inside uns["spatial"][library_id]["scalefactors"]
SPOT_DIAMETER_FULLRES = "spot_diameter_fullres"
HIRES_SCALEF = "tissue_hires_scalef"
LOWRES_SCALEF = "tissue_lowres_scalef"
FIDUCIAL_DIAMETER_FULLRES = "fiducial_diameter_fullres"

# metadata keys inside uns["spatial"][library_id]["metadata"]
SOURCE_IMAGE_PATH = "source_image_path"  # absolute path of the full-resolution image (scanpy's key)

# obs columns
ARRAY_ROW = "array_row"
ARRAY_COL = "array_col"
IN_TISSUE = "in_tissue"
CELL_TYPE = "cell_type"
REGION_LABEL = "region_label"  # pathologist annotation, when the source has one
CLUSTER_LABEL = "cluster_label"  # expression-cluster annotation, when the source has one

# var columns
GENE_IDS = "gene_ids"
GENE_SYMBOL = "gene_symbol"
FEATURE_TYPES = "feature_types"

# uns["stfusion"]: section-level provenance
STFUSION = "stfusion"
SECTION_ID = "section_id"
PATIENT = "patient"
PLATFORM = "platform"  # visium | st | imaging | beads | scrna
SOURCE = "source"

# layers written by preprocessing / models
LAYER_COUNTS = "counts"
LAYER_PRED_SD = "sd"
LAYER_LOWER = "lower"  # layer: lower end of a prediction interval (same space as X)
LAYER_UPPER = "upper"  # layer: upper end of a prediction interval (same space as X)
COVERAGE = "coverage"  # uns["stfusion"]: dict of an interval's nominal coverage, calibration kind, source

# uns["stfusion"] of a super-resolved grid prediction (e.g. HisToGene's predict_super_resolution)
SUPERRES = "superres"  # dict: factor, subpatch_px, subpatch_um, ...
SUPERRES_FACTOR = "factor"  # sub-patches per spot area (4, 9, 25)
SUPERRES_SUBPATCH_PX = "subpatch_px"  # side of one grid cell, full-resolution pixels

# physical constants of the platforms (µm)
VISIUM_SPOT_DIAMETER_UM = 55.0
VISIUM_SPOT_SPACING_UM = 100.0
ST_SPOT_DIAMETER_UM = 100.0
ST_SPOT_SPACING_UM = 200.0  # classic 1k legacy ST array, centre to centre

# defaults
HIRES_MAX_SIDE_PX = 2000  # longest side of the downscaled preview stored in uns

# io (visium / h5ad readers)
OBS_LIBRARY_ID = "library_id"  # obs column anndata.concat(label=...) / scanpy write for multi-library objects

# io (legacy ST readers)
TISSUE_MASK_PATH = "tissue_mask_path"  # uns["spatial"][lib]["metadata"]: absolute path of a tissue mask image, when the source has one

# io (imputation references and imaging/bead spatial data)
COORDINATE_UNITS = "coordinate_units"  # uns["stfusion"]: units of obsm["spatial"] for non-histology data: um | pixels | unknown

# synthetic data (stfusion.data.synthetic)
SYNTHETIC = "synthetic"  # uns key: per-pixel ground truth of a synthetic section
AREA_BBOX = "area_bbox"  # obsm key: (x0, y0, x1, y1) half-open pixel box of each measurement area
LAYER_EXPECTED = "expected"  # layer: expected counts (Poisson means) of each area / cell

# measurement areas and probabilistic predictions (XFuse, stfusion.models.xfuse)
AREA_CENTRES = "area_centres"  # obsm key: (n_obs, 2k) x, y of k discs (spot diameter) whose union is the area; NaN padded
LAYER_MEAN_COUNTS = "mean_counts"  # layer: posterior mean of the expected counts (nu) of each area
LAYER_SD_COUNTS = "sd_counts"  # layer: posterior SD of the expected counts of each area
GRID_UM = "grid_um"  # uns["stfusion"] of a grid prediction: side of one grid cell, µm
GRID_SHAPE = "grid_shape"  # uns["stfusion"] of a grid prediction: (rows, columns) of the full grid
GRID_ROW = "grid_row"  # obs column of a grid prediction: row of the cell in the grid
GRID_COL = "grid_col"  # obs column of a grid prediction: column of the cell in the grid
