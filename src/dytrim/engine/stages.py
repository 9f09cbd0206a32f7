"""Training stages: a run is its main stage (train.steps of the SSL base and its components) followed by the stages
that components declare (`Component.stages()`), each with its own step budget and what carries over.

A stage after the main one says where its weights start (the student as it is, or the EMA model's weights),
whether the classifier `head` is re-initialised, which parameters it trains (all, or the head with the rest
frozen: no gradient, though BN running statistics still move in train mode, as DARP's cRT), its constant learning
rate (a fresh Adam), whether it reads unlabeled data (the SSL base), and what the EMA model is during it
(`track`: the usual teacher; `student`: a copy of the student, so evaluation, `dytrim eval` and `export` read
the stage's model, as the reference evaluates the raw model). Only the owning component's hooks run in its stage;
the main stage runs every component that declares no stage. The step clock runs on across stages (stage k covers
steps [start_k, start_k + steps_k)); the stage index travels in every checkpoint, and a resume re-enters the
stage before it loads the weights and the optimiser, so an interrupted stage continues exactly.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dytrim.config import ConfigError
from dytrim.engine.components import xavier_linear_

CHOICES = {"start_from": ("student", "ema", "init"), "trains": ("all", "head"), "ema": ("track", "student", "fresh"),
           "hooks": ("owner", "all"), "optimizer": ("fresh", "keep")}


@dataclass(frozen=True)
class Stage:
    """One stage after the main one (see the module docstring); declared by the component that owns it."""

    name: str
    steps: int
    start_from: str = "student"  # "ema": the EMA model's weights; "init": the run's initial weights (a new generation)
    new_head: bool = False  # the classifier `head` re-initialised: Xavier-normal weight, zero bias
    trains: str = "all"  # "head": only the classifier is trained, every other parameter frozen
    lr: float | None = 0.002  # a fresh Adam, this constant LR, no decay; None: the run's optimiser and LR schedule
    #   (optim.*), fresh, over the stage's steps
    unlabeled: bool = False  # True: the SSL base and its unlabeled batches take part
    ema: str = "track"  # "student": the EMA model is the student; "fresh": it restarts from the student, then tracks
    ce_eps: float = 0.0  # the stage's cross-entropy: 0 = exact log_softmax (None-lr stages: the run's ssl.ce_eps)
    hooks: str = "owner"  # whose hooks run: the owner's only, or "all": the main stage's components and the owner
    #   (which then also runs in the main stage)
    optimizer: str = "fresh"  # lr None only: "keep" continues the run's optimiser with its state (CoSSL's stage 2
    #   resumes stage 1's Adam), "fresh" builds it anew
    weight_decay: float | None = None  # coupled L2 set in every parameter group of the stage's optimiser (CoSSL:
    #   0.02·lr); None: as built
    ema_wd: float | None = None  # the EMA step's decay factor (× lr) during the stage; None: the run's optim.ema_wd

    def __post_init__(self) -> None:
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"stage {self.name}: {key} must be one of {allowed}; got {getattr(self, key)!r}")
        if self.steps < 1:
            raise ValueError(f"stage {self.name}: needs at least one step; got {self.steps}")
        if self.optimizer == "keep" and self.lr is not None:
            raise ValueError(f"stage {self.name}: optimizer='keep' continues the run's optimiser, so lr must be None")


class LabeledOnly:
    """The SSL side of a supervised stage: no unlabeled batches, no pseudo-labels, no state."""

    uses_unlabeled = False

    def pseudo_targets(self, logits_w: torch.Tensor, ulb_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("a supervised stage makes no pseudo-labels")

    def extra_loss(self, logits_s: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def reinit_head(model: nn.Module, seed: int, stage: str) -> None:
    """A fresh classifier `model.head` in place: Xavier-normal weight, zero bias (DARP's cRT), drawn from a
    generator of (seed, stage name), so every process and every resume draws the same head."""
    gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + zlib.crc32(stage.encode()))
    xavier_linear_(model.head, gen)


def trained_parameters(model: nn.Module, trains: str) -> list[nn.Parameter]:
    """The parameters a stage trains; with trains="head" every other parameter stops taking gradients."""
    if trains == "all":
        return [p for p in model.parameters() if p.requires_grad]
    head = {id(p) for p in model.head.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in head)
    return list(model.head.parameters())


def stage_optimizer(params: list[nn.Parameter], stage: Stage) -> torch.optim.Optimizer:
    """The stage's fresh Adam over `params` (no weight decay, the stage's constant LR)."""
    return torch.optim.Adam(params, lr=stage.lr)


def grown_pool(lb_idx: torch.Tensor, y_train: torch.Tensor, ulb_idx: torch.Tensor,
               extra: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(image indices, labels) of the labeled pool grown by unlabeled positions with given labels (CReST's picks):
    the original labeled images first, in their order, then the picks."""
    pos, labels = extra
    idx = torch.cat([lb_idx, ulb_idx[pos.to(ulb_idx.device)]])
    return idx, torch.cat([y_train[lb_idx], labels.to(y_train.device, y_train.dtype)])


def boundaries(main_steps: int, stages: list[Stage]) -> list[int]:
    """The first step of each stage, main stage included, and the run's last step: [0, main, main + s1, ...]."""
    out = [0, main_steps]
    for s in stages:
        out.append(out[-1] + s.steps)
    return out


class StagePlan:
    """The stages of a run and where it stands: index 0 is the main stage, k the k-th declared stage."""

    def __init__(self, components: list[Any], main_steps: int) -> None:
        owned = [(st, c) for c in components for st in c.stages()]
        self.stages: list[Stage] = [st for st, _ in owned]
        self.owners = [c for _, c in owned]
        apart = [c for st, c in owned if st.hooks == "owner"]  # owners whose hooks run in their own stages only
        self.main = [c for c in components if c not in apart]  # the main stage's components
        self.bounds = boundaries(main_steps, self.stages)  # first step of each stage, then the last step
        self.index = 0

    def __bool__(self) -> bool:
        """True when the run has stages after the main one."""
        return bool(self.stages)

    @property
    def total(self) -> int:
        return self.bounds[-1]

    @property
    def current(self) -> Stage | None:
        return self.stages[self.index - 1] if self.index else None

    @property
    def name(self) -> str:
        return self.current.name if self.current else "main"

    @property
    def end(self) -> int:
        """The last step of the current stage (the clock stops there until the next stage begins)."""
        return self.bounds[self.index + 1]

    def next_due(self, step: int) -> bool:
        """Whether step `step` belongs to a later stage than the current one."""
        return self.index < len(self.stages) and step >= self.bounds[self.index + 1]

    def postfix(self) -> dict[str, str]:
        """The progress bar's stage field, `stage=crt 2/2` (none in a run without stages)."""
        return {"stage": f"{self.name} {self.index + 1}/{len(self.stages) + 1}"} if self.stages else {}

    def active_at(self, k: int) -> list[Any]:
        """The components whose hooks run in stage k."""
        if k == 0:
            return self.main
        st, owner = self.stages[k - 1], self.owners[k - 1]
        return [owner] if st.hooks == "owner" else [*self.main, *([owner] if owner not in self.main else [])]

    def lr(self, step: int, main_lr: Any) -> float:
        """This step's learning rate: `main_lr(step, total)` (the run's schedule) in the main stage and in stages
        that use the run's optimiser (over the stage's own steps), else the stage's constant LR."""
        st = self.current
        if st is None:
            return main_lr(step, self.bounds[1])
        return main_lr(step - self.bounds[self.index], st.steps) if st.lr is None else st.lr

    def enter(self, k: int, model: nn.Module, ema: Any, seed: int, init_state: dict[str, torch.Tensor] | None,
              run_optimizer: Any, current: torch.optim.Optimizer | None = None) -> torch.optim.Optimizer:
        """Stage k's weights, head and frozen parameters on `model` (and `ema`); returns its optimiser (a fresh
        Adam, `run_optimizer(model)`, the run's own, for a stage without an LR of its own, or `current`, the one
        in use, for optimizer="keep"), with the stage's weight decay if it sets one."""
        st = self.stages[k - 1]
        if st.start_from in ("ema", "init"):
            model.load_state_dict(ema.model.state_dict() if st.start_from == "ema" else init_state)
        if st.new_head:
            reinit_head(model, seed, st.name)
        params = trained_parameters(model, st.trains)
        if st.optimizer == "keep" and current is not None:
            optimizer = current
        else:
            optimizer = stage_optimizer(params, st) if st.lr is not None else run_optimizer(model)
        if st.weight_decay is not None:
            for group in optimizer.param_groups:
                group["weight_decay"] = st.weight_decay
        if st.ema in ("student", "fresh"):
            ema.copy_from(model)
        self.index = k
        return optimizer

    def ema_wd(self, run_value: float) -> float:
        """The EMA step's decay factor now: the current stage's, or the run's optim.ema_wd."""
        st = self.current
        return run_value if st is None or st.ema_wd is None else st.ema_wd

    def check_resume(self, k: int, main_before: int, main_now: int) -> None:
        """A resume inside stage k >= 1 keeps the main stage's length (one line otherwise)."""
        if k and main_before != main_now:
            raise ConfigError(f"train.steps: the run is in its stage '{self.stages[k - 1].name}' (after the main "
                              f"stage's {main_before} steps); the main stage cannot change length now, so resume "
                              "without --set train.steps")

    def counters(self) -> dict[str, Any]:
        """summary.json's `stages`: the steps of each stage by name (runs with stages only)."""
        return {"stages": {"main": self.bounds[1]} | {st.name: st.steps for st in self.stages}} if self else {}
