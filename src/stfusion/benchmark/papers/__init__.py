"""Published evaluations reproduced to the letter (see :mod:`stfusion.benchmark.papers.base`).

Each module holds one paper's protocols and imports only :mod:`~stfusion.benchmark.papers.base`;
:data:`PAPER_PROTOCOLS` maps the names a benchmark config's ``protocol = "..."`` takes to their
classes. A new protocol is added to :data:`_CLASSES` below.
"""

from __future__ import annotations

from stfusion.benchmark.papers.base import PAPER, STRICT, PaperProtocol
from stfusion.benchmark.papers.histogene2021 import HisToGene2021Her2st
from stfusion.benchmark.papers.li2022 import Li2022Imputation
from stfusion.benchmark.papers.xfuse2022 import XFuse2022Histology, XFuse2022Holdout, XFuse2022Pairs
from stfusion.errors import ConfigError

_CLASSES: list[type[PaperProtocol]] = [
    XFuse2022Holdout, XFuse2022Histology, XFuse2022Pairs, HisToGene2021Her2st, Li2022Imputation,
]

PAPER_PROTOCOLS: dict[str, type[PaperProtocol]] = {cls.name: cls for cls in _CLASSES}


def get_protocol(name: str, **params) -> PaperProtocol:
    """A paper protocol by name, with its ``protocol_params``."""
    if name not in PAPER_PROTOCOLS:
        raise ConfigError(f"unknown paper protocol {name!r}; available: {sorted(PAPER_PROTOCOLS)}.")
    return PAPER_PROTOCOLS[name](**params)


__all__ = ["PAPER", "PAPER_PROTOCOLS", "STRICT", "PaperProtocol", "get_protocol"]
