"""Real long-tailed MNIST for the analysis commands: the `mnist-lt-fixmatch` preset's split of the
embedded 10k digits, FixMatch-style batches (weak/strong views from dytrim.data.augment), balanced
observation digits from the test part, and a short supervised warm-up so pseudo-labels are informative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dytrim.config import RunConfig, load_config
from dytrim.data.augment import normalize, strong_augment, weak_augment
from dytrim.data.sources import LTData, load_data
from dytrim.dynamics.mlp import SmallMLP
from dytrim.engine.losses import soft_cross_entropy

PRESET = "mnist-lt-fixmatch"


def mnist_config(gamma: float = 100.0, seed: int = 0, extra: list[str] | None = None) -> RunConfig:
    """The preset with imbalance γ for both pools (γ = 1: balanced) and the given seed."""
    sets = [f"data.imb_ratio_l={gamma}", f"data.imb_ratio_u={gamma}", f"seed={seed}", "train.device=cpu"]
    return load_config(PRESET, sets + list(extra or []))


@dataclass
class FixMatchViews:
    """One step's inputs (normalised float tensors) plus the hidden true labels of the unlabeled part."""

    lb_pos: torch.Tensor
    x_lb: torch.Tensor
    y_lb: torch.Tensor
    ulb_pos: torch.Tensor
    x_ulb_w: torch.Tensor
    x_ulb_s: torch.Tensor
    y_ulb: torch.Tensor


class BatchMaker:
    """Draws labeled/unlabeled batches of an LTData with its own seeded generator (no global RNG)."""

    def __init__(self, data: LTData, cfg: RunConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        self.data, self.aug, self.dtype = data, cfg.aug, dtype
        self.gen = torch.Generator().manual_seed(seed)

    def labeled(self, n: int, pos: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(positions, weak view, labels); positions drawn uniformly unless given (e.g. by a re-sampler)."""
        d = self.data
        if pos is None:
            pos = torch.randint(len(d.lb_idx), (n,), generator=self.gen)
        idx = d.lb_idx[pos]
        x = normalize(weak_augment(d.x_train[idx], self.gen, self.aug.pad, self.aug.flip), d.mean, d.std)
        return pos, x.to(self.dtype), d.y_train[idx]

    def fixmatch(
        self, n_lb: int, n_ulb: int, lb_pos: torch.Tensor | None = None, ulb_pos: torch.Tensor | None = None
    ) -> FixMatchViews:
        """A labeled batch and an unlabeled batch with its weak and one strong view (positions drawn
        uniformly unless given)."""
        d, a = self.data, self.aug
        lb_pos, x_lb, y_lb = self.labeled(n_lb, lb_pos)
        if ulb_pos is None:
            ulb_pos = torch.randint(len(d.ulb_idx), (n_ulb,), generator=self.gen)
        x_u = d.x_train[d.ulb_idx[ulb_pos]]
        x_w = normalize(weak_augment(x_u, self.gen, a.pad, a.flip), d.mean, d.std)
        x_s = strong_augment(x_u, self.gen, d.mean, d.std, n_ops=a.n_ops, magnitude=a.magnitude,
                             cutout_size=a.cutout, pad=a.pad, flip=a.flip)
        return FixMatchViews(lb_pos, x_lb, y_lb, ulb_pos, x_w.to(self.dtype), x_s.to(self.dtype),
                             d.y_train[d.ulb_idx[ulb_pos]])


def observation_digits(
    data: LTData, per_class: int, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` test digits of every class (seeded pick), normalised: the observation points x_o."""
    gen = torch.Generator().manual_seed(seed + 17)
    picks = []
    for c in range(data.num_classes):
        idx = torch.nonzero(data.y_test == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    idx = torch.cat(picks)
    return normalize(data.x_test[idx], data.mean, data.std).to(dtype), data.y_test[idx]


def make_mlp(data: LTData, hidden: int = 32, norm: str = "none", seed: int = 0) -> SmallMLP:
    """The analysis MLP for this data set's image size (seeded initialisation)."""
    torch.manual_seed(seed)
    c, h, w = data.x_train.shape[1:]
    return SmallMLP(c * h * w, data.num_classes, hidden=hidden, norm=norm)


def warm_up(model: nn.Module, maker: BatchMaker, steps: int, lr: float = 2e-3, batch: int = 32) -> float:
    """Supervised Adam steps on the labeled pool (weak views), so the model carries the labeled imbalance;
    returns the last loss."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    loss = torch.zeros(())
    for _ in range(steps):
        _, x, y = maker.labeled(batch)
        onehot = torch.nn.functional.one_hot(y, maker.data.num_classes).to(x.dtype)
        loss = soft_cross_entropy(model(x), onehot).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


def load_mnist_lt(gamma: float = 100.0, seed: int = 0) -> tuple[LTData, RunConfig]:
    """The long-tailed (or, with γ = 1, balanced) MNIST split on the CPU, and its config."""
    cfg = mnist_config(gamma, seed)
    return load_data(cfg.data, cfg.seed, "cpu"), cfg
