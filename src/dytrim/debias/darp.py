"""DARP (Kim et al., NeurIPS 2020): pseudo-labels refined so that the class distribution of the whole unlabeled
pool matches a target c (distribution aligning refinery of pseudo-labels).

Official rule (bbuing9/DARP `training_functions.py::train_fix`, `train.py`, `run.sh`; the math: darp_solver.py):
- every step, q_b = softmax of the weak logits is written into a memory Q_orig[N_u, C] (rows start uniform);
- after the warm-up (`--warm 200` of 500 epochs: `epoch > warm`, from step 100,500) and on every 10th step
  (`batch_idx % --num_iter == 0`), the whole memory is refined (noise removal α = 2, dual solve T = 10 with
  secant steps, tol 0.1 on CIFAR-10) into Q_refine; Q_orig is left as it was;
- the batch's targets are the rows Q_refine[idx] (refined this step or cached since the last refinement); hard
  label argmax, mask [max of the refined row ≥ τ = 0.95]; c = labeled counts · |U| / N_l (`--est`: an estimate).
Here: the batch's rows enter after the pseudo_logits hooks (the raw weak logits when DARP is alone); the base's
rule is applied to the refined row, so FixMatch's ssl.p_cutoff is τ and ssl.hard_label gives the argmax (the
soft refined row otherwise, as DARP's MixMatch/ReMixMatch modes use it); before the first refinement the base's
targets and mask are kept. Refinements follow `Periodic(darp.every)` on the schedule clock: the 10-step rule of
the official code when the clock advances by 1 per update, and still once per 10 steps when it jumps (DyTrim).
The memories and the schedule are checkpointed (the official code saves none: its resume restarts them
uniform), so a resumed run is exact; darp.warm is a schedule point (config/schedule.py STEP_KEYS), pinned to its
step when a resume changes train.steps. The secant solver does not raise where scipy does (the
official run would stop): unconverged solves are counted in `darp_unconverged`.
USB's port (semilearn `imb_algorithms/darp`) masks with the unrefined probabilities and takes only the label from
DARP (`darp.mask=raw`), warms up for 78 % of its run and fixes tol at 0.1. DARP replaces the pseudo-labels of a
fixed-threshold base, so it stacks on fixmatch only (flexmatch/freematch/supervised are refused).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from dytrim.config import ConfigError, RunConfig, config_section, require
from dytrim.config.schedule import step_of
from dytrim.debias.darp_solver import refine
from dytrim.debias.registry import COMPONENTS, require_fixmatch
from dytrim.engine.components import SampleMemory
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Component
from dytrim.engine.schedules import Periodic


def parse_target(values: list[str]) -> list[float]:
    """darp.target as numbers (ConfigError naming the key unless every entry is a finite positive number)."""
    try:
        out = [float(v) for v in values]
    except ValueError:
        raise ConfigError(f"darp.target: expects positive numbers (a,b,c), got {','.join(values)}") from None
    require(all(math.isfinite(v) and v > 0 for v in out), "darp.target",
            f"every entry must be a finite number > 0; got {','.join(values)}")
    return out


@config_section("darp")
@dataclass
class DARPConfig:
    """DARP's schedule, refinement and target distribution (official defaults of the CIFAR-10 recipe)."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"mask": ("refined", "raw")}

    warm: int | float = 0.4  # refinements start at this step (int) or fraction of train.steps (float in [0, 1]; a
    #   schedule point: config/schedule.py checks it and pins it on a resume that changes train.steps)
    #   (official --warm 200 of 500 epochs: from step 100,500 of 250,000, i.e. 0.402)
    every: int = 10  # the whole memory is refined once every this many steps (official --num_iter)
    alpha: float = 2.0  # noise removal keeps the int(alpha c_j) most confident rows of class j (official --alpha)
    iter_t: int = 10  # T: iterations of the dual solve (official --iter_T)
    maxiter: int = 30  # secant iterations per class in each of them (official num_newton)
    tol: float = 0.1  # secant step tolerance (official 0.1 on CIFAR-10, 0.3 on CIFAR-100 and STL-10)
    target: list[str] = field(default_factory=list)  # unlabeled class distribution, any scale, one number per
    #   class (official --est); empty = the labeled counts; either is rescaled to the unlabeled pool size
    mask: str = "refined"  # refined: mask on the refined rows (official) | raw: the base's mask (USB)

    def check(self, cfg: Any) -> None:
        if "darp" not in cfg.debias.methods:
            return
        require_fixmatch(cfg, "darp replaces the pseudo-labels and mask of a fixed-threshold base")
        require(self.every >= 1, "darp.every", f"must be >= 1; got {self.every}")
        require(self.alpha > 0, "darp.alpha", f"must be > 0; got {self.alpha}")
        require(self.iter_t >= 1, "darp.iter_t", f"must be >= 1; got {self.iter_t}")
        require(self.maxiter >= 1, "darp.maxiter", f"must be >= 1; got {self.maxiter}")
        require(self.tol > 0, "darp.tol", f"must be > 0; got {self.tol}")
        parse_target(self.target)


def target_counts(weights: list[float], n_ulb: int) -> torch.Tensor:
    """c [C] float64: n_ulb · t / Σ t, computed in float32 as the official `train.py` (then widened)."""
    t = torch.tensor(weights, dtype=torch.float32)
    return (t * n_ulb / float(sum(weights))).double()


def refined_targets(rows: torch.Tensor, hard: bool, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets [Bu, C], mask [Bu]) from refined rows: one-hot argmax (hard) or the rows, mask [max row >= tau]."""
    conf, label = rows.max(dim=-1)
    targets = F.one_hot(label, rows.shape[-1]).to(rows.dtype) if hard else rows
    return targets, (conf >= tau).to(rows.dtype)


@COMPONENTS.register("darp")
class DARP(Component):
    """Replaces the base's targets and mask by those of the refined memory rows, refined every `every` steps."""

    name = "darp"
    starts = ("the pseudo-label refinement", "darp.warm", "")

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        c = cfg.darp
        self.alpha, self.iter_t, self.maxiter, self.tol, self.every = c.alpha, c.iter_t, c.maxiter, c.tol, c.every
        self.hard, self.tau, self.raw_mask = cfg.ssl.hard_label, cfg.ssl.p_cutoff, c.mask == "raw"
        weights = parse_target(c.target) or [float(n) for n in ctx.lb_counts]
        if len(weights) != ctx.num_classes:
            raise ConfigError(f"darp.target: needs one number per class ({ctx.num_classes}); got {len(weights)}")
        self.c = target_counts(weights, ctx.n_ulb)
        k = ctx.num_classes
        self.q_orig = SampleMemory(ctx.n_ulb, k, 1.0 / k)  # official: uniform rows at start, on the CPU
        self.q_refine = SampleMemory(ctx.n_ulb, k, 1.0 / k)
        self.warm = step_of(cfg, "darp.warm")  # refinements at the first step of every period from here on
        self.schedule = Periodic(self.every, first=-(-self.warm // self.every))
        self.refined = False  # a refinement has happened: the refined rows replace the base's targets
        self.refinements, self.unconverged = 0, 0

    def refresh(self) -> None:
        """Refine the whole memory Q_orig into Q_refine (Q_orig unchanged)."""
        m, failed = refine(self.q_orig.table.double().numpy(), self.c.numpy(), self.alpha, self.iter_t, self.tol,
                           self.maxiter)
        self.q_refine.table = torch.from_numpy(m).float()  # float32, as the official torch.Tensor(M)
        self.refined, self.refinements, self.unconverged = True, self.refinements + 1, self.unconverged + failed

    def pseudo_targets(self, targets: torch.Tensor, mask: torch.Tensor, logits_w: torch.Tensor,
                       ulb_pos: torch.Tensor, step: int,
                       feats_w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        pos = ulb_pos.cpu()
        self.q_orig.write(pos, F.softmax(logits_w.detach().float(), dim=-1).cpu())
        if self.schedule.due(step):
            self.refresh()
        if not self.refined:
            return None
        new_targets, new_mask = refined_targets(self.q_refine.table[pos].to(logits_w.device), self.hard, self.tau)
        return new_targets, (mask if self.raw_mask else new_mask)

    def eval_fields(self) -> dict[str, Any]:
        return {"darp_refinements": self.refinements, "darp_unconverged": self.unconverged}

    def state_dict(self) -> dict[str, Any]:
        return {"q_orig": self.q_orig.state_dict(), "q_refine": self.q_refine.state_dict(), "refined": self.refined,
                "schedule": self.schedule.state_dict(), "refinements": self.refinements,
                "unconverged": self.unconverged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.q_orig.load_state_dict(state["q_orig"])
        self.q_refine.load_state_dict(state["q_refine"])
        self.schedule.load_state_dict(state["schedule"])
        self.refined, self.refinements = bool(state["refined"]), int(state["refinements"])
        self.unconverged = int(state["unconverged"])
