"""Numbers for people, one rule each: how metrics are rounded where they are stored, how a stored fraction prints
as a percentage, how a duration prints.

Metrics are fractions in [0, 1]. They are rounded once, half up, to `DECIMALS` decimals where they are made (the
evaluation row, summary.json, eval.json); every print takes that stored value and rounds it half up again to
the printed digits. So a number reads the same in the end-of-run table, the progress bar, `dytrim eval` and
the report: binary noise (0.26850000000000007, or 22.85 stored as 22.8499...) cannot make two prints of one
value differ.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

#: decimals kept of a stored metric (a fraction): 1e-6 is 1e-4 percentage points, below any test set's resolution
DECIMALS = 6


def round_half_up(value: float, decimals: int = DECIMALS) -> float:
    """`value` rounded half up (away from zero) to `decimals` decimals, from its shortest repr (so 0.2285 -> 0.229
    at 3 decimals, although the double 0.2285 is a little below it). NaN and inf pass unchanged."""
    if not math.isfinite(value):
        return value
    return float(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))


def rounded(obj: Any, decimals: int = DECIMALS) -> Any:
    """A copy of a JSON-like object (dicts, lists, tuples) with every float rounded by `round_half_up`; ints,
    bools, strings and None unchanged."""
    if isinstance(obj, float):
        return round_half_up(obj, decimals)
    if isinstance(obj, dict):
        return {k: rounded(v, decimals) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [rounded(v, decimals) for v in obj]
    return obj


def percent(fraction: float | None, digits: int = 1) -> str:
    """A fraction as a percentage with `digits` decimals, rounded half up from the stored value: 0.2285 -> '22.9'.
    None -> '—'."""
    if fraction is None:
        return "—"
    if not math.isfinite(fraction):
        return str(fraction)
    pct = Decimal(repr(float(fraction))) * 100
    return str(pct.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def duration(seconds: float | None, unit: str | None = None) -> str:
    """A duration with one rule for its unit: under 2 minutes in seconds, under 2 hours in minutes, else hours.
    Seconds print whole ('75 s'; under 10 s with one decimal, '4.2 s'), minutes and hours with one decimal
    ('2.6 min', '3.1 h'). `unit` ('s', 'min' or 'h') forces the unit, e.g. one unit for a whole table column
    (`duration_unit` of its largest value). None -> '—'."""
    if seconds is None:
        return "—"
    unit = unit or duration_unit(seconds)
    if unit == "s":
        return f"{round_half_up(seconds, 1):.1f} s" if seconds < 10 else f"{round_half_up(seconds, 0):.0f} s"
    if unit == "min":
        return f"{round_half_up(seconds / 60, 1):.1f} min"
    return f"{round_half_up(seconds / 3600, 1):.1f} h"


def duration_unit(seconds: float) -> str:
    """The unit `duration` uses for this many seconds: 's' under 120, 'min' under 7200, else 'h'."""
    return "s" if seconds < 120 else "min" if seconds < 7200 else "h"
