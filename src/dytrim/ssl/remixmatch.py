"""ReMixMatch (Berthelot et al., ICLR 2020) as a second SSL base: distribution-aligned soft pseudo-labels of the weak
view, mixup of labeled and unlabeled views, an unmixed strong-view term and a rotation head. Two modes, the two codes
the long-tail papers ran:

`cdmad` (default; LeeHyuck/CDMAD `remixmatchcdmad.py`, the base of ReMixMatch + CDMAD):
- q = DA(softmax(z_w)) (after the pseudo_logits hooks: CDMAD's z_w − z(I)); DA: p·(t + 1e-6)/(p̄ + 1e-6), rows
  renormalised, t = labeled counts · N_u / N_l (not normalised), p̄ = the mean of the last <= 128 batch means of p,
  pushed before use, the window restarting every 500 steps (the official window is a local of one epoch's loop);
  DA only when γ_l = γ_u and not STL-10 (`da: auto`); no sharpening (T = 1; its lines are commented out);
- mixup (α 0.75, λ = max(λ, 1 − λ), one permutation) over [labeled strong, u weak, u strong 1, u strong 2] with
  targets [one-hot, q, q, q], forwarded in labeled-batch-sized chunks, MixMatch-interleaved, each chunk its own BN
  batch and each moving the running statistics (train mode throughout);
- loss = CE(mixed x) + CE(weak x, unmixed) + λ_u·ramp·CE(mixed u) + w_rot·CE(rot(rotated u strong 1))
  + w_kl·ramp·CE(u strong 1, q), ramp = clip(step / (1.0 · train.steps)) (rampup 300 epochs of 300), λ_u 2, w_rot 1,
  w_kl 0.5; CE(·) of the first three with the run's ssl.ce_eps (official log(softmax + 1e-8)), the last two exact;
  forwards in the official order: weak u, the mixed chunks, weak x, rotated u strong 1, u strong 1.
`usb` (microsoft/Semi-supervised-learning `remixmatch.py`, `DistAlignEMAHook`):
- DA with p̄ an EMA (0.999, started at the first batch mean, updated before use) and t the labeled class frequency;
  sharpening T = 0.5;
- mixup over [labeled weak, u strong 0, u strong 1, u weak]; BN running statistics move only in the labeled
  forward (logits unused) and the first mixed chunk (the weak u, the strong 0 and the rotated forwards and the other
  chunks use batch statistics with the running ones restored, USB's bn_controller);
- loss = CE(mixed x) + λ_u·ramp·CE(mixed u) + w_kl·ramp·CE(u strong 0, q) + w_rot·CE(rot(rotated u strong 0)),
  ramp over the first 1/64 of training, λ_u 1.5 (usb presets), w_kl 0.5, w_rot 0.5; USB's unused strong-1 forward
  is skipped (no effect on any weight or buffer).
Here the draws (rotations, λ, permutation) come from one generator of the base (official: torch's and numpy's global
streams), saved in checkpoints with the DA state. The mask is 1 (no threshold; components may still replace targets
and mask). Per-sample weights: a mixed slot is weighted by its own source image (λ >= 0.5 makes it the larger part):
w_lb on the labeled slots and the unmixed labeled term, w_ulb and the mask on the unlabeled slots and the unmixed
strong term; the rotation term is not weighted. Components reading penultimate features (ABC, DASO, ACR) do not stack.
"""

from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dytrim.config import ConfigError, config_section, require
from dytrim.engine.components import xavier_linear_
from dytrim.engine.losses import soft_cross_entropy
from dytrim.engine.mixup import interleave, mix, rotate
from dytrim.ssl.base import ALGORITHMS, SSLAlgorithm

#: the values each mode takes for the keys left at None
MODE_DEFAULTS = {"cdmad": {"temperature": 1.0, "w_rot": 1.0, "ramp": 1.0},
                 "usb": {"temperature": 0.5, "w_rot": 0.5, "ramp": 1 / 64}}


@config_section("remixmatch")
@dataclass
class ReMixMatchConfig:
    """ReMixMatch's mode and rule constants (ssl.lambda_u is its λ_u: CDMAD 2, USB 1.5; ssl.n_strong must be 2)."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"mode": ("cdmad", "usb"), "da": ("auto", "on", "off")}

    mode: str = "cdmad"  # cdmad: CDMAD's remixmatchcdmad.py | usb: USB's remixmatch.py (see dytrim/ssl/remixmatch.py)
    mix_alpha: float = 0.75  # λ ~ Beta(α, α), λ = max(λ, 1 − λ)
    temperature: float | None = None  # sharpening T of the aligned targets; None: the mode's (cdmad 1 = none, usb 0.5)
    w_rot: float | None = None  # weight of the rotation loss; None: the mode's (cdmad 1, usb 0.5)
    w_kl: float = 0.5  # weight of the unmixed strong-view soft CE (CDMAD w_ent, USB kl_loss_ratio)
    ramp: float | None = None  # fraction of train.steps over which λ_u and w_kl ramp up linearly; None: the mode's
    #   (cdmad 1.0: rampup 300 of 300 epochs; usb 1/64)
    da: str = "auto"  # distribution alignment: auto = the mode's rule (cdmad: only when data.imb_ratio_l equals
    #   data.imb_ratio_u and the data is not STL-10; usb: always) | on | off
    da_window: int = 128  # cdmad: batch means in the DA window
    da_epoch: int = 500  # cdmad: the window restarts every da_epoch steps (an official epoch)
    da_momentum: float = 0.999  # usb: EMA momentum of the model's class distribution

    def check(self, cfg: Any) -> None:
        if cfg.ssl.name != "remixmatch":
            return
        require(cfg.ssl.n_strong == 2, "ssl.n_strong", f"remixmatch mixes two strong views; set 2 (got "
                                                       f"{cfg.ssl.n_strong})")
        require(cfg.train.forward == "separate", "train.forward", "remixmatch forwards each mixed chunk as its own "
                                                                  "BN batch; set train.forward=separate")
        from dytrim.debias import COMPONENTS  # the methods register after the bases: read at validation time

        users = [m for m in cfg.debias.methods if m in COMPONENTS and getattr(COMPONENTS.get(m), "uses_features", 0)]
        require(not users, "debias.methods", f"{', '.join(users)} read penultimate features of the strong views, "
                                             "which ssl.name=remixmatch does not compute; use ssl.name=fixmatch")
        require(self.mix_alpha > 0, "remixmatch.mix_alpha", f"must be > 0; got {self.mix_alpha}")
        for key in ("temperature", "w_rot", "ramp"):
            value = getattr(self, key)
            require(value is None or value > 0 or (key == "w_rot" and value == 0), f"remixmatch.{key}",
                    f"must be > 0 (w_rot >= 0), or null for the mode's value; got {value}")
        require(self.ramp is None or self.ramp <= 1, "remixmatch.ramp", f"must be in (0, 1]; got {self.ramp}")
        require(self.w_kl >= 0, "remixmatch.w_kl", f"must be >= 0; got {self.w_kl}")
        require(self.da_window >= 1 and self.da_epoch >= 1, "remixmatch.da_window",
                "remixmatch.da_window and da_epoch must be >= 1")
        require(0 <= self.da_momentum < 1, "remixmatch.da_momentum", f"must be in [0, 1); got {self.da_momentum}")


@dataclass
class MixedLosses:
    """What the base computed of one batch: per-sample losses with their graphs and the named extra terms."""

    loss_lb: torch.Tensor  # [B] the labeled terms of each labeled image (mixed slot, + unmixed in cdmad)
    loss_ulb: torch.Tensor  # [3, Bu] the mixed unlabeled slots, by source image, masked
    w_u: float  # λ_u · ramp, the weight of the mean of loss_ulb · w_ulb
    logits_lb: torch.Tensor  # [B, C] the labeled logits handed to loss_terms (the unmixed weak view in cdmad)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # weighted scalars added to the loss (kl, rot)


@ALGORITHMS.register("remixmatch")
class ReMixMatch(SSLAlgorithm):
    """Aligned soft pseudo-labels, mixup of the views and a rotation head (`mode`: cdmad | usb, see the module)."""

    uses_unlabeled = True
    mixes = True  # the step function hands the batch to `mixed_losses` after the pseudo-labels (engine/step.py)

    def __init__(self, cfg: Any, num_classes: int, num_ulb: int) -> None:
        super().__init__(cfg, num_classes, num_ulb)
        self.r: ReMixMatchConfig = ReMixMatchConfig()
        self.window: list[torch.Tensor] = []  # cdmad: the batch means of this window
        self.window_epoch = -1  # the epoch the window belongs to
        self.p_model: torch.Tensor | None = None  # usb: the EMA of the batch means
        self.rng = np.random.Generator(np.random.PCG64(0))
        self.rot_head: nn.Linear | None = None
        self.progress: Any = None

    @property
    def views_per_sample(self) -> tuple[int, int, int, int]:
        """Images through a forward / a backward per labeled and per unlabeled image of a step (the work counters):
        cdmad: the mixed slot and the weak view of x; u: weak, 3 mixed slots, rotated, strong 1 (5 with a graph);
        usb: x's unused forward and its mixed slot; u: weak, strong 0, 3 mixed slots, rotated (5 with a graph)."""
        return (2, 6, 2, 5) if self.r.mode == "cdmad" else (2, 6, 1, 5)

    @property
    def lb_strong(self) -> bool:
        """cdmad mixes a strong view of the labeled images: the batch carries one."""
        return self.r.mode == "cdmad"

    def bind(self, cfg: Any, ctx: Any, components: list[Any]) -> None:
        r = self.r = cfg.remixmatch
        for key, value in MODE_DEFAULTS[r.mode].items():
            if getattr(r, key) is None:
                setattr(r, key, value)
        if users := [c.name for c in components if c.uses_features]:
            raise ConfigError(f"debias.methods: {', '.join(users)} read penultimate features of the strong views, "
                              "which ssl.name=remixmatch does not compute; use ssl.name=fixmatch")
        counts = torch.tensor(ctx.lb_counts, dtype=torch.float32)
        if r.mode == "cdmad":  # official: N_SAMPLES_PER_CLASS_T * sum(U) / sum(N), not normalised
            self.target = (counts * ctx.n_ulb / float(counts.sum())).to(ctx.device)
        else:
            self.target = (counts / counts.sum()).to(ctx.device)
        same = cfg.data.imb_ratio_l == cfg.data.imb_ratio_u and cfg.data.name != "stl10"
        auto = same if r.mode == "cdmad" else True
        self.align = {"auto": auto, "on": True, "off": False}[r.da]
        self.ramp_steps = max(1.0, float(r.ramp) * cfg.train.steps)
        self.rng = np.random.Generator(np.random.PCG64(cfg.seed * 1_000_003 + zlib.crc32(b"remixmatch")))
        self.progress = ctx.progress
        width = ctx.model.head.in_features
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + zlib.crc32(b"remixmatch.rot"))
        self.rot_head = xavier_linear_(nn.Linear(width, 4), gen)

    def heads(self) -> dict[str, nn.Module]:
        return {"rot": self.rot_head} if self.rot_head is not None else {}

    # ------------------------------------------------------------------ pseudo-labels
    def aligned(self, p: torch.Tensor, step: int) -> torch.Tensor:
        """p [N, C] after distribution alignment (the mode's rule; its state advances by this batch)."""
        if not self.align:
            return p
        mean = p.mean(0)
        if self.r.mode == "cdmad":
            epoch = step // self.r.da_epoch
            if epoch != self.window_epoch:
                self.window, self.window_epoch = [], epoch
            self.window = [*self.window[-(self.r.da_window - 1):], mean] if self.r.da_window > 1 else [mean]
            p_bar = torch.stack(self.window).mean(0)
        else:
            m = self.r.da_momentum
            self.p_model = mean if self.p_model is None else self.p_model * m + mean * (1 - m)
            p_bar = self.p_model
        pa = p * (self.target.to(p) + 1e-6) / (p_bar + 1e-6)
        return pa / pa.sum(dim=1, keepdim=True)

    def pseudo_targets(self, logits_w: torch.Tensor, ulb_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        step = self.progress.step if self.progress is not None else 0
        q = self.aligned(F.softmax(logits_w.detach().float(), dim=-1), step)
        if self.r.temperature != 1.0:
            q = q ** (1.0 / self.r.temperature)
            q = q / q.sum(dim=-1, keepdim=True)
        return q, torch.ones(len(q), device=q.device)

    # ------------------------------------------------------------------ the mixed step
    def _frozen(self, forward: Any) -> Any:
        """BN batch statistics with the running ones restored afterwards (usb), or plain train mode (cdmad)."""
        return forward.frozen_bn() if self.r.mode == "usb" else contextlib.nullcontext()

    def weak_logits(self, forward: Any, x_w: torch.Tensor) -> torch.Tensor:
        """The weak unlabeled view's logits, no gradient (usb: BN running statistics left as they were)."""
        with self._frozen(forward):
            return forward([x_w], [False])[0].detach()

    def draw(self, n_rot: int, n_mix: int) -> tuple[torch.Tensor, float, torch.Tensor]:
        """This step's rotations k [n_rot] in 0..3, λ = max(λ, 1 − λ) of Beta(α, α) and a permutation of n_mix."""
        k = torch.from_numpy(self.rng.integers(0, 4, n_rot))
        lam = float(self.rng.beta(self.r.mix_alpha, self.r.mix_alpha))
        return k, max(lam, 1.0 - lam), torch.from_numpy(self.rng.permutation(n_mix))

    def mixed_losses(self, batch: Any, targets: torch.Tensor, mask: torch.Tensor, forward: Any, hooked: Any,
                     ce_eps: float, step: int) -> MixedLosses:
        """The losses of this batch given its pseudo-targets [Bu, C] and mask [Bu]; `hooked(z, labeled)`: logits
        after the components' train_logits hooks, in fp32."""
        r, b = self.r, len(batch.y_lb)
        s0, s1 = batch.x_ulb_s[0], batch.x_ulb_s[1]
        y_hot = F.one_hot(batch.y_lb, self.num_classes).to(targets.dtype)
        if r.mode == "usb":  # USB's labeled forward: its logits are unused, its BN batch moves the running statistics
            with torch.no_grad():
                forward([batch.x_lb], [False])
            with forward.frozen_bn():
                logits_s0 = forward([s0], [True])[0]
            inputs = [batch.x_lb, s0, s1, batch.x_ulb_w]
        else:
            inputs = [batch.x_lb_s, batch.x_ulb_w, s0, s1]
        k, lam, perm = self.draw(len(s0), b + 3 * len(s0))
        x_mix, t_mix = mix(torch.cat(inputs), torch.cat([y_hot, targets, targets, targets]), lam,
                           perm.to(s0.device))
        chunks = interleave(list(torch.split(x_mix, b)), b)
        logits = [forward([chunks[0]], [True])[0]]
        with self._frozen(forward):
            logits += [forward([c], [True])[0] for c in chunks[1:]]
        logits = interleave(logits, b)
        loss_lb = soft_cross_entropy(hooked(logits[0], True), t_mix[:b], ce_eps)
        z_u = hooked(torch.cat(logits[1:]), False)
        loss_ulb = soft_cross_entropy(z_u, t_mix[b:], ce_eps).view(3, -1) * mask
        logits_lb = logits[0]
        if r.mode == "cdmad":
            logits_lb = forward([batch.x_lb], [True])[0]
            loss_lb = loss_lb + soft_cross_entropy(hooked(logits_lb, True), y_hot, ce_eps)
        with self._frozen(forward):
            _, feats = forward([rotate(s0, k)], [True], True)
        logits_rot = self.rot_head(feats[0].to(self.rot_head.weight.dtype)).float()
        if r.mode == "cdmad":
            logits_s0 = forward([s0], [True])[0]
        ramp = min(1.0, step / self.ramp_steps)
        kl = soft_cross_entropy(hooked(logits_s0, False), targets, 0.0) * mask * batch.w_ulb
        terms = {"kl": r.w_kl * ramp * kl.mean(),
                 "rot": r.w_rot * F.cross_entropy(logits_rot, k.to(logits_rot.device))}
        return MixedLosses(loss_lb, loss_ulb, self.cfg.lambda_u * ramp, logits_lb, terms)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"window": [t.clone() for t in self.window], "window_epoch": self.window_epoch,
                "p_model": self.p_model, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.window, self.window_epoch = [t.clone() for t in state["window"]], int(state["window_epoch"])
        self.p_model = state["p_model"]
        self.rng.bit_generator.state = state["rng"]
