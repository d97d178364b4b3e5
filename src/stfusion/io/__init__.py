"""Readers: Space Ranger outs, legacy ST folders, h5ad, scRNA references -> AnnData."""

from stfusion.io.h5ad import read_h5ad, write_h5ad
from stfusion.io.legacy_st import read_her2st, read_st, read_stutility, read_xfuse_toy
from stfusion.io.reference import (
    read_merfish_pair,
    read_osmfish_pair,
    read_reference,
    read_slideseq_pair,
    read_spatial_cells,
    shared_genes,
)
from stfusion.io.visium import read_visium

__all__ = [
    "read_h5ad",
    "read_her2st",
    "read_merfish_pair",
    "read_osmfish_pair",
    "read_reference",
    "read_slideseq_pair",
    "read_spatial_cells",
    "read_st",
    "read_stutility",
    "read_visium",
    "read_xfuse_toy",
    "shared_genes",
    "write_h5ad",
]
