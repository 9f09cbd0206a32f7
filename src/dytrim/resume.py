"""One run directory, one experiment: what `dytrim train --resume` may change, and the checks that refuse
the rest before anything in the directory is written. The keys a resume may change (RESUMABLE) and the comparison
of two configs live in config/experiment.py, which checkpoint rotation shares; `check_checkpoint` is also what
`eval`, `predict` and `export` ask of a checkpoint (with `command=` naming them)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from dytrim.config import (
    ConfigError,
    RunConfig,
    config_from_dict,
    get_key,
    parse_override,
    read_yaml_mapping,
    schedule,
    set_key,
    validate,
)
from dytrim.config.experiment import RESUMABLE, differences, flat

#: Files that mark a directory as holding a run (besides ckpt_*.pt).
RUN_FILES = ("config.yaml", "metrics.jsonl", "run.json", "summary.json", "data.json")


def run_traces(out: Path) -> list[str]:
    """Names of the files in `out` that belong to a run (empty for a new or unrelated directory)."""
    out = Path(out)
    if not out.is_dir():
        return []
    return [n for n in RUN_FILES if (out / n).exists()] + sorted(p.name for p in out.glob("ckpt_*.pt"))


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
    before = flat(cfg)
    for text in overrides:
        set_key(cfg, *parse_override(text))
    after = flat(cfg)
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


#: What `--resume` reads from a checkpoint (Trainer.load_state_dict), and what `eval` / `predict` / `export` read.
RESUME_KEYS = ("step", "config", "model", "ema", "optimizer", "ssl", "components", "lb_sampler", "ulb_sampler", "rng",
               "train_s", "wall_s", "samples_seen")
MODEL_KEYS = ("step", "config", "ema")


def check_checkpoint(cfg: RunConfig, state: dict[str, Any], checkpoint: str, command: str = "--resume",
                     keys: tuple[str, ...] = RESUME_KEYS) -> None:
    """The checkpoint holds what `command` reads (`keys`) and comes from this experiment (check_checkpoint_config)."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise ConfigError(f"{command}: {checkpoint} lacks {', '.join(missing)}, which every dytrim checkpoint holds, "
                          "so it is not a checkpoint dytrim wrote; remove it from the run directory (the previous "
                          "checkpoint is then used)")
    check_checkpoint_config(cfg, state["config"], checkpoint, command)


def check_checkpoint_config(cfg: RunConfig, saved: dict[str, Any], checkpoint: str, command: str = "--resume") -> None:
    """The checkpoint must come from this experiment: every key outside RESUMABLE equals config.yaml's. The message
    names `command` and every key that differs (at most four)."""
    try:
        diff = differences(cfg, saved) if isinstance(saved, dict) else None
    except ConfigError as exc:
        raise ConfigError(f"{command}: {checkpoint} holds a config this dytrim does not read ({exc}); it is not a "
                          "checkpoint of this run") from exc
    if diff is None:
        raise ConfigError(f"{command}: {checkpoint} holds no config (a {type(saved).__name__}), so it is not a "
                          "checkpoint dytrim wrote; remove it from the run directory")
    if diff:
        named = ", ".join(f"{k} (config.yaml: {mine!r}, checkpoint: {theirs!r})" for k, mine, theirs in diff[:4])
        more = f" and {len(diff) - 4} more keys" if len(diff) > 4 else ""
        way = ("Restore config.yaml or start a new --out" if command == "--resume" else
               "Restore config.yaml, or move the checkpoint into a run directory of its own")
        raise ConfigError(f"{command}: config.yaml and {checkpoint} disagree on {named}{more}; the directory mixes "
                          f"two runs or config.yaml was edited. {way}")


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
