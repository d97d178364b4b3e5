"""Section covariates of XFuse as one-hot effect indicators ``beta``.

``fit(..., covariates=[{name: value}, ...])`` (one dict per section) defines one effect per
(name, value) pair seen in training; a section's ``beta`` marks its pairs. A section predicted
later uses the indicators stored for the training section with the same id, the covariates
given to the prediction call, or none (beta = 0: the effects' prior mean).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stfusion.errors import StfusionError

log = logging.getLogger("stfusion")

__all__ = ["effect_names", "indicators"]


def effect_names(covariates: Sequence[Mapping[str, Any]] | None, n_sections: int) -> list[list[str]]:
    """The sorted (name, value) pairs of ``covariates``; an error unless one dict per section."""
    if covariates is None:
        return []
    if len(covariates) != n_sections:
        raise StfusionError(
            f"covariates has {len(covariates)} entries for {n_sections} sections; give one dict per section."
        )
    pairs = {(str(k), str(v)) for c in covariates for k, v in dict(c).items()}
    return [list(p) for p in sorted(pairs)]


def indicators(effects: Sequence[Sequence[str]], covariates: Mapping[str, Any] | None) -> np.ndarray:
    """One-hot ``beta`` over ``effects`` for one section; unseen pairs warn and count as 0."""
    effects = [list(e) for e in effects]
    beta = np.zeros(len(effects), dtype=np.float32)
    for k, v in dict(covariates or {}).items():
        if [str(k), str(v)] in effects:
            beta[effects.index([str(k), str(v)])] = 1.0
        else:
            log.warning("xfuse: covariate %s=%s was not seen in training; its effect is taken as 0.", k, v)
    return beta
