"""DyTrim's dynamic pruning: who is kept, with what weight, and how often that is decided.

- `select.py`: the two decisions, as pure functions of stored scores — class-aware hard pruning of
  labeled data (`keep_labeled`) and confidence-gated soft pruning of unlabeled data (`soft_prune`);
- `sampler.py`: a sampler that walks the current kept list and asks for a new one when it runs out;
- `plots.py`: kept-per-class over training.
The DyTrim component that wires them into the training loop is `dytrim.debias.dytrim`.
"""

from dytrim.pruning.sampler import PrunedSampler
from dytrim.pruning.select import capped_ratio, keep_count, keep_labeled, soft_prune

__all__ = ["PrunedSampler", "capped_ratio", "keep_count", "keep_labeled", "soft_prune"]
