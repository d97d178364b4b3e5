"""One TOML file for ``stfusion fit`` and ``stfusion predict``, and the record every run leaves.

Example ``run.toml`` (paths are relative to the file)::

    seed = 0                      # default seed of [fit]

    [fit]
    method = "stnet"              # see `stfusion methods`
    sections = ["train1.h5ad", "train2.h5ad"]
    out = "model"
    genes = 50                    # top N genes, or a file of names
    preset = "fast"
    epochs = 3
    [fit.params]                  # hyperparameters (as --param key=value)
    width = 8

    [predict]
    model = "model"
    section = "test.h5ad"
    out = "pred.h5ad"

Keys are the command's option names (``--super-resolution`` is ``super_resolution``);
``model`` = ``model_dir``, ``params`` = ``param`` (a table), ``covariates`` = ``covariate``
(a table of lists), ``masks`` = ``mask``. Flags given on the command line override the file.

Every ``fit`` writes ``MODEL_DIR/run/`` and every ``predict`` writes ``PRED.run/`` (or
``--run-dir``; a failed run ``OUT.failed-run/``, a refused one nothing): ``config.toml`` (the
resolved settings, paths absolute; ``stfusion fit --config`` re-runs it from any folder),
``run.json`` (command line, seed, package versions, status, time) and ``stfusion.log``.

The keys of a ``[fit]``/``[predict]`` table are the parameters of the command function that
:func:`recorded` registered under that name (``stfusion.cli.models`` defines them): this module
learns them from the command functions, never from the Typer app that registers the commands,
so it sits below every command module and imports only :mod:`stfusion.cli.options`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional, get_args

import typer

from stfusion.cli.options import genes_spec, long_step, parse_covariates, parse_params, show_progress

log = logging.getLogger("stfusion")

COMMANDS = ("fit", "predict")
TOP_LEVEL_KEYS = ("seed", *COMMANDS)
ALIASES = {"model": "model_dir", "params": "param", "covariates": "covariate", "masks": "mask"}
OUTPUT_KEYS = frozenset({"out", "run_dir"})  # paths written, not read: need not exist
NUMBER_OR_NAME_KEYS = frozenset({"genes"})  # str options that also take a number (top N genes)
SKIP_KEYS = frozenset({"config"})
RUN_SUBDIR = "run"  # inside a model folder
LOG_FILE, RECORD_FILE, CONFIG_FILE = "stfusion.log", "run.json", "config.toml"
_DEFINITIONS: dict[str, Callable] = {}  # command name -> its command function (filled by `recorded`)


# ----------------------------------------------------------------------------- reading
def _error(message: str) -> Exception:
    """A :class:`stfusion.errors.ConfigError` (the class :mod:`stfusion.benchmark.config` raises)."""
    from stfusion.errors import ConfigError

    return ConfigError(message)


def command_params(command: str) -> dict[str, Any]:
    """The click parameters of ``stfusion COMMAND`` by name (the keys its config table takes), built
    by Typer from the command function registered by :func:`recorded`, as the app builds them."""
    if command not in _DEFINITIONS:
        raise _error(f"`stfusion {command}` takes no run config (only {' and '.join(COMMANDS)} do).")
    single = typer.Typer(add_completion=False)
    single.command(command)(_DEFINITIONS[command])
    cmd = typer.main.get_command(single)
    return {p.name: p for p in cmd.params if p.name not in SKIP_KEYS}


def load_run_config(path: str | Path, command: str) -> dict[str, Any]:
    """The validated ``[command]`` table of a run config: keys as the command's parameter names,
    paths resolved against the file's folder, input files checked. Raises :class:`ConfigError`."""
    from stfusion.benchmark.config import check_keys, read_toml

    path = Path(path)
    raw = read_toml(path)
    if "datasets" in raw or "methods" in raw:
        raise _error(f"{path} is a benchmark config ([[datasets]]/[[methods]]): run `stfusion benchmark {path}`.")
    check_keys(raw, TOP_LEVEL_KEYS, str(path))
    if command not in raw:
        raise _error(f"{path} has no [{command}] table; add one (see `stfusion {command} --help` for its keys).")
    table = raw[command]
    if not isinstance(table, dict):
        raise _error(f"{path}: '{command}' must be a table ([{command}]), not {type(table).__name__}.")
    params = command_params(command)
    where = f"{path} [{command}]"
    names = {ALIASES.get(k.replace("-", "_"), k.replace("-", "_")): k for k in table}
    check_keys(dict.fromkeys(names), set(params), where)
    out = {key: _value(key, table[name], params[key], path.parent, where, name) for key, name in names.items()}
    if "seed" in raw and "seed" in params and "seed" not in out and _takes_seed(out.get("method")):
        out["seed"] = _value("seed", raw["seed"], params["seed"], path.parent, str(path), "seed")
    return out


def _takes_seed(method: str | None) -> bool:
    """Whether the top-level seed applies: the method has a ``seed`` hyperparameter."""
    from stfusion.models.api import accepted_params
    from stfusion.models.registry import get

    if method is None:
        return True
    try:
        ok = accepted_params(get(method))
    except Exception:  # an unknown method fails later with the registry's message
        return True
    return ok is None or "seed" in ok


def _annotation(param: Any) -> tuple[Any, bool]:
    desc = param.type_descriptor
    if desc.is_list:
        return get_args(desc.annotation)[0], True
    return desc.annotation, False


def _value(key: str, value: Any, param: Any, base: Path, where: str, label: str) -> Any:
    kind, is_list = _annotation(param)
    if key == "param" and isinstance(value, dict):
        return [f"{k}={json.dumps(v)}" for k, v in value.items()]
    if key == "covariate" and isinstance(value, dict):
        return [f"{k}={','.join(str(x) for x in v)}" for k, v in value.items()]
    if is_list:
        if not isinstance(value, list):
            raise _error(f"{where} {label} = {value!r}: expected a list, e.g. {label} = [{_example(kind)}].")
        return [_scalar(f"{label}[{i}]", v, kind, key, base, where) for i, v in enumerate(value)]
    return _scalar(label, value, kind, key, base, where)


def _example(kind: Any) -> str:
    return {int: "3", float: "0.5", bool: "true", Path: '"file.h5ad"'}.get(kind, '"text"')


def _scalar(label: str, value: Any, kind: Any, key: str, base: Path, where: str) -> Any:
    def bad() -> Exception:
        name = getattr(kind, "__name__", str(kind))
        return _error(f"{where} {label} = {value!r}: expected {'a path' if kind is Path else name}, "
                      f"e.g. {label.split('[')[0]} = {_example(kind)}.")  # fmt: skip

    if kind is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if kind is Path:
        if not isinstance(value, str):
            raise bad()
        return _path(label, value, key, base, where)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key in NUMBER_OR_NAME_KEYS:
        return str(value)
    if not isinstance(value, str):
        raise bad()
    if key in NUMBER_OR_NAME_KEYS and not value.isdigit() and (base / value).is_file():
        return os.path.normpath((base / value).absolute())  # a gene file next to the config
    return value


def _path(label: str, value: str, key: str, base: Path, where: str) -> Path:
    resolved = Path(os.path.normpath((base / Path(value).expanduser()).absolute()))  # symlinks kept
    if key not in OUTPUT_KEYS and not resolved.exists():
        raise _error(f"{where} {label} = {value!r}: no such file or folder ({resolved}). Paths in a config are "
                          "relative to the config file's folder; fix the path or give it on the command line.")  # fmt: skip
    return resolved


def _config_callback(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """Eager ``--config``: the file's values become the command's defaults, so flags override them."""
    if value is not None and not ctx.resilient_parsing:
        ctx.default_map = {**(ctx.default_map or {}), **load_run_config(value, ctx.info_name)}
    return value


ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", is_eager=True, callback=_config_callback,
                 help="TOML run config ([fit]/[predict] table); flags given here override it."),
]  # fmt: skip
RunDirOpt = Annotated[
    Optional[Path], typer.Option("--run-dir", help="Folder for the run record (default: OUT with suffix .run).")
]


# ----------------------------------------------------------------------------- running (API = CLI)
def run_fit(*, method: str, sections: list, out: Path | None = None, genes: Any = None, preset: str | None = None,
            epochs: int | None = None, seed: int | None = None, resolution_um: float | None = None,
            missing_genes: str = "raise", param: list[str] = (), covariate: list[str] = (),
            devices: int | None = None, num_nodes: int | None = None, strategy: str | None = None,
            calibration: str | None = None, calibration_fraction: float = 0.2,
            progress: bool | None = None, config: Any = None) -> Any:  # fmt: skip
    """Fit (and save to ``out`` when given) exactly as ``stfusion fit`` does; returns the model.
    ``config`` (the file the settings came from) does not change the fit."""
    check_method(method)  # before the heavy imports: a typo is answered at once
    if missing_genes not in ("raise", "drop"):
        raise typer.BadParameter(f"--missing-genes takes raise or drop, not {missing_genes!r}.")
    from stfusion.io import read_h5ad
    from stfusion.models.api import fit, save_model
    from stfusion.train.distributed import is_global_zero, trainer_settings

    params = parse_params(list(param))
    for key, value in (("preset", preset), ("epochs", epochs), ("seed", seed), ("resolution_um", resolution_um)):
        if value is not None:
            params[key] = value
    data = [read_h5ad(p) for p in sections]
    covariates = parse_covariates(list(covariate), len(data))
    gene_list = _fit_genes(genes, data, missing_genes)
    with trainer_settings(devices=devices, num_nodes=num_nodes, strategy=strategy), long_step(f"fitting {method}"):
        model = fit(method, data, genes=gene_list, covariates=covariates, calibration=calibration,
                    calibration_fraction=calibration_fraction,
                    progress=show_progress() if progress is None else progress, **params)  # fmt: skip
    if out is not None and is_global_zero():
        save_model(model, out)
        log.info(f"wrote {out} ({method}, {len(model.genes_)} genes)")
    return model


def check_method(method: str) -> None:
    """Refuse an unknown method name at once, before any data is read (with a "did you mean")."""
    import difflib

    from stfusion.models.registry import available

    key = method.lower().replace("-", "_")
    names = available()
    if key in names:
        return
    close = difflib.get_close_matches(key.replace("_", ""), [n.replace("_", "") for n in names], n=1, cutoff=0.6)
    hint = f" Did you mean '{next(n for n in names if n.replace('_', '') == close[0])}'?" if close else ""
    raise typer.BadParameter(f"unknown method {method!r}.{hint} Methods: {', '.join(names)} (`stfusion methods`).",
                             param_hint="'METHOD'")


def _fit_genes(genes: Any, data: list, missing: str) -> list[str] | None:
    """``--genes`` resolved against the training sections; ``--missing-genes drop`` keeps the present ones."""
    from stfusion.data.genes import resolve_genes

    if genes is None:
        return None
    return resolve_genes(genes_spec(genes), data, missing=missing)


def fit_from_config(path: str | Path, **overrides: Any) -> Any:
    """Python twin of ``stfusion fit --config PATH``: same settings, same numbers. ``overrides``
    (the command's parameter names) win over the file, as flags do."""
    settings = {**load_run_config(path, "fit"), **overrides}
    return run_fit(**settings)


def predict_from_config(path: str | Path, **overrides: Any) -> Any:
    """Python twin of ``stfusion predict --config PATH`` for spots, super-resolution and H&E-only
    slides; returns the prediction (not written). Other options: use the command."""
    from stfusion.io import read_h5ad
    from stfusion.models.api import load_model

    s = {**load_run_config(path, "predict"), **overrides}
    extra = sorted(k for k in ("grid_um", "mask", "genes", "samples", "images") if s.get(k))
    if extra:
        raise _error(f"predict_from_config does not take {extra}; run `stfusion predict --config {path}`.")
    model = load_model(s["model_dir"], progress=show_progress())
    if s.get("section") is not None and s.get("super_resolution"):
        return model.predict_super_resolution(read_h5ad(s["section"]), s["super_resolution"])
    if s.get("section") is not None:
        return model.predict(read_h5ad(s["section"]))
    if s.get("image") is not None:
        return model.predict_image(s["image"], s["microns_per_pixel"])
    raise _error(f"{path} [predict] names neither 'section' nor 'image'.")


# ----------------------------------------------------------------------------- run records
def environment() -> dict[str, Any]:
    """Versions and machine of this run (the benchmark's fields plus torch and anndata)."""
    from importlib.metadata import PackageNotFoundError, version

    from stfusion.benchmark.runner import _environment

    env = _environment()
    for pkg in ("torch", "anndata", "scanpy", "lightning"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = None
    return env


def to_toml(tables: dict[str, dict[str, Any]]) -> str:
    """TOML text of ``{table: {key: value}}`` (strings, numbers, booleans, paths and lists of them)."""
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        for key, value in table.items():
            if value is None or value == [] or value == ():
                continue
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if value == value and abs(value) != float("inf") else str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def command_line(command: str, params: dict[str, Any]) -> str:
    """An equivalent ``stfusion`` command line for the resolved ``params`` (no config file needed)."""
    words = ["stfusion", command]
    for name, p in command_params(command).items():
        value = params.get(name)
        if value is None or value == [] or value == ():
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if type(p).__name__.endswith("Argument"):
            words += [str(v) for v in values]
        elif isinstance(value, bool):
            flag = p.opts[0] if value else (p.secondary_opts[0] if p.secondary_opts else None)
            words += [flag] if flag and value != p.default else []
        else:
            for v in values:
                words += [p.opts[0], str(v)]
    return shlex.join(words)


def _seed_of(model_dir: Path) -> Any:
    card = model_dir / "model.json"
    if not card.is_file():
        return None
    data = json.loads(card.read_text())
    return data.get("hyperparams", {}).get("seed", data.get("seed"))


@contextlib.contextmanager
def capture_log(path: Path) -> Iterator[None]:
    """Copy the ``stfusion`` logger's INFO and above into ``path`` (console handlers keep their level)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    old_level, old_handler_levels = log.level, [(h, h.level) for h in log.handlers]
    effective = log.getEffectiveLevel()
    for h, level in old_handler_levels:
        h.setLevel(max(level, effective))
    log.setLevel(min(effective, logging.INFO))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()
        log.setLevel(old_level)
        for h, level in old_handler_levels:
            h.setLevel(level)


def _run_dirs(command: str, params: dict[str, Any]) -> tuple[Path | None, Path | None]:
    out = params.get("out")
    if out is None:
        return None, None
    out = Path(out)
    if command == "fit":
        return out / RUN_SUBDIR, out.with_name(out.name + ".failed-run")
    if params.get("run_dir"):
        return Path(params["run_dir"]), Path(params["run_dir"])
    return out.with_suffix(".run"), out.with_suffix(".failed-run")  # PRED.run/ only beside a PRED.h5ad


def _record(command: str, params: dict[str, Any], status: str, started: float) -> dict[str, Any]:
    model_dir = params.get("out") if command == "fit" else params.get("model_dir")
    return {
        "command": command,
        "command_line": command_line(command, params),
        "process_argv": list(sys.argv),
        "config_file": str(Path(params["config"]).resolve()) if params.get("config") else None,
        "seed": _seed_of(Path(model_dir)) if model_dir else None,  # None: the model card records no seed
        "status": status,
        "started_utc": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 3),
        "environment": environment(),
    }


def recorded(command: str) -> Callable:
    """Decorate a command: its run leaves ``config.toml``, ``run.json`` and ``stfusion.log`` in its run folder
    (fit: ``MODEL_DIR/run``; predict: ``--run-dir`` or ``OUT.run``). A failed run leaves them in ``OUT.failed-run``
    (predict: in ``--run-dir`` when given); a run refused as a usage error (:class:`typer.BadParameter`,
    raised before any work) leaves none.
    The decorated function is also registered as ``command``'s definition: its parameters are the keys
    of the ``[command]`` table of a run config (:func:`command_params`)."""

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapper(**params: Any) -> Any:
            run_dir, failed_dir = _run_dirs(command, params)
            if run_dir is None:
                return func(**params)
            staging, started, status = Path(tempfile.mkdtemp(prefix="stfusion-run-")), time.time(), "ok"
            try:
                with capture_log(staging / LOG_FILE):
                    return func(**params)
            except typer.BadParameter:  # refused before any work: nothing to record
                status = "refused"
                raise
            except BaseException as exc:
                status = f"failed: {type(exc).__name__}: {exc}"
                raise
            finally:
                if status == "refused":
                    shutil.rmtree(staging, ignore_errors=True)
                else:
                    _finish_record(command, params, staging, run_dir if status == "ok" else failed_dir, status, started)

        _DEFINITIONS[command] = wrapper
        return wrapper

    return decorate


def _absolute(key: str, value: Any) -> Any:
    """A setting as the record stores it: paths (and a gene file) absolute, so the record's
    ``config.toml`` re-runs from any folder (a config's relative paths are read against its own folder)."""
    if isinstance(value, (list, tuple)):
        return [_absolute(key, v) for v in value]
    if isinstance(value, Path) or (key in NUMBER_OR_NAME_KEYS and isinstance(value, str) and Path(value).is_file()):
        return os.path.normpath(Path(value).expanduser().absolute())
    return value


def _finish_record(command: str, params: dict[str, Any], staging: Path, target: Path, status: str, started: float) -> None:
    from stfusion.train.distributed import is_global_zero

    if not is_global_zero():  # DDP: every process runs the command; rank 0 keeps the record
        shutil.rmtree(staging, ignore_errors=True)
        return
    try:
        resolved = {k: _absolute(k, v) for k, v in params.items() if k not in SKIP_KEYS}
        (staging / CONFIG_FILE).write_text(f"# resolved settings of `stfusion {command}` ({status})\n"
                                           + to_toml({command: resolved}))  # fmt: skip
        (staging / RECORD_FILE).write_text(json.dumps(_record(command, params, status, started), indent=2))
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(target))
        log.info(f"run record in {target}")
    except OSError as exc:  # the run's own outputs are written; a record that cannot be is only a warning
        log.warning(f"could not write the run record to {target}: {exc}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
