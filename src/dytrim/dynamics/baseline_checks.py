"""Baseline-image theory checks: invariance of z(k·1) across k (Prop. 3) and π_θ(I) over a run (Thm. 1).

Invariance is measured, not assumed: for each architecture and BatchNorm mode the logits of solid images
k·1 (in the network's normalised input space) are compared with those of k = 1. Train mode feeds a batch
of two identical copies (BatchNorm1d refuses a batch of one; for conv nets two copies have the same batch
statistics as one) and leaves the running buffers untouched. The convergence check reads the probe rows a
run logged in metrics.jsonl, or, for runs logged before the probe existed, probes the run's checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dytrim.config import config_from_dict, read_yaml_mapping
from dytrim.dynamics.mlp import SmallMLP
from dytrim.engine.checkpoint import load_all
from dytrim.engine.metrics_log import read_rows
from dytrim.engine.probe import baseline_image, eval_mode, frozen_bn_stats, kl, prior_probe
from dytrim.models import create_model

ARCHS = ("mlp", "mlp_bn", "mlp_ln", "cnn_small", "resnet_tiny", "wrn_28_2")
K_POSITIVE = (0.25, 0.5, 1.0, 2.0, 4.0)
K_OTHER = (0.0, -1.0)
IMAGE_SIZE = {"mnist": 28, "fashion_mnist": 28, "mnist10k": 28}  # others: 32

# What Prop. 3 (and its one-line extensions) predicts, per architecture family and BN mode.
THEORY = {
    ("mlp", "train"): "no norm layer: z(kI) = W2 relu(k W1 1 + b1) + b2 varies with k",
    ("mlp", "eval"): "no norm layer: z(kI) = W2 relu(k W1 1 + b1) + b2 varies with k",
    ("mlp_bn", "train"): "exact for every k: BN of identical inputs outputs its shift beta, z = W2 relu(beta) + b2",
    ("mlp_bn", "eval"): "not invariant: running statistics make BN affine in k",
    ("mlp_ln", "train"): "k > 0 up to LN eps (LN(k a) = LN(a)); k = 0 gives beta, k < 0 flips the sign",
    ("mlp_ln", "eval"): "same as train (LN has no running statistics)",
    ("conv", "train"): "k > 0 up to BN eps (bias-free conv, then batch statistics divide k out); k <= 0 differs",
    ("conv", "eval"): "not invariant: running statistics make the first BN affine in k",
}


def make_arch(name: str, num_classes: int, in_channels: int, image_hw: int) -> nn.Module:
    """An architecture by name: the analysis MLPs (mlp, mlp_bn, mlp_ln) or any model of the zoo."""
    if name.startswith("mlp"):
        norm = {"mlp": "none", "mlp_bn": "batch", "mlp_ln": "layer"}[name]
        return SmallMLP(in_channels * image_hw * image_hw, num_classes, hidden=64, norm=norm)
    return create_model(name, num_classes, in_channels=in_channels)


@torch.no_grad()
def warm_bn_stats(model: nn.Module, images: torch.Tensor, batch: int = 64) -> None:
    """Fill BN running statistics from real images (train-mode forwards, no gradient, weights unchanged)."""
    was = model.training
    model.train()
    for xb in images.split(batch):
        if len(xb) > 1:
            model(xb)
    model.train(was)


@torch.no_grad()
def solid_logits(model: nn.Module, k: float, shape: tuple[int, int, int], mode: str) -> torch.Tensor:
    """z(k·1) [C] with BN in `mode` ("train": the two-copy batch's own statistics; "eval": running ones)."""
    x = torch.full((2, *shape), float(k), dtype=next(model.parameters()).dtype)
    if mode == "train":
        with frozen_bn_stats(model):
            return model(x)[0]
    with eval_mode(model):
        return model(x)[0]


@dataclass
class InvarianceRow:
    """One (architecture, mode) measurement: largest change of z and of π over k, and the verdict."""

    arch: str
    mode: str
    max_dz_pos: float  # max over k > 0 of ‖z(kI) − z(I)‖∞
    max_tv_pos: float  # max over k > 0 of TV(π(kI), π(I))
    max_dz_all: float  # also over k = 0 and k = −1
    logit_scale: float  # ‖z(I)‖∞, for reading max_dz
    theory: str
    verdict: str  # measured, for k > 0: exact | approximate | fails

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def verdict(max_dz: float, max_tv: float, scale: float) -> str:
    """exact: Δz within float64 rounding (1e-9 relative); approximate: π moves by under 1% TV; else fails."""
    if max_dz <= 1e-9 * max(1.0, scale):
        return "exact"
    return "approximate" if max_tv <= 1e-2 else "fails"


def _family(arch: str) -> str:
    """The THEORY key of an architecture: one of the analysis MLPs, or "conv" for every zoo model."""
    return arch if arch in ("mlp", "mlp_bn", "mlp_ln") else "conv"


def measure_invariance(model: nn.Module, arch: str, shape: tuple[int, int, int], mode: str) -> InvarianceRow:
    """Compare z(k·1) with z(1·1) over K_POSITIVE and K_OTHER for one model and BN mode."""
    ref = solid_logits(model, 1.0, shape, mode)
    p_ref = torch.softmax(ref.double(), -1)
    dz_pos, tv_pos, dz_all = 0.0, 0.0, 0.0
    for k in K_POSITIVE + K_OTHER:
        z = solid_logits(model, k, shape, mode)
        dz = float((z - ref).abs().max())
        dz_all = max(dz_all, dz)
        if k > 0:
            dz_pos = max(dz_pos, dz)
            tv_pos = max(tv_pos, float(0.5 * (torch.softmax(z.double(), -1) - p_ref).abs().sum()))
    scale = float(ref.abs().max())
    return InvarianceRow(arch, mode, dz_pos, tv_pos, dz_all, scale, THEORY[(_family(arch), mode)],
                         verdict(dz_pos, tv_pos, scale))


def invariance_table(
    images: torch.Tensor, num_classes: int, archs: tuple[str, ...] = ARCHS, seed: int = 0,
    extra: dict[str, nn.Module] | None = None, extra_shape: tuple[int, int, int] | None = None,
) -> list[InvarianceRow]:
    """Rows for every architecture (seeded random weights, BN statistics warmed on `images` [N, C, H, W]),
    in train and eval mode, all in float64; `extra` adds named ready models (e.g. trained checkpoints,
    probed on solid images of `extra_shape`)."""
    shape = tuple(images.shape[1:])
    rows = []
    for arch in archs:
        torch.manual_seed(seed)
        model = make_arch(arch, num_classes, shape[0], shape[1]).double()
        warm_bn_stats(model, images.double())
        rows += [measure_invariance(model, arch, shape, mode) for mode in ("train", "eval")]
    for name, model in (extra or {}).items():
        model = model.double()
        rows += [measure_invariance(model, name, extra_shape or shape, mode) for mode in ("train", "eval")]
    return rows


# ---------------------------------------------------------------------------------------------- runs
@dataclass
class RunModel:
    """A run's EMA model at one checkpoint, with what is needed to probe it."""

    model: nn.Module
    step: int
    image: torch.Tensor  # the run's baseline image I [1, C, H, W]
    lb_prior: torch.Tensor  # labeled class frequencies [C]


def _run_meta(run_dir: Path) -> tuple[object, torch.Tensor]:
    cfg = config_from_dict(read_yaml_mapping(run_dir / "config.yaml", "dynamics"))
    counts = torch.tensor(json.loads((run_dir / "run.json").read_text())["counts"]["labeled"], dtype=torch.float64)
    return cfg, counts / counts.sum()


def load_run_models(run_dir: Path) -> list[RunModel]:
    """The EMA model of every checkpoint in a run directory, oldest first."""
    cfg, lb_prior = _run_meta(run_dir)
    hw = IMAGE_SIZE.get(cfg.data.name, 32)
    out = []
    for state, _ in load_all(run_dir):  # read as data only: a checkpoint never runs code
        in_ch = next(v.shape[1] for v in state["ema"].values() if v.ndim == 4)
        model = create_model(cfg.model.name, len(lb_prior), in_channels=in_ch)
        model.load_state_dict(state["ema"])
        model.eval()
        out.append(RunModel(model, int(state["step"]), baseline_image(cfg.debias.baseline, in_ch, hw, hw, "cpu"),
                            lb_prior))
    return out


@dataclass
class PriorCurve:
    """π_θ(I) per class over a run (EMA model; BN in eval and in train mode) and its KL to the labeled prior."""

    name: str
    steps: list[int]
    prior_eval: torch.Tensor  # [S, C]
    prior_train: torch.Tensor  # [S, C]
    lb_prior: torch.Tensor  # [C]
    source: str  # "metrics.jsonl" or "checkpoints"

    def kl(self, mode: str) -> list[float]:
        """KL(π_θ(I) ‖ labeled prior) per logged step, BN mode "eval" or "train"."""
        priors = self.prior_eval if mode == "eval" else self.prior_train
        return [kl(p, self.lb_prior) for p in priors]


def read_prior_curve(run_dir: str | Path, name: str | None = None) -> PriorCurve:
    """From metrics.jsonl's probe keys (prior_baseline[_trainmode]); if the run predates the probe,
    probe each of its checkpoints instead (usually only the last few are kept)."""
    run_dir = Path(run_dir)
    _, lb_prior = _run_meta(run_dir)
    rows = [r for r in read_rows(run_dir / "metrics.jsonl")
            if "prior_baseline" in r and "prior_baseline_trainmode" in r]
    if name is None:
        name = run_dir.parent.name if run_dir.name.startswith("seed") else run_dir.name
    if rows:
        return PriorCurve(name, [r["step"] for r in rows],
                          torch.tensor([r["prior_baseline"] for r in rows], dtype=torch.float64),
                          torch.tensor([r["prior_baseline_trainmode"] for r in rows], dtype=torch.float64),
                          lb_prior, "metrics.jsonl")
    probes = [(rm.step, prior_probe(rm.model, rm.image, rm.lb_prior)) for rm in load_run_models(run_dir)]
    if not probes:
        raise FileNotFoundError(f"{run_dir}: metrics.jsonl has no prior_baseline rows and there are no checkpoints")
    return PriorCurve(name, [s for s, _ in probes],
                      torch.tensor([p["prior_baseline"] for _, p in probes], dtype=torch.float64),
                      torch.tensor([p["prior_baseline_trainmode"] for _, p in probes], dtype=torch.float64),
                      lb_prior, "checkpoints")
