"""Every random state a run draws from, captured as plain data (tensors, ints, floats, strings, tuples) so a
checkpoint loads with `weights_only=True`, and restored exactly (a resumed run draws the same numbers)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from dytrim.config import ConfigError


def capture(aug_gen: torch.Generator) -> dict[str, Any]:
    """The augmentation generator, torch's CPU and CUDA generators, numpy's and Python's global states."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "aug": aug_gen.get_state(),
        "aug_device": aug_gen.device.type,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),  # (version, tuple of ints, None): plain data already
    }


def restore(state: dict[str, Any], aug_gen: torch.Generator) -> None:
    """Inverse of `capture`. States are moved to the CPU first (a checkpoint loaded onto a GPU carries
    them there, and `Generator.set_state` takes CPU byte tensors only)."""
    saved_on = state.get("aug_device", "cpu")
    if saved_on != aug_gen.device.type:
        raise ConfigError(
            f"train.device: the checkpoint was written on {saved_on} and this run is on {aug_gen.device.type}; "
            "their augmentation random streams differ, so the run could not continue exactly. Resume with "
            f"--set train.device={saved_on}"
        )
    aug_gen.set_state(state["aug"].cpu())
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def set_generator_state(gen: torch.Generator, state: torch.Tensor) -> None:
    """`gen.set_state` from a state that may have been loaded onto another device."""
    gen.set_state(state.cpu())
