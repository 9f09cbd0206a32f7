"""Assemble a Trainer: the run's parts, then its SSL base and debiasing components from their registries.

This is the one place that knows both the engine and the methods: `engine/` imports no method (they import its
hooks), and the CLI, the benchmarks and the tests build every run through `build_trainer`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from dytrim.config import RunConfig, schedule
from dytrim.debias import create_components
from dytrim.engine.budget import check_step_budget
from dytrim.engine.build import attach_component_heads, build_parts, run_context
from dytrim.engine.hooks import Component
from dytrim.engine.loop import Trainer
from dytrim.ssl import create_ssl


def build_trainer(
    cfg: RunConfig, out_dir: str | Path, resume: bool = False, extra_components: Sequence[Component] = ()
) -> Trainer:
    """The Trainer of `cfg` writing to `out_dir`; `extra_components` run after the configured ones (tests, tools).
    `resume=True` with a checkpoint in `out_dir`: the weights will come from it (model.pretrained is not read)."""
    parts = build_parts(cfg, Path(out_dir), resume)
    ssl = create_ssl(cfg.ssl, parts.data.num_classes, len(parts.data.ulb_idx))
    data = parts.data  # the step's memory against the memory there is, before any step (engine/budget.py)
    check_step_budget(cfg, parts.model, tuple(data.x_train.shape[1:]), len(data.lb_idx), len(data.ulb_idx),
                      ssl.uses_unlabeled, parts.device, parts.dist, parts.precision)
    ctx = run_context(parts, ssl.uses_unlabeled)
    components = create_components(cfg, ctx) + list(extra_components)
    ssl.bind(cfg, ctx, components)
    for line in _never_on(cfg, components):
        warnings.warn(line, stacklevel=2)
    attach_component_heads(parts, ctx, [*components, ssl])  # heads (ReMixMatch's too) join the model, EMA, optimiser
    return Trainer(parts, ssl, components, ctx)


def _never_on(cfg: RunConfig, components: Sequence[Component]) -> list[str]:
    """One line per part of the run that would switch on at a schedule point after train.steps (or after its own
    end), so it never runs: a component's `starts` and the LR warm-up."""
    lines = [schedule.never_on(cfg, c.name, *c.starts) for c in components if c.starts is not None]
    return [line for line in [*lines, schedule.warmup_warning(cfg)] if line]
