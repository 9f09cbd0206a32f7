"""Debiasing components: each acts at a few hook points of the one loop (engine/hooks.py).

Where each acts in the per-step view Δlog π = -η·T·K·G (DESIGN.md):
- logit_adjust (loss): the direction of G, by adding τ·log π to training logits;
- logit_adjust_posthoc: prediction, subtracting τ·log π;
- reweight: scales K and G per sample by class weights;
- resample: the sampling measure of labeled batches;
- cdmad: the pseudo-label target (weak logits minus the baseline image's logits) and the prediction;
- dytrim: which samples enter (class-aware labeled pruning by π_θ(I), soft unlabeled pruning) and
  how strongly (1/r rescaling) — the sampling measure and the per-sample scale of K·G.
"""

from __future__ import annotations

from dytrim.config import RunConfig, register_choices
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Component
from dytrim.registry import Registry

COMPONENTS: Registry[Component] = Registry("debias method")
register_choices("debias.methods", COMPONENTS.names)  # the config accepts exactly the registered names


def create_components(cfg: RunConfig, ctx: RunContext) -> list[Component]:
    """Build `cfg.debias.methods` in order; each factory gets the config and the run's context."""
    return [COMPONENTS.create(name, cfg, ctx) for name in cfg.debias.methods]


from dytrim.debias import cdmad as _cdmad  # noqa: E402,F401  (registers the components)
from dytrim.debias import dytrim as _dytrim  # noqa: E402,F401
from dytrim.debias import logit_adjust as _logit_adjust  # noqa: E402,F401
from dytrim.debias import resample as _resample  # noqa: E402,F401
from dytrim.debias import reweight as _reweight  # noqa: E402,F401

__all__ = ["COMPONENTS", "create_components"]
