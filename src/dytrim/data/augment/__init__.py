"""Batched, on-device image augmentation for FixMatch-style training, equal to the reference's Pillow calls."""

from dytrim.data.augment.ops import cutout_abs
from dytrim.data.augment.policy import RAND_AUGMENT_OPS, apply_op, op_value, rand_augment
from dytrim.data.augment.views import cutout, normalize, strong_augment, weak_augment

__all__ = [
    "RAND_AUGMENT_OPS",
    "apply_op",
    "cutout",
    "cutout_abs",
    "normalize",
    "op_value",
    "rand_augment",
    "strong_augment",
    "weak_augment",
]
