"""Run outputs: metrics.jsonl (one object per evaluation), summary.json, curves.png, run metadata."""

from __future__ import annotations

import json
import math
import platform
import subprocess
from pathlib import Path
from typing import Any

from dytrim.engine.metrics_log import append_row, read_rows, write_rows
from dytrim.fileio import atomic_write_bytes, atomic_write_text
from dytrim.units import DECIMALS, duration, percent, rounded

__all__ = ["append_row", "read_rows", "write_rows"]  # metrics.jsonl I/O lives in engine/metrics_log.py

SUMMARY_METRICS = ("acc", "bacc", "gm", "many", "medium", "few")


def summarize(rows: list[dict[str, Any]], wall_s: float, steps: int) -> dict[str, Any]:
    """For every metric present: last, best, and the mean and median of the last min(20, n) evaluations, with that
    count as `n_last` (a short run averages all of its evaluations, early ones included: the count says so); the
    test images of the last evaluation as `eval_n`. Fractions rounded as `units.rounded` (6 decimals, half up)."""
    out: dict[str, Any] = {}
    keys = [k for k in rows[-1] if k.split("_debiased")[0] in SUMMARY_METRICS] if rows else []
    for key in keys:
        vals = [float(r[key]) for r in rows if key in r and r[key] is not None and not math.isnan(r[key])]
        if not vals:
            continue
        tail = sorted(vals[-20:])
        mid = len(tail) // 2
        out[key] = rounded({
            "last": vals[-1],
            "best": max(vals),
            "mean_last20": sum(tail) / len(tail),
            "median_last20": tail[mid] if len(tail) % 2 else (tail[mid - 1] + tail[mid]) / 2,
        }) | {"n_last": len(tail)}
    out["steps"] = steps
    out["wall_s"] = round(wall_s, 2)
    out["evaluations"] = len(rows)
    if rows and "eval_n" in rows[-1]:
        out["eval_n"] = rows[-1]["eval_n"]
    return out


def prepare_run_dir(out: Path, config_yaml: str, meta: dict[str, Any] | None, resumed_at: int | None,
                    data: Any = None) -> None:
    """Write a run's start files, each atomically, config.yaml first, so that a start that fails part-way leaves
    either nothing or a config.yaml (`--resume` then starts the run from step 0): config.yaml (on resume with its
    allowed overrides, e.g. train.steps), run.json (`meta`; on resume only when it was missing: rebuilt), data.json
    (the data card of `data`), metrics.jsonl (a fresh run: empty; a resumed one keeps it: the loop aligns its
    rows with the checkpoint, `metrics_log.align_to_checkpoint`)."""
    from dytrim.datacard import write_card

    atomic_write_text(out / "config.yaml", config_yaml)
    if meta is not None:
        rebuilt = {} if resumed_at is None else {"rebuilt_at_step": resumed_at}
        atomic_write_text(out / "run.json", to_json(meta | rebuilt))
    if data is not None:
        write_card(out, data)
    if resumed_at is None:
        write_rows(out / "metrics.jsonl", [])


def write_summary(out: Path, rows: list[dict[str, Any]], wall_s: float, train_s: float, steps: int,
                  full_test: dict[str, Any] | None, counters: dict[str, Any]) -> dict[str, Any]:
    """summary.json of a finished run (see `summarize`), with the training time, the work counters and the final
    evaluation on the whole test set when the intermediate ones used a subset; returns it, every float rounded by
    `units.rounded` (what is printed is what is stored)."""
    summary = summarize(rows, wall_s, steps)
    summary["train_s"] = round(train_s, 2)
    summary |= counters
    if full_test is not None:
        summary["full_test"] = full_test
    summary["notes"] = (
        f"metrics of the EMA model on the test {'subset (eval_n images)' if full_test is not None else 'set'}; "
        "last = final evaluation, best = max over evaluations, mean/median_last20 = over the last min(20, n) "
        "evaluations, n_last of them" + ("; full_test = the final model on the whole test set" if full_test else "")
        + f"; fractions rounded half up to {DECIMALS} decimals"
    )
    summary = rounded(summary)
    atomic_write_text(out / "summary.json", to_json(summary))
    return summary


def to_json(obj: Any) -> str:
    """Indented JSON; tensors and arrays as lists, anything else unknown as its str."""
    return json.dumps(obj, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)) + "\n"


def run_metadata(seed: int) -> dict[str, Any]:
    """Versions, git revision and machine: stored beside the metrics for reproducibility."""
    import numpy
    import torch

    import dytrim

    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(dytrim.__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return {
        "seed": seed,
        "dytrim": dytrim.__version__,
        "git_rev": rev or None,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
    }


def format_summary(summary: dict[str, Any], out: Path | str) -> str:
    """The end-of-run table a person reads, in percent (`units.percent` of the stored values): last / best / mean
    of the last n evaluations (on the test subset where the run had one), raw and debiased where a component
    debiases predictions, the thirds; then the headline: the final model's bACC and GM on the full test set, raw
    and debiased; time and the run folder."""
    full = summary.get("full_test")
    n = next((summary[k]["n_last"] for k in ("bacc", "acc") if k in summary), 0)
    mean = f"mean of last {n} eval{'s' if n != 1 else ''}"  # min(20, evaluations): the count is in the label
    eval_n = summary.get("eval_n")
    where = ("test subset" if full else "test set") + (f" of {eval_n} images" if eval_n else "")
    title = f"EMA model, {where} (%)"
    width = max(30, len(title))
    head = f"{title:<{width}} {'last':>6} {'best':>6} {mean:>21}"
    lines = [head, "-" * len(head)]
    for key, label in (("acc", "accuracy"), ("bacc", "bACC"), ("gm", "GM"), ("acc_debiased", "accuracy, debiased"),
                       ("bacc_debiased", "bACC, debiased"), ("gm_debiased", "GM, debiased")):
        if key in summary:
            s = summary[key]
            lines.append(f"{label:<{width}} {percent(s['last']):>6} {percent(s['best']):>6} "
                         f"{percent(s['mean_last20']):>21}")
    for suffix, label in (("", "many / medium / few"), ("_debiased", "many / medium / few, debiased")):
        if all(f"{g}{suffix}" in summary for g in ("many", "medium", "few")):
            groups = " / ".join(percent(summary[f"{g}{suffix}"]["last"]) for g in ("many", "medium", "few"))
            lines.append(f"{label}: {groups} (last evaluation)")
    lines += ["", *final_table(summary)]
    lines.append(f"{summary['steps']} steps in {duration(summary['wall_s'])}; everything is in {out} "
                 f"(summary.json: fractions to {DECIMALS} decimals)")
    return "\n".join(lines)


def final_table(summary: dict[str, Any]) -> list[str]:
    """The final model on the full test set, bACC and GM, raw and (where the run debiases) debiased: the run's
    headline. From `full_test` when evaluations used a subset, else from the last evaluation (the full set)."""
    full = summary.get("full_test")
    final = full or {k: summary[k]["last"] for k in ("bacc", "gm", "bacc_debiased", "gm_debiased") if k in summary}
    if "bacc" not in final:
        return []
    eval_n = (full or summary).get("eval_n")
    title = "final EMA model, full test set" + (f" of {eval_n} images" if eval_n else "") + " (%)"
    debiased = "bacc_debiased" in final
    width = max(30, len(title))
    head = f"{title:<{width}} {'raw':>6}" + (f" {'debiased':>9}" if debiased else "")
    lines = [head, "-" * len(head)]
    for key, label in (("bacc", "bACC"), ("gm", "GM")):
        deb = f" {percent(final.get(key + '_debiased')):>9}" if debiased else ""
        lines.append(f"{label:<{width}} {percent(final.get(key)):>6}{deb}")
    return lines


def plot_curves(
    rows: list[dict[str, Any]], path: Path, title: str, classes: list[str], lb_counts: list[int],
    subset: bool = False, stages: dict[str, int] | None = None,
) -> None:
    """bACC and GM (raw and, where present, debiased) against steps, plus the last per-class recall
    with each class's full name and labeled count under its bar; `subset`: the evaluations used the test subset;
    `stages` (summary.json's, name -> steps in run order): a marker at the start of every stage after the main one."""
    if not rows:
        return
    fig = curves_figure(rows, title, classes, lb_counts, subset, stages)
    import matplotlib.pyplot as plt

    try:
        atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=110))  # a full disk names the path
    finally:
        plt.close(fig)


def stage_starts(stages: dict[str, int] | None) -> list[tuple[int, str]]:
    """(first step, name) of every stage after the main one, from summary.json's `stages` (name -> steps, in order)."""
    out, start = [], 0
    for i, (name, steps) in enumerate((stages or {}).items()):
        if i:
            out.append((start, name))
        start += int(steps)
    return out


def curves_figure(rows: list[dict[str, Any]], title: str, classes: list[str], lb_counts: list[int],
                  subset: bool = False, stages: dict[str, int] | None = None) -> Any:
    """The matplotlib Figure of `plot_curves` (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [3, 2]})
    for key, style in (("bacc", "-"), ("gm", "--"), ("bacc_debiased", "-"), ("gm_debiased", "--")):
        if key in rows[-1]:
            ax.plot(steps, [100 * r[key] for r in rows], style, label=key, marker="." if len(rows) < 40 else None)
    where = f"test subset of {rows[-1]['eval_n']} images" if subset and "eval_n" in rows[-1] else (
        "test subset" if subset else "test set")
    for start, name in stage_starts(stages):
        ax.axvline(start, color="0.4", ls=":", lw=1)
        ax.text(start, 98, f" {name}", fontsize=8, va="top", color="0.3")
    ax.set_xlabel("step")
    ax.set_ylabel(f"% (EMA model, {where})")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    recall = rows[-1]["per_class_recall"]
    bx.bar(range(len(recall)), [100 * r for r in recall], color="tab:blue")
    if len(recall) <= 20:  # full names; long ones are slanted so that neighbours do not overlap
        slant = max(map(len, classes), default=0) > 5
        labels = [f"{c} ({n})" if slant else f"{c}\n{n}" for c, n in zip(classes, lb_counts, strict=True)]
        bx.set_xticks(range(len(recall)), labels, fontsize=7, rotation=35 if slant else 0,
                      ha="right" if slant else "center", rotation_mode="anchor" if slant else "default")
    bx.set_xlabel("class (name / labeled count)")
    bx.set_ylabel("recall %")
    bx.set_ylim(0, 100)
    bx.set_title(f"per-class recall at step {steps[-1]}")
    bx.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
