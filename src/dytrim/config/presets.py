"""Presets (named YAML files shipped in dytrim/configs, which may extend one another) and plain-YAML reading."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from dytrim.config.schema import ConfigError
from dytrim.config.yamlfile import load_yaml_text, read_yaml_file
from dytrim.suggest import did_you_mean


def _preset_files() -> dict[str, Any]:
    folder = resources.files("dytrim") / "configs"
    return {p.name[: -len(".yaml")]: p for p in folder.iterdir() if p.name.endswith(".yaml")}


def _read_preset(name: str, file: Any) -> dict[str, Any]:
    """A shipped preset, read by the same bounded reader as a user's file (duplicate keys are refused there too)."""
    data = load_yaml_text(file.read_text(encoding="utf-8"), f"preset '{name}'") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset '{name}' must hold a mapping of config keys; it holds a {type(data).__name__}")
    return data


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description."""
    files = sorted(_preset_files().items())
    return {name: str(_read_preset(name, path).get("description", "")) for name, path in files}


def preset_mapping(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    files = _preset_files()
    if name not in files:
        hint = did_you_mean(name, files)
        raise ConfigError(f"unknown preset '{name}'.{hint} `dytrim presets` lists them.")
    if name in seen:
        raise ConfigError(f"preset '{name}' extends itself: {' -> '.join(seen + (name,))}")
    raw = _read_preset(name, files[name])
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
    """A YAML file of plain values as a dict, read by the bounded reader (config/yamlfile.py: size, aliases,
    nesting, duplicate keys); every way it can be wrong is a ConfigError naming `what` and the file (missing, a
    folder, unreadable, a syntax error with its line and column, a Python tag, not a mapping). Only plain YAML is
    read: a tag like !!python/object never constructs anything."""
    data = read_yaml_file(path, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: '{Path(path).expanduser()}' must hold a mapping of config keys (key: value lines); "
                          f"it holds a {type(data).__name__}")
    return data
