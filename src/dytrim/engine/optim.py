"""Optimisers and learning-rate schedules of the two protocol families (reference Adam, USB SGD)."""

from __future__ import annotations

import math

import torch
from torch import nn

from dytrim.config import OptimConfig
from dytrim.config.schedule import to_step


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam (reference: lr 0.0015, no coupled decay) or SGD with nesterov momentum (USB).

    SGD follows USB: no weight decay on biases and BN parameters.
    """
    if cfg.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate for optimiser step `step` (0-based): linear warm-up, then constant or
    USB/FixMatch cosine lr * cos(7*pi*k / (16*K)) over the steps after warm-up."""
    warmup = to_step(cfg.warmup_steps, total_steps)  # a step count, or a fraction of train.steps
    if warmup and step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    k = step - warmup
    span = max(1, total_steps - warmup)
    return cfg.lr * math.cos(7.0 * math.pi * k / (16.0 * span))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
