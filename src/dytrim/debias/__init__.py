"""Debiasing components: each acts at a few hook points of the one loop (engine/hooks.py).

Where each acts in the per-step view Δlog π = -η·T·K·G (DESIGN.md):
- logit_adjust (loss): the direction of G, by adding τ·log π to training logits;
- logit_adjust_posthoc: prediction, subtracting τ·log π;
- reweight: scales K and G per sample by class weights;
- resample: the sampling measure of labeled batches;
- cdmad: the pseudo-label target (weak logits minus the baseline image's logits) and the prediction;
- abc: an auxiliary balanced head on the features (Bernoulli-masked losses) that predicts at test;
- debiaspl: the pseudo-label target (weak logits minus τ·log of an online prior) and the strong-view logits;
- saw: scales K and G per sample by class weights from labeled counts and a memory of pseudo-labels;
- adsh: the pseudo-label target and mask together (per-class thresholds from a per-epoch whole-set pass);
- daso: the pseudo-label target and mask together (blend with prototype similarities of queued EMA features) and
  a semantic alignment loss on the strong view's features;
- acr: the pseudo-label target and mask together (an adaptive τ1 from an estimate of the unlabeled distribution,
  OR masks) and a second, logit-adjusted head with its own losses that predicts at test;
- darp: the pseudo-label target and mask together (rows of a per-sample memory refined every 10 steps so that the
  pool's class distribution matches a target);
- crest: generations as stages, each from scratch with the labeled set grown by the last one's confident picks
  (CReST+: progressively aligned weak-view probabilities), and the +LA prediction;
- cossl: a stage after the main one whose pseudo-labels and prediction come from a teacher head on EMA features,
  trained on class-balanced, feature-blended (TFE) labeled data with its own optimiser and EMA;
- crt: a stage after the main one, a fresh classifier on the frozen backbone (labeled data, mixup, class weights);
- dytrim: which samples enter (class-aware labeled pruning by π_θ(I), soft unlabeled pruning) and
  how strongly (1/r rescaling) — the sampling measure and the per-sample scale of K·G.
"""

from dytrim.debias import cdmad, dytrim, logit_adjust, resample, reweight  # noqa: F401, I001  (each registers itself)
from dytrim.debias import abc, adsh, debiaspl, saw  # noqa: F401  (baselines, registered after the originals: key order kept)
from dytrim.debias import daso  # noqa: F401  (registers itself)
from dytrim.debias import acr  # noqa: F401  (registers itself)
from dytrim.debias import darp  # noqa: F401  (registers itself)
from dytrim.debias import crt  # noqa: F401  (registers itself; a stage after the main one)
from dytrim.debias import crest  # noqa: F401  (registers itself; generations as stages)
from dytrim.debias import cossl  # noqa: F401  (registers itself; stage 2 with a teacher head of its own)
from dytrim.debias.registry import COMPONENTS, create_components

__all__ = ["COMPONENTS", "create_components"]
