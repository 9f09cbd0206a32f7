"""Resolving a run's config: dataclass defaults < preset < YAML file < `--set` overrides, then validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dytrim.config.keys import apply_mapping, parse_override, set_key
from dytrim.config.presets import preset_mapping, read_yaml_mapping
from dytrim.config.schema import RunConfig
from dytrim.config.validate import validate


def load_config(
    preset: str | None = None, overrides: list[str] | None = None, yaml_file: str | Path | None = None
) -> RunConfig:
    """Resolve defaults < preset < YAML file < overrides, then validate."""
    cfg = RunConfig()
    if preset:
        apply_mapping(cfg, preset_mapping(preset))
        cfg.preset = preset
    if yaml_file:
        apply_mapping(cfg, read_yaml_mapping(yaml_file, "--config"))
    for text in overrides or []:
        set_key(cfg, *parse_override(text))
    validate(cfg)
    return cfg


def config_from_dict(mapping: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from its stored dict (config.yaml of a run)."""
    cfg = RunConfig()
    apply_mapping(cfg, mapping)
    validate(cfg)
    return cfg


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
