"""Construction of a run's parts from its config, in a fixed order (the seeds fix the split and the weights):
machine settings, process group, seeds, data, model (+ pretrained weights), speed settings, EMA, optimiser.

The SSL base and the components are not built here: `dytrim.factory.build_trainer` builds them from their
registries and hands them to the Trainer, so the engine imports no method.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dytrim.config import ConfigError, RunConfig
from dytrim.data.sources import LTData, load_data
from dytrim.engine.accel import CompiledForward, make_deterministic, resolve_compile, resolve_precision
from dytrim.engine.checkpoint import checkpoint_paths
from dytrim.engine.components import attach_heads, collect_heads
from dytrim.engine.context import RunContext
from dytrim.engine.distributed import Dist
from dytrim.engine.ema import EMATeacher
from dytrim.engine.optim import build_optimizer
from dytrim.engine.passes import WholeSetPass
from dytrim.engine.tensorboard import require_tensorboard
from dytrim.models import create_model
from dytrim.models.pretrained import LoadReport, load_pretrained


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class RunParts:
    """Everything of a run that is not a method: data, networks, optimiser, speed settings, process group."""

    cfg: RunConfig
    out: Path
    device: torch.device
    dist: Dist
    data: LTData
    model: nn.Module
    pretrained: LoadReport | None  # what model.pretrained loaded (None: not used)
    precision: str  # "bf16" | "fp32"
    compiled: bool
    forward_fn: Any  # the training forward: the model, or it through torch.compile
    ema: EMATeacher
    optimizer: torch.optim.Optimizer


def build_parts(cfg: RunConfig, out_dir: Path, resume: bool = False) -> RunParts:
    """Build a run's parts. `resume=True` with a checkpoint in `out_dir`: the weights will come from it, so
    model.pretrained is not read."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.tensorboard:
        require_tensorboard()  # before any work: the fix in one line
    dist = Dist.from_env(resolve_device(cfg.train.device))  # torchrun: this rank's slice of every global batch
    device = dist.device  # under torchrun on CUDA: cuda:LOCAL_RANK
    if cfg.train.deterministic:
        make_deterministic(device)
    for key, size in (("train.batch_size", cfg.train.batch_size),
                      ("train.uratio", cfg.train.batch_size * cfg.train.uratio)):
        if size % dist.world:
            raise ConfigError(f"{key}: a global batch of {size} does not split over {dist.world} processes; "
                              "make the batch sizes divisible by --nproc_per_node")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    data = load_data(cfg.data, cfg.seed, device)
    model = create_model(cfg.model.name, data.num_classes, in_channels=data.in_channels)
    fresh = not (resume and checkpoint_paths(Path(out_dir)))  # on resume the checkpoint has the weights
    pretrained = _load_pretrained(model, cfg.model) if cfg.model.pretrained and fresh else None
    model = model.to(device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    dist.broadcast_module(model)
    precision = resolve_precision(cfg.train.precision, device)
    compiled = resolve_compile(cfg.train.compile, cfg.train.steps, device, precision)
    forward_fn = CompiledForward(model) if compiled else model  # training forward only
    ema = EMATeacher(model, cfg.optim.ema_decay, cfg.optim.ema_buffers)
    optimizer = build_optimizer(model, cfg.optim)
    return RunParts(cfg, Path(out_dir), device, dist, data, model, pretrained, precision, compiled, forward_fn, ema,
                    optimizer)


def run_context(parts: RunParts, uses_unlabeled: bool) -> RunContext:
    """The components' view of the run (engine/context.py)."""
    ctx = data_context(parts.cfg, parts.data, parts.model, parts.ema.model, parts.device, uses_unlabeled)
    ctx.gather = parts.dist.gather  # components keeping statistics of local batches (DASO's queues) stay in sync
    return ctx


def data_context(cfg: RunConfig, data: LTData, model: nn.Module, ema_model: nn.Module, device: torch.device,
                 uses_unlabeled: bool) -> RunContext:
    """A RunContext of these networks on a loaded data set (the run's, or the analysis tools')."""
    ctx = RunContext.create(
        cfg, model=model, ema_model=ema_model, device=device, classes=data.classes, lb_counts=data.split.lb_counts,
        lb_labels=data.y_train[data.lb_idx].detach().cpu(), n_ulb=len(data.ulb_idx), image_shape=data.x_train.shape[1:],
        uses_unlabeled=uses_unlabeled,
    )
    ctx.whole_set = WholeSetPass(data, cfg.aug, cfg.train.eval_batch_size, cfg.model.channels_last)
    ctx.ulb_in_lb = torch.isin(data.ulb_idx.detach().cpu(), data.lb_idx.detach().cpu())
    return ctx


def attach_component_heads(parts: RunParts, ctx: RunContext, components: list[Any]) -> None:
    """The auxiliary heads of the components (and of the SSL base, passed among them) join the model before training
    (engine/components.py): the EMA teacher and the optimiser are then built again over the whole model (still
    untrained, so this equals building them with the heads), and every rank starts from the main rank's heads. No
    heads: nothing changes."""
    if not attach_heads(parts.model, collect_heads(components), parts.device):
        return
    cfg = parts.cfg
    if cfg.model.channels_last:
        parts.model = parts.model.to(memory_format=torch.channels_last)
    parts.dist.broadcast_module(parts.model)
    parts.ema = EMATeacher(parts.model, cfg.optim.ema_decay, cfg.optim.ema_buffers)
    parts.optimizer = build_optimizer(parts.model, cfg.optim)
    ctx.ema_model = parts.ema.model


def _load_pretrained(model: nn.Module, mcfg: Any) -> LoadReport:
    """model.pretrained: copy the file's matching tensors into the fresh model; anything not clean is warned."""
    try:
        report = load_pretrained(model, Path(mcfg.pretrained).expanduser(), key=mcfg.pretrained_key or None)
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"model.pretrained: cannot load '{mcfg.pretrained}' ({exc}); give a local "
                          ".pt/.pth/.safetensors state_dict (model.pretrained_key picks a wrapped entry)") from exc
    if not report.clean:
        warnings.warn(f"model.pretrained: {report}", stacklevel=2)
    return report
