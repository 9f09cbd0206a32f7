"""What makes two configs one experiment: every key outside RESUMABLE is equal.

`dytrim train --resume` (dytrim/resume.py), `eval` / `predict` / `export` (a checkpoint must be of the run they read)
and checkpoint rotation (it deletes only checkpoints of the run that writes) all ask this one question; it lives
in the config package, below the engine, so that the engine can ask it too.
"""

from __future__ import annotations

from typing import Any

from dytrim.config.keys import all_keys, apply_mapping, get_key
from dytrim.config.schedule import STEP_KEYS, schedule_matches
from dytrim.config.schema import ConfigError, RunConfig

#: Keys a resumed run may change, and why each leaves the experiment as it was. Every other key changes
#: what is trained (data, split, model, method, optimiser, seed, ...) and needs a new run directory.
RESUMABLE: dict[str, str] = {
    "train.steps": "length of the run: extend (or shorten) it; a cosine LR and DyTrim's annealing follow the new "
                   "length from the current step on; a schedule point written as a fraction (debias.start, "
                   "optim.warmup_steps, darp.warm, daso.warm) keeps the step it had (config/schedule.py pin_fractions)",
    "train.eval_every": "evaluation cadence (evaluation reads the EMA model and changes no training state)",
    "train.ckpt_every": "checkpoint cadence",
    "train.keep_ckpts": "how many checkpoints are kept",
    "train.eval_batch_size": "evaluation batch size",
    "train.threads": "CPU threads (same computation; float sums may differ in the last bits)",
    "train.progress": "progress bar on or off",
    "train.tensorboard": "TensorBoard event files beside metrics.jsonl (logging only)",
    "train.deterministic": "CUDA kernel choice (deterministic or fastest); the same computation",
    "train.compile": "torch.compile of the same forward (same computation; float sums may differ in the last bits)",
    "train.device": "another device of the same type (cuda:0 -> cuda:1); a CPU <-> GPU change is refused when the "
                    "checkpoint loads (their augmentation random streams differ)",
    "data.root": "where the data files are now; their sha256 must equal the ones in run.json",
    "data.cache_dir": "where decoded image folders are cached",
}


def flat(cfg: RunConfig) -> dict[str, Any]:
    """Every dotted key of `cfg` with its value."""
    return {k: get_key(cfg, k) for k in all_keys(cfg)}


def stored_config(saved: dict[str, Any]) -> RunConfig:
    """A config as a checkpoint stores it (`RunConfig.to_dict()`), read back; ConfigError if this dytrim cannot."""
    cfg = RunConfig()
    apply_mapping(cfg, saved)
    return cfg


def differences(cfg: RunConfig, saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value in `cfg`, value in `saved`) for every key outside RESUMABLE where the two differ; empty when
    `saved` (a stored config dict) is the same experiment. ConfigError when `saved` cannot be read."""
    stored = stored_config(saved)
    mine, theirs = flat(cfg), flat(stored)
    return [(k, v, theirs[k]) for k, v in mine.items() if k not in RESUMABLE and theirs[k] != v
            and not _pinned(k, v, cfg.train.steps, theirs[k], stored.train.steps)]


def _pinned(key: str, mine: Any, steps: int, theirs: Any, their_steps: int) -> bool:
    """A schedule point that is the same step in both: a fraction pinned to its step on an earlier resume."""
    return key in STEP_KEYS and schedule_matches(key, mine, steps, theirs, their_steps)


def same_experiment(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two stored config dicts are one experiment (False when either cannot be read)."""
    try:
        return not differences(stored_config(a), b)
    except (ConfigError, TypeError, AttributeError):
        return False
