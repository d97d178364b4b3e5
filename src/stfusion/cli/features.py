"""``stfusion features``: patch embeddings of sections from a frozen encoder, cached in the sections.

Registered by :mod:`stfusion.cli`; torch, anndata and the encoders are imported only when the
command runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

log = logging.getLogger("stfusion")


def features_cmd(
    sections: Annotated[list[Path], typer.Argument(help="Sections (.h5ad from `stfusion read`).")],
    encoder: Annotated[str, typer.Option(help="Registered encoder: resnet50_trunc, uni, h_optimus_0, virchow2, phikon_v2.")] = "resnet50_trunc",
    weights: Annotated[
        Optional[str], typer.Option(help="Encoder weights: a local .safetensors/.pth state dict, or 'hub' (default: random init).")
    ] = None,
    encoder_kwargs: Annotated[
        Optional[str], typer.Option("--encoder-kwargs", help='Configuration overrides as JSON, e.g. \'{"depth": 2}\'.')
    ] = None,
    out_dir: Annotated[
        Optional[Path], typer.Option("--out-dir", help="Write each section with its embeddings here (default: overwrite the input).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Patches per forward pass.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of a random initialisation.")] = 0,
    threads: Annotated[Optional[int], typer.Option(help="Torch CPU threads (default: torch's).")] = None,
) -> None:
    """Embed each spot's patch with a frozen encoder (its own field and preprocessing: 224 px at 0.5 µm/px
    = 112 µm) and store the embeddings in obsm["X_<encoder>"], with the encoder, weights and preprocessing
    in uns["stfusion_features"]. `stfusion fit encoder_ridge` reuses them when the encoder matches."""
    import time

    from stfusion.io import read_h5ad, write_h5ad
    from stfusion.models.encoder_ridge.features import FrozenEncoder, add_features

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    try:
        overrides = json.loads(encoder_kwargs) if encoder_kwargs else {}
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--encoder-kwargs must be a JSON object, got {encoder_kwargs!r} ({exc})") from exc
    if not isinstance(overrides, dict):
        raise typer.BadParameter(f"--encoder-kwargs must be a JSON object, got {encoder_kwargs!r}")
    frozen = FrozenEncoder(encoder, weights, overrides, seed=seed, batch_size=batch_size)
    for path in sections:
        adata = read_h5ad(path)
        start = time.perf_counter()
        key = add_features(adata, frozen)
        seconds = time.perf_counter() - start
        out = path if out_dir is None else out_dir / path.name
        write_h5ad(adata, out)
        log.info(f"wrote {out}: obsm['{key}'] ({adata.n_obs} spots x {adata.obsm[key].shape[1]}; {frozen.spec.name}, "
                 f"weights: {frozen.weights or 'random init'}; {seconds:.1f} s)")  # fmt: skip
