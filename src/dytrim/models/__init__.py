"""Model zoo: every backbone maps images [N, C, H, W] to logits [N, num_classes].

Importing this package registers all models. Shared conventions (relied on by the library):
- global average pooling before the head, so any H, W >= 16 works, and in_channels 1 or 3;
- the network ends with BatchNorm -> (Leaky)ReLU -> global pool -> Linear head (attributes
  `final_bn` and `head`), with `forward_features(x)` giving the pooled head input [N, num_features].
  With a train-mode batch of identical solid-colour images this makes the logits depend only on the
  BN statistics path, BN shifts and head bias (the "baseline image" used by the debiasing methods).
"""

from __future__ import annotations

from dytrim.models import cnn, resnet, vit, wrn  # noqa: F401  (each registers its models)
from dytrim.models.registry import MODELS, create_model, list_models, register_model

__all__ = ["MODELS", "register_model", "create_model", "list_models"]
