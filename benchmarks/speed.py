"""Speed benchmark: images/s of a FULL dytrim training step (sampling, augmentation, forward, backward,
optimiser, EMA) for FixMatch, FixMatch+CDMAD, DyTrim (fixed budget) and DyTrim with prune.budget=shrink,
with WRN-28-2 and the small CNN at the reference batch (32 labeled + 64 unlabeled, 2 strong views), on
synthetic CIFAR-shaped data; the achieved FLOP/s of each step against the best torch conv throughput on
the network's own conv shapes; and USB's FixMatch step (semilearn, in its own virtual environment) in the
same invocation, as a ratio against the same step in dytrim.

    python benchmarks/speed.py --threads 2            # the full run (writes benchmarks/results/speed.md)
    python benchmarks/speed.py --threads 2 --quick    # a few steps per row, for development

The full run takes about 25 minutes on a quiet 2-core machine, half of it priming the WRN-28-2 shrink row
(`--prime cnn` skips that and leaves its updates per clock step unmeasured). USB's side needs its own
virtual environment at --usb-python (see the results file); without it that part is skipped and said so.

Why synthetic data: the step's cost does not depend on pixel values, and the benchmark then runs anywhere
(USB sees the very same arrays). The arrays are written as a `cifar10.npz` in a temporary folder, so the
Trainer reads them through the real CIFAR reader and builds the real CIFAR-10-LT split (N1 1500, M1 3000,
gamma 100) from them: nothing in the library is patched.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dytrim.config import load_config
from dytrim.factory import build_trainer
from dytrim.models import create_model

HERE = Path(__file__).resolve().parent
USB_PYTHON = "/work/usb-venv/bin/python"
USB_FORWARD_BATCH = 32 + 64 + 64  # USB's one concatenated forward: labeled + weak + strong (usb_step.py defaults)


@dataclass(frozen=True)
class Row:
    """One benchmark row: a preset plus overrides, named model/method for --only."""

    model: str  # wrn | cnn
    method: str  # fixmatch | cdmad | dytrim | dytrim-shrink | fixmatch-usb
    preset: str
    overrides: tuple[str, ...] = ()
    prime: bool = False  # run until DyTrim's unlabeled list is re-chosen from real scores before timing

    @property
    def key(self) -> str:
        return f"{self.model}/{self.method}"


# Reference batch everywhere: the paper presets have it; the CPU presets (small CNN) use one strong view,
# so they get ssl.n_strong=2. debias.start=0 puts CDMAD / DyTrim in their debiasing phase from step 0.
_CNN = ("ssl.n_strong=2",)
_DEBIAS = ("debias.start=0",)
ROWS: list[Row] = [
    Row("wrn", "fixmatch", "paper-cifar10lt-fixmatch"),
    Row("wrn", "cdmad", "paper-cifar10lt-g100-cdmad", _DEBIAS),
    Row("wrn", "dytrim", "paper-cifar10lt-g100-dytrim", _DEBIAS),
    Row("wrn", "dytrim-shrink", "paper-cifar10lt-g100-dytrim", _DEBIAS + ("prune.budget=shrink",), prime=True),
    # the step USB runs (hard labels tau 0.95, SGD, one strong view, one concatenated forward), same batch
    Row("wrn", "fixmatch-usb", "usb-cifar10lt-fixmatch", ("train.batch_size=32",)),
    Row("wrn", "fixmatch-usb+cl", "usb-cifar10lt-fixmatch", ("train.batch_size=32", "model.channels_last=true")),
    Row("wrn", "fixmatch-usb+cl+compile", "usb-cifar10lt-fixmatch",
        ("train.batch_size=32", "model.channels_last=true", "train.compile=on")),
    # the speed settings on the paper step: memory format, bf16 autocast, torch.compile
    Row("wrn", "fixmatch+cl", "paper-cifar10lt-fixmatch", ("model.channels_last=true",)),
    Row("wrn", "fixmatch+bf16+cl", "paper-cifar10lt-fixmatch", ("model.channels_last=true", "train.precision=bf16")),
    Row("wrn", "fixmatch+cl+compile", "paper-cifar10lt-fixmatch", ("model.channels_last=true", "train.compile=on")),
    Row("wrn", "fixmatch+bf16+cl+compile", "paper-cifar10lt-fixmatch",
        ("model.channels_last=true", "train.precision=bf16", "train.compile=on")),
    Row("cnn", "fixmatch", "cpu-cifar10lt-fixmatch", _CNN),
    Row("cnn", "fixmatch+cl", "cpu-cifar10lt-fixmatch", _CNN + ("model.channels_last=true",)),
    Row("cnn", "fixmatch+bf16+cl", "cpu-cifar10lt-fixmatch",
        _CNN + ("model.channels_last=true", "train.precision=bf16")),
    Row("cnn", "cdmad", "cpu-cifar10lt-cdmad", _CNN + _DEBIAS),
    Row("cnn", "dytrim", "cpu-cifar10lt-dytrim", _CNN + _DEBIAS),
    Row("cnn", "dytrim-shrink", "cpu-cifar10lt-dytrim-shrink", _CNN + _DEBIAS, prime=True),
]


@dataclass
class Timing:
    """Median seconds per step over the timed runs, with the runs themselves."""

    s_per_step: float
    runs: list[float] = field(default_factory=list)


def _load_usb_step() -> Any:
    """benchmarks/usb_step.py as a module (it imports only numpy and torch at top level): one data generator."""
    spec = importlib.util.spec_from_file_location("usb_step", HERE / "usb_step.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_synthetic(folder: Path, seed: int) -> Path:
    """The synthetic arrays as `cifar10.npz` (CIFAR-10 layout, no MANIFEST so no hash check)."""
    data = _load_usb_step().synthetic_cifar(seed)
    path = folder / "cifar10.npz"
    np.savez(path, **data)
    return path


def time_steps(step: Callable[[], object], steps: int, repeats: int,
               sync: Callable[[], object] = lambda: None) -> Timing:
    """Median over `repeats` runs of the mean time of `steps` consecutive calls; `sync` waits for queued device
    work before each clock read (torch.cuda.synchronize on a GPU, nothing on a CPU)."""
    runs = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        runs.append((time.perf_counter() - t0) / steps)
    return Timing(statistics.median(runs), runs)


def count_flops(step: Callable[[], object]) -> tuple[int, dict[str, int]]:
    """FLOPs of one call as FlopCounterMode counts them (convolutions and matmuls, forward and backward; the
    augmentation ops are not counted: in a dytrim step they add under 1 kFLOP), total and per op."""
    with FlopCounterMode(display=False) as counter:
        step()
    ops = counter.get_flop_counts().get("Global", {})
    return int(counter.get_total_flops()), {str(k): int(v) for k, v in ops.items()}


def bench_row(row: Row, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Build the Trainer for a row on the synthetic data and time its full train_step."""
    overrides = [f"data.root={root}", f"train.threads={args.threads}", "train.progress=false", *row.overrides]
    cfg = load_config(row.preset, overrides)
    steps = args.wrn_steps if row.model == "wrn" else args.cnn_steps
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, Path(tmp))
        flops, flop_ops = count_flops(trainer.train_step)  # = the first warm-up step
        for _ in range(max(0, args.warmup - 1)):
            trainer.train_step()
        dytrim = next((c for c in trainer.components if c.name == "dytrim"), None)
        primed = 0
        if row.prime and dytrim is not None and args.prime in ("all", row.model):
            # the first unlabeled pass is always the full set; the second is chosen from the scores it stored
            limit = 4 * len(trainer.data.ulb_idx) // max(1, cfg.train.batch_size * cfg.train.uratio) + 10
            while dytrim.ulb_sampler.passes < 2 and primed < limit:
                trainer.train_step()
                primed += 1
        clock0, updates0 = trainer.clock, trainer.updates
        timing = time_steps(trainer.train_step, steps, args.repeats)
        d_clock, d_updates = trainer.clock - clock0, trainer.updates - updates0
        kept_ulb = None
        if dytrim is not None and dytrim.ulb_sampler is not None and len(dytrim.ulb_sampler.kept):
            kept_ulb = len(dytrim.ulb_sampler.kept) / len(trainer.data.ulb_idx)
        n_lb, n_ulb = cfg.train.batch_size, cfg.train.batch_size * cfg.train.uratio
        largest_fwd = n_lb + n_ulb * (1 + cfg.ssl.n_strong) if cfg.train.forward == "joint" else max(n_lb, n_ulb)
        res = {
            "key": row.key, "model": cfg.model.name, "method": row.method, "preset": row.preset,
            "precision": trainer.precision, "compiled": trainer.compiled,
            "overrides": list(row.overrides),
            "batch": f"{n_lb} lb + {n_ulb} ulb x (1 weak + {cfg.ssl.n_strong} strong), {cfg.train.forward} forward",
            "channels_last": cfg.model.channels_last, "largest_forward_batch": largest_fwd,
            "s_per_step": timing.s_per_step, "runs": timing.runs, "images_per_s": (n_lb + n_ulb) / timing.s_per_step,
            "updates_per_clock_step": d_updates / d_clock if d_clock > 0 else float("nan"),
            "clock_steps_per_s": d_clock / (d_updates * timing.s_per_step) if d_updates else float("nan"),
            "kept_ulb_frac": kept_ulb, "primed_steps": primed, "primed": bool(primed),
            "flops_per_step": flops, "flop_ops": flop_ops,
            "achieved_flops": flops / timing.s_per_step,
            "params": sum(p.numel() for p in trainer.model.parameters()),
            "lb_pool": len(trainer.data.lb_idx), "ulb_pool": len(trainer.data.ulb_idx),
        }
    return res


# ---------------------------------------------------------------------------------------- conv ceiling
def conv_shapes(model_name: str) -> list[dict[str, int]]:
    """Distinct Conv2d shapes of the network on a 32x32 input, with forward FLOPs per image."""
    model = create_model(model_name, 10)
    seen: dict[tuple[int, ...], dict[str, int]] = {}

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        assert isinstance(mod, nn.Conv2d)
        k = (mod.in_channels, mod.out_channels, mod.kernel_size[0], mod.kernel_size[1], mod.stride[0],
             mod.padding[0], mod.groups, inp[0].shape[2], inp[0].shape[3], int(mod.bias is not None))
        macs = mod.out_channels * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        fwd = 2 * macs * out.shape[2] * out.shape[3]
        seen.setdefault(k, {"cin": k[0], "cout": k[1], "k": k[2], "stride": k[4], "pad": k[5], "groups": k[6],
                            "h": k[7], "w": k[8], "bias": k[9], "fwd_flops_per_image": fwd, "count": 0})
        seen[k]["count"] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(2, 3, 32, 32))
    for h in handles:
        h.remove()
    return list(seen.values())


def conv_ceiling(model_name: str, batch: int, iters: int, repeats: int) -> dict[str, Any]:
    """Best measured FLOP/s of forward+backward (input and weight gradients) of the network's largest conv
    shapes alone at `batch`, in both memory formats: the throughput ceiling the step's convs could reach."""
    shapes = conv_shapes(model_name)
    top = max(s["fwd_flops_per_image"] for s in shapes)
    rows = []
    for s in (s for s in shapes if s["fwd_flops_per_image"] >= 0.99 * top):
        for fmt in (torch.contiguous_format, torch.channels_last):
            conv = nn.Conv2d(s["cin"], s["cout"], s["k"], s["stride"], s["pad"], groups=s["groups"],
                             bias=bool(s["bias"])).to(memory_format=fmt)
            x = torch.randn(batch, s["cin"], s["h"], s["w"]).contiguous(memory_format=fmt).requires_grad_(True)
            with torch.no_grad():
                g = torch.randn_like(conv(x))

            def once(conv: nn.Conv2d = conv, x: torch.Tensor = x, g: torch.Tensor = g) -> None:
                conv.weight.grad, x.grad = None, None
                conv(x).backward(g)

            flops, _ = count_flops(once)
            once()
            timing = time_steps(once, iters, repeats)
            rows.append({
                "shape": f"{s['cin']}->{s['cout']} k{s['k']} s{s['stride']} @ {s['h']}x{s['w']}",
                "batch": batch, "format": "channels_last" if fmt is torch.channels_last else "contiguous",
                "flops": flops, "s_per_iter": timing.s_per_step, "flops_per_s": flops / timing.s_per_step,
                "layers_of_this_shape": s["count"],
            })
    best = max(rows, key=lambda r: r["flops_per_s"])
    return {"batch": batch, "best_flops_per_s": best["flops_per_s"], "best": best, "rows": rows}


# ---------------------------------------------------------------------------------------- USB
def run_usb(args: argparse.Namespace, npz: Path) -> dict[str, Any]:
    """USB's FixMatch step in its own venv via benchmarks/usb_step.py; {'skipped': reason} when unavailable."""
    py = Path(args.usb_python)
    if args.no_usb:
        return {"skipped": "--no-usb given"}
    if not py.exists():
        return {"skipped": f"no USB virtual environment at {py} (create it as the results file describes)"}
    cmd = [str(py), str(HERE / "usb_step.py"), "--json", "--threads", str(args.threads), "--warmup", str(args.warmup),
           "--steps", str(args.wrn_steps), "--repeats", str(args.repeats), "--workers", str(args.usb_workers),
           "--data", str(npz)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=args.usb_timeout)
        except subprocess.TimeoutExpired:
            return {"skipped": f"USB harness did not finish within --usb-timeout {args.usb_timeout:.0f} s",
                    "command": shlex.join(cmd)}
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        return {"skipped": f"USB harness failed (exit {proc.returncode}): {tail}", "command": shlex.join(cmd)}
    out = json.loads(lines[-1])
    out["command"] = shlex.join(cmd)
    return out


# ---------------------------------------------------------------------------------------- report
def machine() -> dict[str, Any]:
    """CPU model and flags, cores, torch build facts and the load average (a loaded machine makes numbers
    meaningless)."""
    from dytrim.engine.accel import cpu_facts, cpu_has_bf16

    return {**cpu_facts(), "bf16_hardware": cpu_has_bf16(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "mkldnn": torch.backends.mkldnn.is_available(),
            "load": os.getloadavg()}


def _g(x: float) -> str:
    return f"{x / 1e9:.1f}"


def render(rows: list[dict[str, Any]], ceilings: dict[int, dict[str, Any]], usb: dict[str, Any],
           args: argparse.Namespace, m0: dict[str, Any], load_end: tuple[float, ...], wall: float) -> str:
    """The results markdown."""
    lines = ["# Training-step speed (full step, CPU): dytrim rows, conv ceiling, USB side by side", ""]
    if args.quick:
        lines += ["> **DEVELOPMENT RUN (`--quick`, a handful of steps) on a loaded machine: these numbers are not the",
                  "> benchmark.** This file is overwritten by the final run (the full command below without `--quick`,",
                  "> on a quiet machine).", ""]
    # busy = other work: at the start, or at the end beyond this run's own threads (the 1-min average counts them)
    cores = m0["cores"] or 1
    loaded = m0["load"][0] > 0.5 * cores or load_end[0] - args.threads > 0.5 * max(1, cores - args.threads)
    lines += [
        f"- command: `python {shlex.join(sys.argv)}`",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; wall time of the run "
        f"{wall / 60:.1f} min",
        f"- machine: {m0['cpu']}, {m0['cores']} logical cores, {args.threads} torch threads; torch {m0['torch']} "
        f"(oneDNN {'on' if m0['mkldnn'] else 'off'}), python {m0['python']}, {platform.machine()}",
        f"- load average (1 min) at start {m0['load'][0]:.2f}, at end {load_end[0]:.2f}"
        + (" — **the machine was busy: timings are inflated and noisy**" if loaded else ""),
        "- data: synthetic CIFAR-shaped uint8 32x32x3 noise, 10 classes x 5,000 (written as a cifar10.npz and read "
        "by the library's own reader), the CIFAR-10-LT split N1 1500, M1 3000, gamma 100 (3,720 labeled, 11,163 "
        "unlabeled); USB gets the same arrays",
        f"- a step = sample + weak/strong augmentation + forward + backward + optimiser + EMA (`Trainer.train_step`); "
        f"{args.warmup} warm-up step(s) (the first under `FlopCounterMode`, untimed), then {args.repeats} timed "
        f"run(s) of {args.wrn_steps} (WRN) / {args.cnn_steps} (CNN) steps; s/step = median over runs; images/s = "
        "(labeled + unlabeled images of a step) / (s/step), each unlabeled image entering as 1 weak + n strong views",
        "",
        "## dytrim",
        "",
        "| row | preset + overrides | batch | s/step | images/s | updates per clock step | clock steps/s | "
        "GFLOP/step | achieved GFLOP/s | conv ceiling GFLOP/s | efficiency | runs (s/step) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ceil = ceilings.get(r["largest_forward_batch"]) if r["model"] == "wrn_28_2" else None
        eff = f"{r['achieved_flops'] / ceil['best_flops_per_s']:.0%}" if ceil else "—"
        ceil_s = f"{_g(ceil['best_flops_per_s'])} (batch {ceil['batch']})" if ceil else "—"
        upc = r["updates_per_clock_step"]
        if "dytrim-shrink" in r["key"] and not r["primed"]:
            upc_s = f"{upc:.3f} (not primed: first, unpruned pass)"
        elif "dytrim-shrink" in r["key"]:
            upc_s = f"**{upc:.3f}** (kept {r['kept_ulb_frac']:.1%} of U after {r['primed_steps']} priming steps)"
        else:
            upc_s = f"{upc:.3f}"
        over = ", ".join(r["overrides"]) or "—"
        lines.append(
            f"| {r['key']} | {r['preset']} ({over}) | {r['batch']} | {r['s_per_step']:.4f} | {r['images_per_s']:.1f} | "
            f"{upc_s} | {r['clock_steps_per_s']:.3f} | {_g(r['flops_per_step'])} | {_g(r['achieved_flops'])} | "
            f"{ceil_s} | {eff} | {[round(x, 4) for x in r['runs']]} |"
        )
    lines += [
        "",
        "Updates per clock step: optimiser updates per step of the schedule clock during the timed runs (1 unless "
        "`prune.budget=shrink`, where one update stands for |U| / |kept U| clock steps); clock steps/s = the "
        "training progress per second that results. The shrink row's value depends on the stored scores, so it "
        "is measured after priming: steps are run until DyTrim's unlabeled sampler has finished its first "
        "(always full) pass and chosen a kept list from the scores of that pass. On noise images a barely "
        "trained network's scores are near-symmetric about their mean; a trained network's are skewed, so "
        "real runs keep fewer samples. The fixed-budget DyTrim row is timed without priming: its batches have "
        "the same size whatever is kept, so its per-update cost does not depend on it.",
        "",
        "## Conv ceiling: torch conv2d forward + backward alone, the WRN-28-2's largest conv shapes",
        "",
        "FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (2 per multiply-add) over one whole step "
        "(the model's convolutions and linears, forward and backward, including the no-grad weak pass and CDMAD's "
        "baseline-image pass; it counts no augmentation op) and over one forward + backward of the single layer "
        "(forward, input gradient, weight gradient). The ceiling "
        "of a row is the best single-layer FLOP/s at the row's largest forward batch; efficiency = achieved "
        "FLOP/s of the whole step / ceiling.",
        "",
        "| shape (cin->cout kernel stride @ input) | layers | batch | memory format | GFLOP | s/iter | GFLOP/s |",
        "|---|---|---|---|---|---|---|",
    ]
    if not ceilings:
        lines.append("| (no WRN-28-2 row in this run) | | | | | | |")
    for c in ceilings.values():
        for x in c["rows"]:
            lines.append(f"| {x['shape']} | {x['layers_of_this_shape']} | {x['batch']} | {x['format']} | "
                         f"{_g(x['flops'])} | {x['s_per_iter']:.4f} | {_g(x['flops_per_s'])} |")
    lines += ["", "## USB (semilearn) FixMatch, side by side", ""]
    if "skipped" in usb:
        lines += [f"**USB was not timed in this run: {usb['skipped']}** No ratio is reported.", ""]
    else:
        matches = [r for r in rows if r["key"].startswith("wrn/fixmatch-usb")]
        match = matches[0] if matches else None
        ceil = ceilings.get(USB_FORWARD_BATCH)
        usb_eff = f"{usb['flops_per_step'] / usb['s_per_step'] / ceil['best_flops_per_s']:.0%}" if ceil else "—"
        lines += [
            f"- semilearn {usb['semilearn']}, torch {usb['torch']}, torchvision {usb['torchvision']} (own venv "
            f"`{args.usb_python}`), {usb['threads']} threads, DataLoader workers {usb['workers']}",
            f"- harness: `{usb['command']}`",
            f"- USB's WRN-28-2: {usb['model_params']:,} parameters"
            + (f" (dytrim's: {match['params']:,})" if match else "")
            + f"; pools {usb['lb_pool']:,} labeled / {usb['ulb_pool']:,} unlabeled",
            "",
            "| library | step | s/step | of which USB's data loader | images/s | GFLOP/step | achieved GFLOP/s | "
            "efficiency | runs (s/step) | images/s vs USB |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| USB | FixMatch, {usb['batch']} | {usb['s_per_step']:.4f} | {usb['data_s_per_step']:.4f} | "
            f"{usb['images_per_s']:.1f} | {_g(usb['flops_per_step'])} | "
            f"{_g(usb['flops_per_step'] / usb['s_per_step'])} | {usb_eff} | {[round(x, 4) for x in usb['runs']]} | "
            "1.00x |",
        ]
        for m in matches:
            lines.append(
                f"| dytrim | {m['key']} ({', '.join(m['overrides']) or '—'}): {m['batch']} | "
                f"{m['s_per_step']:.4f} | — | "
                f"{m['images_per_s']:.1f} | {_g(m['flops_per_step'])} | {_g(m['achieved_flops'])} | "
                f"{'—' if not ceil else format(m['achieved_flops'] / ceil['best_flops_per_s'], '.0%')} | "
                f"{[round(x, 4) for x in m['runs']]} | {m['images_per_s'] / usb['images_per_s']:.2f}x |"
            )
        if matches:
            dev = " (development run on a loaded machine: not a result)" if args.quick else ""
            best = max(matches, key=lambda m: m["images_per_s"])
            lines += ["", f"**Ratio dytrim / USB (images/s of the same FixMatch step, same batch, same data): "
                      f"{match['images_per_s'] / usb['images_per_s']:.2f}x as USB runs (fp32 eager); "
                      f"{best['images_per_s'] / usb['images_per_s']:.2f}x with {best['key']}**{dev}", ""]
        else:
            lines += ["", "(the matched dytrim row wrn/fixmatch-usb was not run, so no ratio)", ""]
        lines += [
            "The matched dytrim row runs USB's recipe (hard pseudo-labels with tau 0.95, SGD nesterov + cosine, "
            "one strong view, one concatenated forward of 32 + 64 + 64 images) at the same batch. USB's step is "
            "the body of its `AlgorithmBase.train` loop: its DataLoaders (PIL + torchvision transforms, "
            "RandAugment(3, 5)), `train_step`, and the `after_train_step` hooks (backward, SGD step, scheduler, "
            "EMA). What the harness had to adapt to run USB on this CPU torch (none of it is in the timed work):",
            "",
            *[f"- {n}" for n in usb["shims"]],
            "- `process_batch` without its `.cuda()` move; `TimerHook` (CUDA events, logging only) not registered",
            "",
        ]
    lines += [
        "## Reproduce",
        "",
        "USB lives in its own virtual environment, never in the project's (nor its CI):",
        "",
        "```bash",
        "python3 -m venv /work/usb-venv",
        "/work/usb-venv/bin/pip install torch==2.13.0          # the CPU wheel",
        "/work/usb-venv/bin/pip install --no-deps semilearn==0.3.2 torchvision==0.28.0 timm",
        "/work/usb-venv/bin/pip install numpy pillow tqdm scikit-learn scikit-image ruamel.yaml progress \\",
        "    tensorboard transformers huggingface_hub safetensors pyyaml",
        f"python benchmarks/speed.py --threads {args.threads}    # the full run, on a quiet machine",
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (both libraries)")
    ap.add_argument("--quick", action="store_true", help="development: 1 warm-up, 1 timed run, few steps, no priming")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per row (the first counts FLOPs)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per row; the median is reported")
    ap.add_argument("--wrn-steps", type=int, default=5, help="steps per timed run, WRN-28-2 rows and USB")
    ap.add_argument("--cnn-steps", type=int, default=20, help="steps per timed run, small-CNN rows")
    ap.add_argument("--prime", choices=("all", "cnn", "wrn", "none"), default=None,
                    help="which dytrim-shrink rows run to DyTrim's first re-selection before timing (default all; "
                    "none with --quick)")
    ap.add_argument("--ceiling-iters", type=int, default=5, help="conv iterations per timed run (ceiling)")
    ap.add_argument("--only", action="append", default=[], help="run rows whose key (e.g. wrn/cdmad) contains this")
    ap.add_argument("--usb-python", default=USB_PYTHON, help="python of USB's own virtual environment")
    ap.add_argument("--usb-workers", type=int, default=0, help="USB DataLoader workers (0: augment in-process)")
    ap.add_argument("--usb-timeout", type=float, default=3600.0, help="seconds before the USB harness is abandoned")
    ap.add_argument("--no-usb", action="store_true", help="skip the USB side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "speed.md"))
    args = ap.parse_args()
    if args.quick:
        args.warmup, args.repeats, args.wrn_steps, args.cnn_steps = 1, 1, 1, 3
        args.ceiling_iters = 2
    if args.prime is None:
        args.prime = "none" if args.quick else "all"
    torch.set_num_threads(args.threads)
    m0, t_start = machine(), time.perf_counter()
    selected = [r for r in ROWS if not args.only or any(s in r.key for s in args.only)]
    with tempfile.TemporaryDirectory() as tmp:
        npz = write_synthetic(Path(tmp), args.seed)
        rows = []
        for row in selected:
            print(f"[speed] {row.key} ...", file=sys.stderr, flush=True)
            rows.append(bench_row(row, Path(tmp), args))
            r = rows[-1]
            print(f"[speed] {row.key}: {r['s_per_step']:.3f} s/step, {r['images_per_s']:.1f} images/s", file=sys.stderr)
        batches = sorted({r["largest_forward_batch"] for r in rows if r["model"] == "wrn_28_2"})
        want_usb = not args.only or any("usb" in s for s in args.only)
        if want_usb and not args.no_usb:
            batches = sorted(set(batches) | {USB_FORWARD_BATCH})
        torch.set_num_threads(args.threads)
        ceilings = {}
        for b in batches:
            print(f"[speed] conv ceiling at batch {b} ...", file=sys.stderr, flush=True)
            ceilings[b] = conv_ceiling("wrn_28_2", b, args.ceiling_iters, max(3, args.repeats))
        if want_usb:
            print("[speed] USB FixMatch (subprocess) ...", file=sys.stderr, flush=True)
            usb = run_usb(args, npz)
        else:
            usb = {"skipped": "not selected by --only"}
    text = render(rows, ceilings, usb, args, m0, os.getloadavg(), time.perf_counter() - t_start)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
