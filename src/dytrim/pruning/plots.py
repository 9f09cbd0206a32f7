"""Pruning over training: fraction of each labeled class kept, the prune ratios r_c, and the
unlabeled kept / rescaled fractions, from the `pruning` field of metrics.jsonl rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_pruning(rows: list[dict[str, Any]], path: Path, classes: list[str], lb_counts: list[int],
                 start: int | None = None) -> None:
    """Three panels against steps; nothing is written if no row carries `pruning`. `start`: the step debias.start
    resolved to (named in the r_c panel, marked when it falls inside the run)."""
    fig = pruning_figure(rows, classes, lb_counts, start)
    if fig is None:
        return
    import matplotlib.pyplot as plt

    tmp = path.with_suffix(".tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    tmp.replace(path)


def pruning_figure(rows: list[dict[str, Any]], classes: list[str], lb_counts: list[int],
                   start: int | None = None) -> Any:
    """The Figure of `plot_pruning` (the caller closes it), None if no row carries `pruning`. Every panel has
    its y unit; class names are whole in the legend."""
    rows = [r for r in rows if "pruning" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    n_cls = len(lb_counts)
    cmap = plt.get_cmap("viridis")
    colours = [cmap(i / max(1, n_cls - 1)) for i in range(n_cls)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax, bx, cx = axes
    for c in range(n_cls):
        label = f"{classes[c]} ({lb_counts[c]})" if n_cls <= 10 else None
        kept = [r["pruning"]["kept_lb_per_class"][c] / max(1, lb_counts[c]) for r in rows]
        ax.plot(steps, [100 * k for k in kept], color=colours[c], label=label)
        bx.plot(steps, [100 * r["pruning"]["r_c"][c] for r in rows], color=colours[c], label=label)
    ax.set_title("labeled kept per class (% of N_c)")
    ax.set_ylabel("% of the class's labeled images kept")
    ax.set_ylim(0, 105)
    if start is None:
        bx.set_title("prune ratio r_c = π_θ(I)_c (labeled prior before debias start)")
    elif start <= steps[-1]:
        bx.set_title(f"prune ratio r_c = π_θ(I)_c (labeled prior before step {start}, debias.start)")
        bx.axvline(start, color="grey", ls="--", lw=1)
    else:
        bx.set_title(f"prune ratio r_c = labeled prior: debias.start (step {start}) after the last step")
    bx.set_ylabel("r_c (%)")
    if n_cls <= 10:
        ax.legend(fontsize=7, title="class (N_c)", title_fontsize=7, ncol=2)
    ulb = [r for r in rows if "kept_ulb" in r["pruning"]]
    if ulb:
        us = [r["step"] for r in ulb]
        cx.plot(us, [100 * r["pruning"]["kept_ulb"] / r["pruning"]["ulb_total"] for r in ulb], label="kept unlabeled")
        cx.plot(us, [100 * r["pruning"]["rescaled_frac"] for r in ulb], label="of kept: rescaled (w = 1/r)")
        cx.legend(fontsize=8)
    cx.set_title("unlabeled soft pruning (%)")
    cx.set_ylabel("% of the unlabeled pool")
    cx.set_ylim(0, 105)
    for a in axes:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    fig.tight_layout()
    return fig
