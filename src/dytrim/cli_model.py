"""Sub-commands that use a trained run: `dytrim eval`, `dytrim predict`, `dytrim export` (wired into cli.py)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from dytrim.inference import TrainedRun

COMMANDS = ("eval", "predict", "export")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the three sub-commands on the main parser's sub-parsers."""
    p = sub.add_parser("eval", help="metrics of a run's EMA model (raw, debiased), per-class recall, confusion PNG")
    _run_args(p)
    p.add_argument("--data", metavar="DIR", help="a test folder laid out like the labeled one (default: the run's "
                   "own test set)")
    p.add_argument("--out", metavar="DIR", help="where eval.json and confusion.png go (default RUN_DIR/eval)")

    p = sub.add_parser("predict", help="predict class names for image files or folders, as CSV")
    _run_args(p)
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files and/or folders (searched at any depth)")
    p.add_argument("--out", metavar="CSV", help="write the CSV here (default: standard output)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    p = sub.add_parser("export", help="write the EMA model with its class names and preprocessing constants")
    _run_args(p)
    p.add_argument("--format", required=True, choices=["state_dict", "torchscript", "onnx"],
                   help="state_dict: weights + metadata, read as data (the one to prefer from Python); torchscript: a "
                   "program for deployment, written by torch.jit, which recent torch 2.x releases deprecate in favour "
                   "of torch.export (still works with torch 2.13; prefer onnx for other runtimes); onnx: needs the "
                   "onnx extra")
    p.add_argument("--out", metavar="FILE", help="output file (default RUN_DIR/export/model.<format suffix>)")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of `dytrim train`")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the run's config, e.g. --set data.root=... if the data moved")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = the run's train.threads)")


def run(args: argparse.Namespace) -> int:
    """Dispatch one of COMMANDS; ConfigError / DataError propagate to cli.main (exit code 2)."""
    from dytrim.inference import load_run

    trained = load_run(args.run_dir, args.device, args.overrides, command=args.command)
    threads = args.threads or trained.cfg.train.threads
    if threads:
        torch.set_num_threads(threads)
    return {"eval": _eval, "predict": _predict, "export": _export}[args.command](args, trained)


def _eval(args: argparse.Namespace, trained: TrainedRun) -> int:
    from dytrim.evalrun import evaluate, format_table, load_test_set, plot_confusion
    from dytrim.fileio import atomic_write_text

    out = Path(args.out) if args.out else trained.run_dir / "eval"
    _check_output_file(out / "eval.json", "--out")  # before any work
    x, y, where = load_test_set(trained, args.data)
    result = evaluate(trained, x, y, args.batch_size) | {"test_set": where, "checkpoint": trained.checkpoint.name}
    atomic_write_text(out / "eval.json", json.dumps(result, indent=1) + "\n")
    plot_confusion(result, out / "confusion.png", f"{trained.run_dir.name} @ step {trained.step}: {where}")
    print(f"{trained.run_dir} @ step {trained.step} ({trained.checkpoint.name}), EMA model, {where}")
    print(format_table(result))
    print(f"wrote {out / 'eval.json'} and {out / 'confusion.png'}")
    return 0


def _predict(args: argparse.Namespace, trained: TrainedRun) -> int:
    from dytrim.data.errors import DataError
    from dytrim.data.images import path_text
    from dytrim.fileio import atomic_write_text
    from dytrim.inference import find_images, predict_files

    paths = find_images(args.images)
    if args.out:
        _check_output_file(Path(args.out), "--out")  # before any work: an unwritable --out fails at once
    rows, skipped = predict_files(trained, paths, args.batch_size, progress=not args.no_progress)
    for path, why in skipped[:10]:
        print(f"dytrim: skipped {path_text(path)}: {why}", file=sys.stderr)
    if not rows:
        raise DataError(f"IMAGES: none of the {len(paths)} files could be read as an image ({len(skipped)} skipped; "
                        "the first reasons are above)")
    fields = ["path", "pred", "prob"] + (["pred_debiased", "prob_debiased"] if trained.debiasers else [])
    if args.out:
        buf = io.StringIO(newline="")
        _write_csv(buf, fields, rows)
        atomic_write_text(Path(args.out), buf.getvalue())
    else:
        try:
            _write_csv(sys.stdout, fields, rows)
            sys.stdout.flush()
        except BrokenPipeError:  # e.g. `dytrim predict ... | head`: the reader stopped early, which is fine
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    deb = f"; pred_debiased by {'+'.join(trained.debias_methods)}" if trained.debiasers else ""
    print(f"dytrim: {len(rows)} predictions{' to ' + args.out if args.out else ''} ({len(skipped)} unreadable files "
          f"skipped; EMA model at step {trained.step}{deb})", file=sys.stderr)
    return 0


def _write_csv(sink: Any, fields: list[str], rows: list[dict[str, Any]]) -> None:
    writer = csv.DictWriter(sink, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def _check_output_file(path: Path, what: str) -> None:
    """An output file's folder exists and takes files, and the path is not a folder: checked before any work."""
    from dytrim.config import ConfigError
    from dytrim.engine.checkpoint import check_writable_dir

    check_writable_dir(path.parent, what)
    if path.is_dir():
        raise ConfigError(f"{what}: '{path}' is a folder; give a file name")


def _export(args: argparse.Namespace, trained: TrainedRun) -> int:
    from dytrim.export import export_run, sidecar
    from dytrim.jsonfmt import compact_json

    if args.out:
        _check_output_file(Path(args.out), "--out")
    path = export_run(trained, args.format, Path(args.out) if args.out else None)
    if args.format == "torchscript":  # torch's DeprecationWarning is hidden outside __main__: say it once, here
        print("dytrim: note: TorchScript (torch.jit) is deprecated in recent torch 2.x releases and may go in a later "
              "one; for Python prefer --format state_dict (dytrim.export.load_exported), for other runtimes --format "
              "onnx", file=sys.stderr)
    print(compact_json({"exported": str(path), "metadata": str(sidecar(path)), "format": args.format,
                        "classes": trained.card.classes, "step": trained.step}))
    return 0
