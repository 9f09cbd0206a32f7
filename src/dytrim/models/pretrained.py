"""Load pretrained weights from a local file into any dytrim model, and say exactly what was loaded.

Tensors are matched by name after unwrapping common checkpoint layouts; a model may define
`adapt_state_dict` (the ViT does) to fit foreign shapes first. Used by `model.pretrained` and the ViT factory.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["LoadReport", "load_pretrained", "read_state_dict"]


@dataclass
class LoadReport:
    """What `load_pretrained` did: which tensors loaded, were adapted, skipped, missing or unexpected."""

    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # in both, but the shapes differ: kept at init
    missing: list[str] = field(default_factory=list)  # in the model only: kept at init
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint only: ignored

    @property
    def clean(self) -> bool:
        return not (self.skipped or self.missing or self.unexpected)

    def __str__(self) -> str:
        total = len(self.loaded) + len(self.skipped) + len(self.missing)
        lines = [f"loaded {len(self.loaded)} of {total} model tensors from {self.source}"]
        for title, items in (
            ("adapted", self.adapted),
            ("skipped, shape differs (kept at init)", self.skipped),
            ("missing from the checkpoint (kept at init)", self.missing),
            ("unexpected in the checkpoint (ignored)", self.unexpected),
        ):
            if items:
                lines.append(f"  {title}: " + "; ".join(items))
        return "\n".join(lines)


_WRAPPERS = ("state_dict", "model", "ema_model", "module", "net")
_PREFIXES = ("module.", "backbone.", "model.", "encoder.")


def read_state_dict(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (.pt/.pth via torch.load, weights only; .safetensors if installed).

    A checkpoint that wraps its weights (`{"state_dict": ...}`, `{"model": ...}`, ...) is unwrapped; pass
    `key` to pick the entry (e.g. "ema_model"). Common prefixes ("module.", "backbone.", ...) are stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights: no file at '{path}'")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ImportError("reading .safetensors needs `pip install safetensors`") from exc
        obj: Any = load_file(str(path))
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(
                f"'{path}' holds more than tensors (a training checkpoint?) and only plain weight files are read; "
                "for a dytrim run write one with `dytrim export RUN_DIR --format state_dict`"
            ) from exc
    if key is None and isinstance(obj, Mapping) and {"format_version", "ema", "rng"} <= set(obj):
        raise ValueError(
            f"'{path}' is a dytrim training checkpoint (student, EMA model, optimiser); pick its evaluated weights "
            "with model.pretrained_key=ema, or write a plain weights file with `dytrim export RUN_DIR --format "
            "state_dict`"
        )
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            raise KeyError(f"pretrained weights: '{path}' has no entry '{key}'")
        obj = obj[key]
    elif isinstance(obj, Mapping) and not _is_tensor_map(obj):
        for name in _WRAPPERS:
            if isinstance(obj.get(name), Mapping) and _is_tensor_map(obj[name]):
                obj = obj[name]
                break
    if not isinstance(obj, Mapping) or not _is_tensor_map(obj):
        raise ValueError(f"pretrained weights: '{path}' holds no state_dict of tensors (try key=...)")
    return _strip_prefixes(dict(obj))


def _is_tensor_map(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a wrapper's prefix held by most keys; the few other keys (e.g. the normalisation constants of
    `dytrim export`'s wrapper) are the wrapper's own and are dropped with it."""
    for prefix in _PREFIXES:
        inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if len(inner) > len(state) / 2:
            state = inner
    return state


def load_pretrained(
    model: nn.Module, source: str | Path | Mapping[str, torch.Tensor], strict: bool = False, key: str | None = None
) -> LoadReport:
    """Copy matching tensors from a local checkpoint (file path or state_dict) into `model`.

    Tensors are matched by name; a model with `adapt_state_dict` (the ViT) first fits position embeddings and
    patch kernels to its own shapes. Shape mismatches (e.g. a head for another class count) are skipped, not
    fatal. Raises ValueError when nothing matches (wrong file?) or, with strict=True, on any skipped, missing
    or unexpected tensor. The report says exactly what happened; print it.
    """
    state = dict(source) if isinstance(source, Mapping) else read_state_dict(source, key)
    report = LoadReport(source="state_dict" if isinstance(source, Mapping) else str(source))
    adapt = getattr(model, "adapt_state_dict", None)
    if callable(adapt):
        state, report.adapted = adapt(state)
    own = model.state_dict()
    take: dict[str, torch.Tensor] = {}
    for name, tensor in own.items():
        if name not in state:
            report.missing.append(name)
        elif tuple(state[name].shape) != tuple(tensor.shape):
            report.skipped.append(f"{name} {tuple(state[name].shape)} vs model {tuple(tensor.shape)}")
        else:
            take[name] = state[name]
    report.unexpected = [k for k in state if k not in own]
    report.loaded = list(take)
    if not take:
        raise ValueError(f"pretrained weights: no tensor of {report.source} matches the model's names\n{report}")
    if strict and not report.clean:
        raise ValueError(f"pretrained weights do not fit the model exactly (strict=True)\n{report}")
    with torch.no_grad():
        for name, tensor in take.items():
            own[name].copy_(tensor.to(own[name].dtype))
    return report
