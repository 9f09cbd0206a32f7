"""CoSSL (Fan et al., CVPR 2022): co-learning of the representation (the FixMatch student) and a classifier (a linear
teacher head on the EMA backbone's features, trained on class-balanced, feature-blended labeled data), whose
pseudo-labels the student learns from and which predicts at test time.

Official rule (YUE-FAN/CoSSL `train_cifar_fix_cossl.py`, `utils/tfe_init.py`, `utils/utils.py`, `run_cifar10.sh`):
- stage 1: `train_cifar_fix.py` (FixMatch); stage 2 resumes its checkpoint after 400 of 500 epochs
  (`checkpoint_401`, epochs of 500 steps) and trains 100 epochs x 500 more; here the main stage is stage 1
  (train.steps) and stage 2 a stage of `cossl.steps` after it: the student as it is, the usual EMA, FixMatch;
- warm-up, once (`classifier_warmup`): imprinting: EMA backbone in eval mode, features of the weak-view labeled set,
  head rows = L2-normalised class means, no bias (`weight_imprint`); a second weak-view labeled pass and, per
  unlabeled image, the features of a strong view and the imprinted probabilities of a weak view (`TFE`); per class
  with N_c < N_max, N_max − N_c synthetic features λa + (1 − λ)b (debias/cossl_parts.py `synthetic_features`, λ ~
  Beta(0.75, 0.75)); a head with PyTorch's default init trained 10 x 500 steps on labeled + synthetic features
  (batches of 64, shuffled, drop_last; Adam 0.002, L2 5e-4 on the weight; EMA 0.999); the teacher head starts from
  that head, its EMA from that EMA, with a fresh Adam (lr 0.002, L2 5e-4 on the weight);
- every step, in this order: pseudo-labels = one-hot argmax softmax(teacher(EMA features of the weak unlabeled
  view)), the ONLINE teacher head, mask max ≥ τ 0.95; a class-balanced labeled batch (WeightedRandomSampler with
  replacement, strong view) and a batch of the labeled ∪ unlabeled pool (shuffled, strong view); EMA features of both
  (eval mode, no gradient); labeled feature x of class y → λx + (1 − λ)u with probability (N_max − N_y)/N_max,
  λ ~ U(max_lam, 1) (run_cifar10.sh --max_lam 0.6; argparse default 0.8); CE on the teacher head, its Adam step,
  its EMA step; then the student's FixMatch step on those pseudo-labels;
- evaluation: EMA backbone + EMA teacher head (`validate_teacher`); the mean of the last 20 epochs printed.
Here the pseudo-labels and the teacher step run at [weight] (before the student's forward, on the EMA model of the
previous step, as the official order), [pseudo_targets] swaps in the teacher's targets and mask (of the global
batch: ctx.gather), [eval_module] predicts with the EMA teacher. The teacher head, its EMA and Adam live in the
component (its state_dict), not in the model, so the run's optimiser and EMA never touch them; the warm-up's result is
saved there too, so a resume inside stage 2 does not redo it. Under DDP every process draws the same teacher batches
(one generator per run, not per rank) and takes the same teacher step.
Kept/changed (see also cossl_parts.py): the teacher batches have train.batch_size images (official 64 = its batch);
the per-step λ are drawn for every labeled feature; ties of the warm-up's sort are broken by position (official:
torch's unstable sort over class-ordered labeled indices); RNG: numpy (sampling, TFE, head init) and a torch
generator for the views, both of the component (official: python random, numpy and torch's global streams).
Stage 2 continues the main stage's optimiser with its state and coupled L2 `cossl.student_wd`·optim.lr in every
group, and its EMA step has no decay (official: optimizer.load_state_dict, then weight_decay = 0.02·lr; WeightEMA
wd=False; stage 1 decays through the EMA step). `dytrim eval`, `predict` and `export` rebuild the component from
its saved state and predict with the EMA teacher, as the training evaluation. USB's port takes the pseudo-labels
from the student's own head (`cossl.pseudo_labels=student` reproduces that coupling only). FixMatch only (the
official script's base).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dytrim.config import RunConfig, config_section, require
from dytrim.data.augment import normalize, strong_augment, weak_augment
from dytrim.debias.cossl_parts import (
    Teacher,
    TeacherModel,
    default_linear,
    imprint,
    synthetic_features,
    tfe_probability,
    tfe_replace,
)
from dytrim.debias.registry import COMPONENTS, require_fixmatch
from dytrim.engine.components import generator_state, load_generator_state, owned_generator
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Batch, Component
from dytrim.engine.probe import eval_mode
from dytrim.engine.sampler import EpochSampler
from dytrim.engine.stages import Stage


@config_section("cossl")
@dataclass
class CoSSLConfig:
    """CoSSL's stage 2 and its teacher (official train_cifar_fix_cossl.py defaults, run_cifar10.sh's max_lam)."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"pseudo_labels": ("teacher", "student")}

    steps: int = 50_000  # stage 2, after train.steps (official 100 epochs x 500 after 400 x 500)
    max_lam: float = 0.6  # per-step TFE λ ~ U(max_lam, 1) (run_cifar10.sh --max_lam 0.6; argparse default 0.8)
    warm_steps: int = 5000  # the warm-up's head training (official --warm_tfe 10 epochs x 500)
    warm_lr: float = 0.002  # Adam of the warm-up (official --lr_tfe)
    lr: float = 0.002  # Adam of the teacher during stage 2 (official: the student's --lr 0.002)
    weight_decay: float = 5e-4  # L2 on the teacher's weight, both Adams (official --wd_tfe)
    ema_decay: float = 0.999  # the teacher's own EMA (official --ema-decay)
    beta: float = 0.75  # the warm-up's synthetic λ ~ Beta(beta, beta) (official, hard-coded)
    p_cutoff: float = 0.95  # the teacher pseudo-labels' threshold (official --tau)
    pseudo_labels: str = "teacher"  # teacher (official) | student: keep the base's (USB's port)
    student_wd: float = 0.02  # stage 2: the student's Adam continues with coupled L2 student_wd · optim.lr in every
    #   group (official: weight_decay = 0.02 * args.lr after loading stage 1's optimiser), the EMA step no decay

    def check(self, cfg: Any) -> None:
        if "cossl" not in cfg.debias.methods:
            return
        require_fixmatch(cfg, "cossl replaces the pseudo-labels with its teacher's")
        require(self.steps >= 1, "cossl.steps", f"must be >= 1 (steps of stage 2 after train.steps); got {self.steps}")
        require(0 <= self.max_lam <= 1, "cossl.max_lam", f"must be in [0, 1]; got {self.max_lam}")
        require(self.warm_steps >= 0, "cossl.warm_steps", f"must be >= 0; got {self.warm_steps}")
        for key in ("warm_lr", "lr", "beta"):
            require(getattr(self, key) > 0, f"cossl.{key}", f"must be > 0; got {getattr(self, key)}")
        require(self.weight_decay >= 0, "cossl.weight_decay", f"must be >= 0; got {self.weight_decay}")
        require(self.student_wd >= 0, "cossl.student_wd", f"must be >= 0; got {self.student_wd}")
        require(0 <= self.ema_decay < 1, "cossl.ema_decay", f"must be in [0, 1); got {self.ema_decay}")
        require(0 <= self.p_cutoff <= 1, "cossl.p_cutoff", f"must be in [0, 1]; got {self.p_cutoff}")


@COMPONENTS.register("cossl")
class CoSSL(Component):
    """Owns stage 2: warm-up at its entry, then per step the teacher's pseudo-labels and its update ([weight]), the
    swap of targets and mask ([pseudo_targets]) and the EMA teacher's prediction ([eval_module])."""

    name = "cossl"

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        self.c, self.ctx, self.lr = cfg.cossl, ctx, cfg.optim.lr
        ws = ctx.whole_set  # the run's images and augmentation settings (None when rebuilt for prediction only)
        self.data, self.aug = (ws.data, ws.aug) if ws is not None else (None, None)
        self.batch_size, self.pass_size = cfg.train.batch_size, cfg.train.eval_batch_size
        self.prob = tfe_probability(ctx.lb_counts).float().to(ctx.device)
        seed = cfg.seed * 1_000_003 + zlib.crc32(b"cossl")
        self.rng = np.random.Generator(np.random.PCG64(seed))  # sampling, TFE, head initialisation
        self.gen = owned_generator(cfg.seed, "cossl", ctx.device)  # the views
        self.full: EpochSampler | None = None  # the labeled ∪ unlabeled stream
        if self.data is not None:
            self.full = EpochSampler(len(self.data.lb_idx) + len(self.data.ulb_idx), self.batch_size, seed + 1)
            self.pool_idx = torch.cat([self.data.lb_idx, self.data.ulb_idx])
        counts = torch.tensor(ctx.lb_counts, dtype=torch.float64)
        w = (1.0 / counts.clamp_min(1))[ctx.lb_labels]  # WeightedRandomSampler: uniform class, then uniform sample
        self.balanced_p = (w / w.sum()).numpy()
        f, k = ctx.model.num_features, ctx.num_classes
        self.teacher = Teacher(default_linear(f, k, self.rng, ctx.device), self.c.lr, self.c.weight_decay,
                               self.c.ema_decay)
        self.ready = False  # the warm-up is done (saved, so a resume inside stage 2 does not redo it)
        self._pl: torch.Tensor | None = None  # this step's teacher logits of the global weak batch
        self.synthetic = 0  # size of the warm-up's synthetic set
        self._track = torch.full((2,), float("nan"), device=ctx.device)  # EMA (0.99) of the teacher's loss, accuracy

    def stages(self) -> list[Stage]:
        return [Stage("cossl", self.c.steps, start_from="student", lr=None, unlabeled=True, ema="track",
                      hooks="owner", optimizer="keep", weight_decay=self.c.student_wd * self.lr, ema_wd=0.0)]

    # ------------------------------------------------------------------ views and features
    def _view(self, idx: torch.Tensor, view: str) -> torch.Tensor:
        d, a = self.data, self.aug
        x = d.x_train[idx]
        if view == "weak":
            return normalize(weak_augment(x, self.gen, a.pad, a.flip), d.mean, d.std)
        return strong_augment(x, self.gen, d.mean, d.std, n_ops=a.n_ops, magnitude=a.magnitude, cutout_size=a.cutout,
                              pad=a.pad, flip=a.flip)

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """EMA-backbone features, BN in eval mode (running statistics), fp32."""
        with eval_mode(self.ctx.ema_model) as ema:
            return ema.forward_features(x).float()

    def _pass(self, idx: torch.Tensor, view: str) -> torch.Tensor:
        """Features of the images `idx` in order, each through its own `view`, in chunks."""
        return torch.cat([self._features(self._view(idx[i: i + self.pass_size], view))
                          for i in range(0, len(idx), self.pass_size)])

    # ------------------------------------------------------------------ warm-up (stage entry)
    def stage_labeled(self, k: int) -> None:
        if not self.ready:  # on a resume inside the stage the loaded state has it
            self.warm_up()
        return None

    def warm_up(self) -> None:
        """Imprinting, the synthetic TFE set and the warm-up head (module docstring); the teacher starts from it."""
        d, c, k = self.data, self.c, self.ctx.num_classes
        y_lb = d.y_train[d.lb_idx]
        w = imprint(self._pass(d.lb_idx, "weak"), y_lb, k)  # weight_imprint: its own weak pass
        lb_feats = self._pass(d.lb_idx, "weak")  # TFE: the labeled loader's pass
        lb_probs = F.softmax(lb_feats @ w.T, dim=1)
        ulb_probs = torch.cat([F.softmax(self._features(self._view(d.ulb_idx[i: i + self.pass_size], "weak")) @ w.T,
                                         dim=1) for i in range(0, len(d.ulb_idx), self.pass_size)])
        ulb_feats = self._pass(d.ulb_idx, "strong")
        syn_x, syn_y = synthetic_features(lb_feats, y_lb, lb_probs, ulb_feats, ulb_probs, self.ctx.lb_counts, c.beta,
                                          self.rng)
        xs, ys = torch.cat([lb_feats, syn_x]), F.one_hot(torch.cat([y_lb, syn_y]), k).float()
        warm = Teacher(default_linear(xs.shape[1], k, self.rng, xs.device), c.warm_lr, c.weight_decay, c.ema_decay)
        order = EpochSampler(len(xs), self.batch_size, int(self.rng.integers(2**62)))
        with torch.enable_grad():
            for _ in range(c.warm_steps):
                pos = order.next().to(xs.device)
                warm.step(xs[pos], ys[pos])
        self.teacher = Teacher(warm.head, c.lr, c.weight_decay, c.ema_decay, ema=warm.ema)  # a fresh Adam
        self.synthetic = len(syn_y)
        self.ready = True

    # ------------------------------------------------------------------ every step of stage 2
    def weight(self, batch: Batch, step: int) -> None:
        """The teacher's pseudo-labels of this step (before its update), then its update; weights untouched."""
        if batch.x_ulb_w is not None and self.c.pseudo_labels == "teacher":
            with torch.no_grad():
                self._pl = self.ctx.gather(self.teacher.head(self._features(batch.x_ulb_w)).float())
        d = self.data
        lb_pos = torch.from_numpy(self.rng.choice(len(d.lb_idx), size=self.batch_size, p=self.balanced_p))
        lb_pos = lb_pos.to(d.lb_idx.device)
        y = d.y_train[d.lb_idx[lb_pos]]
        fx = self._features(self._view(d.lb_idx[lb_pos], "strong"))
        assert self.full is not None, "cossl trains its teacher on the run's data"
        fu = self._features(self._view(self.pool_idx[self.full.next().to(self.pool_idx.device)], "strong"))
        feats, _ = tfe_replace(fx, y, fu, self.prob, self.c.max_lam, self.rng)
        with torch.enable_grad():
            loss, logits = self.teacher.step(feats, F.one_hot(y, self.ctx.num_classes).float())
        now = torch.stack([loss, (logits.argmax(dim=1) == y).float().mean()])
        self._track = torch.where(self._track.isnan(), now, 0.99 * self._track + 0.01 * now)

    def pseudo_targets(self, targets: torch.Tensor, mask: torch.Tensor, logits_w: torch.Tensor,
                       ulb_pos: torch.Tensor, step: int,
                       feats_w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self._pl is None:
            return None
        conf, label = F.softmax(self._pl, dim=1).max(dim=1)
        self._pl = None
        return F.one_hot(label, targets.shape[-1]).to(targets.dtype), (conf >= self.c.p_cutoff).to(mask.dtype)

    def eval_module(self, model: nn.Module) -> nn.Module | None:
        return TeacherModel(model, self.teacher.ema) if self.ready else None

    def eval_fields(self) -> dict[str, Any]:
        if not self.ready:
            return {}
        loss, acc = self._track.tolist()
        return {"cossl_teacher_loss": round(loss, 5), "cossl_teacher_acc": round(acc, 5),
                "cossl_synthetic": self.synthetic}

    def state_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, "teacher": self.teacher.state_dict(), "rng": self.rng.bit_generator.state,
                "gen": generator_state(self.gen), "full": self.full.state_dict(), "track": self._track.clone(),
                "synthetic": self.synthetic}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.ready = bool(state["ready"])
        self.teacher.load_state_dict(state["teacher"])
        self.rng.bit_generator.state = state["rng"]
        load_generator_state(self.gen, state["gen"])
        if self.full is not None:
            self.full.load_state_dict(state["full"])
        self._track = state["track"].to(self.ctx.device)
        self.synthetic = int(state["synthetic"])
