"""The MNIST figure (the paper's Fig. 1, on our data): how one FixMatch step's consistency term moves the
true-class log-probability of test digits, for right vs wrong pseudo-labels, and how imbalance tilts it
toward the head classes (long-tailed γ = 100 against a balanced split, same MLP and schedule).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dytrim.dynamics.fixmatch_split import split_fixmatch_step
from dytrim.dynamics.mnist_lt import BatchMaker, load_mnist_lt, make_mlp, observation_digits, warm_up
from dytrim.dynamics.recipes import analysis_ssl


def setting_numbers(gamma: float, batches: int, warmup: int, per_class: int, seed: int) -> dict[str, Any]:
    """One split (γ): warm the MLP up on its labeled pool, then decompose `batches` FixMatch steps."""
    data, cfg = load_mnist_lt(gamma, seed)
    model = make_mlp(data, seed=seed)
    warm_up(model, BatchMaker(data, cfg, seed), warmup)
    maker = BatchMaker(data, cfg, seed + 1)
    x_o, y_o = observation_digits(data, per_class, seed)
    c = data.num_classes
    pairs: dict[str, list[np.ndarray]] = {"correct": [], "wrong": []}
    true_cons, flow_cons, flow_sup, pseudo_hist, hits = [], [], [], [], []
    for _ in range(batches):
        v = maker.fixmatch(32, 64)
        s = split_fixmatch_step(model, x_o, y_o, v.x_lb, v.y_lb, v.x_ulb_w, v.x_ulb_s, v.y_ulb, 1.0, analysis_ssl())
        for k, vals in s.same_class_pairs().items():
            pairs[k].append(vals.numpy())
        cons = s.true_class("consistency")
        true_cons.append(torch.stack([cons[y_o == k].mean() for k in range(c)]).numpy())
        flow_cons.append(s.dec.term("consistency").delta.mean(0).numpy())  # mean over x_o of Δlog π(c | x_o)
        flow_sup.append(s.dec.term("supervised").delta.mean(0).numpy())
        pseudo_hist.append(torch.bincount(s.pseudo, minlength=c).numpy() / len(s.pseudo))
        hits.append(float(s.correct.float().mean()))
    return {
        "gamma": gamma,
        "pairs": {k: np.concatenate(v) for k, v in pairs.items()},
        "true_cons": np.mean(true_cons, 0),
        "flow_cons": np.mean(flow_cons, 0),
        "flow_sup": np.mean(flow_sup, 0),
        "pseudo_hist": np.mean(pseudo_hist, 0),
        "pseudo_acc": float(np.mean(hits)),
        "lb_counts": data.split.lb_counts,
        "ulb_counts": data.split.ulb_counts,
        "classes": data.classes,
    }


def mnist_figure_numbers(batches: int = 6, warmup: int = 300, per_class: int = 10, seed: int = 0) -> dict[str, Any]:
    """Both settings (long-tailed γ = 100 and balanced γ = 1) and a JSON summary of the key numbers."""
    lt = setting_numbers(100.0, batches, warmup, per_class, seed)
    bal = setting_numbers(1.0, batches, warmup, per_class, seed)

    def brief(s: dict[str, Any]) -> dict[str, Any]:
        p = s["pairs"]
        return {
            "pseudo_label_accuracy": round(s["pseudo_acc"], 4),
            "same_class_share_correct": {"n": len(p["correct"]), "mean": round(float(p["correct"].mean()), 5),
                                         "frac_positive": round(float((p["correct"] > 0).mean()), 4)},
            "same_class_share_wrong": {"n": len(p["wrong"]), "mean": round(float(p["wrong"].mean()), 5)
                                       if len(p["wrong"]) else None,
                                       "frac_positive": round(float((p["wrong"] > 0).mean()), 4)
                                       if len(p["wrong"]) else None},
            "consistency_true_class_by_class": [round(float(x), 4) for x in s["true_cons"]],
            "consistency_flow_by_class": [round(float(x), 4) for x in s["flow_cons"]],
            "pseudo_label_share_by_class": [round(float(x), 3) for x in s["pseudo_hist"]],
        }

    summary = {"long_tailed_gamma_100": brief(lt), "balanced_gamma_1": brief(bal),
               "setup": {"model": "MLP 784-32-10", "warmup_steps": warmup, "batches": batches,
                         "observation_digits": per_class * 10, "units": "Δlog π per unit η"}}
    return {"lt": lt, "bal": bal, "summary": summary}
