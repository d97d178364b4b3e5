"""XFuse: deep generative fusion of histology and spot counts (super-resolution with uncertainty)."""

from stfusion.models.xfuse.model import PRESETS, XFuse
from stfusion.models.xfuse.outputs import write_image_stack

__all__ = ["PRESETS", "XFuse", "write_image_stack"]
