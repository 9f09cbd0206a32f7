"""`dytrim report DIR [DIR...]`: compare runs in report.md and report.html, with PNG figures beside them."""

from __future__ import annotations

from .render import write_report
from .runs import RunRecord, read_run, read_runs

__all__ = ["write_report", "RunRecord", "read_run", "read_runs"]
