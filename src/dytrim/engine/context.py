"""What a debiasing component may see of a run: a narrow, typed context built once by the loop.

Components never touch the Trainer. They read the models, the class counts and prior, the image shape and the
step clock here, and the loop's per-step probe z(I) of the baseline image: computed once per step, before any
hook, only when some component asks for it (`Component.uses_probe`), and shared by all of them. A run without
such a component gains no forward pass (a train-mode forward would move the BN running statistics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dytrim.engine.probe import baseline_image, baseline_logits


@dataclass
class Progress:
    """The schedule clock and the work counters of a run: advanced by the loop, read by components and logs."""

    total_steps: int  # train.steps
    step: int = 0  # the schedule clock: LR, evaluation, debias start and annealing read it
    clock: float = 0.0  # its exact value; advances by 1 per update, or more when pruning shrinks epochs
    updates: int = 0  # optimiser updates done
    samples_fwd: int = 0  # training images through a forward pass (weak + labeled + strong views)
    samples_bwd: int = 0  # training images whose loss was back-propagated (labeled + strong views)
    samples_seen: int = 0  # labeled + unlabeled images drawn

    def count(self, n_lb: int, n_ulb: int, n_strong: int, views: tuple[int, int, int, int] | None = None) -> None:
        """One update of a global batch of n_lb labeled and n_ulb unlabeled images (1 weak + n_strong views), or,
        given `views` = (forwards per labeled image, per unlabeled image, backwards per labeled, per unlabeled), of a
        base that forwards more (ReMixMatch's mixed chunks and extra views)."""
        f_lb, f_ulb, b_lb, b_ulb = views if views is not None else (1, 1 + n_strong, 1, n_strong)
        self.updates += 1
        self.samples_seen += n_lb + n_ulb
        self.samples_fwd += f_lb * n_lb + f_ulb * n_ulb
        self.samples_bwd += b_lb * n_lb + b_ulb * n_ulb


def _one_process(t: torch.Tensor) -> torch.Tensor:
    """The gather of a run on one process: the tensor itself."""
    return t


@dataclass
class RunContext:
    """The run as components see it (built by `engine.build.run_context`)."""

    model: nn.Module  # the student being trained (train mode)
    ema_model: nn.Module  # the EMA teacher: every evaluation and prediction uses it
    device: torch.device
    seed: int
    classes: list[str]
    lb_counts: list[int]  # labeled images per class
    lb_labels: torch.Tensor  # [N_lb] class of each position of the labeled pool (CPU)
    n_ulb: int  # size of the unlabeled pool
    image_shape: tuple[int, int, int]  # (C, H, W) of the network's input
    uses_unlabeled: bool  # the SSL base trains on unlabeled data
    progress: Progress
    baseline: torch.Tensor  # the baseline image I [1, C, H, W] in normalised input space (debias.baseline)
    z_I: torch.Tensor | None = None  # [C] this step's z(I) of the train-mode student (set by the loop on request)
    whole_set: Any = None  # engine.passes.WholeSetPass over the run's data: whole_set(model, which, bn, view, gen)
    ulb_in_lb: torch.Tensor | None = None  # [N_u] bool (CPU): unlabeled positions holding a labeled image (pool=paper)
    gather: Any = field(default=_one_process)  # gather(t): per-rank tensors concatenated in rank order (DDP), else t
    lb_prior: torch.Tensor = field(init=False)  # [C] labeled class frequency, float64 on the CPU

    @classmethod
    def create(
        cls, cfg: Any, *, model: nn.Module, ema_model: nn.Module, device: torch.device, classes: Sequence[str],
        lb_counts: Sequence[int], lb_labels: torch.Tensor, n_ulb: int, image_shape: Sequence[int], uses_unlabeled: bool,
    ) -> RunContext:
        """The context of a run of `cfg`: its seed, a fresh step clock for train.steps and the baseline image
        debias.baseline of this image shape on `device`."""
        c, h, w = (int(v) for v in image_shape)
        return cls(model=model, ema_model=ema_model, device=device, seed=cfg.seed, classes=list(classes),
                   lb_counts=[int(n) for n in lb_counts], lb_labels=lb_labels, n_ulb=n_ulb, image_shape=(c, h, w),
                   uses_unlabeled=uses_unlabeled, progress=Progress(total_steps=cfg.train.steps),
                   baseline=baseline_image(cfg.debias.baseline, c, h, w, device))

    def __post_init__(self) -> None:
        counts = torch.tensor(self.lb_counts, dtype=torch.float64)
        self.lb_prior = counts / counts.sum()

    @property
    def num_classes(self) -> int:
        return len(self.lb_counts)

    @property
    def n_lb(self) -> int:
        return len(self.lb_labels)

    def ema_baseline_logits(self, mode: str) -> torch.Tensor:
        """z(I) [C] of the EMA model with its BN in `mode` ("eval": running statistics; "train": the image's own)."""
        return baseline_logits(self.ema_model, self.baseline, mode)
