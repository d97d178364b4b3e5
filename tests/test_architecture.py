"""The package map of docs/architecture.md holds: no import cycle between modules of src/stfusion,
and no import between rooms (packages) that the map does not allow.

Every ``import`` and ``from ... import`` counts, wherever it is written (module level, inside a
function, under ``if TYPE_CHECKING:``): a function-level import only hides a cycle from the
interpreter, not from a reader.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
ARCHITECTURE = REPO / "docs" / "architecture.md"
SPLIT_ROOMS = {"models": None, "scale": {"slide"}}  # packages whose parts are rooms of their own


def module_names(src: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is package) for every ``.py`` below ``src``."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _absolute(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def imported(module: str, path: Path, is_pkg: bool, known: set[str]) -> set[str]:
    """Modules of ``known`` that ``module`` imports anywhere in its source."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_pkg, node.level, node.module) if node.level else node.module
            # ``from pkg import sub`` imports the submodule; ``from pkg import name`` the package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != module)
    return out


def import_graph(src: Path) -> dict[str, set[str]]:
    mods = module_names(src)
    return {m: imported(m, path, is_pkg, set(mods)) for m, (path, is_pkg) in mods.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def _describe(graph: dict[str, set[str]], cycle: list[str]) -> str:
    edges = [f"{a} -> {b}" for a in cycle for b in sorted(graph[a]) if b in cycle]
    return "; ".join(edges)


def test_no_import_cycles_in_src():
    graph = import_graph(SRC)
    assert "stfusion.models.base" in graph and graph["stfusion.models.base"], "the import graph was not read"
    cycles = import_cycles(graph)
    assert not cycles, "import cycles in src/ (break each along its seam, see docs/architecture.md): " + " | ".join(
        _describe(graph, c) for c in cycles
    )


# The five cycles this test was written against (issue 22), rebuilt as small source trees: the
# detector must find each, whether the import is at module level, in a function or type-only.
FORMER_CYCLES = {
    "cli <-> cli_impute <-> config": {
        "cli.py": "from pkg.config import recorded\nfrom pkg.cli_impute import impute_cmd\napp = None\n",
        "cli_impute.py": "def impute_cmd():\n    from pkg.cli import _parse_params\n",
        "config.py": "def command_params():\n    from pkg.cli import app\n",
    },
    "data.image <-> data.patches <-> data.section": {
        "data/__init__.py": "",
        "data/image.py": "def read_preview():\n    from pkg.data.patches import read_region\n",
        "data/patches.py": "from pkg.data.image import is_tiff\nfrom pkg.data.section import spot_coords\n",
        "data/section.py": "from pkg.data.image import read_preview\n",
    },
    "models.backbones <-> _densenet / _resnet": {
        "models/__init__.py": "",
        "models/backbones.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.models._densenet import DenseNet\n"
            "def resnet():\n    from pkg.models._resnet import ResNet\n"
        ),
        "models/_densenet.py": "from pkg.models.backbones import Backbone\n",
        "models/_resnet.py": "from .backbones import Backbone\n",
    },
    "histogene.model <-> scale.adapters <-> scale.slide": {
        "models/__init__.py": "",
        "models/histogene/__init__.py": "",
        "models/histogene/model.py": "def predict_image():\n    from pkg.scale.slide import predict_slide_adata\n",
        "scale/__init__.py": "",
        "scale/adapters.py": (
            "from pkg.scale.slide import read_chunk\n"
            "def predict_chunk():\n    from pkg.models.histogene.model import smooth_neighbours\n"
        ),
        "scale/slide.py": "def predict_slide():\n    from pkg.scale.adapters import adapter_for\n",
    },
    "xfuse.gene_field <-> xfuse.predict": {
        "models/__init__.py": "",
        "models/xfuse/__init__.py": "",
        "models/xfuse/gene_field.py": "def refit_fields():\n    from pkg.models.xfuse.predict import draw_areas\n",
        "models/xfuse/predict.py": "from pkg.models.xfuse.gene_field import area_centres_um\n",
    },
}


@pytest.mark.parametrize("name", sorted(FORMER_CYCLES))
def test_detector_finds_former_cycles(tmp_path, name):
    files = {"pkg/__init__.py": "", **{f"pkg/{rel}": text for rel, text in FORMER_CYCLES[name].items()}}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    graph = import_graph(tmp_path)
    cycles = import_cycles(graph)
    assert len(cycles) == 1, (name, cycles)
    # and each is gone once the offending edge is removed
    first = cycles[0][0]
    graph[first] = {m for m in graph[first] if m not in cycles[0]}
    assert not [c for c in import_cycles(graph) if first in c]


def test_detector_ignores_imports_that_close_no_cycle(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("from pkg.a import f\n")
    (tmp_path / "pkg" / "a.py").write_text("import os\nfrom pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("def g():\n    import numpy\n")
    graph = import_graph(tmp_path)
    assert graph["pkg"] == {"pkg.a"} and graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == set()
    assert import_cycles(graph) == []


# --------------------------------------------------------------------------- the package map
def room(module: str) -> str:
    """The room of docs/architecture.md a module belongs to (``stfusion.models.xfuse.nn`` ->
    ``models.xfuse``, ``stfusion.scale.slide`` -> ``scale.slide``, ``stfusion.io.h5ad`` -> ``io``)."""
    parts = module.split(".")[1:]
    if not parts:
        return "stfusion"
    if len(parts) > 1 and parts[0] in SPLIT_ROOMS and (SPLIT_ROOMS[parts[0]] is None or parts[1] in SPLIT_ROOMS[parts[0]]):
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def package_map(text: str) -> dict[str, set[str] | None]:
    """Room -> rooms it may import (None: every room), in the order of the map's table."""
    out: dict[str, set[str] | None] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not re.fullmatch(r"`[\w.]+`", cells[0]):
            continue
        allowed = cells[2]
        out[cells[0].strip("`")] = None if allowed == "every room" else set(re.findall(r"`([\w.]+)`", allowed))
    return out


def map_violations(graph: dict[str, set[str]], rooms: dict[str, set[str] | None]) -> list[str]:
    order = list(rooms)
    problems = [f"{m}: room {room(m)!r} is not in the map" for m in graph if room(m) not in rooms]
    for name, allowed in rooms.items():
        for other in allowed or ():
            if other not in rooms or order.index(other) >= order.index(name):
                problems.append(f"map: {name} may import {other}, which is not listed above it")
    for module, targets in sorted(graph.items()):
        allowed = rooms.get(room(module), set())
        for target in sorted(targets):
            if room(target) != room(module) and allowed is not None and room(target) not in allowed:
                problems.append(f"{module} imports {target}: room {room(module)} may not import {room(target)}")
    return problems


def test_imports_follow_the_package_map():
    rooms = package_map(ARCHITECTURE.read_text(encoding="utf-8"))
    assert {"data", "models.base", "models.xfuse", "scale.slide", "cli"} <= set(rooms), rooms
    problems = map_violations(import_graph(SRC), rooms)
    assert not problems, "docs/architecture.md and the imports disagree:\n" + "\n".join(problems)


def test_map_check_catches_a_forbidden_import_and_an_upward_arrow():
    rooms = {"data": {"errors"}, "errors": set(), "models.base": {"data"}, "cli": None}
    graph = {"stfusion.data.image": {"stfusion.models.base"}, "stfusion.models.base": {"stfusion.data.image"},
             "stfusion.cli.main": {"stfusion.data.image"}, "stfusion.errors": set()}
    problems = map_violations(graph, rooms)
    assert any("data may import errors, which is not listed above it" in p for p in problems)
    assert any("stfusion.data.image imports stfusion.models.base" in p for p in problems)
    assert not any(p.startswith("stfusion.cli") or p.startswith("stfusion.models.base imports") for p in problems)
    assert room("stfusion.models.xfuse.nn") == "models.xfuse" and room("stfusion.scale.batch") == "scale"
    assert room("stfusion.scale.slide") == "scale.slide" and room("stfusion") == "stfusion"
