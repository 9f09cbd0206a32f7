"""CReST and CReST+ (Wei et al., CVPR 2021): self-training in generations, each from scratch, each with the labeled
set grown by the previous generation's most confident pseudo-labels, more of them for the rarer predicted classes;
CReST+ also aligns the weak-view probabilities to a prior tempered further each generation; "+LA" predicts with
post-hoc logit adjustment by the labeled-batch class frequency.

Official rule (google-research/crest at 17c57cb: `util/semisup.py`, `data/cifar.py::get_split`, `util/util.py`
PMovingAverage / PData, `fixmatch.py`, `util/train.py::eval_step`, run.sh):
- G generations (run.sh 6) of 64 x 1024 steps; each starts a fresh model, EMA, optimiser, schedule, p_model, p_data;
- after generation g: the EMA model (eval mode, no augmentation) predicts every unlabeled image; per predicted class
  c, the images sorted by confidence, the top int(n_c · (N_{C-1-c} / N_0)^(1/α)) are picked (α 3; n_c images
  predicted as c; classes indexed by frequency) with label c; the next labeled set is the ORIGINAL one plus these
  picks (not cumulative); the unlabeled pool is unchanged;
- CReST+: t_g = (1 − g/(G−1)) · 1 + g/(G−1) · t_min (t_min 0.5; generation 0 included, t = 1); target = π^t / Σ;
  p̃ = softmax(z_w) · (1e-6 + target) / (1e-6 + p_model), rows renormalised, before the base's argmax and threshold;
  p_model = the mean of the last 128 batch means of softmax(z_w) (buffer starting uniform), pushed AFTER the step;
- evaluation +LA: z − log p_data, p_data ← 0.999 p_data + 0.001 mean(one_hot(y_lb)) after every step (uniform start).
Here: generation 0 is the main stage (train.steps) and each later one a stage (engine/stages.py) of train.steps
steps from the run's initial weights (official: a fresh random draw; ours the same draw for every generation, so
generations differ only by their labeled set), with a fresh EMA, the run's optimiser and LR schedule, and the main
stage's hooks. π is the analytic γ^(−k/(C−1)) profile of data.imb_ratio_l over the classes ranked by labeled count,
as the official gt_p_data (`crest.prior=counts`: the labeled counts, for data without a γ). The picks, p_model,
p_data and the generation are checkpointed (the official p_data is not). FixMatch only (the official base); the
DyTrim paper's "CReST+LA" row is `crest.align=true` with the LA prediction (bacc_debiased).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from dytrim.config import RunConfig, config_section, require
from dytrim.debias.registry import COMPONENTS, require_fixmatch
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Batch, Component, StepOutput
from dytrim.engine.stages import Stage


@config_section("crest")
@dataclass
class CReSTConfig:
    """CReST's generations, pick rate and CReST+'s progressive alignment (official run.sh defaults)."""

    generations: int = 6  # G: generation 0 is the main stage (train.steps), each later one train.steps more
    alpha: float = 3.0  # picks per predicted class: n_c · (N_{C-1-c} / N_0)^(1/alpha)
    align: bool = False  # CReST+: progressive distribution alignment of the weak-view probabilities
    t_min: float = 0.5  # the last generation's temperature of the aligned target (official dalign_t)
    window: int = 128  # batches in p_model's moving average
    la_decay: float = 0.999  # EMA decay of p_data, the labeled-batch class frequency of the +LA prediction
    prior: str = "analytic"  # the class profile of the pick rates and the aligned target: analytic = γ^(−k/(C−1))
    #   of data.imb_ratio_l over the classes ranked by labeled count (official gt_p_data) | counts = the labeled counts

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"prior": ("analytic", "counts")}

    def check(self, cfg: Any) -> None:
        if "crest" not in cfg.debias.methods:
            return
        require_fixmatch(cfg, "crest trains generations of FixMatch")
        require(self.generations >= 1, "crest.generations", f"must be >= 1; got {self.generations}")
        require(self.alpha > 0, "crest.alpha", f"must be > 0; got {self.alpha}")
        require(0 < self.t_min <= 1, "crest.t_min", f"must be in (0, 1]; got {self.t_min}")
        require(self.window >= 1, "crest.window", f"must be >= 1; got {self.window}")
        require(0 <= self.la_decay < 1, "crest.la_decay", f"must be in [0, 1); got {self.la_decay}")


def class_profile(counts: list[int], kind: str, gamma: float) -> torch.Tensor:
    """[C] float64 class distribution: the labeled counts normalised, or the analytic γ^(−r/(C−1)) profile over the
    ranks r of the classes by labeled count (0 = the most frequent; official `gt_p_data`), normalised."""
    n = torch.tensor(counts, dtype=torch.float64)
    if kind == "counts":
        return n / n.sum()
    rank = torch.empty_like(n)
    rank[torch.argsort(-n, stable=True)] = torch.arange(len(n), dtype=torch.float64)
    p = float(gamma) ** (-rank / max(1, len(n) - 1))
    return p / p.sum()


def pick_rates(profile: torch.Tensor, alpha: float) -> torch.Tensor:
    """[C] (p_{C-1-r(c)} / p_0)^(1/alpha): the share kept of the images predicted as class c (rank r(c))."""
    order = torch.argsort(-profile, stable=True)
    ranked = profile[order]
    rates = torch.empty_like(profile)
    rates[order] = (ranked.flip(0) / ranked[0]) ** (1.0 / alpha)
    return rates


def pick(probs: torch.Tensor, rates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, labels) of the picks: per predicted class c, the int(n_c · rate_c) most confident of the n_c
    images predicted as c (ties by position), classes in index order."""
    conf, label = probs.max(dim=-1)
    positions, labels = [], []
    for c in range(probs.shape[-1]):
        idx = torch.nonzero(label == c).flatten()
        take = int(len(idx) * float(rates[c]))
        best = idx[torch.argsort(-conf[idx], stable=True)[:take]]
        positions.append(best)
        labels.append(torch.full((len(best),), c, dtype=torch.long))
    return torch.cat(positions).cpu(), torch.cat(labels)


def temperature(g: int, generations: int, t_min: float) -> float:
    """t_g = (1 − g/(G−1)) · 1 + g/(G−1) · t_min (1 with one generation)."""
    if generations <= 1:
        return 1.0
    cur = g / (generations - 1)
    return (1.0 - cur) * 1.0 + cur * t_min


def align(probs: torch.Tensor, target: torch.Tensor, p_model: torch.Tensor) -> torch.Tensor:
    """p · (1e-6 + target) / (1e-6 + p_model), rows renormalised."""
    p = probs * (1e-6 + target) / (1e-6 + p_model)
    return p / p.sum(dim=-1, keepdim=True)


@COMPONENTS.register("crest")
class CReST(Component):
    """Declares generations 1..G-1 as stages; picks at the start of each; CReST+ alignment and the +LA prediction."""

    name = "crest"

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        c = cfg.crest
        self.ctx, self.cfg = ctx, c
        self.steps = cfg.train.steps
        profile = class_profile(ctx.lb_counts, c.prior, cfg.data.imb_ratio_l)
        self.rates = pick_rates(profile, c.alpha)
        self.prior = profile.float().to(ctx.device)
        self.generation = 0
        self.picks: tuple[torch.Tensor, torch.Tensor] | None = None  # this generation's (positions, labels)
        self._fresh_statistics()

    def _fresh_statistics(self) -> None:
        """A generation's p_model window (uniform rows) and p_data (uniform), as the official code makes anew."""
        k, dev = self.ctx.num_classes, self.ctx.device
        self.window = torch.full((self.cfg.window, k), 1.0 / k, device=dev)
        self.slot = 0
        self.p_data = torch.full((k,), 1.0 / k, device=dev)

    def stages(self) -> list[Stage]:
        return [Stage(f"gen{g}", self.steps, start_from="init", lr=None, unlabeled=True, ema="fresh", hooks="all")
                for g in range(1, self.cfg.generations)]

    def stage_labeled(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.generation != k or self.picks is None:  # a new generation (on resume: the saved picks are kept)
            result = self.ctx.whole_set(self.ctx.ema_model, "unlabeled", bn="eval", view="none")
            self.picks = pick(F.softmax(result.logits, dim=-1).cpu(), self.rates)
            self.generation = k
            self._fresh_statistics()
        return self.picks

    def pseudo_logits(self, logits_w: torch.Tensor, step: int) -> torch.Tensor:
        if not self.cfg.align:
            return logits_w
        t = temperature(self.generation, self.cfg.generations, self.cfg.t_min)
        target = self.prior ** t
        target = target / target.sum()
        p_model = self.window.mean(dim=0)
        p_model = p_model / p_model.sum()
        aligned = align(F.softmax(logits_w.float(), dim=-1), target, p_model)
        return torch.log(aligned).to(logits_w.dtype)  # the base's softmax of these logits is the aligned p

    def observe(self, batch: Batch, out: StepOutput, step: int) -> None:
        if out.logits_ulb_w_raw is not None:  # after the step, as the official update
            self.window[self.slot] = F.softmax(out.logits_ulb_w_raw.float(), dim=-1).mean(dim=0)
            self.slot = (self.slot + 1) % len(self.window)
        hot = F.one_hot(batch.y_lb, self.ctx.num_classes).float().mean(dim=0)
        self.p_data = self.p_data * self.cfg.la_decay + hot * (1 - self.cfg.la_decay)

    def eval_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits - torch.log(self.p_data.to(logits.device, logits.dtype))

    def eval_fields(self) -> dict[str, Any]:
        n = 0 if self.picks is None else len(self.picks[0])
        return {"crest_generation": self.generation, "crest_picks": n}

    def state_dict(self) -> dict[str, Any]:
        return {"generation": self.generation, "picks": None if self.picks is None else list(self.picks),
                "window": self.window.clone(), "slot": self.slot, "p_data": self.p_data.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.generation, self.slot = int(state["generation"]), int(state["slot"])
        self.picks = None if state["picks"] is None else (state["picks"][0], state["picks"][1])
        self.window = state["window"].to(self.ctx.device)
        self.p_data = state["p_data"].to(self.ctx.device)
