"""Run files (presets and ``--config`` files), ``--set`` overrides and config validation.

A run file is TOML with top-level ``experiment``, ``description``, ``seeds``, a
``[config]`` table and an optional ``[sweep]`` table of lists. Config values arrive in
*layers* (preset, ``--config`` file, sweep combination, ``--set``), each remembered with
its source so that a validation error names the key, the offending value and where it came
from — one line per problem.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "Layer",
    "RunFile",
    "RunnerError",
    "build_config",
    "changed_keys",
    "check_seeds",
    "flatten",
    "format_errors",
    "parse_override",
    "read_run_file",
    "read_toml",
    "sweep_combinations",
    "sweep_label",
    "unflatten",
]

RUN_FILE_KEYS = ("experiment", "description", "seeds", "config", "sweep")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class RunnerError(Exception):
    """A user-facing error of the runner: one line saying what is wrong and how to fix it.

    The CLI prints it (each line of ``lines``) and exits with status 2.
    """

    def __init__(self, message: str | Sequence[str]) -> None:
        self.lines = [message] if isinstance(message, str) else list(message)
        super().__init__("\n".join(self.lines))


class ConfigError(RunnerError):
    """Invalid run file, override or config values (one line per problem)."""


@dataclass
class Layer:
    """Config values from one source, as flat dotted keys (``{"model.width": 64}``)."""

    source: str
    values: dict[str, Any]


@dataclass
class RunFile:
    """A parsed preset or ``--config`` file."""

    path: Path
    experiment: str | None = None
    description: str = ""
    seeds: list[int] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, list[Any]] = field(default_factory=dict)


# ---------------------------------------------------------------------------- TOML
def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; errors name the file and the line."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; check the path given to --config") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML ({err}); fix the syntax") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None


def read_run_file(path: str | os.PathLike[str], *, preset: bool = False) -> RunFile:
    """Read and check the layout of a preset (``preset=True``: ``experiment`` required) or
    of a user ``--config`` file. Config values are checked later, against the experiment."""
    path = Path(path)
    data = read_toml(path)
    problems: list[str] = []
    unknown = sorted(set(data) - set(RUN_FILE_KEYS))
    for key in unknown:
        hint = _suggest(key, RUN_FILE_KEYS)
        extra = " (config values go in the [config] table)" if not hint else ""
        problems.append(
            f"{path}: unknown top-level key {key!r}{hint}{extra}; allowed: "
            f"{', '.join(RUN_FILE_KEYS)}"
        )
    run = RunFile(path)
    experiment = data.get("experiment")
    if experiment is None and preset:
        problems.append(f'{path}: missing top-level experiment = "<name>"')
    elif experiment is not None and not isinstance(experiment, str):
        problems.append(f"{path}: experiment must be a string, got {experiment!r}")
    else:
        run.experiment = experiment
    description = data.get("description", "")
    if not isinstance(description, str):
        problems.append(f"{path}: description must be a string, got {description!r}")
    else:
        run.description = description
    if "seeds" in data:
        seeds = data["seeds"]
        try:
            run.seeds = check_seeds(seeds, f"{path}: seeds")
        except ConfigError as err:
            problems += err.lines
    for table in ("config", "sweep"):
        value = data.get(table, {})
        if not isinstance(value, dict):
            problems.append(f"{path}: {table} must be a table ([{table}]), got {value!r}")
            data[table] = {}
    run.config = flatten(data.get("config", {}))
    for key, values in flatten(data.get("sweep", {})).items():
        if not isinstance(values, list) or not values:
            problems.append(
                f"{path}: sweep.{key} must be a non-empty list of values, got {values!r}"
            )
        else:
            run.sweep[key] = values
    if problems:
        raise ConfigError(problems)
    return run


def check_seeds(seeds: Any, what: str) -> list[int]:
    """Seeds: a non-empty list of distinct non-negative ints."""
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise ConfigError(f"{what} must be a non-empty list of integers ≥ 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{what} repeats a seed: {seeds}; each seed needs its own run")
    return list(seeds)


# ---------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``: the value is read as a TOML literal (``3``, ``0.1``,
    ``true``, ``[1, 2]``, ``"text"``), else kept as a plain string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise ConfigError(
            f"--set {text!r}: expected KEY=VALUE with KEY a config key (dots for nested "
            "tables), e.g. --set lr=0.01"
        )
    raw = raw.strip()
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables → dotted keys; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys → nested dicts (the inverse of :func:`flatten`)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return nested


def sweep_combinations(sweep: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of the swept values, in file order (one empty dict: no sweep)."""
    keys = list(sweep)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*sweep.values())]


def sweep_label(combo: Mapping[str, Any]) -> str:
    """A readable, file-system-safe name for one sweep combination: ``formulation=pinn``."""
    parts = []
    for key, value in combo.items():
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, list):
            text = "-".join(str(v) for v in value)
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    return re.sub(r"[^A-Za-z0-9._=,+\-]", "_", ",".join(parts))


# ---------------------------------------------------------------------------- validation
def build_config(config_cls: type[BaseModel], layers: Iterable[Layer]) -> BaseModel:
    """Merge the layers (later ones win) and validate them with the experiment's Config."""
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer in layers:
        for key, value in layer.values.items():
            # A later scalar replaces an earlier table of the same name and vice versa.
            for old in [k for k in merged if k.startswith(f"{key}.") or key.startswith(f"{k}.")]:
                del merged[old]
            merged[key] = value
            sources[key] = layer.source
    try:
        return config_cls.model_validate(unflatten(merged))
    except ValidationError as err:
        raise ConfigError(format_errors(err, config_cls, merged, sources)) from None


def format_errors(
    err: ValidationError,
    config_cls: type[BaseModel],
    values: Mapping[str, Any] | None = None,
    sources: Mapping[str, str] | None = None,
) -> list[str]:
    """One line per pydantic error: ``key = value (from SOURCE): problem; the fix``."""
    lines = []
    for error in err.errors(include_url=False):
        loc = error.get("loc", ())
        path = _path(loc)
        source = _source(loc, sources or {})
        where = f" (from {source})" if source else ""
        kind = error.get("type", "")
        ctx = error.get("ctx") or {}
        if kind == "extra_forbidden":
            allowed = _fields_at(config_cls, loc[:-1])
            hint = _suggest(str(loc[-1]), allowed or [])
            listing = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{path}{where}: unknown key{hint}{listing}")
            continue
        if kind == "missing":
            lines.append(f"{path}: required key missing; set it in [config] or with --set")
            continue
        shown = f" = {_show(error.get('input'))}" if "input" in error else ""
        lines.append(f"{path}{shown}{where}: {_problem(kind, ctx, error.get('msg', ''))}")
    return lines


def _problem(kind: str, ctx: Mapping[str, Any], msg: str) -> str:
    if kind in ("literal_error", "enum"):
        return f"not an allowed value; allowed values: {ctx.get('expected', '?')}"
    bounds = {
        "greater_than_equal": ("≥", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("≤", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        sign, name = bounds[kind]
        return f"out of range; must be {sign} {ctx.get(name)}"
    types_ = {
        "int_parsing": "an integer",
        "int_type": "an integer",
        "int_from_float": "an integer",
        "float_parsing": "a number",
        "float_type": "a number",
        "bool_parsing": "true or false",
        "bool_type": "true or false",
        "string_type": "a string",
        "list_type": "a list",
        "dict_type": "a table",
        "model_type": "a table",
    }
    if kind in types_:
        return f"wrong type; must be {types_[kind]}"
    if kind == "too_short" or kind == "too_long":
        return msg[0].lower() + msg[1:] if msg else kind
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _path(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(config)"


def _source(loc: Sequence[Any], sources: Mapping[str, str]) -> str | None:
    keys = [str(p) for p in loc if not isinstance(p, int)]
    for end in range(len(keys), 0, -1):
        found = sources.get(".".join(keys[:end]))
        if found:
            return found
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fields_at(model: type[BaseModel], loc: Sequence[Any]) -> list[str] | None:
    """Field names of the (nested) model reached by ``loc``; None when not a model."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return None
        current = _model_of(fields[part].annotation)
        if current is None:
            return None
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields is not None else None


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Flat keys whose values differ between two config dicts: ``{key: (old, new)}``."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
