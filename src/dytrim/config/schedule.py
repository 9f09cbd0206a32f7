"""Schedule points in steps: the one rule that turns a step-valued key into a step of this run.

A schedule point (debias.start, optim.warmup_steps, darp.warm, daso.warm: STEP_KEYS) is written either as an
integer, the absolute step (3000 = from step 3000 on, whatever train.steps is), or as a float in [0, 1], a fraction
of train.steps (0.2 = after 20 % of the run). prune.anneal is a fraction only (a float, as it always was). A
fraction f resolves to the first step at or after f * train.steps, ceil(f * train.steps), computed exactly on the
decimal as written (0.2 * 15000 is 3000, not the 3000.0000000000005 of binary floats): a component that switches on
"at step >= s" behaves as one that switches on after the fraction f. Every consumer (CDMAD, DyTrim, DARP, DASO, the
LR warm-up, the plots and the report) reads its step through `step_of` / `to_step`, so a preset written as a
fraction and one written as the step it resolves to train identically.

Also here, because they read the same rule: the validation of these keys, the start-up warnings for a component
that never switches on within train.steps, the evaluation spacing of short runs, and the pinning of fractions
when a resumed run changes its length.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache
from typing import Any

from dytrim.config.schema import ConfigError, RunConfig

#: keys that are points of the schedule: an int is the absolute step, a float in [0, 1] a fraction of train.steps
STEP_KEYS = ("debias.start", "optim.warmup_steps", "darp.warm", "daso.warm")
#: a run shorter than this many default evaluation intervals evaluates at train.steps // MIN_EVALS instead
MIN_EVALS = 5


def _get(cfg: RunConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


@lru_cache(maxsize=256, typed=True)  # typed: 1 (step 1) and 1.0 (all of the run) differ
def to_step(value: int | float, total: int) -> int:
    """The step a schedule value stands for in a run of `total` steps: an int as it is, a float f in [0, 1] as
    ceil(f * total) (exact decimal arithmetic on f as written). Range checks are `check_schedule`'s."""
    if isinstance(value, bool) or not isinstance(value, float):
        return int(value)
    return math.ceil(Fraction(repr(value)) * total)


def step_of(cfg: RunConfig, key: str) -> int:
    """The step `key` resolves to in this run (see the module docstring)."""
    return to_step(_get(cfg, key), cfg.train.steps)


def describe(cfg: RunConfig, key: str) -> str:
    """`debias.start=0.2 (step 60 of train.steps=300)` or `debias.start=3000`: the value and what it resolves to."""
    value = _get(cfg, key)
    if isinstance(value, float):
        return f"{key}={value:g} (step {step_of(cfg, key)} of train.steps={cfg.train.steps})"
    return f"{key}={value}"


def check_schedule(cfg: RunConfig) -> None:
    """Range checks of the STEP_KEYS of `cfg`, each naming its key (ConfigError); prune.anneal is checked by its
    section (debias/dytrim.py)."""
    for key in STEP_KEYS:
        try:
            value = _get(cfg, key)
        except AttributeError:
            continue  # a section this config was built without
        if isinstance(value, float):
            if not 0 <= value <= 1:
                hint = f"; for step {value:g} write the integer {int(value)}" if value == int(value) else ""
                raise ConfigError(f"{key}: a float is a fraction of train.steps and must be in [0, 1]; got "
                                  f"{value:g}{hint}")
        elif value < 0:
            raise ConfigError(f"{key}: must be >= 0 (a step; or a fraction of train.steps in [0, 1]); got {value}")


def never_on(cfg: RunConfig, name: str, what: str, on_key: str, off_key: str = "") -> str | None:
    """One line when component `name` (doing `what` from step `on_key` on, until step `off_key` if given) never
    switches on within train.steps; None when it does."""
    steps = cfg.train.steps
    on = step_of(cfg, on_key)
    end, why = steps, f"train.steps={steps}"
    if off_key:
        off = to_step(_get(cfg, off_key), steps)
        if off < end:
            end, why = off, f"{off_key}={_get(cfg, off_key):g} stops it from step {off} (train.steps={steps})"
    if on < end:
        return None
    return (f"{name}: {what} would start at step {on} ({describe(cfg, on_key)}) but {why}, so it never runs in this "
            f"run; set {on_key} to a fraction of train.steps (e.g. {on_key}=0.2) or to a step below {end}")


def warmup_warning(cfg: RunConfig) -> str | None:
    """One line when the LR warm-up does not end within train.steps (the LR never reaches optim.lr)."""
    warm = step_of(cfg, "optim.warmup_steps")
    if warm < cfg.train.steps:
        return None
    return (f"optim: the LR warm-up ends at step {warm} ({describe(cfg, 'optim.warmup_steps')}) but train.steps="
            f"{cfg.train.steps}, so the LR never reaches optim.lr; set optim.warmup_steps to a fraction (e.g. 0.05)")


def adapt_eval_every(cfg: RunConfig, explicit: bool) -> str | None:
    """Short runs evaluate at least MIN_EVALS times: when train.eval_every was not set by the user (a preset's or
    the default value is a default that adapts; --set or a --config file is the user's and stays), and train.steps
    holds fewer than MIN_EVALS intervals, eval_every becomes max(1, train.steps // MIN_EVALS). Returns the note
    to print, or None when nothing changed."""
    t = cfg.train
    if explicit or t.eval_every < 1 or evaluations(t.steps, t.eval_every) >= MIN_EVALS:
        return None
    old, t.eval_every = t.eval_every, max(1, t.steps // MIN_EVALS)
    new = "at every step" if t.eval_every == 1 else f"every {t.eval_every} steps"
    return (f"train.eval_every={old} would give {evaluations(t.steps, old)} evaluation(s) in train.steps={t.steps}; "
            f"evaluating {new} instead ({evaluations(t.steps, t.eval_every)} evaluations; set train.eval_every to "
            "choose)")


def evaluations(steps: int, every: int) -> int:
    """Evaluations of a run: one every `every` steps, and one at the last step (the loop's rule)."""
    return -(-steps // every)


def pin_fractions(cfg: RunConfig, old_steps: int) -> list[str]:
    """A resumed run that changes train.steps keeps the schedule points it was trained with: each fractional
    STEP_KEY becomes the step it resolved to under the run's `old_steps` (a CDMAD already on stays on). Returns a
    note per pinned key (none for the section of a method the run does not use, pinned all the same). prune.anneal
    is not pinned: annealing follows the new length (resume.RESUMABLE)."""
    notes = []
    if cfg.train.steps == old_steps:
        return notes
    for key in STEP_KEYS:
        try:
            value = _get(cfg, key)
        except AttributeError:
            continue
        if isinstance(value, float):
            step = to_step(value, old_steps)
            section, leaf = key.rsplit(".", 1)
            setattr(_get(cfg, section), leaf, step)
            if section in ("debias", "optim") or section in cfg.debias.methods:  # silent for a method not used
                notes.append(f"{key}={value:g} stays at step {step} (its value in the run's {old_steps} steps)")
    return notes


def schedule_matches(key: str, a: Any, steps_a: int, b: Any, steps_b: int) -> bool:
    """Whether two configs' values of STEP_KEY `key` stand for the same step (a pinned fraction equals its step)."""
    return key in STEP_KEYS and to_step(a, steps_a) == to_step(b, steps_b)
