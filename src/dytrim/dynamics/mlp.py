"""The small MLP of the paper's analysis (Prop. 3 / Fig. 1): flatten -> Linear -> [norm] -> ReLU -> Linear.

It lives here rather than in the model zoo because it is an analysis object: the theory is stated for a
two-layer MLP, with the normalisation layer (BatchNorm or LayerNorm) in front of the activation so the
hidden bias is absorbed into the norm's affine shift.
"""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("none", "batch", "layer")


class SmallMLP(nn.Module):
    """z(x) = W2 relu(norm(W1 x [+ b1])) + b2 for images [N, C, H, W] (or flat [N, D]) -> logits [N, classes].

    With a norm layer the first Linear has no bias (the norm's shift plays its role), as in Prop. 3.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 32, norm: str = "none") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.fc1 = nn.Linear(in_dim, hidden, bias=norm == "none")
        self.norm: nn.Module = {
            "none": nn.Identity(),
            "batch": nn.BatchNorm1d(hidden),
            "layer": nn.LayerNorm(hidden),
        }[norm]
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.norm(self.fc1(torch.flatten(x, 1)))))
