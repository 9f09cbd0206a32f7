"""Evaluation of a model on uint8 test images kept on the device: logits (shared out over ranks) and the
metrics row of one evaluation (raw, debiased by the components' eval_logits hooks, and the prior probe)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dytrim.data.augment import normalize
from dytrim.engine.context import Progress
from dytrim.engine.distributed import Dist
from dytrim.engine.hooks import Component
from dytrim.engine.probe import prior_probe
from dytrim.metrics import classification_metrics


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    x: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 512,
    channels_last: bool = False,
) -> torch.Tensor:
    """Eval-mode logits [N, C] (float32) for uint8 images [N, C, H, W]; restores the model's mode."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = normalize(x[i : i + batch_size], mean, std)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        out.append(model(xb).float())
    model.train(was_training)
    return torch.cat(out)


def predict_shared(
    model: nn.Module, x: torch.Tensor, idx: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
    dist: Dist, batch_size: int, channels_last: bool,
) -> torch.Tensor:
    """Logits of the images `x[idx]`: each rank predicts an equal share (the last index repeated as padding) and
    every rank gets all of them back, in order."""
    n, world = len(idx), dist.world
    per = -(-n // world)
    padded = torch.cat([idx, idx[-1:].repeat(per * world - n)])
    mine = padded[dist.rank * per : (dist.rank + 1) * per]
    return dist.gather(predict_logits(model, x[mine], mean, std, batch_size, channels_last))[:n]


def debias_logits(components: Sequence[Component], logits: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The debiased prediction logits: every eval_logits hook chained in config order (a hook returning None leaves
    them as they are), and whether any hook changed them. Training's evaluation, `predict` and `export` use this."""
    adjusted, changed = logits, False
    for c in components:
        out = c.eval_logits(adjusted)
        if out is not None:
            adjusted, changed = out, True
    return adjusted, changed


def evaluation_row(
    logits: torch.Tensor, y: torch.Tensor, lb_counts: Sequence[int], components: Sequence[Component],
    model: nn.Module, baseline: torch.Tensor, lb_prior: torch.Tensor,
) -> dict[str, Any]:
    """bACC, GM and per-class recall of `logits`; the same after the eval-logit hooks chained in config order
    (`*_debiased`, when some hook changes predictions); pi_theta(I) of `model`; the components' fields."""
    num_classes = len(lb_counts)
    row = classification_metrics(logits.argmax(-1), y, num_classes, list(lb_counts))
    adjusted, changed = debias_logits(components, logits)
    if changed:
        row |= classification_metrics(adjusted.argmax(-1), y, num_classes, list(lb_counts), "_debiased")
    row["eval_n"] = len(y)
    row |= prior_probe(model, baseline, lb_prior)
    for c in components:
        row |= c.eval_fields()
    return row


def metrics_row(step: int, evaluation: dict[str, Any], stats: dict[str, Any], wall_s: float, progress: Progress,
                train_s: float, stage: str | None = None) -> dict[str, Any]:
    """One metrics.jsonl row: an evaluation of the EMA model plus the last step's losses and counters; a run with
    stages names the row's `stage` after its step."""
    stats = {k: float(v) for k, v in stats.items()}  # the step's device scalars, read once here
    if not stats.pop("_has_truth", 1.0):
        stats.pop("pseudo_acc", None)
    return {"step": step} | ({"stage": stage} if stage else {}) | evaluation | {
        "lr": stats["lr"],
        "loss": round(stats["loss"], 5),
        **{k: round(v, 5) for k, v in stats.items() if k not in ("lr", "loss")},
        "wall_s": round(wall_s, 2),
        "images_per_s": round(progress.samples_seen / max(train_s, 1e-9), 2),
        **{k: getattr(progress, k) for k in ("updates", "samples_fwd", "samples_bwd")},
    }
