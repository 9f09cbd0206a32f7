"""`dytrim sweep TABLE --out DIR --collect`: the table's metric per cell from the finished runs, mean ± sample std
over seeds with n shown, missing seeds named (never averaged silently), the published number and our difference
where the table has one; written as per-seed CSV, Markdown, LaTeX, JSON and an HTML page with a figure."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dytrim.engine.metrics_log import last_stage_rows
from dytrim.fileio import atomic_write_text
from dytrim.sweep import state
from dytrim.sweep.table import Cell, Metric, Table


def _rows(run: Path) -> list[dict[str, Any]]:
    """The complete rows of a finished run's metrics.jsonl (a torn or damaged line is skipped)."""
    out = []
    try:
        text = (run / "metrics.jsonl").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def run_value(run: Path, metric: Metric) -> tuple[float | None, str]:
    """The metric of one finished run (unscaled) and the key it came from; (None, reason) when it has none."""
    summary = state.read_json(run / "summary.json")
    if summary is None:
        return None, "not finished"
    rows = last_stage_rows(_rows(run))  # a run in stages is measured by its last stage (engine/stages.py)
    for key in (metric.key, metric.fallback):
        if not key:
            continue
        if metric.stat == "full_test":
            v = _number((summary.get("full_test") or {}).get(key))
            if v is not None:
                return v, key
        series = [v for r in rows if (v := _number(r.get(key))) is not None]
        if not series:
            continue
        if metric.stat in ("last", "full_test"):  # full_test: the last evaluation used the whole test set
            return series[-1], key
        if metric.stat == "best":
            return max(series), key
        tail = series[-metric.n:]
        return sum(tail) / len(tail), key
    return None, f"no {metric.key}" + (f" or {metric.fallback}" if metric.fallback else "") + " in metrics.jsonl"


@dataclass
class Aggregate:
    values: dict[int, float]  # seed -> scaled value
    missing: list[int]
    published: float | None
    keys: set[str] = field(default_factory=set)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values.values()) if self.values else None

    @property
    def std(self) -> float | None:  # sample std (ddof = 1)
        return statistics.stdev(self.values.values()) if self.n > 1 else None

    @property
    def diff(self) -> float | None:
        return None if self.mean is None or self.published is None else self.mean - self.published


def aggregate(out: Path, table: Table) -> tuple[dict[tuple[str, str], Aggregate], list[dict[str, Any]]]:
    """(row, column) -> Aggregate, and one record per seed (for the CSV)."""
    groups: dict[tuple[str, str], Aggregate] = {}
    records = []
    for cell in table.cells:
        g = groups.setdefault((cell.row, cell.column), Aggregate({}, [], table.published.get((cell.row,
                                                                                              cell.column))))
        d = state.cell_dir(out, cell)
        value, key = run_value(d, table.metric)
        if value is None:
            g.missing.append(cell.seed)
        else:
            g.values[cell.seed] = value * table.metric.scale
            g.keys.add(key)
        records.append({"row": cell.row, "column": cell.column, "seed": cell.seed, "cell": cell.name,
                        "state": state.classify(d).state, "metric_key": key if value is not None else "",
                        "value": "" if value is None else value * table.metric.scale})
    return groups, records


def cell_text(g: Aggregate, digits: int, latex: bool = False) -> str:
    pm = r"$\pm$" if latex else "±"
    if g.mean is None:
        text = "–"
    elif g.std is None:
        text = f"{g.mean:.{digits}f}"
    else:
        text = f"{g.mean:.{digits}f} {pm} {g.std:.{digits}f}"
    info = f"n={g.n}"
    if g.missing:
        info += f"; seed{'s' if len(g.missing) > 1 else ''} {','.join(map(str, g.missing))} missing"
    text += f" ({info})"
    if g.published is not None:
        diff = "" if g.diff is None else f", {g.diff:+.{digits}f}"
        text += f" / {g.published:.{digits}f}{diff}"
    return text


def caption(table: Table) -> str:
    pub = (f" Where a number follows the slash it is the published one ({table.source}), then ours minus it."
           if table.published else "")
    return (f"{table.title}. Metric: {table.metric.describe()}; mean ± sample std (ddof 1) over seeds "
            f"{', '.join(map(str, table.seeds))}, n = seeds finished; missing seeds are named, not averaged.{pub}")


def markdown(table: Table, groups: dict[tuple[str, str], Aggregate]) -> str:
    d = table.metric.digits
    lines = [f"# {table.title}", "", caption(table), "",
             "| | " + " | ".join(table.columns) + " |", "|---|" + "---|" * len(table.columns)]
    for row in table.rows:
        lines.append(f"| {row} | " + " | ".join(cell_text(groups[(row, c)], d) for c in table.columns) + " |")
    return "\n".join(lines + _notes(table)) + "\n"


def _notes(table: Table) -> list[str]:
    out = []
    if table.missing:
        out += ["", "Not in this table (no preset yet): " + "; ".join(table.missing) + "."]
    if table.notes:
        out += ["", table.notes.strip()]
    return out


def _tex(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("&", r"\&").replace("%", r"\%").replace("_", r"\_") \
        .replace("#", r"\#").replace("γ", r"$\gamma$").replace("±", r"$\pm$")


def latex(table: Table, groups: dict[tuple[str, str], Aggregate]) -> str:
    d = table.metric.digits
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "c" * len(table.columns) + "}", r"\toprule",
             " & ".join(["", *(_tex(c) for c in table.columns)]) + r" \\", r"\midrule"]
    for row in table.rows:
        cells = [_tex(cell_text(groups[(row, c)], d)) for c in table.columns]
        lines.append(" & ".join([_tex(row), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + _tex(caption(table)) + "}",
              r"\label{tab:" + table.name + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def per_seed_csv(records: list[dict[str, Any]], metric: Metric) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["row", "column", "seed", "cell", "state", "metric_key", "value"],
                       lineterminator="\n")
    w.writeheader()
    w.writerows(records)
    return f"# metric: {metric.describe()}\n" + buf.getvalue()


def cell_figures(out: Path, table: Table, res: Path) -> list[tuple[str, str]]:
    """`dytrim report`'s figures per column: bACC / GM curves and the final per-class recall of each row's first
    finished seed; (caption, file name in `res`) of each figure written."""
    from dytrim.config import ConfigError
    from dytrim.report.plots import plot_curves, plot_recall
    from dytrim.report.runs import read_run

    figures = []
    for j, column in enumerate(table.columns):
        records = []
        for row in table.rows:
            cells = sorted((c for c in table.cells if (c.row, c.column) == (row, column)), key=lambda c: c.seed)
            done = [c for c in cells if state.classify(state.cell_dir(out, c)).state == "done"]
            try:
                records += [read_run(state.cell_dir(out, done[0]), name=f"{row} (seed {done[0].seed})")] if done else []
            except ConfigError:
                continue
        if not records:
            continue
        stem = f"{table.name}-col{j}"
        plot_curves(records, res / f"{stem}-curves.png")
        plot_recall(records, res / f"{stem}-recall.png")
        figures += [(f"{column}: bACC and GM over training (first finished seed of each row)", f"{stem}-curves.png"),
                    (f"{column}: per-class recall of the final model", f"{stem}-recall.png")]
    return figures


def html_page(table: Table, groups: dict[tuple[str, str], Aggregate], figure: str | None,
              more: list[tuple[str, str]] = ()) -> str:
    d = table.metric.digits
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "\n".join("<tr><th>" + html.escape(r) + "</th>" + "".join(
        f"<td>{html.escape(cell_text(groups[(r, c)], d))}</td>" for c in table.columns) + "</tr>" for r in table.rows)
    notes = "".join(f"<p>{html.escape(x)}</p>" for x in _notes(table) if x)
    fig = f'<p><img src="{html.escape(figure)}" alt="{html.escape(table.title)}"></p>' if figure else ""
    fig += "".join(f'<h3>{html.escape(c)}</h3><p><img src="{html.escape(f)}" alt="{html.escape(c)}"></p>'
                   for c, f in more)
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(table.title)}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px}caption{caption-side:bottom;text-align:left;"
            "padding-top:6px}</style></head><body>\n"
            f"<h1>{html.escape(table.title)}</h1>\n<table><caption>{html.escape(caption(table))}</caption>\n"
            f"<thead><tr><th></th>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>\n{fig}{notes}\n"
            "</body></html>\n")


def plot(table: Table, groups: dict[tuple[str, str], Aggregate], path: Path) -> Path | None:
    """Grouped bars (mean ± std per row, one group per column) with the published numbers as black ticks."""
    if not any(g.mean is not None for g in groups.values()):
        return None
    from dytrim.report.plots import _plt, _save, run_colours

    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(table.columns) + 1), 3.2))
    width = 0.8 / len(table.rows)
    for i, (row, colour) in enumerate(zip(table.rows, run_colours(len(table.rows)), strict=True)):
        xs = [j + (i - (len(table.rows) - 1) / 2) * width for j in range(len(table.columns))]
        gs = [groups[(row, c)] for c in table.columns]
        ax.bar(xs, [g.mean or 0 for g in gs], width, yerr=[g.std or 0 for g in gs], color=colour, label=row)
        for x, g in zip(xs, gs, strict=True):
            if g.published is not None:
                ax.plot([x - width / 2, x + width / 2], [g.published] * 2, color="black", lw=1.5)
    ax.set_xticks(range(len(table.columns)), table.columns)
    ax.set_ylabel(table.metric.describe().split(",")[0])
    ax.legend(fontsize=7)
    ax.set_title(table.title + (" (black: published)" if table.published else ""), fontsize=9)
    return _save(fig, path)


def collect(out: Path, table: Table, figure: bool = True) -> dict[str, Path]:
    """Write OUT/results/<table>.{md,tex,csv,json,html,png}; their paths by kind."""
    groups, records = aggregate(out, table)
    res = Path(out) / "results"
    res.mkdir(parents=True, exist_ok=True)
    stem = res / table.name
    paths = {k: stem.with_suffix(f".{k}") for k in ("md", "tex", "csv", "json", "html")}
    atomic_write_text(paths["md"], markdown(table, groups))
    atomic_write_text(paths["tex"], latex(table, groups))
    atomic_write_text(paths["csv"], per_seed_csv(records, table.metric))
    summary = [{"row": r, "column": c, "n": g.n, "mean": g.mean, "std": g.std, "missing_seeds": g.missing,
                "published": g.published, "diff": g.diff, "metric_keys": sorted(g.keys)}
               for (r, c), g in groups.items()]
    atomic_write_text(paths["json"], json.dumps({"metric": table.metric.describe(), "caption": caption(table),
                                                 "cells": summary}, indent=1) + "\n")
    png = plot(table, groups, stem.with_suffix(".png")) if figure else None
    if png:
        paths["png"] = png
    more = cell_figures(out, table, res) if figure else []
    paths |= {f"figure{i}": res / name for i, (_, name) in enumerate(more)}
    atomic_write_text(paths["html"], html_page(table, groups, png.name if png else None, more))
    return paths


__all__ = ["Aggregate", "Cell", "aggregate", "collect", "run_value"]
