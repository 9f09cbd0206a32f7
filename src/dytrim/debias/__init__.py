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

from dytrim.debias import cdmad, dytrim, logit_adjust, resample, reweight  # noqa: F401  (each registers itself)
from dytrim.debias.registry import COMPONENTS, create_components

__all__ = ["COMPONENTS", "create_components"]
