"""The one did-you-mean helper: every "unknown name" message (keys, presets, registries) suggests the same way."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, known: Iterable[str], cutoff: float = 0.6) -> str:
    """" Did you mean 'a', 'b'?" for the closest known names, or "" when none is close."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=cutoff)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
