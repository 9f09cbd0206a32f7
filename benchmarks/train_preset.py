"""Train one preset through the CLI and record the result: curve PNG, summary and per-evaluation table.

    python benchmarks/train_preset.py cpu-cifar10lt-fixmatch --data-root ../shared/data

Writes benchmarks/results/<preset>.md (exact command, machine, date, summary, every evaluation) and
benchmarks/results/<preset>-curves.png; the run directory itself goes to --out (default runs/bench-<preset>).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from dytrim.engine.metrics_log import read_rows
from dytrim.units import percent

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("preset")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--out", default=None, help="run directory (default runs/bench-<preset>)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--record-only", action="store_true", help="do not train: record the finished run in --out")
    args = ap.parse_args()
    out = Path(args.out or f"runs/bench-{args.preset}")
    if out.exists() and not args.record_only:
        shutil.rmtree(out)
    cmd = ["dytrim", "train", "--preset", args.preset, "--set", f"data.root={args.data_root}", "--out", str(out)]
    for o in args.overrides:
        cmd += ["--set", o]
    started = dt.datetime.now(dt.timezone.utc)
    if not args.record_only:
        subprocess.run([sys.executable, "-m", "dytrim", *cmd[1:]], check=True)
    summary = json.loads((out / "summary.json").read_text())
    rows = read_rows(out / "metrics.jsonl")
    run = json.loads((out / "run.json").read_text())
    RESULTS.mkdir(exist_ok=True)
    png = RESULTS / f"{args.preset}-curves.png"
    shutil.copyfile(out / "curves.png", png)

    def pct(x: float) -> str:  # the one rounding rule (half up from the stored value), two decimals here
        return percent(x, 2)

    driver = [a for a in sys.argv if a != "--record-only"]
    lines = [
        f"# `{args.preset}`: one training run on the real data",
        "",
        f"- command: `{shlex.join(cmd)}` (driven by `python {shlex.join(driver)}`)",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')} ({'recorded' if args.record_only else 'started'}); "
        f"machine: {platform.machine()}, {run['machine']}, torch {run['torch']}, git {run['git_rev']}",
        f"- split (labeled / unlabeled pool / test per class): {run['counts']}",
        f"- wall time {summary['wall_s']:.0f} s (training {summary['train_s']:.0f} s), "
        f"{summary['images_per_s']:.0f} training images/s, {summary['steps']} steps",
        "- metrics: EMA model; intermediate evaluations on the test subset of `eval_n` images, "
        "`full test` = final evaluation on the whole test set",
        "",
        f"![curves]({png.name})",
        "",
        "| metric | last | best | mean of last 20 | median of last 20 | full test (final) |",
        "|---|---|---|---|---|---|",
    ]
    full = summary.get("full_test", rows[-1])
    for key in ("bacc", "gm", "acc", "many", "medium", "few", "bacc_debiased", "gm_debiased"):
        if key in summary:
            s = summary[key]
            lines.append(
                f"| {key} | {pct(s['last'])} | {pct(s['best'])} | {pct(s['mean_last20'])} | "
                f"{pct(s['median_last20'])} | {pct(full[key])} |"
            )
    lines += ["", f"Per-class recall, full test set: {[round(100 * r, 1) for r in full['per_class_recall']]}"]
    if "per_class_recall_debiased" in full:
        lines += ["", f"Debiased: {[round(100 * r, 1) for r in full['per_class_recall_debiased']]}"]
    if "prior_baseline" in full:
        lines += ["", f"Baseline-image probe π(I) at the end, eval-mode BN: {full['prior_baseline']}; "
                  f"train-mode BN: {full['prior_baseline_trainmode']}"]
    if (out / "pruning.png").exists():
        shutil.copyfile(out / "pruning.png", RESULTS / f"{args.preset}-pruning.png")
        p = rows[-1]["pruning"]
        lines += ["", f"![pruning]({args.preset}-pruning.png)", "",
                  f"Pruning at the end: r_c {p['r_c']}; labeled kept per class {p['kept_lb_per_class']}; "
                  f"{summary.get('updates', '–')} updates, {summary.get('samples_fwd', '–')} images forward, "
                  f"{summary.get('samples_bwd', '–')} back-propagated"]
    lines += [""]
    lines += [
        "| step | bACC | GM | acc | mask rate | pseudo-label acc | wall s | images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['step']} | {pct(r['bacc'])} | {pct(r['gm'])} | {pct(r['acc'])} | {r.get('mask_rate', '')} | "
            f"{r.get('pseudo_acc', '')} | {r['wall_s']} | {r['images_per_s']} |"
        )
    (RESULTS / f"{args.preset}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
