"""Accuracy benchmark: train a named set of presets over seeds (or reuse finished runs) and tabulate.

    python benchmarks/accuracy.py --name cifar10lt-debias --data-root ../shared/data --seeds 0,1 \
        --presets cpu-cifar10lt-fixmatch,cpu-cifar10lt-la,cpu-cifar10lt-reweight,cpu-cifar10lt-cdmad

Run directories go to <runs-dir>/<preset>/seed<k>; one that already holds a summary.json is reused, not
retrained (so a table can be grown run by run). Writes benchmarks/results/accuracy-<name>.md and a JSON
twin: per preset, mean ± std over seeds of bACC and GM on the full test set (final evaluation), raw and
debiased, and of the mean of the last 20 evaluations; plus the baseline-image probe at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from results_file import write_results

from dytrim.engine.metrics_log import read_rows


def run_one(preset: str, seed: int, out: Path, data_root: str, extra: list[str]) -> dict[str, Any]:
    if not (out / "summary.json").exists():
        cmd = [sys.executable, "-m", "dytrim", "train", "--preset", preset, "--set", f"seed={seed}",
               "--set", f"data.root={data_root}", "--set", "train.progress=false", *extra, "--out", str(out)]
        if out.exists():  # an interrupted run: continue it
            cmd = [sys.executable, "-m", "dytrim", "train", "--resume", str(out)]
        subprocess.run(cmd, check=True)
    summary = json.loads((out / "summary.json").read_text())
    rows = read_rows(out / "metrics.jsonl")
    final = summary.get("full_test", rows[-1])
    rec: dict[str, Any] = {"preset": preset, "seed": seed, "dir": str(out), "steps": summary["steps"],
                           "wall_s": summary["wall_s"], "train_s": summary.get("train_s"),
                           "updates": summary.get("updates"), "samples_fwd": summary.get("samples_fwd"),
                           "samples_bwd": summary.get("samples_bwd")}
    for key in ("bacc", "gm", "bacc_debiased", "gm_debiased"):
        if key in final:
            rec[f"{key}_final"] = final[key]
            rec[f"{key}_mean_last20"] = summary[key]["mean_last20"]
    for key in ("kl_prior_labeled", "kl_prior_labeled_trainmode", "prior_baseline", "prior_baseline_trainmode"):
        rec[key] = final.get(key)
    return rec


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    m = 100 * statistics.fmean(values)
    s = 100 * statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{m:.2f} ± {s:.2f}" if len(values) > 1 else f"{m:.2f} (1 seed)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--presets", required=True, help="comma-separated preset names")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--runs-dir", default="runs/accuracy")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--finished-only", action="store_true",
                    help="train nothing: tabulate the runs that have finished and list the missing ones")
    ap.add_argument("--notes", type=Path, help="a text file appended under the tables (how the runs were made)")
    args = ap.parse_args()
    presets = [p for p in args.presets.split(",") if p]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    extra = [x for o in args.overrides for x in ("--set", o)]
    wanted = [(p, s, Path(args.runs_dir) / p / f"seed{s}") for p in presets for s in seeds]
    missing = [f"{p} seed {s}" for p, s, d in wanted if args.finished_only and not (d / "summary.json").exists()]
    records = [run_one(p, s, d, args.data_root, extra) for p, s, d in wanted
               if not args.finished_only or (d / "summary.json").exists()]
    lines = [
        f"# Accuracy: {args.name}",
        "",
        f"- command: `python {shlex.join(sys.argv)}`",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {platform.machine()}, "
        f"python {platform.python_version()}",
        "- EMA model. `final` = the final evaluation on the whole test set; `last20` = mean of the last 20 "
        "intermediate evaluations (on the preset's test subset). Mean ± std over seeds. Debiased = predictions "
        "after the run's eval-logit hooks (CDMAD: z(x) − z(I)).",
        "",
        "| preset | seeds | bACC final | GM final | bACC debiased final | GM debiased final | bACC last20 | "
        "bACC debiased last20 | KL(π(I) ‖ prior) eval / train BN |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in presets:
        rs = [r for r in records if r["preset"] == p]

        def col(key: str, rs: list[dict[str, Any]] = rs) -> str:
            return mean_std([r[key] for r in rs if key in r])

        kls = " / ".join(
            f"{statistics.fmean(v):.3f}" if (v := [r[k] for r in rs if r.get(k) is not None]) else "–"
            for k in ("kl_prior_labeled", "kl_prior_labeled_trainmode")
        )
        lines.append(
            f"| {p} | {','.join(str(r['seed']) for r in rs)} | {col('bacc_final')} | {col('gm_final')} | "
            f"{col('bacc_debiased_final')} | {col('gm_debiased_final')} | {col('bacc_mean_last20')} | "
            f"{col('bacc_debiased_mean_last20')} | {kls} |"
        )
    if missing:
        lines += ["", f"Not run yet (not in the table): {', '.join(missing)}."]
    lines += ["", "Per run (cost: optimiser updates and training images through forward / backward passes):", "",
              "| preset | seed | steps | updates | images fwd | images bwd | train s | train ms / update | wall s | "
              "run dir |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [
        f"| {r['preset']} | {r['seed']} | {r['steps']} | {r.get('updates') or '–'} | {r.get('samples_fwd') or '–'} | "
        f"{r.get('samples_bwd') or '–'} | {r['train_s'] or 0:.0f} | "
        f"{1000 * (r['train_s'] or 0) / (r.get('updates') or r['steps']):.1f} | {r['wall_s']:.0f} | `{r['dir']}` |"
        for r in records
    ]
    write_results(f"accuracy-{args.name}", lines, records, args.notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
