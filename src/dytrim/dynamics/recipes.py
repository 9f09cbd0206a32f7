"""The numbers behind each `dytrim dynamics` figure, computed on the real long-tailed MNIST split (and, for
the prior curves, on finished run directories). Each recipe returns a JSON-able summary plus the arrays
its plot needs; commands.py wires them to the command line and plots.py draws them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dytrim.config import SSLConfig
from dytrim.data.augment import normalize
from dytrim.dynamics.baseline_checks import (
    K_OTHER,
    K_POSITIVE,
    PriorCurve,
    invariance_table,
    load_run_models,
    read_prior_curve,
)
from dytrim.dynamics.decompose import decompose_step, error_vs_lr
from dytrim.dynamics.fixmatch_split import fixmatch_loss, split_fixmatch_step
from dytrim.dynamics.mnist_lt import BatchMaker, load_mnist_lt, make_mlp, observation_digits, warm_up
from dytrim.dynamics.unified import METHODS, unified_view
from dytrim.engine.probe import eval_mode
from dytrim.models import create_model

LRS = [float(v) for v in np.logspace(-6, 0, 13)]


def analysis_ssl(p_cutoff: float = 0.0) -> SSLConfig:
    """FixMatch with hard pseudo-labels; threshold 0 by default so wrong pseudo-labels are kept in view."""
    return SSLConfig(name="fixmatch", hard_label=True, p_cutoff=p_cutoff, lambda_u=1.0, n_strong=1)


def _model(name: str, data: Any, seed: int) -> torch.nn.Module:
    """mlp (784-32-10), mlp_ln (LayerNorm before the activation, so z(0) is the bias path at any mode) or a
    zoo model."""
    if name in ("mlp", "mlp_ln"):
        return make_mlp(data, seed=seed, norm="layer" if name == "mlp_ln" else "none")
    torch.manual_seed(seed)
    return create_model(name, data.num_classes, in_channels=data.in_channels)


def decompose_recipe(models: list[str], warmup: int = 300, n_obs: int = 2, seed: int = 0,
                     scatter_lr: float = 1e-3) -> dict[str, Any]:
    """Prop. 1 on one FixMatch step of each model (float64, eval-mode BN): error vs η, predicted vs real."""
    data, cfg = load_mnist_lt(100.0, seed)
    curves, scatter, summary = {}, {}, {}
    for name in models:
        model = _model(name, data, seed)
        warm_up(model, BatchMaker(data, cfg, seed), warmup)
        model = model.double()
        maker = BatchMaker(data, cfg, seed + 1, torch.float64)
        x_o, y_o = observation_digits(data, n_obs, seed, torch.float64)
        v = maker.fixmatch(32, 64)
        with torch.no_grad(), eval_mode(model):
            q = torch.softmax(model(v.x_ulb_w), -1)
        targets = torch.nn.functional.one_hot(q.argmax(-1), data.num_classes).double()
        loss = fixmatch_loss(v.y_lb, targets, torch.ones(len(q), dtype=torch.float64), 1.0)
        inputs = {"supervised": v.x_lb, "consistency": v.x_ulb_s}
        rows = error_vs_lr(model, x_o, inputs, loss, LRS)
        dec = decompose_step(model, x_o, inputs, loss, scatter_lr, route="ntk")
        curves[name] = rows
        scatter[name] = (dec.predicted.numpy(), dec.real.numpy())
        small = [r for r in rows if r["lr"] <= 1e-3]
        slope = float(np.polyfit(np.log([r["lr"] for r in small]), np.log([r["rel_error"] for r in small]), 1)[0])
        summary[name] = {"rel_error_by_lr": {f"{r['lr']:.0e}": round(r["rel_error"], 6) for r in rows},
                         "loglog_slope_for_lr_up_to_1e-3": round(slope, 3),
                         f"rel_error_at_{scatter_lr:g}_ntk_route": round(dec.rel_error(), 6),
                         "observations": len(x_o), "update_batch": "32 labeled + 64 unlabeled (strong view)"}
    return {"curves": curves, "scatter": scatter, "scatter_lr": scatter_lr, "summary": summary}


def split_recipe(batches: int = 8, warmup: int = 300, per_class: int = 10, seed: int = 0,
                 gamma: float = 100.0, p_cutoff: float = 0.0) -> dict[str, Any]:
    """Prop. 2 on `batches` FixMatch steps at one model state: per-sample consistency shares on same-class
    test digits, and the own share / whole consistency term on the unlabeled samples themselves."""
    data, cfg = load_mnist_lt(gamma, seed)
    model = make_mlp(data, seed=seed)
    warm_up(model, BatchMaker(data, cfg, seed), warmup)
    maker = BatchMaker(data, cfg, seed + 1)
    x_o, y_o = observation_digits(data, per_class, seed)
    ssl = analysis_ssl(p_cutoff)
    pairs: dict[str, list[np.ndarray]] = {"correct": [], "wrong": []}
    own: dict[str, list[np.ndarray]] = {"correct": [], "wrong": []}
    total: dict[str, list[np.ndarray]] = {"correct": [], "wrong": []}
    pseudo_acc = []
    for _ in range(batches):
        v = maker.fixmatch(32, 64)
        s = split_fixmatch_step(model, x_o, y_o, v.x_lb, v.y_lb, v.x_ulb_w, v.x_ulb_s, v.y_ulb, 1.0, ssl)
        for k, vals in s.same_class_pairs().items():
            pairs[k].append(vals.numpy())
        s2 = split_fixmatch_step(model, v.x_ulb_w, v.y_ulb, v.x_lb, v.y_lb, v.x_ulb_w, v.x_ulb_s, v.y_ulb, 1.0, ssl)
        keep = s2.mask > 0
        own_share, whole = s2.pair_true_class().diagonal(), s2.true_class("consistency")
        for k, sel in (("correct", s2.correct & keep), ("wrong", ~s2.correct & keep)):
            own[k].append(own_share[sel].numpy())
            total[k].append(whole[sel].numpy())
        pseudo_acc.append(float(s2.correct[keep].float().mean()))
    cat = {name: {k: np.concatenate(v) for k, v in d.items()} for name, d in
           (("pairs", pairs), ("own", own), ("total", total))}

    def stats(vals: np.ndarray) -> dict[str, float]:
        return {"n": len(vals), "mean": round(float(vals.mean()), 6) if len(vals) else None,
                "frac_positive": round(float((vals > 0).mean()), 4) if len(vals) else None}

    summary = {name: {k: stats(v) for k, v in d.items()} for name, d in cat.items()}
    summary |= {"pseudo_label_accuracy": round(float(np.mean(pseudo_acc)), 4), "batches": batches,
                "gamma": gamma, "p_cutoff": p_cutoff, "warmup_steps": warmup, "units": "Δlog π per unit η"}
    return {**cat, "summary": summary}


def unified_recipe(model_name: str = "mlp_ln", warmup: int = 300, batches: int = 3, per_class: int = 10,
                   seed: int = 0, methods: tuple[str, ...] = METHODS, min_keep: int = 0) -> dict[str, Any]:
    """Each method's per-class gradient budget and predicted Δlog π, averaged over `batches` batches; `min_keep`:
    DyTrim's prune.min_keep (0 = the reference rule, which may prune a 1-image class away)."""
    data, cfg = load_mnist_lt(100.0, seed)
    cfg.prune.min_keep = min_keep
    model = _model(model_name, data, seed)
    warm_up(model, BatchMaker(data, cfg, seed), warmup)
    x_o, y_o = observation_digits(data, per_class, seed)
    c = data.num_classes
    acc: dict[str, dict[str, list[np.ndarray]]] = {}
    notes: dict[str, str] = {}
    for b in range(batches):
        for v in unified_view(model, data, cfg, x_o, y_o, methods, seed=seed + 100 * b):
            per_class_true = torch.stack([v.dlogp_true[y_o == k].mean() for k in range(c)])
            row = {"mass_lb": v.mass_lb(c), "mass_ulb": v.mass_ulb(c), "dlogp_I": v.dlogp_I,
                   "dlogp_true": per_class_true, "w_ulb_mean": v.w_ulb.mean()[None],
                   "lb_counts": torch.bincount(v.y_lb, minlength=c).float()}
            for k, val in row.items():
                acc.setdefault(v.name, {}).setdefault(k, []).append(val.detach().float().numpy())
            notes[v.name] = v.note
    mean = {m: {k: np.mean(vals, axis=0) for k, vals in d.items()} for m, d in acc.items()}
    summary = {m: {"dlogp_I_per_class": [round(float(x), 4) for x in d["dlogp_I"]],
                   "dlogp_I_head_minus_tail": round(float(d["dlogp_I"][0] - d["dlogp_I"][-1]), 4),
                   "mean_dlogp_true_tail_classes_7_9": round(float(d["dlogp_true"][7:].mean()), 4),
                   "labeled_batch_class_counts": [round(float(x), 2) for x in d["lb_counts"]],
                   "mean_unlabeled_weight": round(float(d["w_ulb_mean"][0]), 4)} for m, d in mean.items()}
    summary["_setup"] = {"model": model_name, "warmup_steps": warmup, "batches_averaged": batches, "min_keep": min_keep,
                         "labeled_counts": data.split.lb_counts, "notes": {k: v for k, v in notes.items() if v}}
    return {"mean": mean, "summary": summary, "classes": data.classes, "counts": data.split.lb_counts,
            "notes": notes}


def invariance_recipe(runs: list[str], seed: int = 0, warm_images: int = 256) -> dict[str, Any]:
    """The invariance table on MNIST-shaped inputs (BN statistics from real digits), plus each run's
    trained EMA model (newest checkpoint) on its own input shape."""
    data, _ = load_mnist_lt(100.0, seed)
    pick = torch.randperm(len(data.x_test), generator=torch.Generator().manual_seed(seed))[:warm_images]
    images = normalize(data.x_test[pick], data.mean, data.std)
    rows = [r.to_dict() for r in invariance_table(images, data.num_classes, seed=seed)]
    for run in runs:
        models = load_run_models(Path(run))
        if models:
            rm = models[-1]
            name = f"{Path(run).parent.name}@{rm.step} (trained)"
            shape = tuple(rm.image.shape[1:])
            rows += [r.to_dict() for r in invariance_table(images, data.num_classes, archs=(), extra={name: rm.model},
                                                          extra_shape=shape)]
    return {"rows": rows, "k_positive": K_POSITIVE, "k_other": K_OTHER}


def prior_recipe(runs: list[str]) -> dict[str, Any]:
    """π_θ(I) curves of finished runs and their KL to the labeled prior (first, minimum, last)."""
    curves: list[PriorCurve] = [read_prior_curve(r) for r in runs]
    summary = {}
    for c in curves:
        entry: dict[str, Any] = {"source": c.source, "first_step": c.steps[0], "last_step": c.steps[-1],
                                 "evaluations": len(c.steps),
                                 "labeled_prior": [round(float(v), 4) for v in c.lb_prior]}
        for mode in ("train", "eval"):
            k = c.kl(mode)
            entry[f"kl_{mode}_mode"] = {"first": round(k[0], 4), "min": round(min(k), 4), "last": round(k[-1], 4),
                                        "step_of_min": c.steps[int(np.argmin(k))]}
            prior = c.prior_train if mode == "train" else c.prior_eval
            entry[f"prior_{mode}_mode_last"] = [round(float(v), 4) for v in prior[-1]]
        summary[c.name] = entry
    return {"curves": curves, "summary": summary}

