"""Matplotlib figures of the dynamics toolkit; each takes plain numbers and writes one PNG (Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

METHOD_STYLE = {
    "fixmatch": ("black", "o"), "logit_adjust": ("tab:blue", "s"), "reweight": ("tab:orange", "^"),
    "resample": ("tab:green", "v"), "cdmad": ("tab:red", "D"), "dytrim": ("tab:purple", "P"),
    "cdmad+dytrim": ("tab:brown", "X"),
}


def _save(fig: Any, path: str | Path, tight: bool = False) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight" if tight else None, pad_inches=0.2)
    plt.close(fig)


def _class_ticks(ax: Any, classes: Sequence[str], counts: Sequence[int] | None) -> None:
    labels = [f"{c}\n{n}" for c, n in zip(classes, counts, strict=True)] if counts else list(classes)
    ax.set_xticks(range(len(classes)), labels, fontsize=8)


def plot_error_vs_lr(curves: dict[str, list[dict[str, float]]], scatter: dict[str, tuple[Any, Any]],
                     path: str | Path, scatter_lr: float) -> None:
    """Left: relative error of −η·T·K·G against the real SGD step vs η (log-log, slope-1 guide).
    Right: predicted vs real Δlog π at η = scatter_lr."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.3))
    for name, rows in curves.items():
        lrs = [r["lr"] for r in rows]
        ax.loglog(lrs, [r["rel_error"] for r in rows], "o-", label=name)
    if curves:
        rows = next(iter(curves.values()))
        lr0, e0 = rows[len(rows) // 2]["lr"], rows[len(rows) // 2]["rel_error"]
        lrs = np.array([r["lr"] for r in rows])
        ax.loglog(lrs, e0 * lrs / lr0, "k:", label="slope 1 (error ∝ η)")
    ax.set_xlabel("learning rate η of the plain SGD step")
    ax.set_ylabel("‖predicted − real‖ / ‖real‖  (Δlog π)")
    ax.set_title("Prop. 1 on MNIST-LT: first-order error vs η (float64)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    for name, (pred, real) in scatter.items():  # each model scaled by its largest real change, to share axes
        scale = float(np.abs(real).max()) or 1.0
        bx.scatter(np.asarray(real).ravel() / scale, np.asarray(pred).ravel() / scale, s=7, alpha=0.5,
                   label=f"{name} (÷ {scale:.3g})")
    bx.plot([-1, 1], [-1, 1], "k:", lw=1, label="y = x")
    bx.set_xlabel("real Δlog π(c | x_o) after one SGD step, ÷ max |real|")
    bx.set_ylabel("predicted −η·T·K·G, same scale")
    bx.set_title(f"Predicted vs real at η = {scatter_lr:g} (every class c, every x_o)")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=8, markerscale=3)
    _save(fig, path)


def _symlog_edges(values: np.ndarray, n: int = 14) -> tuple[np.ndarray, float]:
    """Bin edges even on a symmetric-log axis: linear inside ±linthresh, log-spaced beyond."""
    mag = np.abs(values[values != 0]) if np.any(values != 0) else np.ones(1)
    top = float(mag.max()) * 1.01
    lin = max(float(np.percentile(mag, 10)), top * 1e-4)
    outer = np.logspace(np.log10(lin), np.log10(max(top, lin * 10)), n)
    return np.concatenate([-outer[::-1], np.linspace(-lin, lin, 5)[1:-1], outer]), lin


def _hist_pair(ax: Any, correct: np.ndarray, wrong: np.ndarray, title: str, xlabel: str) -> None:
    """Histograms (share of each group per bin) of two groups on a symmetric-log axis, with their stats."""
    both = np.concatenate([correct, wrong]) if len(correct) + len(wrong) else np.zeros(1)
    edges, lin = _symlog_edges(both)
    groups = ((correct, "tab:green", "correct pseudo-label"), (wrong, "tab:red", "wrong pseudo-label"))
    for vals, color, label in groups:
        if len(vals):
            pos = 100 * float((vals > 0).mean())
            ax.hist(vals, bins=edges, color=color, alpha=0.55, weights=np.full(len(vals), 1.0 / len(vals)),
                    label=f"{label}: n={len(vals)}, mean={vals.mean():+.3g}, {pos:.0f}% > 0")
    ax.set_xscale("symlog", linthresh=lin)
    decades = np.arange(np.ceil(np.log10(lin * 3)), np.floor(np.log10(edges[-1])) + 1)
    decades = decades[::-1][:: 1 if len(decades) <= 4 else 2][::-1]
    ticks = np.concatenate([-(10.0 ** decades[::-1]), [0.0], 10.0 ** decades])
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(xlabel + " (symlog axis)")
    ax.set_ylabel("share of the group's samples per bin")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7.5, loc="upper left")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)


def plot_split(pairs: dict[str, np.ndarray], own: dict[str, np.ndarray], total: dict[str, np.ndarray],
               path: str | Path, subtitle: str) -> None:
    """Prop. 2 histograms: consistency-term effect on the true class, split by pseudo-label correctness."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    _hist_pair(axes[0], pairs["correct"], pairs["wrong"],
               "One unlabeled sample's consistency share\non test digits of its true class",
               "Δlog π(y | x_o) per unit η")
    _hist_pair(axes[1], own["correct"], own["wrong"], "Own share on the sample itself (x_o = weak view of u)",
               "Δlog π(y_true | u) per unit η")
    _hist_pair(axes[2], total["correct"], total["wrong"], "Whole consistency term on each unlabeled sample",
               "Δlog π(y_true | u) per unit η")
    fig.suptitle(f"FixMatch step split (Prop. 2): consistency term vs pseudo-label correctness — {subtitle}",
                 fontsize=11)
    _save(fig, path)


def plot_unified(summary: dict[str, dict[str, np.ndarray]], classes: Sequence[str], counts: Sequence[int],
                 path: str | Path, notes: dict[str, str], subtitle: str = "") -> None:
    """Per-class panels, one line per method: labeled/unlabeled gradient budget, Δlog π(I), Δlog π(y|x_o)."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    panels = [
        ("mass_lb", "labeled Σ‖G‖₁ of class-c samples", "Supervised gradient budget per class (weights × G)"),
        ("mass_ulb", "unlabeled Σ‖G‖₁ pseudo-labelled c", "Consistency gradient budget per pseudo-class"),
        ("dlogp_I", "Δlog π_θ(c | I) per unit η", "Predicted change of the baseline probe π_θ(I)"),
        ("dlogp_true", "mean Δlog π(y | x_o) per unit η, x_o of class y",
         "Predicted change on test digits of each class (true class)"),
    ]
    x = np.arange(len(classes))
    for ax, (key, ylabel, title) in zip(axes.ravel(), panels, strict=True):
        for name, s in summary.items():
            color, marker = METHOD_STYLE.get(name, ("gray", "x"))
            ax.plot(x, s[key], marker=marker, color=color, label=name, lw=1.2, ms=5)
        ax.axhline(0, color="k", lw=0.6)
        _class_ticks(ax, classes, counts)
        ax.set_xlabel("class (name / labeled count)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    text = "; ".join(f"{k}: {v}" for k, v in notes.items() if v)
    fig.suptitle("Unified view: one FixMatch step under each debiaser (library components), long-tailed MNIST"
                 + (f"\n{subtitle}" if subtitle else "") + (f"\n{text}" if text else ""), fontsize=10)
    _save(fig, path)


def plot_invariance(
    rows: list[dict[str, Any]], path: str | Path, ks: Sequence[float], ks_other: Sequence[float], caption: str = ""
) -> None:
    """The invariance table as an image: measured max |Δz| / TV over k, verdict, and what theory says."""
    colors = {"exact": "#c8f0c8", "approximate": "#fff2b3", "fails": "#f7c6c6"}
    other = ", ".join(map(str, ks_other))
    header = ["architecture", "BN mode", "max|Δz|, k>0", "max TV(π), k>0", f"max|Δz|, also k∈{{{other}}}",
              "|z(I)|∞", "measured (k>0)", "theory"]
    cells = [[r["arch"], r["mode"], f"{r['max_dz_pos']:.2e}", f"{r['max_tv_pos']:.2e}", f"{r['max_dz_all']:.2e}",
              f"{r['logit_scale']:.2f}", r["verdict"], r["theory"]] for r in rows]
    fig, ax = plt.subplots(figsize=(17, 0.3 * len(rows) + 0.8))
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=header, loc="center", cellLoc="left", colLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(header))))
    for i, r in enumerate(rows, start=1):
        table[i, 6].set_facecolor(colors.get(r["verdict"], "white"))
    for j in range(len(header)):
        table[0, j].set_facecolor("#dddddd")
    table.scale(1, 1.35)
    ax.set_title(f"Invariance of baseline-image logits z(k·1) across k (Prop. 3); k>0: {', '.join(map(str, ks))}; "
                 "float64; exact = within 1e-9·max(1,|z|), approximate = TV < 0.01", fontsize=10)
    if caption:
        ax.text(0.0, -0.02, caption, transform=ax.transAxes, fontsize=8, va="top")
    _save(fig, path, tight=True)


def plot_prior_curves(curves: list[Any], classes: Sequence[Sequence[str]], path: str | Path) -> None:
    """Per run: π_θ(I) per class against steps (stacked; BN train mode and eval mode) with the labeled
    prior as the last bar; last column: KL(π_θ(I) ‖ labeled prior) against steps. Runs probed from a few
    checkpoints only are drawn as stacked bars. `classes` holds each run's class names: one legend for the
    figure when every run has the same, else one per run; titles carry each run's own labeled γ."""
    n = len(curves)
    shared = all(list(c) == list(classes[0]) for c in classes)
    fig = plt.figure(figsize=(15, 3.4 * n + 0.8))
    grid = fig.add_gridspec(n, 3)
    cmap = plt.get_cmap("tab10")
    kx = fig.add_subplot(grid[:, 2])
    handles = []
    for i, c in enumerate(curves):
        steps = np.asarray(c.steps)
        prior = c.lb_prior.numpy()
        names = list(classes[i])
        gamma = float(prior.max() / prior.min()) if prior.min() > 0 else float("inf")
        run_handles = []
        for j, (mode, priors) in enumerate((("train", c.prior_train), ("eval", c.prior_eval))):
            ax = fig.add_subplot(grid[i, j])
            p = priors.numpy()
            if len(steps) > 3:
                span = float(steps.max() - steps.min())
                ax.stackplot(steps, p.T, colors=[cmap(k % 10) for k in range(p.shape[1])], alpha=0.85)
                xs, width = np.array([steps.max() + 0.07 * span]), 0.05 * span
                ax.set_xlim(steps.min(), xs[0] + 0.04 * span)
            else:  # a few checkpoints: stacked bars at even positions, labelled by step
                pos = np.arange(len(steps), dtype=float)
                bottom = np.zeros(len(steps))
                for k in range(p.shape[1]):
                    ax.bar(pos, p[:, k], width=0.6, bottom=bottom, color=cmap(k % 10))
                    bottom += p[:, k]
                xs, width = np.array([len(steps) + 0.2]), 0.6
                ax.set_xticks(list(pos) + [xs[0]], [str(s) for s in steps] + ["prior"])
            bottom = 0.0
            for k, v in enumerate(prior):
                h = ax.bar(xs, [v], width=width, bottom=bottom, color=cmap(k % 10), edgecolor="k", lw=0.4)
                bottom += v
                if j == 0:
                    run_handles.append((h, f"{k}: {names[k]}" if k < len(names) else str(k)))
            ax.set_ylim(0, 1)
            ax.set_xlabel("training step (last bar: labeled class prior)")
            ax.set_ylabel("π_θ(I), stacked by class")
            ax.set_title(f"{c.name} (labeled γ = {gamma:.3g}): BN {mode} mode ({c.source})", fontsize=10)
            if j == 1 and not shared:  # runs with other classes: this run's own legend
                ax.legend([h for h, _ in run_handles], [t for _, t in run_handles], fontsize=7, ncol=2,
                          loc="upper left", framealpha=0.8)
        if i == 0:
            handles = run_handles
        for mode, style in (("train", "-"), ("eval", "--")):  # runs differ in length: x = fraction of the run
            kx.plot(steps / steps.max(), c.kl(mode), style, marker="o", ms=3, color=cmap(i % 10),
                    label=f"{c.name} ({int(steps.max())} steps), BN {mode}")
    kx.set_xlabel("training step ÷ the run's last logged step")
    kx.set_ylabel("KL(π_θ(I) ‖ labeled class prior)")
    kx.set_yscale("log")
    kx.set_title("Distance of the probe to the training prior", fontsize=10)
    kx.grid(alpha=0.3, which="both")
    kx.legend(fontsize=8)
    if shared:
        fig.legend([h for h, _ in handles], [t for _, t in handles], loc="lower center", ncol=10, fontsize=8,
                   title="class index (head → tail): name", title_fontsize=8)
    fig.suptitle("Baseline-image probe π_θ(I) over training runs (EMA model; each run's labeled γ in its titles)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_mnist_figure(lt: dict[str, Any], bal: dict[str, Any], path: str | Path) -> None:
    """(a) per-sample consistency share on same-class digits, right vs wrong pseudo-labels (long-tailed);
    (b) consistency term's Δlog π(y|x_o) by true class; (c) where it moves mass: mean Δlog π(c|x_o) by c;
    (d) pseudo-label shares against the unlabeled pool's class shares."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    _hist_pair(axes[0, 0], lt["pairs"]["correct"], lt["pairs"]["wrong"],
               "(a) Long-tailed: one unlabeled digit's consistency share\non test digits of its true class",
               "Δlog π(y | x_o) per unit η")
    classes = lt["classes"]
    x = np.arange(len(classes))
    w = 0.38
    panels = (
        (axes[0, 1], "true_cons", "(b) Consistency term on the true class of test digits",
         "mean Δlog π(y | x_o), x_o of class y"),
        (axes[1, 0], "flow_cons", "(c) Where the consistency term moves probability",
         "mean over all x_o of Δlog π(c | x_o)"),
    )
    for ax, key, title, ylabel in panels:
        ax.bar(x - w / 2, lt[key], w, color="tab:red",
               label=f"long-tailed γ=100 (pseudo-label acc {lt['pseudo_acc']:.0%})")
        ax.bar(x + w / 2, bal[key], w, color="tab:blue",
               label=f"balanced γ=1 (pseudo-label acc {bal['pseudo_acc']:.0%})")
        ax.axhline(0, color="k", lw=0.6)
        _class_ticks(ax, classes, lt["lb_counts"])
        ax.set_xlabel("class (digit / labeled count in the long-tailed split)")
        ax.set_ylabel(ylabel + " per unit η", fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[1, 1]
    ulb = np.asarray(lt["ulb_counts"], dtype=float)
    ax.bar(x - w / 2, lt["pseudo_hist"], w, color="tab:red", label="long-tailed: pseudo-label share")
    ax.plot(x - w / 2, ulb / ulb.sum(), "k_", ms=14, mew=2, label="long-tailed: true share in the unlabeled pool")
    ax.bar(x + w / 2, bal["pseudo_hist"], w, color="tab:blue", label="balanced: pseudo-label share")
    ax.axhline(0.1, color="tab:blue", ls=":", lw=1, label="balanced: true share 0.1")
    _class_ticks(ax, classes, lt["lb_counts"])
    ax.set_xlabel("class (digit / labeled count in the long-tailed split)")
    ax.set_ylabel("share of the unlabeled batch")
    ax.set_title("(d) Pseudo-labels follow (and sharpen) the head", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("MNIST, one FixMatch step of a 784-32-10 MLP decomposed (Prop. 1–2): consistency term vs "
                 "pseudo-label correctness and imbalance", fontsize=11)
    _save(fig, path)
