"""The one step function: from a batch's views to its loss, through the components' hooks in their fixed order.

Training (engine/loop.py) and the analysis tools (dytrim/dynamics) both call it, so the hook order is written once:
[transform_labeled] -> [weight] -> forward (weak unlabeled without gradient, labeled, each strong view; logits, and
penultimate features when a component asks) -> [train_logits] on the labeled logits -> [pseudo_logits] ->
pseudo-labels (SSL base) -> [pseudo_targets] -> [weight_unlabeled] -> [train_logits] on each strong view ->
per-sample soft cross-entropies x weights -> [loss_terms] (named extra terms). A base that mixes its views
(`mixes`, ReMixMatch) keeps the same order with its own middle: the weak view's forward (no gradient) -> the same
pseudo-label hooks -> [weight_unlabeled] -> the base's mixed forwards and per-sample losses, each logit through
[train_logits] -> x weights -> [loss_terms]. Who draws the batch, how the forward
runs (precision, BN mode, compiled or not) and what happens to the loss (backward, or a gradient decomposition) is
the caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from dytrim.data.augment import normalize, strong_augment, weak_augment
from dytrim.engine.distributed import Dist
from dytrim.engine.hooks import Batch, Component, StepOutput, Views
from dytrim.engine.losses import soft_cross_entropy

#: forward(inputs, grad) -> logits per input; grad[i] False: no graph for input i. A forward that can also return
#: features is called as forward(inputs, grad, True) -> (logits per input, features per input) when a component asks.
Forward = Callable[..., Any]


class PseudoLabeler(Protocol):
    """The part of an SSL base the step uses (dytrim.ssl.base.SSLAlgorithm)."""

    uses_unlabeled: bool

    def pseudo_targets(self, logits_w: torch.Tensor, ulb_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def extra_loss(self, logits_s: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def make_views(data: Any, lb_pos: torch.Tensor, ulb_pos: torch.Tensor | None, gen: torch.Generator, aug: Any,
               n_strong: int, pool: tuple[torch.Tensor, torch.Tensor] | None = None, lb_strong: bool = False) -> Batch:
    """The batch of these pool positions: uint8 images gathered on the device, the weak view of the labeled ones,
    the weak and `n_strong` strong views of the unlabeled ones, and with `lb_strong` a strong view of the labeled
    ones (drawn from `gen` in that order), unit weights.
    `pool`: (image indices, labels) of a grown labeled pool (engine/stages.py `grown_pool`) instead of the data's."""
    d, a = data, aug
    lb = d.lb_idx[lb_pos] if pool is None else pool[0][lb_pos]
    y_lb = d.y_train[lb] if pool is None else pool[1][lb_pos]
    x_lb = normalize(weak_augment(d.x_train[lb], gen, a.pad, a.flip), d.mean, d.std)
    batch = Batch(lb_pos=lb_pos, x_lb=x_lb, y_lb=y_lb, w_lb=torch.ones(len(lb), device=lb_pos.device))
    if ulb_pos is not None:
        x_u = d.x_train[d.ulb_idx[ulb_pos]]
        batch.ulb_pos = ulb_pos
        batch.x_ulb_w = normalize(weak_augment(x_u, gen, a.pad, a.flip), d.mean, d.std)
        batch.x_ulb_s = [
            strong_augment(x_u, gen, d.mean, d.std, n_ops=a.n_ops, magnitude=a.magnitude, cutout_size=a.cutout,
                           pad=a.pad, flip=a.flip)
            for _ in range(n_strong)
        ]
        batch.w_ulb = torch.ones(len(ulb_pos), device=ulb_pos.device)
    if lb_strong:
        batch.x_lb_s = strong_augment(d.x_train[lb], gen, d.mean, d.std, n_ops=a.n_ops, magnitude=a.magnitude,
                                      cutout_size=a.cutout, pad=a.pad, flip=a.flip)
    return batch


@dataclass
class StepResult:
    """What one step computed. Unlabeled targets, mask, weak logits and positions are of the global batch."""

    loss: torch.Tensor  # the scalar that is back-propagated
    loss_lb: torch.Tensor  # [B] unweighted per-sample supervised loss (with its graph)
    loss_ulb: torch.Tensor | None  # [n_strong, Bu] unweighted masked consistency loss (this process's slice)
    loss_u: torch.Tensor | None  # the weighted consistency mean (detached)
    targets: torch.Tensor | None  # [global Bu, C]
    mask: torch.Tensor | None  # [global Bu]
    logits_w: torch.Tensor | None  # [global Bu, C] weak logits after the pseudo_logits hooks
    logits_w_raw: torch.Tensor | None  # the same before them
    ulb_pos: torch.Tensor | None  # [global Bu] unlabeled positions
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # the components' extra loss terms (detached)

    def stats(self, y_train: torch.Tensor, ulb_idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The step's logged scalars (device tensors): loss_x, the components' terms as loss_<name> and, with
        unlabeled data, loss_u, mask_rate and pseudo_acc (against the true labels where known: -1 = unknown)."""
        stats = {"loss_x": self.loss_lb.detach().mean()} | {f"loss_{k}": v for k, v in self.terms.items()}
        if self.targets is not None and self.mask is not None and self.loss_u is not None:
            true_u = y_train[ulb_idx[self.ulb_pos]]  # -1 = unknown (your own unlabeled folder)
            hit = (self.targets.argmax(-1) == true_u).float()
            known = self.mask * (true_u >= 0).float()
            stats |= {"loss_u": self.loss_u, "mask_rate": self.mask.mean(),
                      "pseudo_acc": (hit * known).sum() / known.sum().clamp_min(1e-12),
                      "_has_truth": (true_u >= 0).any()}  # pseudo_acc is logged only where labels are known
        return stats

    def output(self) -> StepOutput:
        """The per-sample view handed to `observe` (this process's losses; global targets and mask)."""
        loss_ulb = self.loss_ulb.detach() if self.loss_ulb is not None else None
        return StepOutput(self.loss_lb.detach(), loss_ulb, self.targets, self.mask, self.logits_w, self.logits_w_raw)


def _wide(z: torch.Tensor) -> torch.Tensor:
    """Logits in fp32 for the losses (fp64 kept, for the analysis tools' exact gradients)."""
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


class StepFunction:
    """A step's computation for one SSL base and its stack of components (`ssl` None: only the loss terms are
    used, with targets and mask given, as by the analysis tools)."""

    def __init__(
        self, ssl: PseudoLabeler | None, components: Sequence[Component], num_classes: int, lambda_u: float,
        dist: Dist | None = None, ce_eps: float = 0.0,
    ) -> None:
        self.ssl, self.components, self.num_classes, self.lambda_u = ssl, list(components), num_classes, lambda_u
        self.dist = dist or Dist()  # one process: gather and shard are the identity
        self.ce_eps = ce_eps  # ssl.ce_eps: 0 = exact log_softmax, 1e-8 = the reference code's log(softmax + 1e-8)
        self.with_features = any(c.uses_features for c in self.components)

    def supervised_loss(self, logits_lb: torch.Tensor, y_lb: torch.Tensor, step: int,
                        t_lb: torch.Tensor | None = None) -> torch.Tensor:
        """[B] unweighted cross-entropy of the labeled logits after the train_logits hooks, against one_hot(y_lb)
        or the soft targets `t_lb` a transform_labeled hook gave."""
        logits_lb = self.train_view(logits_lb, True, step)
        if t_lb is None:
            t_lb = torch.nn.functional.one_hot(y_lb, self.num_classes)
        return soft_cross_entropy(logits_lb, t_lb.to(logits_lb.dtype), self.ce_eps)

    def consistency_loss(
        self, logits_s: Sequence[torch.Tensor], targets: torch.Tensor, mask: torch.Tensor, step: int
    ) -> torch.Tensor:
        """[n_strong, Bu] masked soft cross-entropy of each strong view after the train_logits hooks."""
        per_view = []
        for z in logits_s:
            z = self.train_view(z, False, step)
            per_view.append(soft_cross_entropy(z, targets.to(z.dtype), self.ce_eps) * mask)
        return torch.stack(per_view)

    def pseudo_labels(
        self, logits_w: torch.Tensor, ulb_pos: torch.Tensor, step: int, feats_w: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(targets, mask, adjusted weak logits) of the global batch from its weak logits (pseudo_logits hooks,
        then the SSL base's rule, then the pseudo_targets hooks, which also see the weak features if any)."""
        assert self.ssl is not None, "pseudo-labels need an SSL base"
        for c in self.components:
            logits_w = c.pseudo_logits(logits_w, step)
        targets, mask = self.ssl.pseudo_targets(logits_w, ulb_pos)
        for c in self.components:
            if (replaced := c.pseudo_targets(targets, mask, logits_w, ulb_pos, step, feats_w=feats_w)) is not None:
                targets, mask = replaced
        return targets, mask, logits_w

    def _views(self, forward: Forward, xs: list[torch.Tensor], grad: list[bool]) -> tuple[list[torch.Tensor], list]:
        """Logits of each input, and their penultimate features when a component uses them (else [])."""
        if self.with_features:
            logits, feats = forward(xs, grad, True)
            return logits, feats
        return forward(xs, grad), []

    def _terms(self, views: Views, batch: Batch, targets: torch.Tensor | None, mask: torch.Tensor | None,
               step: int) -> dict[str, torch.Tensor]:
        """The components' named extra loss terms of this step."""
        terms: dict[str, torch.Tensor] = {}
        for c in self.components:
            for name, value in c.loss_terms(views, batch, targets, mask, step).items():
                if name in terms:
                    raise ValueError(f"two components return the loss term '{name}'")
                terms[name] = value
        return terms

    def run(self, batch: Batch, forward: Forward, step: int) -> StepResult:
        """Hooks, forward passes, pseudo-labels and the loss of one batch (the weights in `batch` are updated)."""
        assert self.ssl is not None, "a step needs an SSL base"
        for c in self.components:
            c.transform_labeled(batch, step)
        for c in self.components:
            c.weight(batch, step)
        if not self.ssl.uses_unlabeled:
            outs, feats = self._views(forward, [batch.x_lb], [True])
            loss_lb = self.supervised_loss(outs[0], batch.y_lb, step, batch.t_lb)
            terms = self._terms(Views(outs[0], feats_lb=feats[0] if feats else None), batch, None, None, step)
            loss = (loss_lb * batch.w_lb).mean()
            for value in terms.values():
                loss = loss + value
            return StepResult(loss, loss_lb, None, None, None, None, None, None, None,
                              {k: v.detach() for k, v in terms.items()})
        assert batch.x_ulb_w is not None and batch.ulb_pos is not None and batch.w_ulb is not None
        if getattr(self.ssl, "mixes", False):
            return self._run_mixing(batch, forward, step)
        n_s = len(batch.x_ulb_s)  # reference order: weak unlabeled (no grad), then labeled, then each strong view
        outs, feats = self._views(forward, [batch.x_ulb_w, batch.x_lb, *batch.x_ulb_s], [False] + [True] * (n_s + 1))
        logits_w, logits_lb, logits_s = outs[0].detach(), outs[1], outs[2:]
        loss_lb = self.supervised_loss(logits_lb, batch.y_lb, step, batch.t_lb)
        loss: Any = (loss_lb * batch.w_lb).mean()
        # pseudo-labels of the global batch on every rank, so thresholds and class status stay in sync
        raw_g, ulb_pos_g = self.dist.gather(logits_w), self.dist.gather(batch.ulb_pos)
        feats_w_g = self.dist.gather(feats[0].detach()) if feats else None
        targets_g, mask_g, logits_w_g = self.pseudo_labels(raw_g, ulb_pos_g, step, feats_w_g)
        targets, mask = self.dist.shard(targets_g), self.dist.shard(mask_g)
        for c in self.components:
            c.weight_unlabeled(batch, targets, mask, step)
        loss_ulb = self.consistency_loss(logits_s, targets, mask, step)
        loss_u = (loss_ulb * batch.w_ulb).mean()  # mean over n_strong * Bu terms, as the reference
        extra = self.ssl.extra_loss(torch.cat(logits_s), targets, mask)
        loss = loss + self.lambda_u * loss_u + (extra if extra is not None else 0.0)
        terms: dict[str, torch.Tensor] = {}
        if self.with_features or any(type(c).loss_terms is not Component.loss_terms for c in self.components):
            views = Views(logits_lb, logits_w, list(logits_s), *((feats[1], feats[0].detach(), feats[2:]) if feats
                                                                  else (None, None, [])))
            terms = self._terms(views, batch, targets, mask, step)
            for value in terms.values():
                loss = loss + value
        return StepResult(loss, loss_lb, loss_ulb, loss_u.detach(), targets_g, mask_g, logits_w_g, raw_g, ulb_pos_g,
                          {k: v.detach() for k, v in terms.items()})

    def train_view(self, z: torch.Tensor, labeled: bool, step: int) -> torch.Tensor:
        """Logits that enter a training loss after the components' train_logits hooks, in fp32 (fp64 kept)."""
        for c in self.components:
            z = c.train_logits(z, labeled, step)
        return _wide(z)

    def _run_mixing(self, batch: Batch, forward: Forward, step: int) -> StepResult:
        """The step of a base that mixes its views (ReMixMatch): the weak view's logits (no gradient; the base's BN
        mode), pseudo-labels of the global batch through the same hooks, [weight_unlabeled], then the base's mixed
        losses (its forwards, through [train_logits]); labeled x w_lb, unlabeled slots x w_ulb, then [loss_terms]."""
        ssl: Any = self.ssl
        assert batch.x_ulb_w is not None and batch.ulb_pos is not None and batch.w_ulb is not None
        logits_w = ssl.weak_logits(forward, batch.x_ulb_w)
        raw_g = self.dist.gather(logits_w)
        ulb_pos_g = self.dist.gather(batch.ulb_pos)
        targets_g, mask_g, logits_w_g = self.pseudo_labels(raw_g, ulb_pos_g, step)
        targets, mask = self.dist.shard(targets_g), self.dist.shard(mask_g)
        for c in self.components:
            c.weight_unlabeled(batch, targets, mask, step)
        part = ssl.mixed_losses(batch, targets, mask, forward, lambda z, lab: self.train_view(z, lab, step),
                                self.ce_eps, step)
        loss_u = (part.loss_ulb * batch.w_ulb).mean()
        loss = (part.loss_lb * batch.w_lb).mean() + part.w_u * loss_u
        terms = dict(part.terms)
        views = Views(part.logits_lb, logits_w)
        for name, value in self._terms(views, batch, targets, mask, step).items():
            if name in terms:
                raise ValueError(f"a component returns the loss term '{name}' of the SSL base")
            terms[name] = value
        for value in terms.values():
            loss = loss + value
        return StepResult(loss, part.loss_lb, part.loss_ulb, loss_u.detach(), targets_g, mask_g, logits_w_g, raw_g,
                          ulb_pos_g, {k: v.detach() for k, v in terms.items()})
