"""Models of a benchmark's ``[[methods]]`` entries, seeded by the run's seed."""

from __future__ import annotations

import inspect
from typing import Any

from stfusion.models import registry


def make_model(method: Any, seed: int, **overrides: Any) -> Any:
    """A new, unfitted model of ``method`` (a :class:`~stfusion.benchmark.config.MethodSpec`:
    its ``name`` and ``params``, then ``overrides``); ``seed`` is passed when the method takes
    one and the entry does not set it. Imports no other benchmark module, so the paper
    protocols may use it."""
    cls = registry.get(method.name)
    params = {**method.params, **overrides}
    if "seed" in inspect.signature(cls.__init__).parameters or "seed" in getattr(cls, "default_params", {}):
        params.setdefault("seed", seed)
    return cls(**params)
