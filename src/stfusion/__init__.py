"""stfusion: predict spatial gene expression from histology and single-cell references."""

__version__ = "0.1.0"
