"""The report's figures: curves of all runs, per-class recall head to tail, π_θ(I) heat maps, pruning per class.

Each function writes one PNG and returns its path, or None when no run carries the data it needs.
One colour per run throughout (solid: raw model, dashed or hatched: debiased).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dytrim.config.schedule import to_step
from dytrim.engine.runlog import stage_starts

from .runs import RunRecord

DPI = 110


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_colours(n: int) -> list[Any]:
    """Distinct colours for n runs (tab10, then tab20)."""
    plt = _plt()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)
    return path


def _class_label(r: RunRecord, c: int, newline: bool = True) -> str:
    """A class's whole name (never cut), with its labeled count below it or in brackets."""
    name = r.classes[c]
    if r.lb_counts is None:
        return name
    return f"{name}\n{r.lb_counts[c]}" if newline else f"{name} ({r.lb_counts[c]})"


def plot_curves(records: list[RunRecord], path: Path) -> Path:
    """bACC and GM over steps for every run on one figure: raw solid, debiased dashed, one colour per run."""
    plt = _plt()
    from matplotlib.lines import Line2D

    colours = run_colours(len(records))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharex=True)
    top = 0.0
    for ax, (key, title) in zip(axes, (("bacc", "balanced accuracy (bACC)"), ("gm", "geometric mean recall (GM)")),
                                strict=True):
        for r, colour in zip(records, colours, strict=True):
            for start, _ in stage_starts(r.summary.get("stages")):  # a marker where each later stage begins
                ax.axvline(start, color=colour, ls=":", lw=1)
            for suffix, style in (("", "-"), ("_debiased", "--")):
                steps, values = r.series(key + suffix)
                if steps:
                    marker = "." if len(steps) <= 40 else None
                    ax.plot(steps, [100 * v for v in values], style, color=colour, lw=1.6, marker=marker)
                    top = max(top, 100 * max(values))
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% (EMA model; test subset where a run has one)")
    axes[1].set_ylabel("%")
    for ax in axes:
        ax.set_ylim(0, min(100, 10 * math.ceil((top + 2) / 10)))
    styles = [Line2D([], [], color="0.3", ls="-", label="raw"), Line2D([], [], color="0.3", ls="--", label="debiased")]
    if any(r.has("bacc_debiased") for r in records):
        axes[1].legend(handles=styles, loc="lower right", fontsize=9)
    runs = [Line2D([], [], color=c, lw=2.5, label=r.name) for r, c in zip(records, colours, strict=True)]
    fig.legend(handles=runs, loc="lower center", ncol=min(4, len(records)), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(records) - 1) // 4), 1, 1))
    return _save(fig, path)


def plot_recall(records: list[RunRecord], path: Path) -> Path:
    """Per-class recall of each run's final model, classes ordered head to tail, bars grouped per class."""
    plt = _plt()
    ref = records[0]
    order = ref.head_to_tail()
    colours = run_colours(len(records))
    bars: list[tuple[str, list[float], Any, bool]] = []  # label, recall in class order, colour, debiased
    for r, colour in zip(records, colours, strict=True):
        final, _ = r.final()
        for key, debiased in (("per_class_recall", False), ("per_class_recall_debiased", True)):
            recall = final.get(key)
            if isinstance(recall, list) and len(recall) == ref.num_classes:
                label = r.name + (" (debiased)" if debiased else "")
                bars.append((label, [recall[c] for c in order], colour, debiased))
    n_cls = len(order)
    if not bars:
        raise ValueError("plot_recall: no run has a per-class recall of the expected length")
    width_in = max(9.0, min(18.0, 0.45 * n_cls * len(bars) ** 0.5 + 4)) if n_cls <= 20 else 11.0
    fig, ax = plt.subplots(figsize=(width_in, 4.8))
    if n_cls <= 20:
        width = 0.8 / len(bars)
        for k, (label, recall, colour, debiased) in enumerate(bars):
            xs = [i - 0.4 + width * (k + 0.5) for i in range(n_cls)]
            ax.bar(xs, [100 * v for v in recall], width, color=colour, label=label, alpha=0.55 if debiased else 1.0,
                   hatch="///" if debiased else None, edgecolor="white" if not debiased else colour, linewidth=0.5)
        slant = max(map(len, ref.classes), default=0) > 8  # whole names; long ones slanted, clear of each other
        ax.set_xticks(range(n_cls), [_class_label(ref, c, newline=not slant) for c in order], fontsize=8,
                      rotation=30 if slant else 0, ha="right" if slant else "center",
                      rotation_mode="anchor" if slant else "default")
        ax.set_xlim(-0.6, n_cls - 0.4)
    else:  # many classes: bars would be slivers; one line per run over the class rank
        for label, recall, colour, debiased in bars:
            ax.plot(range(n_cls), [100 * v for v in recall], "--" if debiased else "-", color=colour, label=label)
    if n_cls <= 20:
        ax.set_xlabel("class, head → tail" + (" (name / labeled count)" if ref.lb_counts else ""))
    else:
        ax.set_xlabel("class rank by labeled count, head → tail")
    ax.set_ylabel("recall %")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("per-class recall of the final model (full test set where the run has one)")
    ncol = min(4, len(bars))
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.05 + 0.045 * ((len(bars) - 1) // ncol), 1, 1))
    return _save(fig, path)


def _step_edges(steps: list[int]) -> list[float]:
    """Cell edges half-way between evaluation steps (so every column is centred on its step)."""
    if len(steps) == 1:
        return [steps[0] - 0.5, steps[0] + 0.5]
    mids = [(a + b) / 2 for a, b in zip(steps, steps[1:], strict=False)]
    return [steps[0] - (mids[0] - steps[0]), *mids, steps[-1] + (steps[-1] - mids[-1])]


def plot_prior(record: RunRecord, path: Path) -> Path | None:
    """π_θ(I) per class (rows, head at the top) over steps (columns), eval- and train-mode BN, log colour scale,
    next to the labeled class prior N_c / N for reference."""
    n_cls = record.num_classes
    panels = [(k, t) for k, t in (("prior_baseline", "BN eval mode (running statistics)"),
                                  ("prior_baseline_trainmode", "BN train mode (the image's own statistics)"))
              if any(isinstance(r.get(k), list) and len(r[k]) == n_cls for r in record.rows)]
    if not panels:
        return None
    plt = _plt()
    from matplotlib.colors import LogNorm

    order = record.head_to_tail()
    norm = LogNorm(vmin=1e-3, vmax=1.0)
    fig, axes = plt.subplots(1, len(panels) + 2, figsize=(4.6 * len(panels) + 3.2, 1.8 + 0.3 * min(n_cls, 20)),
                             gridspec_kw={"width_ratios": [6] * len(panels) + [0.45, 0.25]}, squeeze=False)
    axes = axes[0]
    start = _debias_start(record)
    mesh = None
    for i, (key, title) in enumerate(panels):
        ax = axes[i]
        rows = [r for r in record.rows if isinstance(r.get(key), list) and len(r[key]) == n_cls]
        steps = [r["step"] for r in rows]
        grid = [[max(r[key][c], 1e-3) for r in rows] for c in order]
        mesh = ax.pcolormesh(_step_edges(steps), range(n_cls + 1), grid, norm=norm, cmap="magma")
        if start is not None and steps[0] < start <= steps[-1]:
            ax.axvline(start, color="cyan", ls="--", lw=1.2, label=f"debias start ({start})")
            ax.legend(loc="lower right", fontsize=7, framealpha=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylim(n_cls, 0)
        if len(steps) <= 8:  # few columns: tick every evaluation step, not matplotlib's fractional picks
            ax.set_xticks(steps)
        if i == 0:
            _class_ticks(ax, record, order)
        else:
            ax.set_yticks([])
    strip = axes[len(panels)]
    if record.lb_counts:
        total = sum(record.lb_counts)
        strip.pcolormesh([0, 1], range(n_cls + 1), [[max(record.lb_counts[c] / total, 1e-3)] for c in order],
                         norm=norm, cmap="magma")
        strip.set_ylim(n_cls, 0)
    strip.set_title("labeled\nprior", fontsize=9)
    strip.set_xticks([])
    strip.set_yticks([])
    bar = fig.colorbar(mesh, cax=axes[-1])
    bar.set_label("probability (log scale, clipped at 0.001)", fontsize=9)
    fig.suptitle(f"{record.name}: π_θ(I), the predicted class distribution of a solid-colour image", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def _debias_start(record: RunRecord) -> int | None:
    """The step from which the run debiases (debias.start resolved), if it uses a method that has one."""
    debias = record.config.get("debias", {}) or {}
    methods = set(debias.get("methods") or [])
    start, steps = debias.get("start"), (record.config.get("train", {}) or {}).get("steps")
    if not methods & {"cdmad", "dytrim"} or isinstance(start, bool) or not isinstance(start, (int, float)):
        return None
    if isinstance(start, float) and not isinstance(steps, int):
        return None  # a fraction of a length the config does not say
    step = to_step(start, steps or 0)  # a step, or a fraction of train.steps (config/schedule.py)
    return step if step > 0 else None


def _class_ticks(ax: Any, record: RunRecord, order: list[int]) -> None:
    n_cls = len(order)
    every = max(1, math.ceil(n_cls / 20))
    ticks = list(range(0, n_cls, every))
    ax.set_yticks([t + 0.5 for t in ticks], [_class_label(record, order[t], newline=False) for t in ticks],
                  fontsize=8)


def plot_pruning(record: RunRecord, path: Path) -> Path | None:
    """Labeled images kept per class (% of N_c) and the unlabeled kept / rescaled fractions over steps."""
    rows = [r for r in record.rows if isinstance(r.get("pruning"), dict) and "kept_lb_per_class" in r["pruning"]]
    if not rows:
        return None
    plt = _plt()
    order = record.head_to_tail()
    n_cls = record.num_classes
    steps = [r["step"] for r in rows]
    counts = record.lb_counts or [max(1, max(r["pruning"]["kept_lb_per_class"][c] for r in rows)) for c in range(n_cls)]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    kept = [[100 * r["pruning"]["kept_lb_per_class"][c] / max(1, counts[c]) for r in rows] for c in order]
    if n_cls <= 12:
        cmap = plt.get_cmap("viridis")
        for rank, c in enumerate(order):
            ax.plot(steps, kept[rank], color=cmap(rank / max(1, n_cls - 1)), lw=1.5,
                    label=_class_label(record, c, newline=False), marker="." if len(rows) < 30 else None)
        ax.set_title("labeled images kept per class (% of N_c); colour: head (dark) → tail (yellow)", fontsize=10)
        ax.set_ylabel("% of the class's labeled images kept")
        ax.set_ylim(0, 105)
        ax.legend(fontsize=8, title="class (N_c)", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:  # many classes: a heat map reads better than a bundle of lines
        mesh = ax.pcolormesh(_step_edges(steps), range(n_cls + 1), kept, vmin=0, vmax=100, cmap="viridis")
        ax.set_ylim(n_cls, 0)
        _class_ticks(ax, record, order)
        ax.set_ylabel("class (labeled count)")
        ax.set_title("labeled images kept per class (% of N_c), head at the top", fontsize=10)
        fig.colorbar(mesh, ax=ax, fraction=0.04, pad=0.02).set_label("% kept")
    ulb = [r for r in rows if "kept_ulb" in r["pruning"] and r["pruning"].get("ulb_total")]
    if ulb:
        us = [r["step"] for r in ulb]
        bx.plot(us, [100 * r["pruning"]["kept_ulb"] / r["pruning"]["ulb_total"] for r in ulb], label="unlabeled kept")
        if all("rescaled_frac" in r["pruning"] for r in ulb):
            bx.plot(us, [100 * r["pruning"]["rescaled_frac"] for r in ulb], "--", label="of those: rescaled (w = 1/r)")
        bx.legend(fontsize=8, loc="lower left")
    else:
        bx.text(0.5, 0.5, "no unlabeled pruning logged", ha="center", va="center", transform=bx.transAxes)
    bx.set_title("unlabeled pool (%)", fontsize=10)
    bx.set_ylabel("% of the unlabeled pool")
    bx.set_ylim(0, 105)
    for a in (ax, bx):
        a.set_xlabel("training step")
    for a in (ax, bx) if n_cls <= 12 else (bx,):
        a.grid(alpha=0.3)
    fig.suptitle(f"{record.name}: DyTrim pruning", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)
