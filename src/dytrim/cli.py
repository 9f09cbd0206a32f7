"""Command line: `dytrim train | presets | data info | eval | predict | export`. Errors print one clear line and
exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from dytrim.config import (
    ConfigError,
    RunConfig,
    all_keys,
    config_from_dict,
    get_key,
    list_presets,
    load_config,
    parse_override,
    set_key,
)
from dytrim.data.readers import DataError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="preset name (`dytrim presets` lists them)")
    p.add_argument("--config", help="a YAML file of overrides, applied after the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key, e.g. --set train.steps=1000 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dytrim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (or continue one with --resume DIR)")
    _add_config_args(p)
    p.add_argument("--out", help="run directory (config.yaml, metrics.jsonl, summary.json, checkpoints)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its newest valid checkpoint")

    p = sub.add_parser("presets", help="list presets (or all config keys with --keys)")
    p.add_argument("--keys", action="store_true", help="list every config key with its default")

    p = sub.add_parser("data", help="data set tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("info", help="per-class labeled/unlabeled/test counts of a split, as JSON")
    _add_config_args(q)

    from dytrim import cli_model  # eval / predict / export: commands that use a trained run

    cli_model.add_parsers(sub)

    from dytrim.dynamics import commands as dynamics_commands  # dynamics decompose | split | ... (figures)

    dynamics_commands.add_parser(sub)

    from dytrim.report import command as report_command  # report DIR... --out: md/html report with figures

    report_command.add_parser(sub)
    return parser


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_probe.{os.getpid()}"  # per process: torchrun ranks probe at once
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--out: cannot write to '{out}' ({exc.strerror}); choose a writable directory") from exc


def cmd_train(args: argparse.Namespace) -> int:
    from dytrim.datacard import annotate_summary, write_card
    from dytrim.engine.loop import Trainer, TrainingDiverged

    if args.resume:
        out = Path(args.resume)
        if not (out / "config.yaml").exists():
            raise ConfigError(f"--resume: '{out}' has no config.yaml; it is not a dytrim run directory")
        cfg = config_from_dict(yaml.safe_load((out / "config.yaml").read_text()))
        for text in args.overrides:  # e.g. extend a finished run: --set train.steps=...
            set_key(cfg, *parse_override(text))
        if args.preset or args.config:
            raise ConfigError("--resume takes the run's own config.yaml; drop --preset/--config")
    else:
        if not args.out:
            raise ConfigError("--out is required (the run directory)")
        if not args.preset and not args.config:
            raise ConfigError("give --preset NAME (see `dytrim presets`) or --config FILE")
        cfg = load_config(args.preset, args.overrides, args.config)
        out = Path(args.out)
        if (out / "metrics.jsonl").exists():
            raise ConfigError(
                f"--out: '{out}' already holds a run; continue it with --resume {out} or pick a new --out"
            )
    fresh = not out.exists()
    _check_writable(out)
    try:
        trainer = Trainer(cfg, out, resume=bool(args.resume))
    except (ConfigError, DataError):
        if fresh and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that never started leaves nothing behind
        raise
    main_rank = trainer.dist.main  # under torchrun only rank 0 writes
    card = write_card(out, trainer.data) if main_rank else None  # classes + preprocessing, for eval/predict/export
    try:
        summary = trainer.fit(resume=bool(args.resume))
    except TrainingDiverged as exc:
        print(f"dytrim: training stopped: {exc}", file=sys.stderr)
        return 3
    if not main_rank:
        return 0
    annotate_summary(out, card)  # class names and data facts (e.g. the hold-out test set) in summary.json
    brief = {k: summary[k] for k in ("bacc", "gm", "acc") if k in summary}
    print(json.dumps({"out": str(out), "steps": summary["steps"], "wall_s": summary["wall_s"], **brief}, indent=1))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    if args.keys:
        default = RunConfig()
        for key in all_keys(default):
            print(f"{key} = {get_key(default, key)!r}")
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
    print(json.dumps(info, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
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
        return cmd_data_info(args)
    except (ConfigError, DataError) as exc:
        print(f"dytrim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
