"""Dotted config keys: listing, reading and setting them (type-checked), their help text, and their allowed
values, which come from the registries (data sets, models, SSL bases, debiasers) and the sections themselves."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any

from dytrim.config.schema import NAMED_BY_REGISTRY, SECTIONS, ConfigError, RunConfig
from dytrim.config.yamlfile import capped, load_yaml_text, shown
from dytrim.suggest import did_you_mean

#: allowed values of the core keys that no registry names
STATIC_CHOICES: dict[str, tuple[str, ...]] = {
    "data.pool": ("paper", "disjoint"),
    "optim.name": ("adam", "sgd"),
    "optim.schedule": ("constant", "cosine"),
    "optim.ema_buffers": ("ema", "copy"),
    "train.forward": ("separate", "joint"),
    "train.precision": ("fp32", "bf16", "auto"),
    "train.compile": ("off", "on", "auto"),
    "debias.baseline": ("zeros", "ones"),
}

#: str keys whose values include on / off, which YAML 1.1 reads as booleans
ON_OFF_KEYS = ("train.compile",)

#: keys of earlier versions -> the keys that hold them now (a config.yaml of an older run still loads)
RENAMED: dict[str, tuple[str, ...]] = {
    "debias.la_tau": ("logit_adjust.tau",),
    "debias.la_unlabeled": ("logit_adjust.unlabeled",),
    "debias.reweight_kind": ("reweight.kind",),
    "debias.reweight_beta": ("reweight.beta", "resample.beta"),
    "debias.reweight_unlabeled": ("reweight.unlabeled",),
    "debias.resample_kind": ("resample.kind",),
    "debias.test_bn": ("cdmad.test_bn",),
}


class _Choices(Mapping[str, tuple[str, ...]]):
    """Key -> allowed values: the static ones, the registries' names (schema.register_choices) and each section's
    CHOICES, read when asked (so a newly registered model or method is allowed without touching this file)."""

    def _all(self) -> dict[str, tuple[str, ...]]:
        out = dict(STATIC_CHOICES) | {k: tuple(names()) for k, names in NAMED_BY_REGISTRY.items()}
        for name, cls in SECTIONS.items():
            out |= {f"{name}.{k}": tuple(v) for k, v in getattr(cls, "CHOICES", {}).items()}
        return out

    def __getitem__(self, key: str) -> tuple[str, ...]:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


CHOICES: Mapping[str, tuple[str, ...]] = _Choices()


def _children(node: Any) -> dict[str, Any]:
    """The fields of a section (or of RunConfig, with the components' sections after the core ones)."""
    if isinstance(node, RunConfig):
        return {name: getattr(node, name) for name in node.section_names()}
    return {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}


def all_keys(cfg: Any = None, prefix: str = "") -> list[str]:
    """Every dotted key the configuration accepts."""
    cfg = cfg if cfg is not None else RunConfig()
    keys = []
    for name, value in _children(cfg).items():
        keys += all_keys(value, prefix + name + ".") if dataclasses.is_dataclass(value) else [prefix + name]
    return keys


def get_key(cfg: Any, key: str) -> Any:
    """The value of a dotted key."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _field_comments(cls: type) -> tuple[dict[str, str], dict[str, str]]:
    """The comment beside each field in the class's source, continuation lines included, and the section
    headings: {field: heading} for the first field below a standalone comment line.

    A continuation is a comment line written with a hanging indent (`#   more`) right below the field or another
    continuation. A comment line with one space (`# heading`) is a heading of the fields below it, never a
    continuation of the previous key's help; a blank line or any other line also ends that help."""
    comments: dict[str, str] = {}
    headings: dict[str, str] = {}
    last, heading = None, ""
    for line in inspect.getsource(cls).splitlines():
        if m := re.match(r"\s+(\w+): [^=]+=[^#]*(?:#\s?(.*))?$", line):
            last = m.group(1)
            comments[last] = (m.group(2) or "").strip()
            if heading:
                headings[last], heading = heading, ""
        elif last and (m := re.match(r"\s+#\s{2,}(\S.*)$", line)):
            comments[last] += " " + m.group(1).strip()
        else:
            last = None
            if m := re.match(r"\s+#\s?(\S.*)$", line):
                heading = f"{heading} {m.group(1).strip()}".strip()
    return comments, headings


def key_help() -> list[dict[str, str]]:
    """Every key with its type, default, allowed values (CHOICES, as validation uses them) and meaning (the
    comment beside its field, continuation lines included) and the heading of a group of keys that starts there
    (a standalone comment above the field; "" for most): what `dytrim presets --keys` prints."""
    default = RunConfig()
    choices = dict(CHOICES)
    out = []
    for section, node in [(None, default), *_children(default).items()]:
        if not dataclasses.is_dataclass(node):
            continue
        comments, headings = _field_comments(type(node))
        hints = typing.get_type_hints(type(node))
        for name, value in _children(node).items():
            if dataclasses.is_dataclass(value) or name not in hints:
                continue  # a section: its keys come with it
            key = name if section is None else f"{section}.{name}"
            kind = getattr(hints[name], "__name__", str(hints[name]).replace("typing.", ""))
            out.append({"key": key, "type": kind, "default": repr(value),
                        "allowed": " | ".join(choices.get(key, ())), "meaning": comments.get(name, ""),
                        "heading": headings.get(name, "")})
    return out


def _unknown_key(key: str) -> ConfigError:
    hint = did_you_mean(key, all_keys()) if len(key) <= 100 else ""
    return ConfigError(f"unknown config key '{capped(key, 100)}'.{hint} (`dytrim presets --keys` lists all keys)")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against the field's annotation; ints widen to floats, nothing else converts."""
    ann = annotation
    args = typing.get_args(ann)
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if set(args) == {int, float}:  # a schedule point: an int is a step, a float a fraction (config/schedule.py)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            args = (float,)
        ann = next(a for a in args if a is not type(None))
    if typing.get_origin(ann) is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"config key '{key}' expects a list of names (YAML list or a,b,c), got {shown(value)}")
    if ann is bool:
        if isinstance(value, bool):
            return value
    elif ann is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif ann is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-8 (no dot) as text: a number written so is still a number
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # YAML's .nan / .inf
                raise ConfigError(f"config key '{key}' expects a finite number, got {shown(value)}")
            return float(value)
    elif ann is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool) and key in ON_OFF_KEYS:  # YAML reads a bare on / off as a boolean
            return "on" if value else "off"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:  # pragma: no cover - only the types above are used
        return value
    raise ConfigError(f"config key '{key}' expects {ann.__name__}, got {shown(value)} ({type(value).__name__})")


def set_key(cfg: RunConfig, key: str, value: Any) -> None:
    """Set one dotted key, refusing unknown keys and wrong types (a renamed key sets the keys that replace it)."""
    if key in RENAMED:
        for new in RENAMED[key]:
            set_key(cfg, new, value)
        return
    parts = key.split(".")
    node: Any = cfg
    for part in parts[:-1]:
        children = _children(node) if dataclasses.is_dataclass(node) else {}
        if part not in children:
            raise _unknown_key(key)
        node = children[part]
    children = _children(node) if dataclasses.is_dataclass(node) else {}
    leaf = parts[-1]
    if leaf not in children or dataclasses.is_dataclass(children[leaf]):
        raise _unknown_key(key)
    setattr(node, leaf, _coerce(key, value, typing.get_type_hints(type(node))[leaf]))


def apply_mapping(cfg: RunConfig, mapping: dict[str, Any], prefix: str = "") -> None:
    """Apply a nested mapping (as read from YAML) key by key."""
    for k, v in mapping.items():
        key = prefix + str(k)
        if isinstance(v, dict):
            apply_mapping(cfg, v, key + ".")
        else:
            set_key(cfg, key, v)


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> (key, YAML-parsed value), read by the bounded reader (config/yamlfile.py)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{capped(text)}'")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not raw.strip():
        return key, ""
    return key, load_yaml_text(raw, f"--set {capped(key, 60)}: cannot parse value '{capped(raw, 60)}'")
