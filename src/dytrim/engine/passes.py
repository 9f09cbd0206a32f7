"""A pass of a whole training set through a network (Adsh's per-epoch thresholds, SAW-USB's counts, CReST's
selection, CoSSL's warm-up): the labeled or the unlabeled pool, in position order, through the student or the EMA
model, BN in eval mode (running statistics) or train mode (batch statistics; running buffers left as they were),
with no augmentation or the weak view (drawn from a generator the caller owns, for exact resume). No gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dytrim.data.augment import normalize, weak_augment
from dytrim.engine.probe import frozen_bn_stats


@dataclass
class PassResult:
    """Logits [N, C] and penultimate features [N, F] (fp32) of the pool positions `pos` [N]."""

    logits: torch.Tensor
    feats: torch.Tensor
    pos: torch.Tensor


class WholeSetPass:
    """`ctx.whole_set(...)`: built by the engine over a run's data (engine/build.py)."""

    def __init__(self, data: Any, aug: Any, batch_size: int, channels_last: bool = False) -> None:
        self.data, self.aug, self.batch_size, self.channels_last = data, aug, batch_size, channels_last

    @torch.no_grad()
    def __call__(self, model: nn.Module, which: str = "unlabeled", bn: str = "eval", view: str = "none",
                 gen: torch.Generator | None = None) -> PassResult:
        """The pass: `which` labeled | unlabeled, `bn` eval | train, `view` none | weak (needs `gen`)."""
        if which not in ("labeled", "unlabeled") or bn not in ("eval", "train") or view not in ("none", "weak"):
            raise ValueError(f"whole-set pass: which={which}, bn={bn}, view={view} is not a known pass")
        if view == "weak" and gen is None:
            raise ValueError("whole-set pass: the weak view needs the caller's generator")
        d = self.data
        idx = d.lb_idx if which == "labeled" else d.ulb_idx
        pos = torch.arange(len(idx), device=idx.device)
        was = model.training
        logits, feats = [], []
        try:
            for i in range(0, len(idx), self.batch_size):
                x = d.x_train[idx[i: i + self.batch_size]]
                x = weak_augment(x, gen, self.aug.pad, self.aug.flip) if view == "weak" else x
                x = normalize(x, d.mean, d.std)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                if bn == "eval":
                    model.eval()
                    f = model.forward_features(x)
                else:
                    with frozen_bn_stats(model):
                        f = model.forward_features(x)
                logits.append(model.head(f).float())
                feats.append(f.float())
        finally:
            model.train(was)
        return PassResult(torch.cat(logits), torch.cat(feats), pos)
