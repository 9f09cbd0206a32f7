"""One run directory, one experiment: what `dytrim train --resume` may change, and the checks that refuse
the rest before anything in the directory is written."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from dytrim.config import (
    ConfigError,
    RunConfig,
    all_keys,
    apply_mapping,
    config_from_dict,
    get_key,
    parse_override,
    read_yaml_mapping,
    schedule,
    set_key,
    validate,
)

#: Keys a resumed run may change, and why each leaves the experiment as it was. Every other key changes
#: what is trained (data, split, model, method, optimiser, seed, ...) and needs a new run directory.
RESUMABLE: dict[str, str] = {
    "train.steps": "length of the run: extend (or shorten) it; a cosine LR and DyTrim's annealing follow the new "
                   "length from the current step on; a schedule point written as a fraction (debias.start, "
                   "optim.warmup_steps) keeps the step it had (config/schedule.py pin_fractions)",
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

#: Files that mark a directory as holding a run (besides ckpt_*.pt).
RUN_FILES = ("config.yaml", "metrics.jsonl", "run.json", "summary.json", "data.json")


def run_traces(out: Path) -> list[str]:
    """Names of the files in `out` that belong to a run (empty for a new or unrelated directory)."""
    out = Path(out)
    if not out.is_dir():
        return []
    return [n for n in RUN_FILES if (out / n).exists()] + sorted(p.name for p in out.glob("ckpt_*.pt"))


def _flat(cfg: RunConfig) -> dict[str, Any]:
    return {k: get_key(cfg, k) for k in all_keys(cfg)}


def _refuse(key: str, old: Any, new: Any) -> ConfigError:
    allowed = ", ".join(RESUMABLE)
    return ConfigError(
        f"--resume: {key} would change from {old!r} to {new!r}, which changes what is trained; a run directory holds "
        f"one experiment. Start a new run instead (dytrim train ... --set {key}={new} --out NEW_DIR), or drop the "
        f"override. --resume may change only: {allowed}"
    )


def resume_config(run_dir: Path, overrides: list[str]) -> tuple[RunConfig, str | None]:
    """The run's config.yaml with the allowed overrides applied, validated exactly as a fresh config, and a note.

    Without config.yaml (deleted, or a start that failed before writing it) the newest usable checkpoint's config
    is used (every checkpoint holds its config; config.yaml is rewritten once every check passed): the note says so.
    With neither, the directory holds no run to continue: a ConfigError says what it holds and the way out."""
    run_dir = Path(run_dir)
    note = None
    if (run_dir / "config.yaml").exists():
        mapping = read_yaml_mapping(run_dir / "config.yaml", "--resume")
    else:
        mapping, source = _checkpoint_config(run_dir)
        note = f"{run_dir / 'config.yaml'} is missing; rebuilt it from {source} (every checkpoint holds its config)"
    cfg = config_from_dict(mapping)
    before = _flat(cfg)
    for text in overrides:
        set_key(cfg, *parse_override(text))
    after = _flat(cfg)
    for key, old in before.items():
        if after[key] != old and key not in RESUMABLE:
            raise _refuse(key, old, after[key])
    pinned = schedule.pin_fractions(cfg, before["train.steps"])  # a CDMAD already on stays on in a longer run
    validate(cfg)
    return cfg, "; ".join(n for n in [note, *pinned] if n) or None


def _checkpoint_config(run_dir: Path) -> tuple[dict[str, Any], str]:
    """The config stored in the newest usable checkpoint of `run_dir`, and that checkpoint's name."""
    from dytrim.engine.checkpoint import load_latest

    found = load_latest(run_dir, "cpu")
    if found is None or not isinstance(found[0].get("config"), dict):
        held = [p.name for p in sorted(Path(run_dir).iterdir()) if not p.name.startswith(".")][:4]
        what = f"holds only {', '.join(held)}" if held else "is empty"
        raise ConfigError(f"--resume: '{run_dir}' has no config.yaml and no checkpoint ({what}), so there is no run "
                          f"to continue; start one with: dytrim train --preset NAME --out {run_dir}")
    return found[0]["config"], found[1].name


def check_checkpoint_config(cfg: RunConfig, saved: dict[str, Any], checkpoint: str) -> None:
    """The checkpoint must come from this experiment: every key outside RESUMABLE equals config.yaml's."""
    stored = RunConfig()
    try:
        apply_mapping(stored, saved)
    except ConfigError as exc:
        raise ConfigError(f"--resume: {checkpoint} holds a config this dytrim does not read ({exc}); start a "
                          "new --out") from exc
    mine, theirs = _flat(cfg), _flat(stored)
    for key, value in mine.items():
        if key in schedule.STEP_KEYS and schedule.schedule_matches(key, value, cfg.train.steps, theirs[key],
                                                                  stored.train.steps):
            continue  # a fraction pinned to its step on an earlier resume (pin_fractions)
        if key not in RESUMABLE and theirs[key] != value:
            raise ConfigError(
                f"--resume: config.yaml and {checkpoint} disagree on {key} (config.yaml: {value!r}, checkpoint: "
                f"{theirs[key]!r}); the directory mixes two runs or config.yaml was edited. Restore config.yaml or "
                "start a new --out"
            )


def read_run_json(run_dir: Path) -> dict[str, Any] | None:
    """run.json of a run; None when it is missing or unreadable (a resume then rebuilds it)."""
    try:
        meta = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def recorded_data_files(run_dir: Path) -> list[dict[str, Any]] | None:
    """The data files (path, sha256) run.json recorded when the run started; None without run.json."""
    meta = read_run_json(run_dir)
    return meta.get("data_files") if meta else None


def check_run_data(run_dir: Path, state: dict[str, Any], checkpoint: str, now: list[dict[str, Any]]) -> None:
    """The data read now must be the run's: against run.json's record and the checkpoint's own (`data_files`,
    so that a deleted run.json does not switch the check off). Checkpoints older than that record carry none."""
    recorded = recorded_data_files(run_dir)
    check_data_files(recorded, now, "run.json")
    check_data_files(state.get("data_files"), now, checkpoint)
    if recorded is None and state.get("data_files") is None:
        warnings.warn(f"--resume: '{run_dir}' has no run.json and {checkpoint} records no data files (written by an "
                      "older dytrim): the data cannot be checked against the run's", stacklevel=2)


def check_data_files(recorded: list[dict[str, Any]] | None, now: list[dict[str, Any]], source: str = "run.json"
                     ) -> None:
    """The data read now must be the data the run was started on (same sha256 per file, by file name)."""
    if not recorded:  # runs from before the data files were recorded
        return
    before = sorted((Path(r["path"]).name, r["sha256"]) for r in recorded)
    after = sorted((Path(r["path"]).name, r["sha256"]) for r in now)
    if before != after:
        was = ", ".join(f"{n} {h[:12]}" for n, h in before)
        got = ", ".join(f"{n} {h[:12]}" for n, h in after)
        raise ConfigError(f"--resume: the data differs from the data this run started on ({source}: {was}; now: "
                          f"{got}); point data.root at the original files, or start a new --out")


#: Config keys that name where training images are read from.
DATA_PATH_KEYS = ("data.root", "data.labeled_dir", "data.unlabeled_dir", "data.test_dir")


def check_out_outside_data(out: Path, cfg: RunConfig, what: str) -> None:
    """A run directory inside a data root is refused: its files (curves.png, ...) would become training data and
    change the data hashes, so the run could no longer resume."""
    here = Path(out).expanduser().resolve()
    for key in DATA_PATH_KEYS:
        value = get_key(cfg, key)
        if value and here.is_relative_to(root := Path(value).expanduser().resolve()):
            raise ConfigError(f"{what}: '{out}' is inside {key} ('{root}'); the run's files would be read as "
                              "training images. Choose a run directory outside the data")
