"""Empirical NTK K(x1, x2) = J(x1) J(x2)ᵀ of a model's logits, with J(x) = ∂z(x)/∂θ [C, P] (torch.func).

Jacobians come from `vmap(jacrev(...))` over single inputs. `empirical_ntk` computes everything at once
when both sets of Jacobians fit in `max_bytes`, else walks chunks of inputs so that only two chunks'
Jacobians are alive at a time. The model runs in eval mode: with train-mode BatchNorm a sample's logits
depend on its whole batch, so a per-pair C×C kernel is not defined (running statistics are used).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from dytrim.engine.probe import eval_mode

DEFAULT_MAX_BYTES = 256 * 2**20


def trainable_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached trainable parameters by name, in `named_parameters` order (the flattening order of J)."""
    return {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}


def num_params(model: nn.Module) -> int:
    """P: the number of trainable parameters (columns of J)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def logit_jacobian(model: nn.Module, x: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """J [N, C, P] of the eval-mode logits at inputs x [N, ...], built `chunk_size` inputs at a time."""
    params = trainable_params(model)
    buffers = dict(model.named_buffers())

    def logits_one(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (p, buffers), (xi.unsqueeze(0),)).squeeze(0)

    jac_fn = vmap(jacrev(logits_one), in_dims=(None, 0))
    pieces = []
    with eval_mode(model):
        for chunk in x.split(chunk_size or max(1, len(x))):
            jac = jac_fn(params, chunk)
            n, c = len(chunk), next(iter(jac.values())).shape[1]
            pieces.append(torch.cat([jac[k].reshape(n, c, -1) for k in params], dim=-1))
    return torch.cat(pieces)


def ntk_from_jacobians(j1: torch.Tensor, j2: torch.Tensor) -> torch.Tensor:
    """K [N1, N2, C, C] with K[a, b] = J1[a] J2[b]ᵀ, as one matrix product."""
    n1, c, p = j1.shape
    n2 = j2.shape[0]
    return (j1.reshape(n1 * c, p) @ j2.reshape(n2 * c, p).T).reshape(n1, c, n2, c).permute(0, 2, 1, 3)


def inputs_per_chunk(model: nn.Module, num_classes: int, dtype: torch.dtype, max_bytes: int) -> int:
    """How many inputs' Jacobians ([C, P] each) fit in `max_bytes` (at least 1)."""
    per_input = num_classes * num_params(model) * torch.empty((), dtype=dtype).element_size()
    return max(1, int(max_bytes // per_input))


def empirical_ntk(
    model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> torch.Tensor:
    """K(x1, x2) [N1, N2, C, C] (x2 defaults to x1); chunked when the Jacobians exceed `max_bytes`."""
    same = x2 is None
    x2 = x1 if x2 is None else x2
    with torch.no_grad(), eval_mode(model):
        num_classes = model(x1[:1]).shape[-1]
    fit = inputs_per_chunk(model, num_classes, x1.dtype, max_bytes)
    if len(x1) + (0 if same else len(x2)) <= fit:  # everything at once
        j1 = logit_jacobian(model, x1)
        return ntk_from_jacobians(j1, j1 if same else logit_jacobian(model, x2))
    step = max(1, fit // 2)  # two chunks alive at a time
    out = x1.new_empty(len(x1), len(x2), num_classes, num_classes)
    for i in range(0, len(x1), step):
        j1 = logit_jacobian(model, x1[i : i + step])
        for j in range(0, len(x2), step):
            j2 = j1 if same and i == j else logit_jacobian(model, x2[j : j + step])
            out[i : i + step, j : j + step] = ntk_from_jacobians(j1, j2)
    return out
