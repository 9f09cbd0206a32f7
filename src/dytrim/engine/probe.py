"""The solid-colour baseline image I and the prior probe π_θ(I) = softmax(z(I)).

I is defined in the network's (normalised) input space, as both reference codes feed it: zeros
(DyTrim: the data set's mean colour in pixel space) or ones (CDMAD: mean + 1 std). Feeding raw black
pixels instead would make I the background of every MNIST digit (DESIGN.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def baseline_image(kind: str, channels: int, height: int, width: int, device: torch.device | str) -> torch.Tensor:
    """I as a batch of one [1, C, H, W] in normalised space."""
    fill = {"zeros": 0.0, "ones": 1.0}[kind]
    return torch.full((1, channels, height, width), fill, device=device)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in eval mode inside the block and restore its previous mode after."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Run a model in train mode (batch statistics) without changing its BN running buffers: the forwards inside
    update copies, and the BN layers get their own buffers back afterwards (not written in place, so a forward
    with a graph inside stays differentiable: autograd keeps the buffers it saw)."""
    names = ("running_mean", "running_var", "num_batches_tracked")
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            saved.append((m, [getattr(m, n) for n in names]))
            for n in names:
                if getattr(m, n) is not None:
                    setattr(m, n, getattr(m, n).clone())
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        for m, tensors in saved:
            for n, t in zip(names, tensors, strict=True):
                setattr(m, n, t)
        model.train(was_training)


@torch.no_grad()
def step_probe(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The per-step z(I) [C] that CDMAD and DyTrim read: the model as it is (train mode in training, so like the
    reference code it moves the BN running buffers), no gradient, in fp32."""
    return model(image)[0].float()


@torch.no_grad()
def baseline_logits(model: nn.Module, image: torch.Tensor, mode: str) -> torch.Tensor:
    """z(I) [C] with BN in `mode`: "eval" (running statistics) or "train" (the image's own statistics,
    running buffers left untouched)."""
    if mode == "eval":
        was = model.training
        model.eval()
        out = model(image)[0].float()
        model.train(was)
        return out
    with frozen_bn_stats(model):
        return model(image)[0].float()


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """KL(p || q) for probability vectors (terms with p = 0 contribute 0)."""
    p, q = p.double(), q.double()
    nz = p > 0
    return float((p[nz] * (p[nz].log() - q[nz].clamp_min(1e-300).log())).sum())


def prior_probe(model: nn.Module, image: torch.Tensor, lb_prior: torch.Tensor) -> dict[str, object]:
    """π_θ(I) of `model` in eval mode and in train mode, and their KL to the labeled prior and uniform."""
    out: dict[str, object] = {}
    uniform = torch.full_like(lb_prior, 1.0 / len(lb_prior))
    for mode, suffix in (("eval", ""), ("train", "_trainmode")):
        prior = torch.softmax(baseline_logits(model, image, mode), dim=-1).cpu()
        out[f"prior_baseline{suffix}"] = [round(float(v), 6) for v in prior]
        out[f"kl_prior_labeled{suffix}"] = round(kl(prior, lb_prior.cpu()), 6)
        out[f"kl_prior_uniform{suffix}"] = round(kl(prior, uniform.cpu()), 6)
    return out
