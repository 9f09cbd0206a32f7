"""Typed run configuration: schema (sections), keys (get / set / help / allowed values), presets, validation,
and loading (defaults < preset < YAML file < `--set` overrides). Unknown keys and values of the wrong type or
outside their range stop the run before any work, with a message that names the key and the fix."""

from dytrim.config.keys import (  # noqa: I001  (after the schema, which the sections of components import)
    CHOICES,
    ON_OFF_KEYS,
    RENAMED,
    all_keys,
    apply_mapping,
    get_key,
    key_help,
    parse_override,
    set_key,
)
from dytrim.config.load import config_from_dict, dump_yaml, load_config
from dytrim.config.presets import list_presets, preset_mapping, read_yaml_mapping
from dytrim.config.schema import (
    NAMED_BY_REGISTRY,
    SECTIONS,
    AugConfig,
    ConfigError,
    DataConfig,
    DebiasConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SSLConfig,
    TrainConfig,
    config_section,
    register_choices,
    require,
)
from dytrim.config.validate import validate

__all__ = [
    "CHOICES", "NAMED_BY_REGISTRY", "ON_OFF_KEYS", "RENAMED", "SECTIONS", "AugConfig", "ConfigError", "DataConfig",
    "DebiasConfig",
    "ModelConfig", "OptimConfig", "RunConfig", "SSLConfig", "TrainConfig", "all_keys", "apply_mapping",
    "config_from_dict", "config_section", "dump_yaml", "get_key", "key_help", "list_presets", "load_config",
    "parse_override", "preset_mapping", "read_yaml_mapping", "register_choices", "require", "set_key", "validate",
]
