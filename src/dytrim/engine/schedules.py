"""Schedules of components: act once every K steps, or at the start of each epoch of a named length.

The schedule clock may advance by more than 1 per update (DyTrim shrinks epochs), so a schedule fires when the
clock enters a new period rather than on `step % K == 0`; what has fired is state (checkpointed by its owner).
"""

from __future__ import annotations

from typing import Any


class Periodic:
    """Fires at the first step of each period of `every` steps, from period `first` on (period p = step // every).

    `Periodic(512, first=2)` is Adsh's "before each epoch with index > 1" of 512 steps; `Periodic(10)` fires every
    10 steps from step 0 (period 0) on."""

    def __init__(self, every: int, first: int = 0) -> None:
        if every < 1:
            raise ValueError(f"a schedule period must be >= 1 step; got {every}")
        self.every, self.first = int(every), int(first)
        self.done = -1  # the last period that fired

    def due(self, step: int) -> bool:
        """True once per period reached (call it once per step, e.g. in before_step); records the firing."""
        period = step // self.every
        if period >= self.first and period > self.done:
            self.done = period
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = int(state["done"])
