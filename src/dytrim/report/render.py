"""Assemble the report: draw the figures, build the tables, write report.md and report.html side by side."""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass
from pathlib import Path

from dytrim.config import ConfigError

from . import plots
from .runs import RunRecord, read_runs
from .table import LAST_N, Table, comparison_table, runs_table, updates


@dataclass
class Figure:
    file: str
    title: str
    caption: str


TABLE_LEGEND = (
    f"**final**: the EMA model after the last step, on the full test set where the run made that evaluation "
    f"(else its last evaluation; see *final on*). **last-{LAST_N}**: mean over the last {LAST_N} evaluations "
    "during training (on the test subset where the run evaluated on one, data.eval_subset); *(of n)*: a run with "
    "fewer, averaged over its n (a column whose runs average different numbers of evaluations marks no best). "
    "Numbers are %. **deb.**: debiased predictions (logits minus the solid-colour image's logits, CDMAD / DyTrim); "
    "— where the run has none. Bold: best of the column."
)


def _figures(records: list[RunRecord], out: Path) -> tuple[list[Figure], list[str]]:
    figures = [Figure(plots.plot_curves(records, out / "curves.png").name, "bACC and GM over training",
                      "All runs on one figure, one colour per run: solid = raw predictions, dashed = debiased.")]
    notes = []
    same = [r for r in records if r.classes == records[0].classes]
    if len(same) < len(records):
        skipped = ", ".join(r.name for r in records if r not in same)
        notes.append(f"per-class recall: {skipped} left out (its classes differ from {records[0].name}'s)")
    figures.append(Figure(plots.plot_recall(same, out / "recall.png").name, "Per-class recall, head to tail",
                          "The final model of each run; classes sorted by labeled count (under each name). "
                          "Hatched, lighter bars: debiased predictions."))
    for r in records:
        path = plots.plot_prior(r, out / f"prior-{r.slug}.png")
        if path:
            figures.append(Figure(path.name, f"π_θ(I) over training: {r.name}",
                                  "The class distribution the network predicts for a solid-colour image: a probe of "
                                  "its class bias. Rows: classes, head at the top; columns: evaluations. A bias "
                                  "towards the head shows as bright upper rows; the strip on the right is the "
                                  "labeled class prior N_c / N on the same colour scale."))
    pruned = False
    for r in records:
        path = plots.plot_pruning(r, out / f"pruning-{r.slug}.png")
        if path:
            pruned = True
            figures.append(Figure(path.name, f"Pruning over training: {r.name}",
                                  "Left: share of each class's labeled images DyTrim keeps (dark = head, light = "
                                  "tail). Right: share of the unlabeled pool kept, and of those the share whose "
                                  "loss is rescaled."))
    if not pruned:
        notes.append("no run logs DyTrim pruning (`pruning` in metrics.jsonl), so there is no pruning figure")
    return figures, notes


def _notes(records: list[RunRecord]) -> list[str]:
    notes = [f"{r.name}: {n}" for r in records for n in r.notes]
    if any(updates(r)[1] for r in records):
        notes.append("updates marked † are the step count: the run predates the update counter (without pruning "
                     "every step is one update)")
    return notes


def _markdown(title: str, records: list[RunRecord], runs: Table, comparison: Table, figures: list[Figure],
              notes: list[str]) -> str:
    parts = [f"# {title}", "", f"Generated {dt.date.today().isoformat()} by `dytrim report` from {len(records)} "
             "run(s).", "", "## Comparison", "", comparison.markdown(), "", TABLE_LEGEND, "", "## Runs", "",
             runs.markdown(), "", "## Figures", ""]
    for f in figures:
        parts += [f"### {f.title}", "", f"![{f.title}]({f.file})", "", f.caption, ""]
    if notes:
        parts += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(parts)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; } .legend { font-size: 0.85em; color: #444; }
"""


def _inline_md(text: str) -> str:
    """The two bits of Markdown the legend uses (**bold**, *italic*) as HTML."""
    out, bold, italic, i = [], False, False, 0
    text = html.escape(text)
    while i < len(text):
        if text.startswith("**", i):
            out.append("</b>" if bold else "<b>")
            bold, i = not bold, i + 2
        elif text[i] == "*":
            out.append("</i>" if italic else "<i>")
            italic, i = not italic, i + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _html(title: str, records: list[RunRecord], runs: Table, comparison: Table, figures: list[Figure],
          notes: list[str]) -> str:
    e = html.escape
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
        f"<style>{STYLE}</style></head><body>", f"<h1>{e(title)}</h1>",
        f"<p>Generated {dt.date.today().isoformat()} by <code>dytrim report</code> from {len(records)} run(s).</p>",
        "<h2>Comparison</h2>", comparison.html(), f'<p class="legend">{_inline_md(TABLE_LEGEND)}</p>',
        "<h2>Runs</h2>", runs.html(), "<h2>Figures</h2>",
    ]
    for f in figures:
        parts.append(f'<figure><img src="{e(f.file)}" alt="{e(f.title)}">'
                     f"<figcaption><b>{e(f.title)}.</b> {e(f.caption)}</figcaption></figure>")
    if notes:
        parts += ["<h2>Notes</h2>", "<ul>", *[f"<li>{e(n)}</li>" for n in notes], "</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(
    run_dirs: list[str | Path], out_dir: str | Path, labels: list[str] | None = None, title: str | None = None
) -> list[Path]:
    """Write report.md, report.html and the PNGs into out_dir; returns every file written."""
    if not run_dirs:
        raise ConfigError("report: give at least one run directory")
    records = read_runs(list(run_dirs), labels)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"report: cannot create '{out}' ({exc.strerror})") from exc
    title = title or "dytrim report: " + ", ".join(r.name for r in records)
    figures, figure_notes = _figures(records, out)
    comparison, runs = comparison_table(records), runs_table(records)
    notes = _notes(records) + figure_notes
    (out / "report.md").write_text(_markdown(title, records, runs, comparison, figures, notes), encoding="utf-8")
    (out / "report.html").write_text(_html(title, records, runs, comparison, figures, notes), encoding="utf-8")
    return [out / "report.md", out / "report.html", *(out / f.file for f in figures)]
