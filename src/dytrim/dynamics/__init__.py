"""Learning-dynamics toolkit (the paper's analysis half): Δlog π(x_o) = −η·T(x_o)·K(x_o, x_b)·G(x_b).

- `ntk`: empirical NTK via torch.func (all at once or chunked under a memory budget);
- `decompose`: T, K·G, G per input group, the first-order prediction and the real SGD step (Prop. 1);
- `fixmatch_split`: one FixMatch step split into supervised and consistency terms (Prop. 2);
- `unified`: the library's debiasers driven through their hooks on one batch, side by side;
- `baseline_checks`: invariance of z(k·1) (Prop. 3) and π_θ(I) over a run (Thm. 1);
- `mnist_lt`, `mlp`, `recipes`, `mnist_figure`, `plots`, `commands`: real-data set-up, figures, CLI.
"""

from dytrim.dynamics.decompose import Decomposition, Term, decompose_step, error_vs_lr, output_sensitivity
from dytrim.dynamics.fixmatch_split import FixMatchSplit, split_fixmatch_step
from dytrim.dynamics.mlp import SmallMLP
from dytrim.dynamics.ntk import empirical_ntk, logit_jacobian, ntk_from_jacobians

__all__ = [
    "Decomposition", "Term", "decompose_step", "error_vs_lr", "output_sensitivity",
    "FixMatchSplit", "split_fixmatch_step", "SmallMLP", "empirical_ntk", "logit_jacobian", "ntk_from_jacobians",
]
