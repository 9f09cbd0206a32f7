"""Presets (named YAML files shipped in dytrim/configs, which may extend one another) and plain-YAML reading."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dytrim.config.schema import ConfigError
from dytrim.suggest import did_you_mean


def _preset_files() -> dict[str, Any]:
    folder = resources.files("dytrim") / "configs"
    return {p.name[: -len(".yaml")]: p for p in folder.iterdir() if p.name.endswith(".yaml")}


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description."""
    out = {}
    for name, path in sorted(_preset_files().items()):
        out[name] = str(yaml.safe_load(path.read_text()).get("description", ""))
    return out


def preset_mapping(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    files = _preset_files()
    if name not in files:
        hint = did_you_mean(name, files)
        raise ConfigError(f"unknown preset '{name}'.{hint} `dytrim presets` lists them.")
    if name in seen:
        raise ConfigError(f"preset '{name}' extends itself: {' -> '.join(seen + (name,))}")
    raw = yaml.safe_load(files[name].read_text()) or {}
    raw.pop("description", None)
    parent = raw.pop("extends", None)
    base = preset_mapping(parent, seen + (name,)) if parent else {}
    return _merge(base, raw)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file of plain values as a dict; every way it can be wrong is a ConfigError naming `what` and
    the file (missing, a folder, unreadable, a syntax error with its line and column, a Python tag, not a
    mapping). Only plain YAML is read (safe_load): a tag like !!python/object never constructs anything."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{what}: no such file '{p}'")
    if p.is_dir():
        raise ConfigError(f"{what}: '{p}' is a folder; give a YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: cannot read '{p}' ({getattr(exc, 'strerror', None) or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        if isinstance(exc, yaml.constructor.ConstructorError):
            problem += " (only plain YAML values are read; Python tags are refused)"
        raise ConfigError(f"{what}: '{p}'{where}: {problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: '{p}' is not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: '{p}' must hold a mapping of config keys (key: value lines); "
                          f"it holds a {type(data).__name__}")
    return data
