"""`dytrim dynamics ...`: the analysis commands, one per figure. Each computes on real data, writes a PNG
(--out) and prints the key numbers as JSON (also written next to the PNG as <out>.json).

  decompose   Prop. 1: first-order error of −η·T·K·G against the real SGD step vs η (MNIST-LT)
  split       Prop. 2: FixMatch supervised vs consistency term, right vs wrong pseudo-labels (MNIST-LT)
  unified     every debiaser's G, gradient budget and predicted Δlog π(I) on one batch (MNIST-LT)
  invariance  Prop. 3: z(k·1) across k per architecture and BN mode, as a table image
  prior       Thm. 1: π_θ(I) per class and KL to the labeled prior over finished runs (--run DIR ...)
  mnist       the MNIST figure: consistency term vs pseudo-label correctness and imbalance
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

COMMANDS = ("decompose", "split", "unified", "invariance", "prior", "mnist")
WARMUP_HELP = (
    "supervised Adam steps on the labeled pool before the analysed step (the model then carries its imbalance)"
)


def add_parser(sub: Any) -> None:
    """Register `dynamics` and its sub-commands on the top-level subparsers."""
    p = sub.add_parser("dynamics", help="learning-dynamics analysis figures (T·K·G, baseline image)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = p.add_subparsers(dest="dynamics_command", required=True)

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        q = dsub.add_parser(name, help=help_text, description=help_text)
        q.add_argument("--out", required=True, help="PNG to write (its numbers go to the same path + .json)")
        q.add_argument("--seed", type=int, default=0, help="seed of the split, model init and batches")
        q.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
        return q

    q = cmd("decompose", "Prop. 1 on MNIST-LT: relative error of the first-order prediction vs the SGD step size")
    q.add_argument("--models", default="mlp,cnn_small", help="comma list: mlp and/or zoo models (eval-mode BN)")
    q.add_argument("--warmup", type=int, default=300, help=WARMUP_HELP)
    q = cmd("split", "Prop. 2 on MNIST-LT: consistency-term effect on the true class by pseudo-label correctness")
    q.add_argument("--batches", type=int, default=8, help="FixMatch batches decomposed at the same model state")
    q.add_argument("--warmup", type=int, default=300, help=WARMUP_HELP)
    q.add_argument("--p-cutoff", type=float, default=0.0, help="FixMatch confidence threshold (0 keeps all)")
    q = cmd("unified", "unified view on MNIST-LT: G, gradient budget and Δlog π(I) per debiasing method")
    q.add_argument("--model", default="mlp_ln", help="mlp_ln (default: LayerNorm MLP, z(I) = bias path in any BN "
                   "mode), mlp, or a zoo model (eval-mode BN makes its Δlog π(I) unreliable, see invariance)")
    q.add_argument("--batches", type=int, default=3, help="batches averaged per method")
    q.add_argument("--warmup", type=int, default=300, help=WARMUP_HELP)
    q.add_argument("--min-keep", type=int, default=0, metavar="N",
                   help="DyTrim's prune.min_keep: labeled images kept per class at least (default 0, the reference "
                   "rule, which can prune a 1-image class away; 1 as the mnist-*/cpu-* presets)")
    q = cmd("invariance", "Prop. 3: logits of k·1 images across k, per architecture and BN mode (table PNG)")
    q.add_argument("--run", action="append", default=[], metavar="DIR",
                   help="also check the trained EMA model of this run directory (repeatable)")
    q = cmd("prior", "Thm. 1: π_θ(I) per class and KL(π_θ(I) ‖ labeled prior) over finished runs")
    q.add_argument("--run", action="append", default=[], metavar="DIR", required=True,
                   help="run directory with metrics.jsonl (or checkpoints), repeatable")
    q = cmd("mnist", "the MNIST figure: consistency term vs pseudo-label correctness, long-tailed vs balanced")
    q.add_argument("--batches", type=int, default=10, help="FixMatch batches decomposed per split")
    q.add_argument("--warmup", type=int, default=300, help=WARMUP_HELP)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray | torch.Tensor):
        return np.asarray(obj).tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _finish(out: Path, summary: dict[str, Any]) -> int:
    text = json.dumps(_jsonable(summary), indent=1, ensure_ascii=False)  # Δlog π, not \u0394log \u03c0
    out.with_name(out.name + ".json").write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"wrote {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch one `dytrim dynamics` sub-command."""
    from dytrim.config import ConfigError
    from dytrim.dynamics import plots, recipes
    from dytrim.report.runs import class_names  # a run's own class names (data.json first)

    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    name = args.dynamics_command
    if name == "decompose":
        r = recipes.decompose_recipe([m.strip() for m in args.models.split(",") if m.strip()], args.warmup,
                                     seed=args.seed)
        plots.plot_error_vs_lr(r["curves"], r["scatter"], out, r["scatter_lr"])
        return _finish(out, r["summary"])
    if name == "split":
        r = recipes.split_recipe(args.batches, args.warmup, seed=args.seed, p_cutoff=args.p_cutoff)
        plots.plot_split(r["pairs"], r["own"], r["total"], out,
                         f"long-tailed MNIST γ=100, MLP 784-32-10, {args.batches} batches, "
                         f"pseudo-label acc {r['summary']['pseudo_label_accuracy']:.0%}")
        return _finish(out, r["summary"])
    if name == "unified":
        if args.min_keep < 0:
            raise ConfigError(f"--min-keep: must be >= 0; got {args.min_keep}")
        r = recipes.unified_recipe(args.model, args.warmup, args.batches, seed=args.seed, min_keep=args.min_keep)
        plots.plot_unified(r["mean"], r["classes"], r["counts"], out, r["notes"],
                           f"model {args.model}, {args.warmup} supervised warm-up steps, mean of {args.batches} "
                           "batches (32 labeled + 64 unlabeled); LA and re-weighting on the labeled loss only "
                           f"(library defaults); debiasing from step 0; DyTrim prune.min_keep={args.min_keep}")
        return _finish(out, r["summary"])
    if name == "invariance":
        r = recipes.invariance_recipe(args.run, seed=args.seed)
        plots.plot_invariance(r["rows"], out, r["k_positive"], r["k_other"],
                              "Untrained rows: seeded random weights, BN running statistics from 256 real MNIST test "
                              "digits, inputs 1×28×28. '(trained)' rows: EMA model of the run's newest checkpoint, "
                              "inputs 3×32×32. Train mode = a batch of two identical images, running buffers "
                              "untouched.")
        return _finish(out, {"rows": r["rows"], "k_positive": r["k_positive"], "k_other": r["k_other"]})
    if name == "prior":
        r = recipes.prior_recipe(args.run)
        classes = [class_names(Path(run), len(c.lb_prior)) for run, c in zip(args.run, r["curves"], strict=True)]
        for c, names in zip(r["curves"], classes, strict=True):
            lb = c.lb_prior
            r["summary"][c.name] |= {"classes": names, "labeled_gamma": round(float(lb.max() / lb.min()), 4)}
        plots.plot_prior_curves(r["curves"], classes, out)
        return _finish(out, r["summary"])
    from dytrim.dynamics.mnist_figure import mnist_figure_numbers

    r = mnist_figure_numbers(args.batches, args.warmup, seed=args.seed)
    plots.plot_mnist_figure(r["lt"], r["bal"], out)
    return _finish(out, r["summary"])
