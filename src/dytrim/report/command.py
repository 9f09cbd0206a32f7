"""The `dytrim report` sub-command: argument parsing and dispatch (wired into cli.py)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `report` on the main parser's sub-parsers."""
    p = sub.add_parser("report", help="compare runs: report.md + report.html with curves, recall, π_θ(I), pruning")
    p.add_argument("run_dirs", nargs="+", metavar="DIR", help="run directories (the --out folders of `dytrim train`)")
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="where report.md, report.html and PNGs go")
    p.add_argument("--label", dest="labels", action="append", metavar="NAME",
                   help="a name per run, in DIR order (repeat; default: preset names)")
    p.add_argument("--title", help="report title (default: the run names)")


def run(args: argparse.Namespace) -> int:
    """Write the report and print the files, one per line; ConfigError propagates to cli.main (exit 2)."""
    from dytrim.report import write_report

    for path in write_report(args.run_dirs, args.out, args.labels, args.title):
        print(path)
    return 0
