"""Prop. 2: one FixMatch update split into its supervised term (x_b, y_b) and consistency term (A(u_b), q̂_b).

Pseudo-labels come from the library's SSL rule on the weak view (no gradient); the step's loss is the
loop's: mean weighted CE on the labeled batch + λ_u · mean masked CE of the strong view against q̂.
Each unlabeled sample's own share of the consistency term is kept, so its effect on the true-class
log-probability of the observation digits can be split by whether its pseudo-label was right.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from dytrim.config import SSLConfig
from dytrim.dynamics.decompose import Decomposition, LossFn, decompose_step
from dytrim.engine.probe import eval_mode
from dytrim.engine.step import StepFunction
from dytrim.ssl import create_ssl


@dataclass
class FixMatchSplit:
    """The decomposition of one FixMatch step at observations (x_o, y_o), with pseudo-label facts."""

    dec: Decomposition
    y_o: torch.Tensor  # [No] true labels of the observations
    y_ulb: torch.Tensor  # [Bu] hidden true labels of the unlabeled batch
    pseudo: torch.Tensor  # [Bu] argmax of the pseudo-label targets
    mask: torch.Tensor  # [Bu] FixMatch mask

    @property
    def correct(self) -> torch.Tensor:
        """[Bu] bool: the pseudo-label equals the true label."""
        return self.pseudo == self.y_ulb

    def true_class(self, name: str) -> torch.Tensor:
        """Δlog π(y_o | x_o) of one term ("supervised" or "consistency") [No]."""
        return self.dec.term(name).delta.gather(1, self.y_o[:, None]).squeeze(1)

    def pair_true_class(self) -> torch.Tensor:
        """[No, Bu]: unlabeled sample j's consistency share of Δlog π(y_o | x_o)."""
        pair = self.dec.term("consistency").pair  # [No, Bu, C]
        return pair.gather(2, self.y_o[:, None, None].expand(-1, pair.shape[1], 1)).squeeze(2)

    def same_class_pairs(self) -> dict[str, torch.Tensor]:
        """Shares of masked unlabeled samples on observations of their own true class, by pseudo-label."""
        pt = self.pair_true_class()
        same = (self.y_o[:, None] == self.y_ulb[None, :]) & (self.mask[None, :] > 0)
        return {"correct": pt[same & self.correct[None, :]], "wrong": pt[same & ~self.correct[None, :]]}


def fixmatch_loss(
    y_lb: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, lambda_u: float,
    w_lb: torch.Tensor | None = None, w_ulb: torch.Tensor | None = None, ce_eps: float = 0.0,
) -> LossFn:
    """The loop's FixMatch loss as a function of {"supervised": z_lb, "consistency": z_s} (weights default 1): the
    step function's own loss terms (engine/step.py), so ssl.ce_eps means here what it means in training."""
    terms = StepFunction(None, [], targets.shape[-1], lambda_u, ce_eps=ce_eps)  # its loss terms need no rule

    def loss(z: Mapping[str, torch.Tensor]) -> torch.Tensor:
        sup = terms.supervised_loss(z["supervised"], y_lb, 0)
        cons = terms.consistency_loss([z["consistency"]], targets, mask, 0)[0]
        sup = sup * w_lb if w_lb is not None else sup
        cons = cons * w_ulb if w_ulb is not None else cons
        return sup.mean() + lambda_u * cons.mean()

    return loss


def split_fixmatch_step(
    model: nn.Module,
    x_o: torch.Tensor,
    y_o: torch.Tensor,
    x_lb: torch.Tensor,
    y_lb: torch.Tensor,
    x_ulb_w: torch.Tensor,
    x_ulb_s: torch.Tensor,
    y_ulb: torch.Tensor,
    lr: float,
    ssl: SSLConfig,
    real: bool = False,
) -> FixMatchSplit:
    """Decompose one FixMatch step (pseudo-labels by `ssl`'s rule) into supervised and consistency terms."""
    rule = create_ssl(ssl, _num_classes(model, x_o), len(x_ulb_w))
    with torch.no_grad(), eval_mode(model):
        logits_w = model(x_ulb_w)
    targets, mask = rule.pseudo_targets(logits_w, torch.arange(len(x_ulb_w)))
    targets, mask = targets.to(x_o.dtype), mask.to(x_o.dtype)
    loss = fixmatch_loss(y_lb, targets, mask, ssl.lambda_u, ce_eps=ssl.ce_eps)
    dec = decompose_step(model, x_o, {"supervised": x_lb, "consistency": x_ulb_s}, loss, lr, real=real)
    return FixMatchSplit(dec, y_o, y_ulb, targets.argmax(-1), mask)


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), eval_mode(model):
        return int(model(x[:1]).shape[-1])
