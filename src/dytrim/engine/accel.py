"""Speed settings of the training forward: bf16 autocast where the hardware does bf16 natively, and
torch.compile with a fallback to eager; plus the machine facts every run and benchmark records."""

from __future__ import annotations

import contextlib
import os
import platform
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: train.compile=auto compiles runs of at least this many steps (the compile time is repaid); never shorter ones
COMPILE_MIN_STEPS = 5000


def cpu_facts() -> dict[str, Any]:
    """The CPU model and the flags that decide bf16 speed (AMX, AVX512-BF16, AVX512, AVX2)."""
    model, flags = platform.processor() or "", set()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model.strip():
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    wanted = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")
    return {"cpu": model.strip() or platform.machine(), "cpu_flags": [f for f in wanted if f in flags]}


def cpu_has_bf16() -> bool:
    """A CPU that computes bf16 natively (AMX tiles or AVX512-BF16); on AVX2 only, bf16 is emulated and slower.
    The environment variable DYTRIM_CPU_BF16=0 / 1 overrides the detection (the test suite sets 0, so that it
    computes the same on every CPU)."""
    forced = os.environ.get("DYTRIM_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # older torch: read the flags
        return bool({"amx_bf16", "avx512_bf16"} & set(cpu_facts()["cpu_flags"]))


def resolve_precision(setting: str, device: torch.device) -> str:
    """train.precision -> "bf16" or "fp32" ("auto": bf16 where the device does it natively)."""
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast of forward and loss (weights, optimiser and EMA stay fp32), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_deterministic(device: torch.device) -> None:
    """On CUDA: deterministic algorithms (warn where an op has none) and a fixed cuBLAS workspace, so results do
    not depend on kernel scheduling and exact resume holds there as on the CPU."""
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any matmul
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_compile(setting: str, steps: int, device: torch.device, precision: str) -> bool:
    """train.compile -> whether to compile. "auto": runs long enough to repay the compile time, on a device where
    compiling pays: CUDA, or a CPU running bf16. An fp32 step on the CPU is oneDNN convolutions either way: on an
    AVX2-only EPYC the compiled WRN-28-2 step was no faster in two runs (1.646 vs 1.618 and 2.058 vs 1.861 s/step
    with channels_last, benchmarks/results/speed-usb-matched*.md), so auto leaves it eager."""
    if setting != "auto":
        return setting == "on"
    return steps >= COMPILE_MIN_STEPS and (device.type == "cuda" or precision == "bf16")


class CompiledForward:
    """`model(x)` through torch.compile; if compiling or the first compiled call fails, one warning and the
    eager model from then on (never a crash). The module itself is untouched: its state_dict, the EMA copy
    and evaluation see the plain model."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.fn: Callable[[torch.Tensor], torch.Tensor] | None
        try:
            self.fn = torch.compile(model)
        except Exception as exc:  # noqa: BLE001 - any compile failure means: run eagerly
            self._fall_back(exc)

    def _fall_back(self, exc: BaseException) -> None:
        warnings.warn(f"train.compile: torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                      "); training continues in eager mode", stacklevel=3)
        self.fn = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fn is not None:
            try:
                return self.fn(x)
            except Exception as exc:  # noqa: BLE001 - inductor/C++ toolchain problems surface at the first call
                self._fall_back(exc)
        return self.model(x)
