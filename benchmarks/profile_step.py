"""Where a training step's time goes: sampling + augmentation, model forward, backward, optimiser, EMA, debiasing
hooks and the rest (loss, bookkeeping), as shares of the full step, measured with torch.profiler ranges around
the Trainer's own parts (nothing in the library is changed; the ranges are added by wrapping its methods).

    python benchmarks/profile_step.py --preset cpu-cifar10lt-fixmatch --threads 1 --steps 20
    python benchmarks/profile_step.py --preset paper-cifar10lt-fixmatch --threads 1 --steps 3 \
        --set model.channels_last=true

Synthetic CIFAR-shaped data (as benchmarks/speed.py: the cost does not depend on pixel values). Appends a
section to benchmarks/results/profile-step.md with the command, machine and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
PARTS = ("sampling + augmentation", "model forward", "backward", "optimiser", "EMA", "debias hooks")


def _timed(name: str, fn: Callable[..., Any], totals: dict[str, float]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        with torch.profiler.record_function(f"dytrim::{name}"):
            out = fn(*a, **k)
        totals[name] += time.perf_counter() - t0
        return out

    return wrapper


def profile(preset: str, overrides: list[str], steps: int, warmup: int, threads: int) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from speed import write_synthetic

    from dytrim.config import load_config
    from dytrim.factory import build_trainer

    torch.set_num_threads(threads)
    totals = dict.fromkeys(PARTS, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(Path(tmp), seed=0)
        cfg = load_config(preset, [f"data.root={tmp}", "train.progress=false", f"train.threads={threads}",
                                   "debias.start=0", *overrides])
        tr = build_trainer(cfg, Path(tmp) / "run")
        for _ in range(warmup):
            tr.train_step()
        tr._views = _timed("sampling + augmentation", tr._views, totals)
        tr._forward = _timed("model forward", tr._forward, totals)
        tr.optimizer.step = _timed("optimiser", tr.optimizer.step, totals)
        tr.ema.update = _timed("EMA", tr.ema.update, totals)
        for c in tr.components:
            for hook in ("before_step", "weight", "pseudo_logits", "weight_unlabeled", "train_logits", "observe"):
                setattr(c, hook, _timed("debias hooks", getattr(c, hook), totals))
        real_backward = torch.autograd.backward
        torch.autograd.backward = _timed("backward", real_backward, totals)
        try:
            t0 = time.perf_counter()
            for _ in range(steps):
                tr.train_step()
            total = time.perf_counter() - t0
        finally:
            torch.autograd.backward = real_backward
    share = {k: v / total for k, v in totals.items()}
    share["rest (losses, pseudo-labels, bookkeeping)"] = 1.0 - sum(share.values())
    return {"preset": preset, "overrides": overrides, "model": cfg.model.name, "steps": steps,
            "s_per_step": total / steps, "share": share,
            "model_share": share["model forward"] + share["backward"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu-cifar10lt-fixmatch")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "profile-step.md")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from speed import machine

    r = profile(args.preset, args.overrides, args.steps, args.warmup, args.threads)
    m = machine()
    lines = [f"## {r['preset']} ({r['model']}) {' '.join(r['overrides'])}", "",
             f"`python benchmarks/profile_step.py {' '.join(sys.argv[1:])}`, {dt.date.today()}, {m['cpu']} "
             f"(flags {', '.join(m['cpu_flags'])}), {args.threads} thread(s), load average {m['load'][0]:.1f}: "
             f"{1000 * r['s_per_step']:.1f} ms per step over {r['steps']} steps", "",
             "| part | share of the step |", "|---|---|"]
    lines += [f"| {k} | {100 * v:.1f} % |" for k, v in r["share"].items()]
    lines += ["", f"Model forward + backward: **{100 * r['model_share']:.1f} %** of the step.", "", ""]
    text = "\n".join(lines)
    if not args.out.exists():
        args.out.write_text("# Where a training step's time goes\n\nWritten by benchmarks/profile_step.py; each "
                            "section names its command, machine and date.\n\n")
    with args.out.open("a") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
