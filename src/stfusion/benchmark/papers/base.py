"""A published evaluation, reproduced to the letter: the base class every paper protocol follows.

stfusion scores its own claims on one strict target (log1p(counts / spot total over all genes ×
1e4), :func:`stfusion.models.base.target_expression`). A paper protocol instead reproduces how one
paper scored its methods: its split, its gene selection, the preprocessing of each method's
inputs and of the truth, its metric and how it aggregates them, read from the paper's code (cited
in each subclass's ``source``). Every cell of a paper protocol is scored both ways, so one run
gives the published view and the strict view side by side; rows carry ``target = "paper"`` or
``target = "strict"``.

A subclass sets ``name`` (what a benchmark config's ``protocol = "..."`` selects), ``paper``,
``source``, ``data_kind`` (``"sections"`` or ``"pair"``) and ``published`` (the numbers the paper
reports, for the README's comparison), and implements :meth:`folds`, :meth:`genes`, :meth:`run`
and :meth:`summarise`. Data the protocol cannot run on fails in :meth:`check` with a clear message.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import pandas as pd

from stfusion.benchmark.protocols import Fold
from stfusion.errors import ConfigError

PAPER, STRICT = "paper", "strict"  # the ``target`` column of a paper protocol's rows


class PaperProtocol(ABC):
    """One published evaluation (see the module docstring)."""

    name: ClassVar[str]
    paper: ClassVar[str]  # citation of the publication
    source: ClassVar[str]  # repository, file and function the protocol follows
    data_kind: ClassVar[str] = "sections"  # "sections" (list of AnnData) or "pair" (reference, spatial)
    summary: ClassVar[str] = ""  # one line for `stfusion methods`
    published: ClassVar[dict[str, float]] = {}  # "method on dataset, metric" -> the paper's number
    param_names: ClassVar[tuple[str, ...]] = ()  # protocol_params a config may set

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.param_names))
        if unknown:
            raise ConfigError(
                f"protocol {self.name!r} takes no parameters {unknown}; it takes {sorted(self.param_names) or 'none'}."
            )
        self.params = dict(params)

    def check(self, data: Any) -> None:
        """Raise a clear error when ``data`` is not what the protocol can run on."""
        is_pair = isinstance(data, tuple)
        if (self.data_kind == "pair") != is_pair:
            want = "a (reference, spatial) pair reader" if self.data_kind == "pair" else "a section reader"
            raise ConfigError(f"protocol {self.name!r} needs {want}; the dataset gives the other kind.")

    @abstractmethod
    def folds(self, data: Any, seed: int) -> list[Fold]:
        """The paper's split of ``data`` (sections, or a (reference, spatial) pair)."""

    @abstractmethod
    def genes(self, fold: Fold, requested: Any) -> list[str]:
        """The paper's genes for ``fold`` (``requested``: the dataset's ``genes`` entry, if any)."""

    @abstractmethod
    def run(self, method: Any, fold: Fold, genes: list[str], seed: int) -> pd.DataFrame:
        """Fit ``method`` (a :class:`~stfusion.benchmark.config.MethodSpec`; build the model with
        :func:`stfusion.benchmark.methods.make_model`) as the paper did, predict, and score per
        gene: columns ``gene``,
        ``metric``, ``value`` and ``target`` (``"paper"`` or ``"strict"``)."""

    @abstractmethod
    def summarise(self, rows: pd.DataFrame) -> pd.DataFrame:
        """The paper's aggregation of all rows of one dataset (every method and fold): one row
        per method, headline columns named as the paper names them; the same for the strict
        rows with a ``target`` column."""

    @classmethod
    def describe(cls) -> dict[str, str]:
        return {"protocol": cls.name, "data": cls.data_kind, "paper": cls.paper, "source": cls.source,
                "summary": cls.summary}  # fmt: skip


def tidy(table: dict[str, Any], genes: list[str], target: str) -> pd.DataFrame:
    """Per-gene metric arrays -> rows ``gene, metric, value, target``."""
    import numpy as np

    frames = [pd.DataFrame({"gene": list(genes), "metric": name, "value": np.asarray(v, float), "target": target})
              for name, v in table.items()]  # fmt: skip
    return pd.concat(frames, ignore_index=True)
