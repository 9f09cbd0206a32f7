"""Read a finished (or still running) run directory into one record, tolerating older runs' missing files/keys."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dytrim.config import ConfigError, read_yaml_mapping
from dytrim.engine.metrics_log import last_stage_rows, read_rows


@dataclass
class RunRecord:
    """Everything a report uses from one run directory; absent files are empty dicts / lists."""

    path: Path
    name: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    meta: dict[str, Any]
    classes: list[str]
    lb_counts: list[int] | None
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def slug(self) -> str:
        """The name as a file-name part."""
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip("-") or "run"

    def has(self, key: str) -> bool:
        """Whether any evaluation row carries `key`."""
        return any(key in r for r in self.rows)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of a scalar metric over the evaluations that carry it."""
        pairs = [(r["step"], float(r[key])) for r in self.rows if as_number(r.get(key)) is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def final(self) -> tuple[dict[str, Any], str]:
        """The final metrics (full test set when the run made one, else the last evaluation) and where from."""
        full = self.summary.get("full_test")
        if isinstance(full, dict) and "bacc" in full:
            return full, f"full test, n={full.get('eval_n', '?')}"
        last = self.rows[-1]
        return last, f"last eval, n={last.get('eval_n', '?')}"

    def head_to_tail(self) -> list[int]:
        """Class indices ordered by labeled count, largest first (index order when counts are unknown)."""
        if not self.lb_counts:
            return list(range(self.num_classes))
        return sorted(range(self.num_classes), key=lambda c: (-self.lb_counts[c], c))  # type: ignore[index]

    def gammas(self) -> str:
        """Imbalance ratios of the run's own split (max / min class count, labeled and, where the unlabeled
        labels are known, unlabeled); the config's values only when the split's counts are not recorded. Image
        folders and other own-split sources thus show what their split really is."""
        data = self.config.get("data", {}) or {}
        unl = (self.meta.get("counts") or {}).get("unlabeled")
        lb = f"γ_l={split_gamma(self.lb_counts)}" if self.lb_counts else f"γ_l={_g(data.get('imb_ratio_l'))}"
        if isinstance(unl, list) and unl and sum(unl) > 0:
            ul = f"γ_u={split_gamma(unl)}"
        else:
            ul = "γ_u=unknown" if data.get("name") == "folder" else f"γ_u={_g(data.get('imb_ratio_u'))}"
        return f"{lb}, {ul}"

    def describe(self) -> dict[str, str]:
        """Short facts for the runs table."""
        cfg = self.config
        data, train = cfg.get("data", {}) or {}, cfg.get("train", {}) or {}
        debias = (cfg.get("debias", {}) or {}).get("methods") or []
        gammas = self.gammas()
        if data.get("reverse_u"):
            gammas += " (reversed)"
        return {
            "preset": str(cfg.get("preset") or "—"),
            "data": f"{data.get('name', '?')} ({gammas})" if data else "?",
            "model": str((cfg.get("model", {}) or {}).get("name", "?")),
            "ssl": str((cfg.get("ssl", {}) or {}).get("name", "?")),
            "debias": ", ".join(debias) if debias else "none",
            "steps": str(self.summary.get("steps", self.rows[-1]["step"])),
            "planned": str(train.get("steps", "?")),
            "seed": str(cfg.get("seed", self.meta.get("seed", "?"))),
            "machine": " ".join(str(self.meta.get("machine", "?")).split()),
            "git": str(self.meta.get("git_rev") or "?")[:8],
        }


def split_gamma(counts: list[int]) -> str:
    """max / min of per-class counts, as the split has it ("inf" when a class has none)."""
    lo, hi = min(counts), max(counts)
    return "inf" if lo <= 0 else f"{hi / lo:.3g}"


def _g(value: Any) -> str:
    num = as_number(value)
    return "?" if num is None else f"{num:g}"


def as_number(value: Any) -> float | None:
    """A finite-or-inf real number as float; None for missing, NaN, bools and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _class_names(path: Path, summary: dict[str, Any], config: dict[str, Any], n: int) -> list[str]:
    """data.json, then summary.json, then the data set's known names, then the class indices."""
    for names in (_read_json(path / "data.json").get("classes"), summary.get("classes")):
        if isinstance(names, list) and len(names) == n:
            return [str(c) for c in names]
    source = str((config.get("data", {}) or {}).get("name", ""))
    from dytrim.data.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES
    from dytrim.data.mnist import FASHION_MNIST_CLASSES, MNIST_CLASSES

    known = {
        "CIFAR10": CIFAR10_CLASSES,
        "CIFAR100": CIFAR100_CLASSES,
        "MNIST": MNIST_CLASSES,
        "FASHION_MNIST": FASHION_MNIST_CLASSES,
    }.get(source.upper())
    if isinstance(known, str):
        known = known.split()
    if isinstance(known, (list, tuple)) and len(known) == n:
        return [str(c) for c in known]
    return [str(c) for c in range(n)]


def class_names(run_dir: Path, n: int) -> list[str]:
    """A run directory's class names (data.json, summary.json, its data set's known names, or indices)."""
    summary = _read_json(run_dir / "summary.json")
    config_path = run_dir / "config.yaml"
    config = read_yaml_mapping(config_path, "report") if config_path.is_file() else {}
    return _class_names(run_dir, summary, config, n)


def _labeled_counts(path: Path, meta: dict[str, Any], summary: dict[str, Any], n: int) -> list[int] | None:
    candidates = (
        (meta.get("counts") or {}).get("labeled"),
        _read_json(path / "data.json").get("lb_counts"),
        (summary.get("data") or {}).get("labeled_per_class"),
    )
    for counts in candidates:
        if isinstance(counts, list) and len(counts) == n:
            return [int(c) for c in counts]
    return None


def read_run(path: str | Path, name: str | None = None) -> RunRecord:
    """One run directory -> RunRecord. Raises ConfigError if it holds no evaluation at all."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"report: '{path}' is not a directory")
    summary = _read_json(path / "summary.json")  # before the rows: a run finishing meanwhile adds no row after it
    all_rows = read_rows(path / "metrics.jsonl")  # one snapshot, up to the last complete line (a live run appends)
    rows = [r for r in all_rows if "per_class_recall" in r]
    if not rows:
        raise ConfigError(f"report: '{path}' has no evaluations in metrics.jsonl; is it a dytrim run directory?")
    last_stage = last_stage_rows(all_rows)  # what a run's summary reads (engine/stages.py)
    stale = any(summary.get(k, v) != v for k, v in (("evaluations", len(last_stage)), ("steps", all_rows[-1]["step"])))
    if stale:  # e.g. a finished run resumed with more steps and still training: its summary.json is the old end's
        summary = {}
    config: dict[str, Any] = {}
    if (path / "config.yaml").is_file():
        config = read_yaml_mapping(path / "config.yaml", "report")
    meta = _read_json(path / "run.json")
    n = len(rows[-1]["per_class_recall"])
    record = RunRecord(
        path=path,
        name=name or str(config.get("preset") or path.name),
        config=config,
        rows=rows,
        summary=summary,
        meta=meta,
        classes=_class_names(path, summary, config, n),
        lb_counts=_labeled_counts(path, meta, summary, n),
    )
    if stale:
        record.notes.append("summary.json does not match metrics.jsonl (a resumed run still training?): "
                            "final metrics are the last evaluation's")
    elif not summary:
        record.notes.append("no summary.json (unfinished run?): final metrics are the last evaluation's")
    if not record.has("prior_baseline"):
        record.notes.append("no π_θ(I) in metrics.jsonl (the run predates the prior probe): no heat map")
    if record.lb_counts is None:
        record.notes.append("labeled counts unknown: classes kept in index order")
    return record


def read_runs(paths: list[str | Path], labels: list[str] | None = None) -> list[RunRecord]:
    """Several runs with unique names: given labels, else preset names, disambiguated by directory names."""
    if labels and len(labels) != len(paths):
        raise ConfigError(f"report: {len(labels)} --label values for {len(paths)} run directories")
    records = [read_run(p, labels[i] if labels else None) for i, p in enumerate(paths)]
    if not labels:
        _disambiguate(records)
    names = [r.name for r in records]
    if len(set(names)) != len(names):
        raise ConfigError(f"report: run names are not unique ({', '.join(names)}); pass --label per run")
    return records


def _disambiguate(records: list[RunRecord]) -> None:
    """Equal names get the shortest trailing part of their paths that tells them apart."""
    bases = [r.name for r in records]
    clashing = {b for b in bases if bases.count(b) > 1}
    for depth in range(1, 6):
        names = [
            f"{r.name} ({'/'.join(r.path.resolve().parts[-depth:])})" if r.name in clashing else r.name
            for r in records
        ]
        if len(set(names)) == len(names):
            break
    for r, name in zip(records, names, strict=True):
        r.name = name
