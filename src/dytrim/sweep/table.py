"""Table files: rows (a preset + overrides) x columns (overrides) x seeds -> cells, with the metric named.

A table file is plain YAML (read by `read_table_yaml`, the one place it is parsed):

    name: cifar10lt-main                  # defaults to the file name
    title: CIFAR-10-LT, gamma_l = gamma_u
    metric: {key: bacc_debiased, fallback: bacc, stat: mean_last, n: 20, scale: 100, digits: 1}
    seeds: [0, 1, 2]
    set: {train.progress: false}          # optional: overrides for every cell
    source: "paper Table 1"               # where the published numbers come from
    rows:
      - {name: FixMatch, preset: paper-cifar10lt-fixmatch, published: {"γ=100": 71.5}}
    columns:
      - {name: "γ=100", set: {data.imb_ratio_l: 100, data.imb_ratio_u: 100}}
    missing: ["FlexMatch: no paper-cifar10lt-flexmatch preset"]   # optional notes on cells not in the table

Every unknown preset, key or value is refused before anything runs: one line naming the file, the line and the key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dytrim.config import ConfigError, RunConfig, all_keys, list_presets, load_config
from dytrim.resume import RESUMABLE
from dytrim.suggest import did_you_mean

TABLE_KEYS = ("name", "title", "metric", "seeds", "set", "source", "rows", "columns", "missing", "notes")
ROW_KEYS = ("name", "preset", "set", "published")
COLUMN_KEYS = ("name", "set")
METRIC_KEYS = ("key", "fallback", "stat", "n", "scale", "digits")
#: last = the last evaluation in metrics.jsonl; best = the highest evaluation; mean_last = the mean of the last n
#: evaluations; full_test = the final evaluation on the whole test set (summary.json; the last one where the
#: intermediate evaluations used the whole test set anyway)
STATS = ("last", "best", "mean_last", "full_test")


#: resumable keys that still name a different cell: a resume may extend a run, but a table that asks another length
#: asks another experiment
LENGTH_KEYS = ("train.steps",)


class TableError(ConfigError):
    """A table file that cannot be expanded (exit 2): the message names the file, the line and the key."""


def read_table_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """The table's data (plain YAML only: safe_load, no tags constructed) and its node tree (for line numbers).
    The one parse of a table file, so that a bounded reader can replace it here."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(f"table: cannot read '{path}' ({getattr(exc, 'strerror', None) or exc})") from exc
    try:
        return yaml.safe_load(text), yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}" if mark else ""
        raise TableError(f"{path}{where}: {exc.problem or exc.context or 'invalid YAML'}") from exc
    except yaml.YAMLError as exc:
        raise TableError(f"{path}: not valid YAML ({exc})") from exc


@dataclass(frozen=True)
class Metric:
    key: str
    stat: str
    n: int = 20
    fallback: str | None = None
    scale: float = 100.0
    digits: int = 1

    def describe(self) -> str:
        what = {"last": "last evaluation", "best": "best evaluation", "full_test": "final evaluation on the whole "
                "test set", "mean_last": f"mean of the last {self.n} evaluations"}[self.stat]
        key = self.key + (f" ({self.fallback} where a run has no {self.key})" if self.fallback else "")
        unit = " (%)" if self.scale == 100 else (f" (x{self.scale:g})" if self.scale != 1 else "")
        return f"{key}{unit}, {what}, EMA model"


@dataclass(frozen=True)
class Cell:
    """One run of the table: (row, column, seed) -> a preset, its overrides and a fixed directory name."""

    row: str
    column: str
    seed: int
    preset: str
    overrides: tuple[tuple[str, str], ...]  # (key, value text), sorted by key

    @property
    def identity(self) -> dict[str, Any]:
        """What the experiment is: preset, seed, and the overrides that change what is trained (keys that --resume
        may change, such as data.root or train.threads, leave the cell where it is; train.steps does not: a table's
        800- and 2,000-step runs are two experiments, the LR schedule and annealing follow the length)."""
        kept = {k: v for k, v in self.overrides if k not in RESUMABLE or k in LENGTH_KEYS}
        return {"preset": self.preset, "seed": self.seed, "set": kept}

    @property
    def cell_id(self) -> str:
        text = json.dumps(self.identity, sort_keys=True, ensure_ascii=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    @property
    def name(self) -> str:
        return f"{self.preset}-s{self.seed}-{self.cell_id}"

    def set_args(self) -> list[str]:
        """`--set KEY=VALUE` arguments of a fresh `dytrim train`, the seed included."""
        return [x for k, v in (*self.overrides, ("seed", str(self.seed))) for x in ("--set", f"{k}={v}")]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.cell_id, "row": self.row, "column": self.column, "seed": self.seed,
                "preset": self.preset, "set": dict(self.overrides)}


@dataclass
class Table:
    name: str
    title: str
    path: Path
    metric: Metric
    seeds: list[int]
    rows: list[str]
    columns: list[str]
    cells: list[Cell]
    published: dict[tuple[str, str], float] = field(default_factory=dict)
    source: str = ""
    missing: list[str] = field(default_factory=list)
    notes: str = ""


def value_text(value: Any) -> str:
    """An override value as `--set` reads it: true/false, lists comma-joined, numbers as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(value_text(v) for v in value)
    return "null" if value is None else str(value)


class _Lines:
    """Line numbers of keys in the table's node tree: line(("rows", 2, "preset")) -> 14."""

    def __init__(self, path: Path, root: yaml.Node | None) -> None:
        self.path, self.root = path, root

    def line(self, where: tuple[Any, ...]) -> int:
        node, line = self.root, 1
        for part in where:
            if isinstance(node, yaml.MappingNode):
                hit = next(((k, v) for k, v in node.value if k.value == part), None)
                if hit is None:
                    break
                line, node = hit[0].start_mark.line + 1, hit[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def error(self, where: tuple[Any, ...], message: str) -> TableError:
        return TableError(f"{self.path}:{self.line(where)}: {message}")


def _mapping(obj: Any, allowed: tuple[str, ...], lines: _Lines, where: tuple[Any, ...], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise lines.error(where, f"{what} must be a mapping (key: value lines), not {type(obj).__name__}")
    for key in obj:
        if key not in allowed:
            raise lines.error((*where, key), f"unknown key '{key}' in {what}.{did_you_mean(str(key), allowed)} "
                              f"Allowed: {', '.join(allowed)}")
    return obj


def _overrides(obj: Any, lines: _Lines, where: tuple[Any, ...], known: set[str]) -> dict[str, str]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise lines.error(where, "set must be a mapping of config keys (key: value)")
    for key in obj:
        if key not in known or key == "seed":
            hint = " (seeds come from the table's seeds list)" if key == "seed" else did_you_mean(str(key), known)
            raise lines.error((*where, key), f"unknown config key '{key}'.{hint} `dytrim presets --keys` lists them")
    return {k: value_text(v) for k, v in obj.items()}


def _metric(obj: Any, lines: _Lines) -> Metric:
    if obj is None:
        raise lines.error((), "the table names no metric: add e.g. metric: {key: bacc, stat: last} (stat: "
                          f"{', '.join(STATS)}; never implied)")
    m = _mapping(obj, METRIC_KEYS, lines, ("metric",), "metric")
    for need in ("key", "stat"):
        if need not in m:
            raise lines.error(("metric",), f"metric needs '{need}' (stat: {', '.join(STATS)})")
    if m["stat"] not in STATS:
        raise lines.error(("metric", "stat"), f"unknown metric stat '{m['stat']}'; one of {', '.join(STATS)}")
    try:
        return Metric(key=str(m["key"]), stat=m["stat"], n=int(m.get("n", 20)), fallback=m.get("fallback"),
                      scale=float(m.get("scale", 100.0)), digits=int(m.get("digits", 1)))
    except (TypeError, ValueError) as exc:
        raise lines.error(("metric",), f"metric: {exc}") from exc


def _entries(raw: dict[str, Any], key: str, allowed: tuple[str, ...], lines: _Lines) -> list[dict[str, Any]]:
    items = raw.get(key)
    if not isinstance(items, list) or not items:
        raise lines.error((key,), f"'{key}' must be a non-empty list of mappings (- name: ...)")
    out = []
    for i, item in enumerate(items):
        entry = _mapping(item, allowed, lines, (key, i), f"{key}[{i}]")
        if "name" not in entry:
            raise lines.error((key, i), f"{key}[{i}] needs a name")
        out.append(entry)
    names = [str(e["name"]) for e in out]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise lines.error((key,), f"{key} named twice: {', '.join(dup)}")
    return out


def _origin(message: str, i: int, j: int, row_set: dict[str, str], col_set: dict[str, str],
            common: dict[str, str]) -> tuple[Any, ...]:
    """Where in the file the key a config error names was set (the column wins over the row, as when merged)."""
    for key in sorted(col_set | row_set | common, key=len, reverse=True):
        if f"'{key}'" in message or f" {key} " in message or f" {key}=" in message:
            if key in col_set:
                return ("columns", j, "set", key)
            if key in row_set:
                return ("rows", i, "set", key)
            return ("set", key)
    return ("rows", i)


def load_table(path: str | Path, extra: list[str] | None = None, seeds: list[int] | None = None) -> Table:
    """Read, check and expand a table file. `extra` = `--set KEY=VALUE` texts for every cell (after the table's);
    `seeds` replaces the table's seeds. Every cell's config is resolved (and so checked) here, before any run."""
    path = Path(path)
    raw, root = read_table_yaml(path)
    lines = _Lines(path, root)
    raw = _mapping(raw, TABLE_KEYS, lines, (), "the table")
    known = set(all_keys(RunConfig()))
    metric = _metric(raw.get("metric"), lines)
    table_seeds = raw.get("seeds", [0])
    if not isinstance(table_seeds, list) or not table_seeds or not all(isinstance(s, int) for s in table_seeds):
        raise lines.error(("seeds",), "seeds must be a non-empty list of integers, e.g. [0, 1, 2]")
    common = _overrides(raw.get("set"), lines, ("set",), known)
    for text in extra or []:
        key, sep, value = text.partition("=")
        if not sep or key.strip() not in known:
            raise TableError(f"--set {text}: unknown config key '{key.strip()}'.{did_you_mean(key.strip(), known)}")
        common[key.strip()] = value.strip()
    presets = list_presets()
    rows = _entries(raw, "rows", ROW_KEYS, lines)
    cols = _entries(raw, "columns", COLUMN_KEYS, lines)
    col_names = [str(c["name"]) for c in cols]
    col_sets = [_overrides(c.get("set"), lines, ("columns", j, "set"), known) for j, c in enumerate(cols)]
    published: dict[tuple[str, str], float] = {}
    cells: list[Cell] = []
    for i, row in enumerate(rows):
        preset = row.get("preset")
        if preset not in presets:
            hint = did_you_mean(str(preset), presets)
            raise lines.error(("rows", i, "preset"), f"unknown preset '{preset}' in row '{row['name']}'.{hint} "
                              "`dytrim presets` lists them")
        row_set = _overrides(row.get("set"), lines, ("rows", i, "set"), known)
        pub = row.get("published") or {}
        if not isinstance(pub, dict):
            raise lines.error(("rows", i, "published"), "published must map column names to numbers")
        for col, value in pub.items():
            if str(col) not in col_names:
                raise lines.error(("rows", i, "published", col), f"published: unknown column '{col}'."
                                  f"{did_you_mean(str(col), col_names)} Columns: {', '.join(col_names)}")
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise lines.error(("rows", i, "published", col), f"published '{col}' must be a number")
            published[(str(row["name"]), str(col))] = float(value)
        for j, col in enumerate(col_names):
            merged = common | row_set | col_sets[j]
            try:
                load_config(preset, [f"{k}={v}" for k, v in merged.items()])
            except ConfigError as exc:
                raise lines.error(_origin(str(exc), i, j, row_set, col_sets[j], common),
                                  f"row '{row['name']}', column '{col}': {exc}") from None
            for seed in (seeds if seeds is not None else table_seeds):
                cells.append(Cell(str(row["name"]), col, int(seed), preset, tuple(sorted(merged.items()))))
    names = [c.name for c in cells]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise lines.error(("rows",), f"two cells are the same experiment ({dup[0]}): rows or columns repeat")
    return Table(name=str(raw.get("name") or path.stem), title=str(raw.get("title") or raw.get("name") or path.stem),
                 path=path, metric=metric, seeds=list(seeds if seeds is not None else table_seeds),
                 rows=[str(r["name"]) for r in rows], columns=col_names, cells=cells, published=published,
                 source=str(raw.get("source") or ""), missing=[str(m) for m in raw.get("missing") or []],
                 notes=str(raw.get("notes") or ""))


def shipped_tables() -> dict[str, Path]:
    """Table files shipped in dytrim/tables, by name (`dytrim sweep --list`)."""
    folder = resources.files("dytrim") / "tables"
    return {p.name[: -len(".yaml")]: Path(str(p)) for p in sorted(folder.iterdir(), key=lambda p: p.name)
            if p.name.endswith(".yaml")}


def find_table(name_or_path: str) -> Path:
    """A table file path, or the name of a shipped table."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    shipped = shipped_tables()
    if name_or_path in shipped:
        return shipped[name_or_path]
    raise TableError(f"table: no file '{name_or_path}' and no shipped table of that name."
                     f"{did_you_mean(name_or_path, shipped)} `dytrim sweep --list` lists them")
