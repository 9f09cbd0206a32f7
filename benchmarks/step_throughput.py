"""Training-step throughput of a full FixMatch step (sampling, augmentation, forward, backward,
optimiser, EMA) on the real CIFAR-10-LT split, for the given presets; median of several runs.

    python benchmarks/step_throughput.py --data-root ../shared/data --threads 2 \
        --preset paper-cifar10lt-fixmatch --preset cpu-cifar10lt-fixmatch

Writes benchmarks/results/step-throughput.md (table, exact command, machine, date) and prints it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shlex
import sys
import tempfile
from pathlib import Path

import torch
from speed import time_steps  # benchmarks/speed.py: the one timing loop

from dytrim.config import load_config
from dytrim.factory import build_trainer


def time_preset(spec: str, data_root: str, threads: int, steps: int, repeats: int) -> dict[str, object]:
    """`spec` = PRESET or PRESET:key=value,key=value (overrides for this row)."""
    preset, _, extra = spec.partition(":")
    overrides = [f"data.root={data_root}", f"train.threads={threads}", "train.progress=false"]
    cfg = load_config(preset, overrides + [o for o in extra.split(",") if o])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, Path(tmp))
        for _ in range(3):  # warm-up: allocator, kernels
            trainer.train_step()
        timing = time_steps(trainer.train_step, steps, repeats)
    images = cfg.train.batch_size * (1 + (cfg.train.uratio if trainer.ssl.uses_unlabeled else 0))
    med, per_step = timing.s_per_step, timing.runs
    return {
        "preset": spec,
        "model": cfg.model.name,
        "batch": f"{cfg.train.batch_size} lb + {cfg.train.batch_size * cfg.train.uratio} ulb x "
        f"(1 weak + {cfg.ssl.n_strong} strong)",
        "forward": cfg.train.forward,
        "channels_last": cfg.model.channels_last,
        "s_per_step": med,
        "images_per_s": images / med,
        "runs": [round(x, 4) for x in per_step],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", action="append", required=True, help="PRESET or PRESET:key=value,key=value")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed run")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "step-throughput.md"))
    args = ap.parse_args()
    rows = [time_preset(p, args.data_root, args.threads, args.steps, args.repeats) for p in args.preset]
    lines = [
        "# Training-step throughput (full FixMatch step on the real CIFAR-10-LT split)",
        "",
        f"- command: `python {shlex.join(sys.argv)}`",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"python {platform.python_version()}",
        f"- a step = sample + weak/strong augmentation on the device + forward + backward + Adam + EMA; "
        f"median of {args.repeats} runs of {args.steps} steps after 3 warm-up steps; images/s counts the "
        "labeled + unlabeled images of a step (each unlabeled image enters as 1 weak + n strong views)",
        "",
        "| preset | model | batch | forward | channels_last | s/step | images/s | runs (s/step) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['model']} | {r['batch']} | {r['forward']} | {r['channels_last']} | "
            f"{r['s_per_step']:.4f} | {r['images_per_s']:.1f} | {r['runs']} |"
        )
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
