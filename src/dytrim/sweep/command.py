"""`dytrim sweep`: a whole result table in one command (argument parsing and dispatch, wired into cli.py).

    dytrim sweep --list                                   the shipped table files
    dytrim sweep TABLE --out DIR [--launcher local|slurm|print] [--dry-run]
    dytrim sweep TABLE --out DIR --status | --cancel | --collect

Exit codes: 0 every launched cell done (or submitted, or printed); 2 a user error (the table, an option);
5 some cells failed (each named with its last line); 143 / 130 the sweep was stopped (its cells checkpointed).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

EXIT_CELLS_FAILED = 5


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="run a whole result table (rows x columns x seeds) locally or on Slurm; --status, --collect",
        description="Expand a table file (rows: preset + overrides; columns: overrides; seeds; the metric) into "
        "cells, each in a directory fixed by its spec, and run the ones not done: finished cells are skipped, "
        "interrupted ones continue with --resume, failed ones are reported. Rerunning the command resumes the "
        "sweep. The run directories are the only truth (--status).", formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("table", nargs="?", help="a table file, or the name of a shipped table (--list)")
    p.add_argument("--out", help="the sweep directory (cells/<cell>/ are the runs)")
    p.add_argument("--list", action="store_true", help="list the shipped table files")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--status", action="store_true", help="every cell: done / running / resumable / failed / to do")
    what.add_argument("--collect", action="store_true", help="mean ± std tables: md, LaTeX, per-seed CSV, HTML")
    what.add_argument("--cancel", action="store_true", help="stop the running cells (with a checkpoint), mark all "
                      "unfinished cells cancelled, scancel their Slurm jobs")
    what.add_argument("--dry-run", action="store_true", help="show the cells, commands and job script; run nothing")
    p.add_argument("--launcher", choices=("local", "slurm", "print"), default="local",
                   help="local: processes here; slurm: one job array (submitit); print: one command per cell")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for every cell, e.g. data.root=/data (keys --resume may change, like "
                   "data.root, leave the cells' directories as they are; train.steps names other cells)")
    p.add_argument("--seeds", help="comma-separated seeds instead of the table's")
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again (default: report them)")
    p.add_argument("--max-requeues", type=int, help="restarts of a cell stopped by a signal or a time limit "
                   "(default: local 3, slurm 20: submitit's max_num_timeout)")
    g = p.add_argument_group("local launcher")
    g.add_argument("--procs", type=int, default=1, help="CPU processes at once (threads split between them)")
    g.add_argument("--threads", type=int, help="threads per process (default: CPU cores / processes)")
    g.add_argument("--gpus", help="GPU ids, e.g. 0,1,2,3: one cell per GPU at a time (CUDA_VISIBLE_DEVICES)")
    g.add_argument("--runs-per-gpu", type=int, default=1, help="cells sharing one GPU at a time")
    s = p.add_argument_group("slurm launcher (one job array per table, through submitit)")
    s.add_argument("--partition", help="Slurm partition (sbatch --partition)")
    s.add_argument("--account", help="Slurm account to charge (sbatch --account)")
    s.add_argument("--time", type=int, default=24 * 60, help="minutes per job (a cell requeues and resumes past it)")
    s.add_argument("--gpus-per-cell", type=int, default=1, help=">1 runs the cell under torchrun (DDP)")
    s.add_argument("--cpus-per-cell", type=int, help="CPU cores per cell (sbatch --cpus-per-task)")
    s.add_argument("--mem", help="e.g. 32G")
    s.add_argument("--array-parallelism", type=int, default=64, help="array tasks running at once")
    s.add_argument("--signal-delay", type=int, default=180, help="seconds between SIGTERM and the kill")
    s.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="a shell line run before each cell, e.g. 'module load cuda' (repeatable)")


def _list() -> int:
    from dytrim.sweep.table import load_table, shipped_tables

    for name, path in shipped_tables().items():
        t = load_table(path)
        print(f"{name:<24} {len(t.rows)} rows x {len(t.columns)} columns x {len(t.seeds)} seeds = "
              f"{len(t.cells)} cells; {t.title}")
    return 0


def run(args: argparse.Namespace) -> int:
    from dytrim.config import ConfigError
    from dytrim.sweep import state
    from dytrim.sweep.table import find_table, load_table

    if args.list:
        return _list()
    if not args.table or not args.out:
        raise ConfigError("dytrim sweep needs a TABLE (a file or a name from --list) and --out DIR")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else None
    table = load_table(find_table(args.table), args.overrides, seeds)  # every cell checked before anything runs
    out = Path(args.out)
    if args.status or args.collect or args.cancel:
        if not (out / "cells").is_dir():
            raise ConfigError(f"--out: '{out}' holds no sweep yet (no cells/); start it with dytrim sweep "
                              f"{args.table} --out {out}")
        if args.status:
            print(state.format_status(out, table))
            return 0
        if args.collect:
            from dytrim.sweep.collect import collect

            for kind, path in collect(out, table).items():
                print(f"{kind}: {path}")
            print((out / "results" / f"{table.name}.md").read_text(), end="")
            return 0
        return _cancel(out, table)
    found = state.states(out, table)
    todo = [c for c, st in found if st.state in ("to do", "resumable", "cancelled")
            or (st.state == "failed" and args.retry_failed)]
    skipped = {s: sum(st.state == s for _, st in found) for s in ("done", "running", "failed")}
    print(f"dytrim sweep: {table.name}: {len(found)} cells; {len(todo)} to run"
          + "".join(f", {n} {s}" for s, n in skipped.items() if n)
          + (" (--retry-failed runs them again)" if skipped["failed"] and not args.retry_failed else ""))
    if args.dry_run:
        return _dry_run(out, table, todo, args)
    if args.launcher == "print":
        for cell in todo:
            print(shlex.join(["dytrim", *state.train_command(state.cell_dir(out, cell), cell)[3:]]))
        state.write_specs(out, table) if todo else None
        return 0
    if not todo:
        return EXIT_CELLS_FAILED if skipped["failed"] else 0
    state.write_specs(out, table)
    if args.launcher == "slurm":
        from dytrim.sweep import slurm

        pending = slurm.pending_jobs(out, todo)
        todo = [c for c in todo if c.name not in pending]
        if pending:
            print(f"dytrim sweep: {len(pending)} cells still queued on Slurm; not submitted again")
        if todo:
            ids = slurm.submit(out, table.name, todo, _slurm_options(args))
            print(f"dytrim sweep: submitted {len(ids)} cells as job array {ids[0].split('_')[0]}; "
                  f"follow with: dytrim sweep {args.table} --out {out} --status")
        return 0
    return _run_local(out, table, todo, args)


def _slurm_options(args: argparse.Namespace):
    from dytrim.sweep.slurm import SlurmOptions

    return SlurmOptions(partition=args.partition, account=args.account, time_min=args.time,
                        gpus_per_cell=args.gpus_per_cell, cpus_per_cell=args.cpus_per_cell, mem=args.mem,
                        array_parallelism=args.array_parallelism, signal_delay_s=args.signal_delay,
                        setup=tuple(args.setup), max_requeues=20 if args.max_requeues is None else args.max_requeues)


def _run_local(out, table, todo, args: argparse.Namespace) -> int:
    from dytrim import runlock
    from dytrim.sweep.local import make_slots, run_local

    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
    slots = make_slots(max(1, args.procs), gpus, max(1, args.runs_per_gpu), args.threads)
    print(f"dytrim sweep: {len(slots)} slots ({', '.join(s.label for s in slots)}), {slots[0].threads} threads each")
    with runlock.hold(out, "--out"):  # one local sweep per directory at a time
        requeues = 3 if args.max_requeues is None else args.max_requeues
        result = run_local(out, todo, slots, requeues, lambda m: print(m, flush=True))
    failed = sorted(n for n, s in result.items() if s == "failed")
    print(f"dytrim sweep: {table.name}: " + ", ".join(f"{list(result.values()).count(s)} {s}"
                                                       for s in dict.fromkeys(result.values())))
    if failed:
        print(f"dytrim sweep: failed cells: {', '.join(failed)} (their train.log says why; --status shows the "
              "last line)", file=sys.stderr)
        return EXIT_CELLS_FAILED
    return 0


def _dry_run(out, table, todo, args: argparse.Namespace) -> int:
    from dytrim.sweep import state

    for cell in table.cells:
        mark = "run " if cell in todo else "skip"
        print(f"{mark} {cell.name}  [{cell.row} | {cell.column} | seed {cell.seed}]  "
              f"{shlex.join(['dytrim', *state.train_command(state.cell_dir(out, cell), cell)[3:]])}")
    if args.launcher == "slurm":
        from dytrim.sweep.slurm import job_script

        print("\n# the job script (one array task per cell to run):")
        print(job_script(out, table.name, max(1, len(todo)), _slurm_options(args)))
    return 0


def _cancel(out: Path, table) -> int:
    """Mark every unfinished cell CANCELLED, SIGTERM local trainers (they checkpoint), scancel Slurm jobs."""
    from dytrim.sweep import slurm, state

    marked, stopped = [], []
    for cell, st in state.states(out, table):
        if st.state == "done":
            continue
        d = state.cell_dir(out, cell)
        (d / "CANCELLED").write_text("dytrim sweep --cancel\n")
        marked.append(cell)
        if st.state == "running" and st.detail.startswith("pid ") and f" on {os.uname().nodename}," in st.detail:
            pid = int(st.detail.split()[1])
            try:
                os.kill(pid, signal.SIGTERM)
                stopped.append(cell.name)
            except OSError:
                pass
    jobs = slurm.cancel(out, marked)
    print(f"dytrim sweep: cancelled {len(marked)} cells ({len(stopped)} running here stopped with a checkpoint"
          + (f", Slurm jobs {' '.join(jobs)} scancelled" if jobs else "") + "); the next dytrim sweep continues them")
    return 0
