"""Writing a benchmark's results: the markdown table (with the notes file appended under it) and its JSON twin
in benchmarks/results/, and the table on standard output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def write_results(name: str, lines: list[str], record: Any, notes: Path | None) -> None:
    """benchmarks/results/<name>.md (+ the notes) and <name>.json; prints the markdown."""
    if notes:
        lines = [*lines, "", notes.read_text().strip()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print("\n".join(lines))
