"""Help, start-up and progress (issue 27 items 5 and 7), the README's command lines against the
CLI, and every --flag that an error message names against the command it names."""

from __future__ import annotations

import ast
import logging
import re
import shlex
import subprocess
import sys
import time

import pytest

from stfusion.cli import app, main
from tests.conftest import REPO

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
MENTION = re.compile(r"stfusion ([a-z]+)(?: ([a-z]+))?")


def _root():
    import typer

    return typer.main.get_command(app)


def _command(words: list[str]):
    """The click command that ``stfusion WORDS...`` runs, and the words after its name."""
    cmd, rest = _root(), list(words)
    while hasattr(cmd, "commands") and rest and rest[0] in cmd.commands:
        cmd = cmd.commands[rest.pop(0)]
    return cmd, rest


def _options(cmd) -> set[str]:
    names = {"--help"}
    for p in getattr(cmd, "params", []):
        names.update(o for o in (*p.opts, *p.secondary_opts) if o.startswith("--"))
    for sub in getattr(cmd, "commands", {}).values():
        names |= _options(sub)
    return names


# ----------------------------------------------------------------------------- item 7: help text
def test_version_and_plain_help(capsys):
    from stfusion import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"stfusion {__version__}"
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert "<bool>" not in top and "--version" in top and " show " not in top  # `show` is a hidden alias
    assert main(["read", "st", "--help"]) == 0
    assert "[selected]" in capsys.readouterr().out


def test_show_is_a_deprecated_alias_of_plot_spots(tmp_path, capsys):
    from stfusion.data.synthetic import make_synthetic_section
    from stfusion.io import write_h5ad

    write_h5ad(make_synthetic_section(tmp_path / "img", grid=(4, 4), n_genes=3, seed=0), tmp_path / "s.h5ad")
    assert main(["show", str(tmp_path / "s.h5ad"), "-g", "marker_0", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert "use `stfusion plot spots`" in " ".join(capsys.readouterr().err.split())


def test_every_plot_of_one_gene_takes_gene_and_umap_keeps_color():
    for name in ("spots", "map", "panels", "umap"):
        assert {"--gene"} <= _options(_command(["plot", name])[0]), name
    umap = _command(["plot", "umap"])[0]
    assert [p for p in umap.params if "--color" in p.opts][0].hidden


def test_genes_takes_the_same_forms_everywhere(tmp_path):
    import numpy as np

    from stfusion.cli.options import gene_names

    (tmp_path / "g.txt").write_text("A\n# comment\nB\n")
    np.save(tmp_path / "g.npy", np.asarray(["A", "B"]))
    assert gene_names("A, B") == gene_names(str(tmp_path / "g.txt")) == gene_names(str(tmp_path / "g.npy")) == ["A", "B"]
    for words in (["fit"], ["predict"], ["impute"], ["de"]):
        help_text = next(p.help for p in _command(words)[0].params if p.name == "genes")
        assert "comma-separated names" in help_text and ".npy" in help_text, words


# ----------------------------------------------------------------------------- item 5: start-up, tables, progress
def test_methods_imports_no_model_and_matches_the_classes():
    code = "import sys; from stfusion.cli import main; main(['methods']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")
    assert "colour/texture features of each patch." in out  # not cut at 80 columns when piped
    from stfusion.benchmark.papers import PAPER_PROTOCOLS
    from stfusion.benchmark.protocols import PROTOCOLS as SPLITS
    from stfusion.cli.catalog import METHODS, PROTOCOLS
    from stfusion.models.registry import available, get

    assert sorted(METHODS) == available(), "add each registered method's line to stfusion/cli/catalog.py"
    for name, row in METHODS.items():
        cls = get(name)
        flags = (getattr(cls, "has_uncertainty", False), getattr(cls, "has_super_resolution", False))
        assert row == (getattr(cls, "input_kind", "?"), *flags, getattr(cls, "description", "")), name
    assert list(PROTOCOLS) == [*SPLITS, *PAPER_PROTOCOLS]
    for name, cls in PAPER_PROTOCOLS.items():
        assert PROTOCOLS[name][::2] == (cls.data_kind, cls.paper), name


def test_long_steps_log_a_line_periodically_off_a_terminal(caplog):
    from stfusion.cli.options import long_step

    with caplog.at_level(logging.INFO, logger="stfusion"), long_step("predicting a grid", every_s=0.05):
        time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "predicting a grid ..." and lines[-1].startswith("predicting a grid: done in")
    assert sum("still running" in line for line in lines) >= 2


# ----------------------------------------------------------------------------- the README's command lines
def _readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("stfusion "):
                commands.append(shlex.split(line.replace("[", " ").replace("]", " "))[1:])
    return commands


def test_every_readme_command_line_parses():
    """Each ``stfusion ...`` line of the README names a command that exists, with options it takes
    and the right number of values (placeholders such as S.h5ad stand for any file)."""
    commands = _readme_commands()
    assert len(commands) > 25
    for words in commands:
        cmd, rest = _command(words)
        assert not hasattr(cmd, "commands"), f"`stfusion {' '.join(words)}`: no such command"
        ctx = cmd.make_context("stfusion", ["--help"], resilient_parsing=True)
        parser = cmd.make_parser(ctx)
        try:
            parser.parse_args(args=[w for w in rest if w not in ("|",)])
        except Exception as exc:  # NoSuchOption, BadOptionUsage
            pytest.fail(f"README: `stfusion {' '.join(words)}`: {exc}")


def test_readme_examples_run_on_tiny_data(tmp_path, capsys, shared_data):
    """The README's quick commands, run for real on the xfuse toy section."""
    toy = shared_data / "xfuse_mob_toy"
    if not toy.is_dir():
        pytest.skip("xfuse_mob_toy not in the shared data")
    s = str(tmp_path / "S.h5ad")
    assert main(["read", "st", "--counts", str(toy / "counts.tsv"), "--spots", str(toy / "spots.tsv"),
                 "--image", str(toy / "image.jpg"), "--spot-spacing-um", "200", "--out", s]) == 0  # fmt: skip
    gene = "Penk" if "Penk" in __import__("anndata").read_h5ad(s).var_names else None
    assert main(["info", s]) == 0
    assert main(["plot", "spots", s, *(["--gene", gene] if gene else []), "--out", str(tmp_path / "spots.png")]) == 0
    assert main(["methods"]) == 0


# ----------------------------------------------------------------------------- flags named in errors
def _error_messages():
    """(file, line, text) of every error message in src/: raised exceptions and logged warnings/errors."""
    for path in sorted((REPO / "src" / "stfusion").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            target = node.exc if isinstance(node, ast.Raise) else node
            is_log = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("warning", "error")
            if (isinstance(node, ast.Raise) and target is not None) or is_log:
                text = " ".join(n.value for n in ast.walk(target) if isinstance(n, ast.Constant) and isinstance(n.value, str))
                yield path.relative_to(REPO), node.lineno, text


def test_every_flag_named_in_an_error_exists_on_the_command_it_names():
    every = _options(_root())
    checked = 0
    for path, line, text in _error_messages():
        flags = set(FLAG.findall(text))
        if not flags:
            continue
        named = [_command([w for w in m if w])[0] for m in MENTION.findall(text)]
        allowed = set().union(*(_options(c) for c in named)) if named else every
        missing = sorted(flags - allowed)
        assert not missing, f"{path}:{line} names {missing}, which {'those commands' if named else 'no command'} take"
        checked += 1
    assert checked > 20


def test_readme_figure_examples_name_a_gene_of_the_785_it_trains_on(shared_data):
    import numpy as np

    path = shared_data / "her2st" / "her_hvg_cut_1000.npy"
    if not path.is_file():
        pytest.skip("her2st gene list not in the shared data")
    genes = set(np.load(path, allow_pickle=False).astype(str))
    named = [w[i + 1] for w in _readme_commands() if w[0] in ("plot", "report")
             for i, x in enumerate(w[:-1]) if x in ("-g", "--gene") and w[i + 1].isupper()]  # fmt: skip
    assert len(named) >= 4 and set(named) <= genes, set(named) - genes


def test_long_steps_show_a_spinner_on_a_terminal(monkeypatch):
    import io

    from rich.console import Console

    import stfusion.cli.options as O

    buf = io.StringIO()
    monkeypatch.setattr(O, "show_progress", lambda: True)
    monkeypatch.setattr(O, "console", lambda stderr=False: Console(file=buf, force_terminal=True, width=80))
    with O.long_step("fitting stnet"):
        time.sleep(0.3)
    assert "fitting stnet" in buf.getvalue()
