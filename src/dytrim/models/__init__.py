"""Model zoo: every backbone maps images [N, C, H, W] to logits [N, num_classes].

Importing this package registers all models. Shared conventions (relied on by the library):
- global average pooling before the head, so any H, W >= 16 works, and in_channels 1 or 3;
- the network ends with BatchNorm -> (Leaky)ReLU -> global pool -> Linear head (attributes
  `final_bn` and `head`), with `forward_features(x)` giving the pooled head input [N, num_features].
  With a train-mode batch of identical solid-colour images this makes the logits depend only on the
  BN statistics path, BN shifts and head bias (the "baseline image" used by the debiasing methods).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import register_choices
from ..registry import Registry

MODELS: Registry[nn.Module] = Registry("model")
register_choices("model.name", MODELS.names)  # the config accepts exactly the registered names
register_model = MODELS.register


def create_model(name: str, num_classes: int, in_channels: int = 3, **kw: Any) -> nn.Module:
    """Build a registered model by name; unknown names raise KeyError with close matches."""
    return MODELS.create(name, num_classes=num_classes, in_channels=in_channels, **kw)


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    return MODELS.names()


from . import cnn, resnet, vit, wrn  # noqa: E402,F401  (registers the models; must follow register_model)

__all__ = ["MODELS", "register_model", "create_model", "list_models"]
