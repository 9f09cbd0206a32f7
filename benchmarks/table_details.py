"""The details `dytrim sweep --collect` leaves out, per row (and column) of a swept table: bACC and GM raw and
debiased, the per-class recall (mean over seeds) and the wall time of each run, with its ratio to a reference row.

    python benchmarks/table_details.py TABLE --out SWEEP [--seeds 0,1] [--reference FixMatch] > details.md

Values come from the same place as the table's metric (the final evaluation on the whole test set where the run
has one, else its last evaluation); a seed without a finished run is named, never averaged in."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from dytrim.sweep import state
from dytrim.sweep.collect import run_value
from dytrim.sweep.table import Metric, find_table, load_table

KEYS = ("bacc", "gm", "bacc_debiased", "gm_debiased")


def _vector(run: Path, key: str) -> list[float] | None:
    """A per-class list of the final evaluation (full test where there is one)."""
    summary = state.read_json(run / "summary.json") or {}
    full = (summary.get("full_test") or {}).get(key)
    if isinstance(full, list):
        return [float(v) for v in full]
    path = run / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    series = [r[key] for r in rows if isinstance(r.get(key), list)]
    return [float(v) for v in series[-1]] if series else None


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def details(table_path: str, out: Path, seeds: list[int] | None, reference: str) -> str:
    """The Markdown of the details of every row of `table_path` swept into `out`."""
    table = load_table(find_table(table_path), seeds=seeds)  # a file, or the name of a shipped table
    rows: dict[str, dict[str, Any]] = {}
    for cell in table.cells:
        d = state.cell_dir(out, cell)
        label = cell.row if len(table.columns) == 1 else f"{cell.row} | {cell.column}"
        r = rows.setdefault(label, {k: [] for k in KEYS} | {"recall": [], "wall": [], "missing": []})
        summary = state.read_json(d / "summary.json")
        if summary is None:
            r["missing"].append(cell.seed)
            continue
        for key in KEYS:
            v, got = run_value(d, Metric(key=key, stat="full_test"))
            if v is not None and got == key:
                r[key].append(v)
        recall = _vector(d, "per_class_recall_debiased") or _vector(d, "per_class_recall")
        if recall is not None:
            r["recall"].append(recall)
        r["wall"].append(float(summary.get("wall_s", 0.0)))
    ref = statistics.fmean(rows[reference]["wall"]) if rows.get(reference, {}).get("wall") else None
    lines = ["| row | n | bACC | GM | bACC debiased | GM debiased | wall s (mean) | vs " + reference + " |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        wall = statistics.fmean(r["wall"]) if r["wall"] else None
        ratio = f"{wall / ref:.2f}" if wall and ref else "—"
        miss = f" (missing seeds {r['missing']})" if r["missing"] else ""
        cells = [_mean_std(r[k]) for k in KEYS] + [f"{wall:.0f}" if wall else "—", ratio]
        lines.append(f"| {name}{miss} | {len(r['wall'])} | " + " | ".join(cells) + " |")
    k = table_classes(rows)
    lines += ["", "Per-class recall % (debiased where the method has a debiased prediction), mean over seeds, class 0 "
              "(head) to class C-1 (tail):", "", "| row | " + " | ".join(f"c{i}" for i in range(k)) + " |",
              "|---|" + "---|" * k]
    for name, r in rows.items():
        if r["recall"]:
            mean = [100 * statistics.fmean(col) for col in zip(*r["recall"], strict=True)]
            lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in mean) + " |")
    return "\n".join(lines) + "\n"


def table_classes(rows: dict[str, dict[str, Any]]) -> int:
    return max((len(r["recall"][0]) for r in rows.values() if r["recall"]), default=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table")
    p.add_argument("--out", type=Path, required=True, help="the sweep directory")
    p.add_argument("--seeds", default="", help="comma-separated seeds instead of the table's")
    p.add_argument("--reference", default="FixMatch", help="the row whose wall time the others are divided by")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else None
    print(details(a.table, a.out, seeds, a.reference), end="")


if __name__ == "__main__":
    main()
