"""Benchmark configuration (TOML): datasets x protocols x methods.

Example::

    seed = 0
    data_root = "../../../shared/data"      # relative to this file; $STFUSION_SHARED_DATA wins

    [[datasets]]
    name = "her2st_C"
    reader = "her2st"                       # see READERS / PAIR_READERS
    path = "her2st"                         # relative to data_root
    sections = ["C2", "C3", "C4", "C5", "C6"]
    genes = "her2st/her_hvg_cut_1000.npy"   # file (relative to data_root), or a number N
    protocol = "leave_one_section_out"      # a split (stfusion.benchmark.protocols.PROTOCOLS, scored on
                                            # the strict target) or a paper's protocol
                                            # (stfusion.benchmark.papers.PAPER_PROTOCOLS, scored both ways)
    protocol_params = {}
    min_counts = 1                          # drop spots with fewer total counts (0/0 has no target)

    [[methods]]
    name = "constant"                       # see `stfusion methods`
    params = {}
    datasets = ["her2st_C"]                 # optional: only these datasets
    null_permutations = 0                   # >0: also fit the shuffled-label null
    calibration = "sections"                # optional: hold out data and calibrate conformal intervals
                                            # (Model.fit(..., calibration=...): spots | sections | patient
                                            # | auto); the per-gene table then has coverage_50/80/90/95 and
                                            # width_* (methods with an SD get them without: their own SD)
    calibration_fraction = 0.2              # share of spots held out with calibration = "spots"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stfusion.errors import ConfigError

__all__ = ["BenchmarkConfig", "ConfigError", "DatasetSpec", "MethodSpec", "load_config"]

SECTION_READERS = ("her2st", "stutility", "st", "visium", "h5ad", "xfuse_toy")
PAIR_READERS = ("osmfish_pair", "merfish_pair", "slideseq_pair")
TOP_LEVEL_KEYS = ("name", "seed", "data_root", "datasets", "methods")




@dataclass
class DatasetSpec:
    name: str
    reader: str
    path: str
    protocol: str
    sections: list[str] = field(default_factory=list)
    genes: str | int | None = None
    protocol_params: dict[str, Any] = field(default_factory=dict)
    reader_params: dict[str, Any] = field(default_factory=dict)
    min_counts: int = 1

    @property
    def is_pair(self) -> bool:
        return self.reader in PAIR_READERS


@dataclass
class MethodSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    datasets: list[str] | None = None
    null_permutations: int = 0
    label: str | None = None  # display name; default: name
    calibration: str | None = None  # Model.fit(..., calibration=...): None (default), spots, sections, patient, auto
    calibration_fraction: float = 0.2

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass
class BenchmarkConfig:
    datasets: list[DatasetSpec]
    methods: list[MethodSpec]
    seed: int = 0
    data_root: str = "."
    name: str = "benchmark"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolve(self, rel: str) -> Path:
        return Path(self.data_root) / rel


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def check_keys(raw: dict[str, Any], allowed: set[str] | list[str], where: str) -> None:
    """Raise a ConfigError naming unknown keys of ``raw``, the closest allowed names, and all allowed ones."""
    import difflib

    extra = sorted(set(raw) - set(allowed))
    if extra:
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, list(allowed), 1)) else repr(k)
                 for k in extra]
        raise ConfigError(f"{where}: unknown keys {', '.join(hints)}; allowed: {sorted(allowed)}.")


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed TOML file; a ConfigError names the file when it is missing or not valid TOML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} not found.")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def _dataset(raw: dict[str, Any], i: int) -> DatasetSpec:
    from stfusion.benchmark.protocols import PROTOCOLS

    for key in ("name", "reader", "path", "protocol"):
        _require(key in raw, f"[[datasets]] entry {i + 1} lacks '{key}'.")
    _require(
        raw["reader"] in SECTION_READERS + PAIR_READERS,
        f"dataset {raw['name']!r}: unknown reader {raw['reader']!r}; use one of {SECTION_READERS + PAIR_READERS}.",
    )
    from stfusion.benchmark.papers import PAPER_PROTOCOLS

    known = sorted(PROTOCOLS) + sorted(PAPER_PROTOCOLS)
    _require(
        raw["protocol"] in known,
        f"dataset {raw['name']!r}: unknown protocol {raw['protocol']!r}; use one of {known} "
        "(`stfusion methods` lists them with their sources).",
    )
    check_keys(raw, set(DatasetSpec.__dataclass_fields__), f"dataset {raw['name']!r}")
    return DatasetSpec(**raw)


def _method(raw: dict[str, Any], i: int, dataset_names: set[str]) -> MethodSpec:
    from stfusion.models.registry import REGISTRY

    _require("name" in raw, f"[[methods]] entry {i + 1} lacks 'name'.")
    _require(raw["name"] in REGISTRY, f"unknown method {raw['name']!r}; available: {sorted(REGISTRY)}.")
    check_keys(raw, set(MethodSpec.__dataclass_fields__), f"method {raw['name']!r}")
    spec = MethodSpec(**raw)
    from stfusion.models.conformal import KINDS

    _require(spec.calibration is None or spec.calibration in KINDS,
             f"method {spec.name!r}: calibration must be one of {list(KINDS)}, got {spec.calibration!r}.")
    unknown = set(spec.datasets or []) - dataset_names
    _require(not unknown, f"method {spec.name!r} names unknown datasets {sorted(unknown)}.")
    return spec


def load_config(path: str | Path) -> BenchmarkConfig:
    """Read and validate a benchmark TOML file; paths resolve relative to the file."""
    path = Path(path)
    raw = read_toml(path)
    if "fit" in raw or "predict" in raw:
        raise ConfigError(f"{path} is a fit/predict config ([fit]/[predict] tables): use `stfusion fit --config {path}`.")
    check_keys(raw, TOP_LEVEL_KEYS, str(path))
    _require(raw.get("datasets"), f"{path}: no [[datasets]] entries.")
    _require(raw.get("methods"), f"{path}: no [[methods]] entries.")
    datasets = [_dataset(d, i) for i, d in enumerate(raw["datasets"])]
    names = {d.name for d in datasets}
    _require(len(names) == len(datasets), f"{path}: dataset names must be unique.")
    methods = [_method(m, i, names) for i, m in enumerate(raw["methods"])]
    root = os.environ.get("STFUSION_SHARED_DATA") or str((path.parent / raw.get("data_root", ".")).resolve())
    return BenchmarkConfig(
        datasets=datasets,
        methods=methods,
        seed=int(raw.get("seed", 0)),
        data_root=root,
        name=str(raw.get("name", path.stem)),
    )
