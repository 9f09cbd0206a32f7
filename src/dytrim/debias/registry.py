"""The debiaser registry: components register here by name (`@COMPONENTS.register`), each beside its own config
section; `create_components` builds a run's stack in the order of debias.methods."""

from __future__ import annotations

from dytrim.config import RunConfig, register_choices, require
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Component
from dytrim.registry import Registry

COMPONENTS: Registry[Component] = Registry("debias method")
register_choices("debias.methods", COMPONENTS.names)  # the config accepts exactly the registered names


def create_components(cfg: RunConfig, ctx: RunContext) -> list[Component]:
    """Build `cfg.debias.methods` in order; each factory gets the config and the run's context."""
    return [COMPONENTS.create(name, cfg, ctx) for name in cfg.debias.methods]


def require_fixmatch(cfg: RunConfig, why: str) -> None:
    """Refuse a stack on any base but fixmatch in one line naming debias.methods; `why` says what the method
    replaces of the base's pseudo-label rule (Adsh, DARP, DASO, ACR)."""
    require(cfg.ssl.name == "fixmatch", "debias.methods",
            f"{why}, so it stacks on ssl.name=fixmatch only (got {cfg.ssl.name})")
