"""CoSSL's pure parts (debias/cossl.py): weight imprinting, the warm-up's synthetic TFE features, the per-step TFE
replacement, PyTorch's default Linear initialisation from a generator of ours, and the teacher head with its own
Adam and its own EMA.

Each function draws only from the generator it is given (numpy), in a documented order, so the tests re-derive the
draws and a resume continues them.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def imprint(feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C, F] the bias-free imprinted head: row c = mean of the features of class c, L2-normalised
    (official `weight_imprint`; a class without features keeps a zero row)."""
    w = torch.zeros(num_classes, feats.shape[1], dtype=feats.dtype, device=feats.device)
    for c in range(num_classes):
        rows = feats[labels == c]
        if len(rows):
            m = rows.mean(0)
            w[c] = m / m.norm(p=2)
    return w


def tfe_probability(counts: list[int]) -> torch.Tensor:
    """[C] float64 (N_max − N_c) / N_max: how often a labeled feature of class c is blended per step."""
    n = torch.tensor(counts, dtype=torch.float64)
    return (n.max() - n) / n.max()


def synthetic_sizes(counts: list[int]) -> list[int]:
    """N_max − N_c synthetic features per class (0 for the largest classes)."""
    top = max(counts)
    return [top - n for n in counts]


def synthetic_features(lb_feats: torch.Tensor, lb_labels: torch.Tensor, lb_probs: torch.Tensor,
                       ulb_feats: torch.Tensor, ulb_probs: torch.Tensor, counts: list[int], beta: float,
                       rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The warm-up's synthetic set (official `TFE`): for each class c with N_c < N_max, in class order, N_max − N_c
    features λ·a + (1 − λ)·b with target c; a = a labeled feature of c drawn with replacement, b_i = the i-th most
    c-probable feature among the other classes' labeled features (in position order) followed by every unlabeled
    one (stable sort on the probability of c, descending; i wraps round a pool smaller than the need), λ ~ Beta(β, β).
    Draws per class: the N a-indices (`rng.choice` of range(n_c), replace), then the N λ (`rng.beta`)."""
    feats, labels = [], []
    for c, need in enumerate(synthetic_sizes(counts)):
        own = lb_feats[lb_labels == c]
        if need <= 0 or len(own) == 0:
            continue
        others = lb_labels != c
        pool = torch.cat([lb_feats[others], ulb_feats])
        score = torch.cat([lb_probs[others, c], ulb_probs[:, c]])
        order = torch.argsort(-score, stable=True)
        a_idx = torch.from_numpy(rng.choice(len(own), size=need, replace=True)).to(own.device)
        lam = torch.from_numpy(rng.beta(beta, beta, size=need)).to(own.device, own.dtype)[:, None]
        b = pool[order[torch.arange(need, device=order.device) % len(order)]]
        feats.append(lam * own[a_idx] + (1 - lam) * b)
        labels.append(torch.full((need,), c, dtype=torch.long, device=own.device))
    if not feats:
        return lb_feats.new_zeros((0, lb_feats.shape[1])), torch.zeros(0, dtype=torch.long, device=lb_feats.device)
    return torch.cat(feats), torch.cat(labels)


def tfe_replace(x: torch.Tensor, y: torch.Tensor, u: torch.Tensor, prob: torch.Tensor, max_lam: float,
                rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-step TFE (official `train`): labeled feature x_i of class y_i becomes λ_i x_i + (1 − λ_i) u_i with
    probability prob[y_i], λ_i ~ U(max_lam, 1), its label kept. Draws: B uniforms r (replace where r < prob[y]),
    then B λ (`rng.uniform(max_lam, 1)`), both for every sample (official: λ only where replaced).
    Returns (features, replaced mask)."""
    n = len(y)
    r = torch.from_numpy(rng.random(n)).to(x.device)
    lam = torch.from_numpy(rng.uniform(max_lam, 1.0, size=n)).to(x.device, x.dtype)[:, None]
    hit = r < prob.to(x.device)[y]
    mixed = lam * x + (1 - lam) * u[:n]
    return torch.where(hit[:, None], mixed, x), hit


def default_linear(in_features: int, out_features: int, rng: np.random.Generator,
                   device: torch.device | str = "cpu") -> nn.Linear:
    """A Linear with PyTorch's default initialisation (`reset_parameters`: weight and bias ~ U(−1/√F, 1/√F)), drawn
    from `rng` (weight, then bias), so every process and every resume draws the same head."""
    head = nn.Linear(in_features, out_features)
    bound = 1.0 / math.sqrt(in_features)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(rng.uniform(-bound, bound, size=(out_features, in_features))))
        head.bias.copy_(torch.from_numpy(rng.uniform(-bound, bound, size=out_features)))
    return head.to(device)


class Teacher:
    """A linear head trained on features with its own Adam (L2 `weight_decay` on the weight, none on the bias, as the
    official param groups) and its own EMA (ema ← d·ema + (1 − d)·head after every step, no decay)."""

    def __init__(self, head: nn.Linear, lr: float, weight_decay: float, ema_decay: float,
                 ema: nn.Linear | None = None) -> None:
        self.head, self.ema_decay = head, ema_decay
        self.ema = copy.deepcopy(head) if ema is None else ema
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.Adam([{"params": [head.weight], "weight_decay": weight_decay},
                                           {"params": [head.bias], "weight_decay": 0.0}], lr=lr)

    def step(self, feats: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One update on (features, one-hot or soft targets): −mean Σ t log softmax(head(f)); returns the loss and
        the logits (detached)."""
        logits = self.head(feats)
        loss = -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.head.parameters(), strict=True):
                e.mul_(self.ema_decay).add_(p, alpha=1.0 - self.ema_decay)
        return loss.detach(), logits.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])


class TeacherModel(nn.Module):
    """head(model.forward_features(x)): the EMA backbone through the EMA teacher head (CoSSL's evaluation)."""

    def __init__(self, model: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.model.forward_features(x))

    def plain_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's weights with its classifier `head` replaced by the teacher's (same Linear(F, C) shape): an
        ordinary network that predicts exactly as this one (`dytrim export`)."""
        state = dict(self.model.state_dict())
        for k, v in self.head.state_dict().items():
            state[f"head.{k}"] = v
        return state
