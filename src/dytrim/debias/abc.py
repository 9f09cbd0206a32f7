"""ABC (Lee et al., NeurIPS 2021): an auxiliary balanced classifier on the penultimate features, trained on
Bernoulli-masked samples, that alone predicts at test time.

Official rule (LeeHyuck/ABC `ABCcode0920/ABCfix.py`, `wideresnetwithABC.py`), with p_c = N_min / N_c:
- the aux head is Linear(F, C) with bias (Xavier-normal weight, zero bias) beside the main head, which trains the
  SSL base as usual;
- labeled: m_b ~ Bernoulli(p_{y_b}); L_l = −(1/B) Σ_b m_b log softmax(aux(h(x_b)))_{y_b};
- unlabeled: q̂_b = softmax(aux(h(weak u_b))) (no gradient), ĉ_b = argmax q̂_b,
  m'_b = [max q̂_b ≥ 0.95] · Bernoulli(1 − (epoch/500)·(1 − p_{ĉ_b})); for each strong view s:
  L_s = −(1/B) Σ_b m'_b Σ_c q̂_bc log softmax(aux(h(s_b)))_c (soft targets); the views' terms are summed;
- log(softmax) is taken as such (not log_softmax), as the official code; the test prediction is the EMA model's aux
  head (`eval_head`). Here epoch/500 is (step // abc.epoch_steps)·abc.epoch_steps / train.steps, which equals it on
  the official 500 × 500-step protocol. The Bernoulli draws come from a generator of its own (exact resume).
USB's port (semilearn `imb_algorithms/abc`) uses hard pseudo-labels for the aux consistency loss and one strong
view; the official soft targets are the default here. Stacks on every base (on supervised, the labeled term only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dytrim.config import RunConfig, config_section, require
from dytrim.debias.registry import COMPONENTS
from dytrim.engine.components import head_of, load_generator_state, owned_generator, xavier_linear_
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Batch, Component, Views


@config_section("abc")
@dataclass
class ABCConfig:
    """ABC's aux-head threshold and the epoch of its unlabeled mask schedule (official defaults)."""

    p_cutoff: float = 0.95  # confidence threshold of the aux head's own pseudo-labels (official 0.95)
    epoch_steps: int = 500  # steps per epoch of the schedule 1 - (epoch / epochs) (1 - p_c) (official 500)

    def check(self, cfg: Any) -> None:
        if "abc" not in cfg.debias.methods:
            return
        require(0 <= self.p_cutoff <= 1, "abc.p_cutoff", f"must be in [0, 1]; got {self.p_cutoff}")
        require(self.epoch_steps >= 1, "abc.epoch_steps", f"must be >= 1; got {self.epoch_steps}")


def balance_rates(counts: list[int]) -> torch.Tensor:
    """[C] p_c = N_min / N_c: the Bernoulli parameter of a labeled sample of class c."""
    n = torch.tensor(counts, dtype=torch.float64).clamp_min(1)
    return (n.min() / n).float()


def unlabeled_rates(p: torch.Tensor, progress: float) -> torch.Tensor:
    """[C] 1 − progress·(1 − p_c): the Bernoulli parameter of a pseudo-label of class c (progress = epoch/500)."""
    return 1.0 - progress * (1.0 - p)


def abc_losses(z_lb: torch.Tensor, y: torch.Tensor, m_lb: torch.Tensor, q: torch.Tensor, m_ulb: torch.Tensor,
               z_s: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_l, Σ_s L_s): the masked labeled CE and the masked soft consistency over the strong views, log(softmax)."""
    l_lb = -(m_lb * torch.log(F.softmax(z_lb, dim=-1)).gather(1, y[:, None])[:, 0]).mean()
    l_u = sum((-(m_ulb * (q * torch.log(F.softmax(z, dim=-1))).sum(-1)).mean() for z in z_s), z_lb.new_zeros(()))
    return l_lb, l_u


@COMPONENTS.register("abc")
class ABC(Component):
    """The aux balanced head: its two loss terms (abc_l, abc_u) and the test prediction."""

    name = "abc"
    uses_features = True
    eval_head = "abc"

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        self.ctx, self.p_cutoff, self.epoch_steps = ctx, cfg.abc.p_cutoff, cfg.abc.epoch_steps
        self.steps = cfg.train.steps
        self.head = xavier_linear_(nn.Linear(ctx.model.num_features, ctx.num_classes))
        self.p = balance_rates(ctx.lb_counts)
        self.gen = owned_generator(ctx.seed, self.name, ctx.device)  # the Bernoulli masks

    def heads(self) -> dict[str, nn.Module]:
        return {"abc": self.head}

    def _bernoulli(self, rates: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(rates, generator=self.gen)

    def loss_terms(self, views: Views, batch: Batch, targets: torch.Tensor | None, mask: torch.Tensor | None,
                   step: int) -> dict[str, torch.Tensor]:
        assert views.feats_lb is not None
        head = head_of(self.ctx.model, "abc")
        self.p = self.p.to(views.feats_lb.device)
        z_lb = head(views.feats_lb).float()
        m_lb = self._bernoulli(self.p[batch.y_lb])
        if views.feats_ulb_w is None:
            l_lb, _ = abc_losses(z_lb, batch.y_lb, m_lb, z_lb[:0], z_lb.new_zeros(0), [])
            return {"abc_l": l_lb}
        with torch.no_grad():
            q = F.softmax(head(views.feats_ulb_w).float(), dim=-1)
        conf, cls = q.max(dim=-1)
        progress = (step // self.epoch_steps) * self.epoch_steps / self.steps
        m_ulb = (conf >= self.p_cutoff).float() * self._bernoulli(unlabeled_rates(self.p, progress)[cls])
        l_lb, l_u = abc_losses(z_lb, batch.y_lb, m_lb, q, m_ulb, [head(f).float() for f in views.feats_ulb_s])
        return {"abc_l": l_lb, "abc_u": l_u}

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            load_generator_state(self.gen, state["gen"])
