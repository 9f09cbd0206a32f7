"""Per-step decomposition (Prop. 1): Δlog π(x_o) = −η · T(x_o) · Σ_b K(x_o, x_b) G(x_b) + O(η²).

T(x_o) = I − 1·π(x_o)ᵀ, K the empirical NTK (ntk.py), G = ∂L/∂z(x_b) of the step's loss (so the batch
mean and per-sample weights are inside G). The update inputs come in named groups (e.g. "supervised" and
"consistency" for FixMatch, Prop. 2); each group's term and each sample's share are kept. The real
Δlog π after one plain SGD step θ ← θ − η∇L is computed alongside, so the O(η²) remainder is measured.
All forwards run in eval mode (see ntk.py on BatchNorm).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dytrim.dynamics.ntk import DEFAULT_MAX_BYTES, empirical_ntk, eval_mode, inputs_per_chunk, logit_jacobian

LossFn = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]  # logits per group -> scalar loss


@dataclass
class Term:
    """One group's contribution: G [B, C], and pair [No, B, C] = −η T(x_o) K(x_o, x_b) G(x_b)."""

    name: str
    G: torch.Tensor
    pair: torch.Tensor
    K: torch.Tensor | None = None  # [No, B, C, C] when the kernel route was used

    @property
    def delta(self) -> torch.Tensor:
        """This group's predicted Δlog π at each observation [No, C]."""
        return self.pair.sum(dim=1)


@dataclass
class Decomposition:
    """T, the per-group terms, the first-order prediction and (optionally) the real change."""

    lr: float
    probs: torch.Tensor  # π(x_o) [No, C]
    T: torch.Tensor  # [No, C, C]
    terms: list[Term]
    real: torch.Tensor | None = None  # [No, C] log π after the SGD step minus before

    @property
    def predicted(self) -> torch.Tensor:
        return sum((t.delta for t in self.terms), torch.zeros_like(self.probs))

    def term(self, name: str) -> Term:
        return next(t for t in self.terms if t.name == name)

    def rel_error(self) -> float:
        """‖predicted − real‖ / ‖real‖ over all observations and classes."""
        if self.real is None:
            raise ValueError("no real step was taken (decompose_step(..., real=False))")
        return float((self.predicted - self.real).norm() / self.real.norm().clamp_min(1e-300))


def output_sensitivity(logits: torch.Tensor) -> torch.Tensor:
    """T = ∂log π/∂z = I − 1·πᵀ per row of logits [N, C] -> [N, C, C]."""
    p = F.softmax(logits, dim=-1)
    eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
    return eye.unsqueeze(0) - p.unsqueeze(1).expand(-1, p.shape[-1], -1)


def logit_gradients(loss_fn: LossFn, logits: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """G = ∂L/∂z for each group's logits (zeros for a group the loss does not use)."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in logits.items()}
    grads = torch.autograd.grad(loss_fn(leaves), list(leaves.values()), allow_unused=True)
    return {k: (g if g is not None else torch.zeros_like(v)) for (k, v), g in zip(leaves.items(), grads, strict=True)}


def _kernel_times_g(
    model: nn.Module, x_o: torch.Tensor, j_o: torch.Tensor | None, x_b: torch.Tensor, g: torch.Tensor,
    route: str, max_bytes: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """K(x_o, x_b) G(x_b) per pair [No, B, C]; route "ntk" builds K, route "grad" contracts J_bᵀG first."""
    if route == "ntk":
        k = empirical_ntk(model, x_o, x_b, max_bytes)
        return torch.einsum("obcd,bd->obc", k, g), k
    step = inputs_per_chunk(model, g.shape[-1], x_b.dtype, max_bytes)
    v = torch.cat([  # per-sample parameter gradients J_bᵀ G_b [B, P]
        torch.einsum("bcp,bc->bp", logit_jacobian(model, xb), gb)
        for xb, gb in zip(x_b.split(step), g.split(step), strict=True)
    ])
    return torch.einsum("ocp,bp->obc", j_o, v), None


def real_delta_logp(
    model: nn.Module, x_o: torch.Tensor, inputs: Mapping[str, torch.Tensor], loss_fn: LossFn, lr: float
) -> torch.Tensor:
    """log π(x_o) after one plain SGD step on loss_fn (a copy of the model; eval mode) minus before."""
    m = copy.deepcopy(model)
    with eval_mode(m):
        with torch.no_grad():
            before = F.log_softmax(m(x_o), dim=-1)
        params = [p for p in m.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss_fn({k: m(x) for k, x in inputs.items()}), params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    p.sub_(lr * g)
            return F.log_softmax(m(x_o), dim=-1) - before


def decompose_step(
    model: nn.Module,
    x_o: torch.Tensor,
    inputs: Mapping[str, torch.Tensor],
    loss_fn: LossFn,
    lr: float,
    route: str = "grad",
    real: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Decomposition:
    """T, K·G and G for each input group at observations x_o, the first-order prediction and the real step."""
    if route not in ("ntk", "grad"):
        raise ValueError(f"route must be 'ntk' or 'grad', got {route!r}")
    with torch.no_grad(), eval_mode(model):
        logits_o = model(x_o)
        logits = {k: model(x) for k, x in inputs.items()}
    t = output_sensitivity(logits_o)
    gs = logit_gradients(loss_fn, logits)
    j_o = None
    if route == "grad":
        j_o = logit_jacobian(model, x_o, inputs_per_chunk(model, t.shape[-1], x_o.dtype, max_bytes))
    terms = []
    for name, x_b in inputs.items():
        kg, k = _kernel_times_g(model, x_o, j_o, x_b, gs[name], route, max_bytes)
        terms.append(Term(name, gs[name], -lr * torch.einsum("oij,obj->obi", t, kg), k))
    delta = real_delta_logp(model, x_o, inputs, loss_fn, lr) if real else None
    return Decomposition(lr, F.softmax(logits_o, dim=-1), t, terms, delta)


def error_vs_lr(
    model: nn.Module, x_o: torch.Tensor, inputs: Mapping[str, torch.Tensor], loss_fn: LossFn, lrs: list[float],
    route: str = "grad",
) -> list[dict[str, float]]:
    """Relative error of the first-order prediction against the real SGD step for each η (the prediction is
    linear in η, so it is computed once at η = 1 and scaled)."""
    unit = decompose_step(model, x_o, inputs, loss_fn, 1.0, route=route, real=False).predicted
    rows = []
    for lr in lrs:
        real = real_delta_logp(model, x_o, inputs, loss_fn, lr)
        err = lr * unit - real
        rows.append({
            "lr": lr,
            "rel_error": float(err.norm() / real.norm().clamp_min(1e-300)),
            "max_abs_error": float(err.abs().max()),
            "max_abs_real": float(real.abs().max()),
        })
    return rows
