"""Clean stops: SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) become a request that the loop
honours at the next step boundary, after writing a checkpoint; a second Ctrl-C quits at once.

SIGUSR1 and SIGUSR2 are the warning signals schedulers send before a time limit or a preemption (Slurm's
`--signal`, submitit's default USR2; Slurm delivers them to every process of the job step, the trainer included):
their default action would kill the run without a checkpoint, so they stop it like SIGTERM, with exit 143."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)
WARNINGS = tuple(getattr(signal, n) for n in ("SIGUSR1", "SIGUSR2") if hasattr(signal, n))  # -> as SIGTERM


class Stopped(Exception):
    """Training stopped on a signal after checkpointing step `step`; `exit_code` is 128 + the signal."""

    def __init__(self, step: int, signum: int) -> None:
        super().__init__(f"stopped at step {step}")
        self.step, self.signum = step, signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


class StopRequest:
    """Context manager: while inside, SIGTERM / SIGINT set `signum` instead of killing the process.

    Handlers can only be installed from the main thread; elsewhere (e.g. a test runner thread) this is inert."""

    def __init__(self, announce: bool = True) -> None:
        self.signum: int | None = None
        self.announce = announce
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: do not wait for the step
        name = signal.Signals(signum).name
        self.signum = signal.SIGTERM if signum in WARNINGS else signum
        if self.announce:
            print(f"\ndytrim: {name} received; stopping after this step with a checkpoint "
                  "(Ctrl-C again to quit without one)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS + WARNINGS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
