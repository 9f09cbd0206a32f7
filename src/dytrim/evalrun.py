"""`dytrim eval`: a trained run's EMA model on a test set: metrics raw and debiased, per-class recall by class
name, confusion matrices as a PNG. The test set is the run's own, or any folder laid out like the labeled one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dytrim.data.cache import cache_root
from dytrim.data.errors import DataError
from dytrim.data.folder import read_class_tree
from dytrim.inference import TrainedRun, to_nchw
from dytrim.metrics import classification_metrics, confusion_matrix
from dytrim.units import percent


def load_test_set(run: TrainedRun, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(uint8 NCHW images, labels, description): a class-folder tree with the run's classes, else the run's own
    test set (read again through its config)."""
    card, d = run.card, run.cfg.data
    if not data_dir and d.name == "folder" and d.test_dir:  # read only the test folder, not the training images
        x, y, where = load_test_set(run, d.test_dir)
        return x, y, f"the run's test set: data.test_dir {where.removeprefix('folder ')}"
    if data_dir:
        root = Path(data_dir).expanduser()
        cache = cache_root(run.cfg.data) / "folders"
        classes, x, y, skipped = read_class_tree(root, "--data", (card.height, card.width), card.channels, cache)
        if classes != card.classes:
            missing, extra = sorted(set(card.classes) - set(classes)), sorted(set(classes) - set(card.classes))
            raise DataError(
                f"--data: the class sub-folders of '{root}' differ from the run's classes "
                f"(missing: {missing or 'none'}; extra: {extra or 'none'}); give it exactly the classes {card.classes}"
            )
        note = f", {len(skipped)} unreadable files skipped" if skipped else ""
        return to_nchw(x), torch.from_numpy(y), f"folder {root} ({len(y)} images{note})"
    from dytrim.data.sources import load_data

    data = load_data(run.cfg.data, run.cfg.seed, "cpu")
    if data.classes != card.classes:
        raise DataError(f"the run's data now has classes {data.classes}, but the model was trained on {card.classes};"
                        " point --data to a test folder with the training classes")
    where = data.info.get("test", f"the {run.cfg.data.name} test set")
    return data.x_test, data.y_test, f"the run's test set: {where} ({len(data.y_test)} images)"


def evaluate(run: TrainedRun, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> dict[str, Any]:
    """Metrics (raw and `_debiased`), confusion matrices and a per-class table, all keyed by class name."""
    card, k = run.card, run.card.num_classes
    raw, debiased = run.logits(x, batch_size)
    views = {"": raw.argmax(-1).cpu()} | ({"_debiased": debiased.argmax(-1).cpu()} if debiased is not None else {})
    y = y.cpu()
    out: dict[str, Any] = {"classes": card.classes, "labeled_per_class": card.lb_counts, "step": run.step,
                           "n": len(y), "debias": run.debias_methods}
    for suffix, pred in views.items():
        out |= classification_metrics(pred, y, k, card.lb_counts, suffix)
        out[f"confusion{suffix}"] = confusion_matrix(pred, y, k).tolist()
    support = np.bincount(y.numpy(), minlength=k)
    out["per_class"] = [
        {"class": name, "labeled": card.lb_counts[i], "test": int(support[i]),
         **{f"recall{s}": out[f"per_class_recall{s}"][i] for s in views}}
        for i, name in enumerate(card.classes)
    ]
    return out


def format_table(result: dict[str, Any]) -> str:
    """The per-class recall table as aligned text, then the headline metrics."""
    rows = result["per_class"]
    deb = "recall_debiased" in rows[0]
    width = max(5, *(len(r["class"]) for r in rows))
    head = f"{'class':<{width}}  {'labeled':>7}  {'test':>6}  {'recall':>7}" + ("  debiased" if deb else "")
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['class']:<{width}}  {r['labeled']:>7}  {r['test']:>6}  {percent(r['recall']):>6}%"
        lines.append(line + (f"  {percent(r['recall_debiased']):>7}%" if deb else ""))
    lines.append("-" * len(head))
    for suffix, label in (("", "raw"), ("_debiased", "debiased")):
        if f"acc{suffix}" in result:
            pct = {m: percent(result[f"{m}{suffix}"]) for m in ("acc", "bacc", "gm", "many", "medium", "few")}
            lines.append(f"{label:>8}: acc {pct['acc']}%  bACC {pct['bacc']}%  GM {pct['gm']}%  "
                         f"many/medium/few {pct['many']}/{pct['medium']}/{pct['few']}%")
    return "\n".join(lines)


def plot_confusion(result: dict[str, Any], path: Path, title: str) -> None:
    """Row-normalised confusion matrices (raw, and debiased where present) with class names and counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("confusion", "confusion_debiased") if k in result]
    names, k = result["classes"], len(result["classes"])
    size = max(4.0, 0.45 * k + 2)
    fig, axes = plt.subplots(1, len(keys), figsize=(size * len(keys), size), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        cm = np.asarray(result[key], dtype=np.float64)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    if cm[i, j]:
                        ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if norm[i, j] > 0.5 else "black")
            ax.set_xticks(range(k), names, rotation=90, fontsize=7)
            rows = [f"{n} ({c})" for n, c in zip(names, result["labeled_per_class"], strict=True)]
            ax.set_yticks(range(k), rows, fontsize=7)
        suffix = key.removeprefix("confusion")
        ax.set_title(f"{'debiased' if suffix else 'raw'}: bACC {percent(result['bacc' + suffix])}%")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true class (labeled count)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
