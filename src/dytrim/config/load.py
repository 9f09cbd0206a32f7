"""Resolving a run's config: dataclass defaults < preset < YAML file < `--set` overrides, then validation."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import yaml

from dytrim.config.keys import apply_mapping, parse_override, set_key
from dytrim.config.presets import preset_mapping, read_yaml_mapping
from dytrim.config.schedule import adapt_eval_every
from dytrim.config.schema import RunConfig
from dytrim.config.validate import validate


def load_config(
    preset: str | None = None, overrides: list[str] | None = None, yaml_file: str | Path | None = None
) -> RunConfig:
    """Resolve defaults < preset < YAML file < overrides, then validate. The user's keys (YAML file, overrides) are
    kept as given; a preset's train.eval_every adapts to a short run (`schedule.adapt_eval_every`, one warning)."""
    cfg = RunConfig()
    if preset:
        apply_mapping(cfg, preset_mapping(preset))
        cfg.preset = preset
    users: set[str] = set()  # dotted keys the user set
    if yaml_file:
        mapping = read_yaml_mapping(yaml_file, "--config")
        apply_mapping(cfg, mapping)
        users |= _dotted(mapping)
    for text in overrides or []:
        key, value = parse_override(text)
        set_key(cfg, key, value)
        users.add(key)
    note = adapt_eval_every(cfg, explicit="train.eval_every" in users)
    validate(cfg)
    if note:
        warnings.warn(note, stacklevel=2)
    return cfg


def _dotted(mapping: dict[str, Any], prefix: str = "") -> set[str]:
    """The dotted keys a nested mapping sets (as apply_mapping reads it)."""
    out: set[str] = set()
    for k, v in mapping.items():
        out |= _dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return out


def config_from_dict(mapping: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from its stored dict (config.yaml of a run)."""
    cfg = RunConfig()
    apply_mapping(cfg, mapping)
    validate(cfg)
    return cfg


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
