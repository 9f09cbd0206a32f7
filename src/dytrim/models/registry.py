"""The model registry: backbones register here by name (`@register_model`); `create_model` builds one."""

from __future__ import annotations

from typing import Any

from torch import nn

from dytrim.config import register_choices
from dytrim.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")
register_choices("model.name", MODELS.names)  # the config accepts exactly the registered names
register_model = MODELS.register


def create_model(name: str, num_classes: int, in_channels: int = 3, **kw: Any) -> nn.Module:
    """Build a registered model by name; unknown names raise KeyError with close matches."""
    return MODELS.create(name, num_classes=num_classes, in_channels=in_channels, **kw)


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    return MODELS.names()
