"""The comparison table (final and mean-of-last-20 bACC/GM, raw and debiased, wall time, updates) and the runs
table, as cells that render to both Markdown and HTML; the best value of each metric column is bold."""

from __future__ import annotations

import html
from dataclasses import dataclass

from dytrim.units import duration, duration_unit, percent, round_half_up

from .runs import RunRecord, as_number

METRICS = (("bacc", "bACC"), ("gm", "GM"), ("bacc_debiased", "bACC deb."), ("gm_debiased", "GM deb."))
LAST_N = 20


@dataclass
class Table:
    """Header, rows of text cells, and which cells are the best of their column (rendered bold)."""

    header: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]]

    def markdown(self) -> str:
        def cell(i: int, j: int, text: str) -> str:
            return f"**{text}**" if (i, j) in self.bold else text

        lines = ["| " + " | ".join(self.header) + " |", "|" + "|".join("---" for _ in self.header) + "|"]
        lines += ["| " + " | ".join(cell(i, j, t) for j, t in enumerate(row)) + " |" for i, row in enumerate(self.rows)]
        return "\n".join(lines)

    def html(self) -> str:
        def cell(i: int, j: int, text: str) -> str:
            body = html.escape(text)
            return f"<td><b>{body}</b></td>" if (i, j) in self.bold else f"<td>{body}</td>"

        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "\n".join(
            "<tr>" + "".join(cell(i, j, t) for j, t in enumerate(row)) + "</tr>" for i, row in enumerate(self.rows)
        )
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def mean_last(record: RunRecord, key: str, n: int = LAST_N) -> float | None:
    """Mean of the last n evaluations of a metric (None if the run never logged it): summary.json's stored value
    when it averages the same evaluations (so the report prints what the run printed), else computed and rounded
    by the same rule (`units.round_half_up`)."""
    _, values = record.series(key)
    if not values:
        return None
    stored = record.summary.get(key)
    if isinstance(stored, dict) and stored.get("n_last") == min(n, len(values)):
        mean = as_number(stored.get("mean_last20"))
        if mean is not None:
            return mean
    return round_half_up(sum(values[-n:]) / len(values[-n:]))


def count_last(record: RunRecord, key: str, n: int = LAST_N) -> int:
    """How many evaluations `mean_last` averages: min(n, evaluations that logged the metric)."""
    return min(n, len(record.series(key)[1]))


def updates(record: RunRecord) -> tuple[int | None, bool]:
    """Optimizer updates, and whether they were inferred from the step count (runs before the counter)."""
    for source in (record.summary, record.rows[-1], record.rows[-1].get("pruning") or {}):
        num = as_number(source.get("updates"))
        if num is not None:
            return int(num), False
    steps = as_number(record.summary.get("steps", record.rows[-1]["step"]))
    return (int(steps), True) if steps is not None else (None, True)


def wall_seconds(record: RunRecord) -> float | None:
    return as_number(record.summary.get("wall_s", record.rows[-1].get("wall_s")))


def comparison_table(records: list[RunRecord]) -> Table:
    """One row per run: the final model's metrics, the mean of the last 20 evaluations ("(of n)" when a run has
    fewer; such a column marks no best), wall time, updates."""
    header = ["run", "final on"]
    header += [f"final {label}" for _, label in METRICS] + [f"last-{LAST_N} {label}" for _, label in METRICS]
    header += ["wall time", "updates"]
    values: list[list[float | None]] = []
    rows = []
    covered: list[list[int]] = []  # per run: evaluations behind each last-n mean
    walls = [w for r in records if (w := wall_seconds(r)) is not None]
    unit = duration_unit(max(walls)) if walls else None  # one unit for the whole column: times compare at a glance
    for r in records:
        final, where = r.final()
        nums = [as_number(final.get(k)) for k, _ in METRICS] + [mean_last(r, k) for k, _ in METRICS]
        values.append(nums)
        covered.append([count_last(r, k) for k, _ in METRICS])
        count, inferred = updates(r)
        wall = duration(wall_seconds(r), unit)
        done = "—" if count is None else f"{count}{'†' if inferred else ''}"
        means = [percent(v) + (f" (of {n})" if v is not None and n < LAST_N else "")
                 for v, n in zip(nums[len(METRICS):], covered[-1], strict=True)]
        rows.append([r.name, where, *map(percent, nums[:len(METRICS)]), *means, wall, done])
    bold: set[tuple[int, int]] = set()
    for j in range(len(METRICS) * 2):
        column = [v[j] for v in values]
        present = [v for v in column if v is not None]
        if j >= len(METRICS) and len({c[j - len(METRICS)] for c, v in zip(covered, column, strict=True)
                                      if v is not None}) > 1:
            continue  # means of different numbers of evaluations: no best to mark
        if len(present) > 1:
            best = max(present)
            bold |= {(i, j + 2) for i, v in enumerate(column) if v is not None and percent(v) == percent(best)}
    return Table(header, rows, bold)


def runs_table(records: list[RunRecord]) -> Table:
    """What each run is: preset, data, model, method, length, seed, machine and code revision."""
    header = ["run", "directory", "data", "model", "SSL", "debias", "steps (planned)", "evals", "seed", "machine"]
    header.append("git")
    rows = []
    for r in records:
        d = r.describe()
        rows.append([
            r.name, str(r.path), d["data"], d["model"], d["ssl"], d["debias"], f"{d['steps']} ({d['planned']})",
            str(len(r.rows)), d["seed"], d["machine"], d["git"],
        ])
    return Table(header, rows, set())
