"""Scale: whole slides of any size (streamed), many slides in parallel (Dask), chunked tables.

- :func:`predict_slide`: one H&E-only slide -> ``.h5ad`` of spot predictions, streaming tiles
  and result rows (ST-Net, HisToGene).
- :func:`predict_slides`: many slides through a Dask cluster, resumable.
- Training on several processes/machines: :func:`stfusion.train.distributed.trainer_settings`.
"""

from stfusion.scale.slide import SlideResult, predict_slide, predict_slide_adata, slide_microns_per_pixel, spot_lattice

__all__ = ["SlideResult", "predict_slide", "predict_slide_adata", "predict_slides", "slide_microns_per_pixel", "spot_lattice"]


def __getattr__(name: str):
    if name == "predict_slides":  # imports dask only when used
        from stfusion.scale.batch import predict_slides

        return predict_slides
    raise AttributeError(name)
