"""dytrim: long-tailed semi-supervised image classification (FixMatch, FlexMatch, FreeMatch; logit adjustment,
re-weighting, re-sampling, CDMAD; DyTrim pruning), after "Learning Dynamics of Logits Debiasing for Long-Tailed
Semi-Supervised Learning" (ICLR 2026): debiasing reshapes the gradient flow, a baseline image tracks the prior.

Commands: train, presets, data info, eval, predict, export, report, dynamics, sweep. Errors print one line: exit 2 for
a user error, 4 when the machine fails (disk, permissions), 3 when training diverges; --debug shows tracebacks."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from dytrim import __version__, runlock
from dytrim.config import (
    ConfigError,
    RunConfig,
    key_help,
    list_presets,
    load_config,
)
from dytrim.data.errors import DataError
from dytrim.engine.checkpoint import CheckpointError, check_writable_dir
from dytrim.fileio import WriteFailure
from dytrim.resume import check_out_outside_data, resume_config, run_traces

#: Exit codes: 0 done; 1 a bug in dytrim (a traceback, please report it); 2 a user error (config, data,
#: arguments, a run directory that does not fit); 3 training diverged; 4 the environment failed (disk full,
#: permission denied, read-only file system); 130 / 143 stopped by SIGINT / SIGTERM after a checkpoint.
EXIT_USER, EXIT_DIVERGED, EXIT_ENVIRONMENT, EXIT_INTERRUPTED = 2, 3, 4, 130


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="preset name (`dytrim presets` lists them)")
    p.add_argument("--config", help="a YAML file of overrides, applied after the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key, e.g. --set train.steps=1000 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dytrim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: DYTRIM_DEBUG=1)")
    parser.add_argument("--version", action="version", version=f"dytrim {__version__}",
                        help="print the version of the running dytrim and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (or continue one with --resume DIR)",
                       description="Train from a preset (`dytrim presets`) with --set overrides into --out, or "
                       "continue a run with --resume DIR (only keys that keep the experiment may change). Ctrl-C or "
                       "SIGTERM stop after the current step with a checkpoint.")
    _add_config_args(p)
    p.add_argument("--out", help="run directory (config.yaml, metrics.jsonl, summary.json, checkpoints)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its newest valid checkpoint")

    p = sub.add_parser("presets", help="list presets (or all config keys with --keys)",
                       description="List the presets with their descriptions, or with --keys every config key with "
                       "its type, default, allowed values and meaning.")
    p.add_argument("--keys", action="store_true", help="list every config key: type, default, allowed values, meaning")

    p = sub.add_parser("data", help="data set tools", description="Data set tools: `dytrim data info`.")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("info", help="per-class labeled/unlabeled/test counts of a split, as JSON",
                        description="Build a preset's split (no training) and print its per-class labeled, "
                        "unlabeled and test counts as JSON.")
    _add_config_args(q)

    from dytrim import cli_model  # eval / predict / export: commands that use a trained run

    cli_model.add_parsers(sub)

    from dytrim.dynamics import commands as dynamics_commands  # dynamics decompose | split | ... (figures)

    dynamics_commands.add_parser(sub)

    from dytrim.report import command as report_command  # report DIR... --out: md/html report with figures

    report_command.add_parser(sub)

    from dytrim.sweep import command as sweep_command  # sweep TABLE --out DIR: a whole result table

    sweep_command.add_parser(sub)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    """Check the arguments, then hold the run directory's lock (runlock.py) for the whole run."""
    if args.resume:
        out, what, cfg = Path(args.resume), "--resume", None
        if args.preset or args.config:
            raise ConfigError("--resume takes the run's own config.yaml; drop --preset/--config")
        if not out.is_dir():
            raise ConfigError(f"--resume: '{out}' is not a directory; give a dytrim run directory")
    else:
        if not args.out:
            raise ConfigError("--out is required (the run directory)")
        if not args.preset and not args.config:
            raise ConfigError("give --preset NAME (see `dytrim presets`) or --config FILE")
        cfg = load_config(args.preset, args.overrides, args.config)
        out, what = Path(args.out), "--out"
        check_out_outside_data(out, cfg, what)  # before the directory is made
    fresh = not out.exists()
    check_writable_dir(out, what)
    try:
        with runlock.hold(out, what):  # one writer per run directory, taken before anything is read or written
            return _train_locked(args, out, cfg)
    finally:
        if fresh and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that never started leaves nothing behind


def _train_locked(args: argparse.Namespace, out: Path, cfg: RunConfig | None) -> int:
    from dytrim.datacard import annotate_summary, card_from_data
    from dytrim.engine.loop import TrainingDiverged
    from dytrim.engine.runlog import format_summary
    from dytrim.engine.stop import Stopped
    from dytrim.factory import build_trainer

    main_process = runlock.is_main_process()
    if cfg is None:  # --resume: only keys that keep the experiment (resume.RESUMABLE)
        cfg, note = resume_config(out, args.overrides)
        if note and main_process:
            print(f"dytrim: {note}", file=sys.stderr)
        check_out_outside_data(out, cfg, "--resume")
    elif traces := run_traces(out):
        raise ConfigError(
            f"--out: '{out}' already holds a run ({', '.join(traces[:4])}); continue it with --resume {out} "
            "or pick a new --out"
        )
    trainer = build_trainer(cfg, out, resume=bool(args.resume))
    restored = trainer.restore() if args.resume else None  # checks, then loads; nothing written yet
    main_rank = trainer.dist.main  # under torchrun only rank 0 writes
    if args.resume and main_rank:
        if restored is None:
            print(f"dytrim: {out} has no checkpoint yet; starting it from step 0", file=sys.stderr)
        elif trainer.step >= cfg.train.steps:
            print(f"dytrim: {out} is finished (step {trainer.step} of {cfg.train.steps}, {restored.name}); "
                  f"extend it with --resume {out} --set train.steps=N", file=sys.stderr)
        else:
            print(f"dytrim: continuing {out} from {restored.name} (step {trainer.step} of {cfg.train.steps})",
                  file=sys.stderr)
    try:
        summary = trainer.fit(resume=bool(args.resume))  # writes config.yaml, run.json, data.json first
    except TrainingDiverged as exc:
        print(f"dytrim: training stopped: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except Stopped as stop:
        if main_rank:
            print(f"dytrim: stopped at step {stop.step}; continue with: dytrim train --resume {out}", file=sys.stderr)
        return stop.exit_code
    finally:
        trainer.dist.close()
    if not main_rank:
        return 0
    annotate_summary(out, card_from_data(trainer.data))  # class names and data facts (e.g. the hold-out test set)
    print(format_summary(summary, out))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    if args.keys:
        for k in key_help():
            if k["heading"]:  # a group of keys: its heading on a line of its own, never glued onto a key's help
                print(f"# {k['key'].rpartition('.')[0] or 'top level'}: {k['heading']}")
            allowed = f"; one of {k['allowed']}" if k["allowed"] else ""
            print(f"{k['key']} ({k['type']}, default {k['default']}{allowed})\n    {k['meaning']}")
        return 0
    presets = list_presets()
    width = max(map(len, presets), default=0)
    for name, desc in presets.items():
        print(f"{name:<{width}}  {desc}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from dytrim.data.sources import load_data

    if not args.preset and not args.config:
        raise ConfigError("give --preset NAME (see `dytrim presets`) or --config FILE")
    cfg = load_config(args.preset, args.overrides, args.config)
    data = load_data(cfg.data, cfg.seed, "cpu")
    if cfg.data.name == "folder":  # your own images: counts by class name, estimated gamma_l, skipped files
        from dytrim.data.folder import describe
        from dytrim.jsonfmt import compact_json

        print(compact_json(describe(data, cfg.data.pool)))
        return 0
    counts = data.counts()
    info = {
        "data": cfg.data.name,
        "classes": data.classes,
        "pool": cfg.data.pool,
        **counts,
        "total": {k: int(sum(v)) for k, v in counts.items()},
        "unlabeled_pool_contains_labeled": cfg.data.pool == "paper",
        "imbalance": {
            "gamma_l": cfg.data.imb_ratio_l,
            "gamma_u": cfg.data.imb_ratio_u,
            "reverse_u": cfg.data.reverse_u,
        },
    }
    print(json.dumps(info, indent=1, ensure_ascii=False))
    return 0


def _one_line_warning(message: Warning | str, *rest: object) -> str:
    """Warnings print as `dytrim: warning: ...`, one line, without the source line Python shows."""
    return f"dytrim: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("DYTRIM_DEBUG", "") not in ("", "0")
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        return _dispatch(args)
    except (ConfigError, DataError, CheckpointError, runlock.RunLocked) as exc:
        if debug:
            raise
        print(f"dytrim: error: {exc}", file=sys.stderr)
        return EXIT_USER
    except BrokenPipeError:  # e.g. `dytrim presets | head`: the reader stopped early, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:  # a path the user gave is wrong
        if debug:
            raise
        print(f"dytrim: error: {exc.strerror or exc}: '{exc.filename}'", file=sys.stderr)
        return EXIT_USER
    except OSError as exc:  # WriteFailure names the path; other OS errors carry it in filename
        if debug:
            raise
        where = f" '{exc.filename}'" if getattr(exc, "filename", None) else ""
        reason = str(exc) if isinstance(exc, WriteFailure) else f"{exc.strerror or exc}{where}"
        print(f"dytrim: error: {reason}. Files already written are intact (a run keeps its last checkpoint); fix the "
              "disk or permissions, then run again (a run: --resume DIR); --debug shows the traceback", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        if debug:
            raise
        print("dytrim: interrupted (files already written are intact)", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        warnings.formatwarning = formatwarning


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "train":
        return cmd_train(args)
    if args.command == "presets":
        return cmd_presets(args)
    if args.command in ("eval", "predict", "export"):
        from dytrim import cli_model

        return cli_model.run(args)
    if args.command == "dynamics":
        from dytrim.dynamics import commands as dynamics_commands

        return dynamics_commands.run(args)
    if args.command == "report":
        from dytrim.report import command as report_command

        return report_command.run(args)
    if args.command == "sweep":
        from dytrim.sweep import command as sweep_command

        return sweep_command.run(args)
    return cmd_data_info(args)


if __name__ == "__main__":
    raise SystemExit(main())
