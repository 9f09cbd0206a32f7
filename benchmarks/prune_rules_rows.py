"""The rows of the issue-17 comparison (reference DyTrim pruning rule vs the options beside it).

Each row: (label, preset, overrides). The rule keys are always given explicitly, so that a row means the
same rule whatever the preset's own default is. Used by benchmarks/prune_rules.py.
"""

from __future__ import annotations

REF = ["prune.min_keep=0", "prune.rounding=floor", "prune.max_ratio=1.0", "prune.max_prior_ratio=0.0",
       "prune.ratio_ema=0.0"]
MNIST = ["train.steps=2000", "train.eval_every=250"]


def rule(**kw: object) -> list[str]:
    """The reference rule keys with some of them changed."""
    keys = dict(x.split("=", 1) for x in REF)
    keys |= {f"prune.{k}": str(v) for k, v in kw.items()}
    return [f"{k}={v}" for k, v in keys.items()]


ROWS = {
    "mnist": [
        ("fixmatch", "mnist-lt-fixmatch", MNIST),
        ("cdmad-ones", "mnist-lt-fixmatch", [*MNIST, "debias.methods=cdmad", "debias.baseline=ones",
                                             "debias.start=400"]),
        ("cdmad-zeros", "mnist-lt-fixmatch", [*MNIST, "debias.methods=cdmad", "debias.baseline=zeros",
                                              "debias.start=400"]),
        ("dytrim-reference", "mnist-lt-dytrim", rule()),
        ("dytrim-floor1", "mnist-lt-dytrim", rule(min_keep=1)),
        ("dytrim-floor1-priorcap1", "mnist-lt-dytrim", rule(min_keep=1, max_prior_ratio=1.0)),
        ("dytrim-floor1-ema0.99", "mnist-lt-dytrim", rule(min_keep=1, ratio_ema=0.99)),
        ("dytrim-floor1-priorcap1-ema0.99", "mnist-lt-dytrim", rule(min_keep=1, max_prior_ratio=1.0,
                                                                    ratio_ema=0.99)),
        ("dytrim-no-labeled-pruning", "mnist-lt-dytrim", [*rule(), "prune.labeled=false"]),
        ("dytrim-lb-only-reference", "mnist-lt-dytrim", [*rule(), "prune.unlabeled=false"]),
        ("dytrim-lb-only-floor1-priorcap1", "mnist-lt-dytrim", [*rule(min_keep=1, max_prior_ratio=1.0),
                                                                 "prune.unlabeled=false"]),
    ],
    "cifar10lt": [
        ("dytrim-reference", "cpu-cifar10lt-dytrim", rule()),
        ("dytrim-floor1-priorcap1", "cpu-cifar10lt-dytrim", rule(min_keep=1, max_prior_ratio=1.0)),
    ],
}
