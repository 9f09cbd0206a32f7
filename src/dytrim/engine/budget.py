"""The memory a training step needs, checked against the memory there is, once the data and the model are built
and before the first step: a batch that cannot fit is refused in one line (ConfigError, exit 2) naming the batch
size that does fit, instead of the kernel's OOM killer ending the run without a word; a batch larger than its
pool is warned about (each step then repeats images, engine/sampler.py).

The estimate is measured, not guessed per architecture: a copy of the run's model runs the training forward on 2
and on 3 images under autograd's saved-tensor hooks; the difference is what backward keeps per image (activations;
the weights it saves cancel). A step then needs

    images with a graph x (saved bytes per image + 4 x the fp32 image: the view and augmentation temporaries)
  + images without one (the weak unlabeled view, train.forward=separate) x 4 x the fp32 image
  + 3 x the parameters' bytes (gradients, two Adam moments; the model and EMA are already placed)

where images with a graph = batch_size x (1 + uratio x n_strong), plus batch_size x uratio under
train.forward=joint (the weak view then goes through the same graph); supervised runs: batch_size. The copy runs
in the run's precision (bf16: under autocast). The allocator's slack, cuDNN
workspaces and evaluation are left out, so the estimate is a floor: it refuses only what cannot fit. The memory
there is: on CUDA the device's free memory (torch.cuda.mem_get_info, after the data set was placed on it); on CPU
/proc/meminfo's MemAvailable, lowered to the cgroup's limit where one is set (a container), shared by the
processes of this machine under torchrun. Where neither can be read the check is skipped. Under torchrun every
rank agrees (one refuses: all do).

Measured (fp32, saved bytes per image): cnn_small 0.16 MiB at 3x32x32, wrn_28_2 5.4 MiB at 3x32x32 (the paper's
batch 64, uratio 7, one strong view: 64 x 8 images, ~2.8 GiB), resnet50 91 MiB at 3x64x64. Every shipped preset's
step fits 24 GiB (tests/test_config_bounds.py).
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dytrim.config import ConfigError, RunConfig
from dytrim.engine.accel import autocast

GiB = 1 << 30
CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # v2, then v1
                ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))
VIEW_COPIES = 4  # fp32 copies of an image a step holds outside the model: the view, augmentation temporaries


@dataclass
class StepBudget:
    """The estimate of one training step's memory on one process, in bytes."""

    per_batch: int  # bytes per unit of train.batch_size (labeled image + its unlabeled ones, all views)
    fixed: int  # bytes that do not grow with the batch (gradients, optimiser state)
    saved_per_image: int  # what backward keeps per image, measured
    graph_images: int  # images per step that carry a graph (per unit of batch size)

    def need(self, batch_size: int) -> int:
        return self.fixed + batch_size * self.per_batch


def saved_bytes_per_image(model: nn.Module, image_shape: tuple[int, ...], precision: str = "fp32") -> int:
    """Bytes autograd keeps for backward per image of `image_shape` (C, H, W) in `model`'s training forward,
    in `precision` (bf16: under autocast, as the run). Measured on a copy on the model's device, on 2 and on 3 zero
    images (the weights it saves cancel), RNG states restored: the model, its BN buffers and the run's random
    streams are untouched. A tensor saved by two operations (a ReLU's output is the next conv's input) is counted
    once, as its memory is. (The meta device would need no arithmetic, but its first use imports ~800 modules:
    seconds at every start.)"""
    probe = copy.deepcopy(model).train()
    device = next(probe.parameters()).device

    def saved(n: int) -> int:
        kept: dict[int, torch.Tensor] = {}  # id -> tensor: holding each keeps its id unique while counting

        def pack(t: torch.Tensor) -> torch.Tensor:
            kept[id(t)] = t
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.enable_grad(), \
                autocast(precision, device):
            probe(torch.zeros(n, *image_shape, device=device))
        return sum(t.numel() * t.element_size() for t in kept.values())

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
        return max(0, saved(3) - saved(2))


def step_budget(cfg: RunConfig, model: nn.Module, image_shape: tuple[int, ...], uses_unlabeled: bool,
                world: int = 1, precision: str = "fp32") -> StepBudget:
    """The estimate (module docstring) for this config on one of `world` processes."""
    t = cfg.train
    per_unit_graph, per_unit_free = 1.0, 0.0  # images per unit of (global) batch size
    if uses_unlabeled:
        per_unit_graph += t.uratio * cfg.ssl.n_strong
        if t.forward == "joint":
            per_unit_graph += t.uratio
        else:
            per_unit_free += t.uratio
    image = 4 * int(torch.Size(image_shape).numel())  # fp32 bytes of one view
    saved = saved_bytes_per_image(model, image_shape, precision)
    per_batch = (per_unit_graph * (saved + VIEW_COPIES * image) + per_unit_free * VIEW_COPIES * image) / world
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return StepBudget(int(per_batch), 3 * params, saved, int(per_unit_graph))


def available_bytes(device: torch.device) -> tuple[int, str] | None:
    """(bytes this process may still allocate, where that number comes from), or None where it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device}"
    if device.type != "cpu":
        return None
    found: list[tuple[int, str]] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "MemAvailable"))
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in CGROUP_FILES:
        try:
            cap = Path(limit).read_text().strip()
            if cap.isdigit() and int(cap) < 1 << 60:  # "max" or a huge number: no limit
                found.append((int(cap) - int(Path(usage).read_text().strip()), "the cgroup's memory limit"))
        except (OSError, ValueError):
            pass
    return min(found) if found else None


def check_step_budget(cfg: RunConfig, model: nn.Module, image_shape: tuple[int, ...], n_lb: int, n_ulb: int,
                      uses_unlabeled: bool, device: torch.device, dist: Any, precision: str = "fp32") -> StepBudget:
    """Refuse (ConfigError) a batch whose step cannot fit in memory; warn once when a batch exceeds its pool."""
    t = cfg.train
    room = available_bytes(device)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1  # ranks sharing this RAM
    budget = step_budget(cfg, model, image_shape, uses_unlabeled, dist.world, precision)
    fits = room is None or local * budget.need(t.batch_size) <= room[0]
    if not all(dist.gather_object(fits)):
        if room is None or fits:  # another rank is short of memory: stop with it
            raise ConfigError("train.batch_size: another process of this run has too little memory for one step "
                              "(its message says how much); lower train.batch_size")
        per_rank = max(0, room[0] // local - budget.fixed)
        largest = per_rank // budget.per_batch if budget.per_batch else 0
        what = (f"{t.batch_size * budget.graph_images} images with a graph per step at "
                f"{budget.saved_per_image / (1 << 20):.2f} MiB of activations each, measured for model.name="
                f"{cfg.model.name} on {'x'.join(map(str, image_shape))} images")
        fix = (f"at most train.batch_size={largest} fits" if largest >= 1 else
               "not even train.batch_size=1 fits: pick a smaller model.name or data.image_size")
        raise ConfigError(
            f"train.batch_size: one training step needs about {local * budget.need(t.batch_size) / GiB:.1f} GiB "
            f"({what}) but {room[0] / GiB:.1f} GiB is available ({room[1]}); {fix} (or lower train.uratio, "
            "ssl.n_strong)")
    if dist.main:  # after the refusal: a refused run says one line
        if t.batch_size > n_lb:
            warnings.warn(f"train.batch_size={t.batch_size} exceeds the labeled pool ({n_lb} images): every step "
                          "repeats labeled images; a batch_size <= the pool draws each at most once", stacklevel=2)
        if uses_unlabeled and t.batch_size * t.uratio > n_ulb:
            warnings.warn(f"train.batch_size x train.uratio = {t.batch_size * t.uratio} exceeds the unlabeled pool "
                          f"({n_ulb} images): every step repeats unlabeled images", stacklevel=2)
    return budget
