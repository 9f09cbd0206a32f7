"""cRT (classifier re-training, Kang et al. ICLR 2020, as DARP's `train_crt.py` runs it after DARP): a stage after
the main one that trains a fresh classifier on the frozen backbone, on labeled data only, class re-weighted, with
input mixup.

Official rule (bbuing9/DARP `train_crt.py`, `run_crt.sh`): the model and its EMA load the EMA weights of the SSL run;
`output` becomes a fresh Linear(F, C) (Xavier-normal weight, zero bias); Adam(lr 0.002) on it alone, constant, no
decay; 20 epochs x 500 steps of labeled batches of 64 (shuffled, drop_last); λ ~ Beta(α, α), λ = max(λ, 1 − λ), a
random permutation of the batch, x̃ = λx + (1 − λ)x[perm], ỹ likewise of the one-hot labels; loss = −mean_b Σ_c
w_c ỹ_bc log softmax(z_b)_c with w_c = C (1/N_c) / Σ_k (1/N_k); the model stays in train mode, so the backbone's BN
running statistics keep moving though its weights do not; evaluation of the raw model every 500 steps, the mean of the
last 10 reported.
As released it does not run as run_crt.sh calls it: it resumes from `model_best_prev.pth.tar`, which `train.py`
never writes (its save_checkpoint writes the epoch's checkpoint), run_crt.sh passes `--alpha 0.75` to a parser that
only knows `--mix_alpha` (default 0: no mixup), and it hard-codes 10 classes (baselines-spec.md §3.1 also names
`dataset.remix_cifar10` as absent; the stored repository at 4ee2be4 has that file). Here: the stage starts from the
run's own EMA model (what the resume meant), mixup α = 0.75 (`crt.mix_alpha`, the run_crt.sh intent; 0 = none, the
argparse default), the frozen parameters take no gradient (the same weights as computing and not applying it), λ and
the permutation come from one generator of the component (official: numpy's λ, torch's permutation), and the EMA
model is the student during the stage, so every evaluation, `dytrim eval` and `export` read the re-trained
classifier. Under DDP each process mixes its own slice of the global batch. Stacks after any base and any method of
the main stage.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from dytrim.config import RunConfig, config_section, require
from dytrim.debias.registry import COMPONENTS
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Batch, Component
from dytrim.engine.mixup import mix
from dytrim.engine.stages import Stage


@config_section("crt")
@dataclass
class CRTConfig:
    """The classifier re-training stage (official run_crt.sh: 20 epochs of 500 steps, Adam 0.002, mixup 0.75)."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"weights": ("inverse", "none")}

    steps: int = 10_000  # steps of the stage, after train.steps (official 20 epochs x 500)
    lr: float = 0.002  # Adam, constant, on the classifier only (official --lr)
    mix_alpha: float = 0.75  # λ ~ Beta(α, α), λ = max(λ, 1 − λ); 0 = no mixup (the parser's default)
    weights: str = "inverse"  # inverse: w_c = C (1/N_c) / Σ_k 1/N_k (official) | none: w_c = 1

    def check(self, cfg: Any) -> None:
        if "crt" not in cfg.debias.methods:
            return
        require(self.steps >= 1, "crt.steps", f"must be >= 1 (steps of the stage after train.steps); got {self.steps}")
        require(self.lr > 0, "crt.lr", f"must be > 0; got {self.lr}")
        require(self.mix_alpha >= 0, "crt.mix_alpha", f"must be >= 0 (0 = no mixup); got {self.mix_alpha}")


def class_weights(counts: list[int], kind: str) -> torch.Tensor:
    """[C] float32 w_c = C (1/N_c) / Σ_k (1/N_k) (computed in float64, as the official numpy), or ones."""
    n = np.asarray(counts, dtype=np.float64)
    if kind == "none":
        return torch.ones(len(n))
    w = 1.0 / np.maximum(n, 1.0)
    return torch.from_numpy(w / w.sum() * len(n)).float()


@COMPONENTS.register("crt")
class CRT(Component):
    """Owns the stage `crt`: mixes each labeled batch and gives the re-weighted soft targets (transform_labeled)."""

    name = "crt"

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        c = cfg.crt
        self.steps, self.lr, self.alpha = c.steps, c.lr, c.mix_alpha
        self.w = class_weights(ctx.lb_counts, c.weights).to(ctx.device)
        self.num_classes = ctx.num_classes
        self.rng = np.random.Generator(np.random.PCG64(cfg.seed * 1_000_003 + zlib.crc32(b"crt")))

    def stages(self) -> list[Stage]:
        return [Stage("crt", self.steps, start_from="ema", new_head=True, trains="head", lr=self.lr, unlabeled=False,
                      ema="student", ce_eps=0.0)]

    def draw(self, n: int) -> tuple[float, torch.Tensor]:
        """This step's λ (max(λ, 1 − λ) of a Beta(α, α) draw; 1 without mixup) and permutation of n samples."""
        lam = float(self.rng.beta(self.alpha, self.alpha)) if self.alpha > 0 else 1.0
        return max(lam, 1.0 - lam), torch.from_numpy(self.rng.permutation(n))

    def transform_labeled(self, batch: Batch, step: int) -> None:
        lam, perm = self.draw(len(batch.y_lb))
        perm = perm.to(batch.x_lb.device)
        y_hot = F.one_hot(batch.y_lb, self.num_classes).to(batch.x_lb.dtype)
        batch.x_lb, mixed = mix(batch.x_lb, y_hot, lam, perm)
        batch.t_lb = mixed * self.w.to(mixed.dtype)[None, :]  # −Σ_c w_c ỹ_c log p_c as a soft cross-entropy

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.rng.bit_generator.state = state["rng"]
