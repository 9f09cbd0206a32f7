"""A trained run as a predictor: its EMA model, data card and debiasers; image files in, class names out.

Predictions are those of the EMA model in eval mode (as every reported metric). Where the run used a
debiaser that changes predictions (CDMAD / DyTrim: z(x) - z(I); post-hoc logit adjustment), the debiased
logits come from the same `eval_logits` hooks, chained in config order, as the training loop's evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dytrim.config import (
    ConfigError,
    RunConfig,
    config_from_dict,
    parse_override,
    read_yaml_mapping,
    set_key,
    validate,
)
from dytrim.data.errors import DataError
from dytrim.data.images import BadImage, is_image_file, list_images, load_image, path_text
from dytrim.datacard import DataCard, read_card
from dytrim.debias import COMPONENTS
from dytrim.engine.checkpoint import load_latest
from dytrim.engine.components import AUX, attach_heads, collect_heads, eval_model
from dytrim.engine.context import RunContext
from dytrim.engine.evaluate import debias_logits, predict_logits
from dytrim.engine.hooks import Component
from dytrim.models import create_model
from dytrim.resume import MODEL_KEYS, check_checkpoint
from dytrim.ssl import create_ssl


@dataclass
class TrainedRun:
    """Everything needed to predict like the run's evaluation did."""

    run_dir: Path
    cfg: RunConfig
    card: DataCard
    model: nn.Module  # the EMA model, eval mode
    step: int
    checkpoint: Path
    debiasers: list[Component]  # components whose eval_logits change predictions
    device: torch.device

    @property
    def debias_methods(self) -> list[str]:
        return [c.name for c in self.debiasers]

    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(raw, debiased or None) logits [N, K] for uint8 images [N, C, H, W]."""
        card = self.card
        z = predict_logits(self.model, x.to(self.device), tuple(card.mean), tuple(card.std), batch_size)
        if not self.debiasers:
            return z, None
        return z, debias_logits(self.debiasers, z)[0]


def _overrides_eval_logits(cls: type) -> bool:
    return cls.eval_logits is not Component.eval_logits


def _prediction_context(cfg: RunConfig, card: DataCard, model: nn.Module, device: torch.device) -> RunContext:
    """The run as a debiaser's `eval_logits` sees it, rebuilt from the data card without the training data (the
    loaded EMA model stands for both networks; the pools are empty)."""
    return RunContext.create(
        cfg, model=model, ema_model=model, device=device, classes=card.classes, lb_counts=card.lb_counts,
        lb_labels=torch.zeros(0, dtype=torch.int64), n_ulb=0, image_shape=(card.channels, card.height, card.width),
        uses_unlabeled=False,
    )


def _debiasers(cfg: RunConfig, card: DataCard, model: nn.Module, state: dict[str, Any], device: torch.device
               ) -> list[Component]:
    """The run's components that change predictions, built on the loaded EMA model."""
    ctx = _prediction_context(cfg, card, model, device)
    chosen = []
    for name in cfg.debias.methods:
        factory = COMPONENTS.get(name)
        if isinstance(factory, type) and not _overrides_eval_logits(factory):
            continue  # a class that never changes predictions: not built at all (no training-time warnings)
        try:
            c = COMPONENTS.create(name, cfg, ctx)
            if not _overrides_eval_logits(type(c)):
                continue
            c.load_state_dict(state.get("components", {}).get(c.name, {}))
        except (AttributeError, KeyError, RuntimeError) as exc:
            raise ConfigError(
                f"debias method '{name}' cannot be rebuilt for prediction without its training state ({exc}); "
                "evaluate this run with the training loop instead"
            ) from exc
        chosen.append(c)
    return chosen


def _own_predictors(cfg: RunConfig, card: DataCard, model: nn.Module, state: dict[str, Any], device: torch.device
                    ) -> list[Component]:
    """The run's components that predict through parts of their own (`eval_module`: CoSSL's EMA teacher head),
    rebuilt for prediction and loaded from their saved state."""
    ctx = _prediction_context(cfg, card, model, device)
    chosen = []
    for name in cfg.debias.methods:
        factory = COMPONENTS.get(name)
        if isinstance(factory, type) and factory.eval_module is not Component.eval_module:
            c = COMPONENTS.create(name, cfg, ctx)
            c.load_state_dict(state.get("components", {}).get(c.name, {}))
            chosen.append(c)
    return chosen


def load_run(run_dir: str | Path, device: str = "cpu", overrides: Sequence[str] = (), command: str = "RUN_DIR"
             ) -> TrainedRun:
    """Load a run directory's config, data card and newest valid checkpoint (its EMA model).

    The checkpoint must be a dytrim checkpoint of this run, as `--resume` requires: it holds step, config and ema,
    its config is config.yaml's experiment (before `overrides`, which say where things are now), and its weights
    fit the run's model; otherwise a ConfigError names `command` and what differs."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"RUN_DIR: '{run}' has no config.yaml, so it is not a dytrim run directory; pass the "
                          "--out folder of `dytrim train`")
    mapping = read_yaml_mapping(run / "config.yaml", "RUN_DIR")
    cfg, own = config_from_dict(mapping), config_from_dict(mapping)
    for text in overrides:  # e.g. --set data.root=... when the data moved
        set_key(cfg, *parse_override(text))
    validate(cfg)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto"
                       else device)
    found = load_latest(run, dev)
    if found is None:
        raise ConfigError(f"RUN_DIR: '{run}' has no readable checkpoint (ckpt_*.pt); the run stopped before its "
                          f"first checkpoint. Continue it with `dytrim train --resume {run}`")
    state, path = found
    check_checkpoint(own, state, path.name, command, MODEL_KEYS)
    card = read_card(run, cfg)
    model = create_model(cfg.model.name, card.num_classes, in_channels=card.channels).to(dev)
    owners: list[Component] = []
    weights = state["ema"] if isinstance(state["ema"], dict) else {}
    if any(str(k).startswith(f"{AUX}.") for k in weights):  # heads of components or of the base: rebuilt, loaded
        ctx = _prediction_context(cfg, card, model, dev)
        owners = [c for name in cfg.debias.methods if (c := COMPONENTS.create(name, cfg, ctx)).heads()]
        base = create_ssl(cfg.ssl, card.num_classes, 0)  # ReMixMatch's rotation head
        base.bind(cfg, ctx, owners)
        attach_heads(model, collect_heads([*owners, base]), dev)
    owners += _own_predictors(cfg, card, model, state, dev)
    if why := _weights_mismatch(model, state["ema"]):
        raise ConfigError(f"{command}: the EMA weights in {path.name} do not fit this run's model ({cfg.model.name}, "
                          f"{card.num_classes} classes, {card.channels} input channels): {why}; it is not a "
                          "checkpoint of this run")
    model.load_state_dict(state["ema"])
    model.eval()
    predictor = eval_model(model, owners).eval()  # the model, or it through the head a component predicts with
    return TrainedRun(run, cfg, card, predictor, int(state["step"]), path, _debiasers(cfg, card, model, state, dev),
                      dev)


def _weights_mismatch(model: nn.Module, weights: Any) -> str | None:
    """How `weights` (a state dict) differs from `model`'s, in a few words; None when they fit."""
    if not isinstance(weights, dict):
        return f"a {type(weights).__name__}, not a state dict"
    mine = model.state_dict()
    missing, extra = [k for k in mine if k not in weights], [k for k in weights if k not in mine]
    shape = [f"{k} {_shape(weights[k])} vs {tuple(v.shape)}" for k, v in mine.items()
             if k in weights and _shape(weights[k]) != tuple(v.shape)]
    parts = [f"{len(names)} {what} ({', '.join(names[:2])}{', ...' if len(names) > 2 else ''})"
             for names, what in ((missing, "missing"), (extra, "unexpected"), (shape, "of another shape")) if names]
    return "; ".join(parts) or None


def _shape(value: Any) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


# ----------------------------------------------------------------------------- image files


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named by `inputs` (files, or folders searched at any depth), in the given order."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise DataError(f"IMAGES: folder '{p}' holds no image files; pass image files or folders of them")
            out += found
        elif p.is_file():
            if not is_image_file(p):
                raise DataError(f"IMAGES: '{p}' is not an image file (.png, .jpg, .jpeg, .webp, ...)")
            out.append(p)
        else:
            raise DataError(f"IMAGES: '{p}' does not exist")
    if not out:
        raise DataError("IMAGES: no image files given")
    return out


def image_batches(paths: Sequence[Path], card: DataCard, batch_size: int
                  ) -> Iterator[tuple[list[Path], np.ndarray, list[tuple[Path, str]]]]:
    """Decode files like the training images, in batches: (readable paths, uint8 NHWC, skipped (path, why))."""
    for i in range(0, len(paths), batch_size):
        good, xs, bad = [], [], []
        for p in paths[i : i + batch_size]:
            try:
                xs.append(load_image(p, (card.height, card.width), card.channels))
                good.append(p)
            except BadImage as exc:
                bad.append((p, str(exc)))
        yield good, np.stack(xs) if xs else np.empty((0, card.height, card.width, card.channels), np.uint8), bad


def to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def predict_files(run: TrainedRun, paths: Sequence[Path], batch_size: int = 256, progress: bool = True
                  ) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """One row per readable file: path (non-UTF-8 bytes of a name as \\xNN), pred (class name), prob, and
    pred_debiased / prob_debiased where the run has a debiaser; plus the skipped files."""
    rows, skipped = [], []
    classes = run.card.classes
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=None if progress else True, mininterval=0.5)
    for good, x, bad in image_batches(paths, run.card, batch_size):
        skipped += bad
        bar.update(len(good) + len(bad))
        if not good:
            continue
        raw, debiased = run.logits(to_nchw(x), batch_size)
        p_raw = torch.softmax(raw, -1).cpu()
        p_deb = torch.softmax(debiased, -1).cpu() if debiased is not None else None
        for j, path in enumerate(good):
            k = int(p_raw[j].argmax())
            row: dict[str, Any] = {"path": path_text(path), "pred": classes[k],
                                   "prob": round(float(p_raw[j, k]), 6)}
            if p_deb is not None:
                kd = int(p_deb[j].argmax())
                row |= {"pred_debiased": classes[kd], "prob_debiased": round(float(p_deb[j, kd]), 6)}
            rows.append(row)
    bar.close()
    return rows, skipped
