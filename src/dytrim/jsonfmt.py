"""JSON for people: one key per line, with flat lists and flat objects kept on one line (still valid JSON), and
real characters (γ, Δlog π) rather than \\u escapes."""

from __future__ import annotations

import json
from typing import Any


def _nested(obj: Any) -> bool:
    values = obj.values() if isinstance(obj, dict) else obj
    return any(isinstance(v, (dict, list)) and v for v in values)


def compact_json(obj: Any, level: int = 0) -> str:
    """Like json.dumps(obj, indent=1), but a list or object holding no non-empty container is one line."""
    if not isinstance(obj, (dict, list)) or not _nested(obj):
        return json.dumps(obj, ensure_ascii=False)
    pad, end = " " * (level + 1), " " * level
    if isinstance(obj, dict):
        body = ",\n".join(f"{pad}{json.dumps(str(k), ensure_ascii=False)}: {compact_json(v, level + 1)}"
                           for k, v in obj.items())
        return "{\n" + body + "\n" + end + "}"
    return "[\n" + ",\n".join(pad + compact_json(v, level + 1) for v in obj) + "\n" + end + "]"
