"""GPU check in one command: about 8 minutes on one H100, writing JSON + markdown to --out.

    # on the CPU machine, once: the CIFAR-10-LT (gamma 100) split's images + 2,000 test images, ~40 MB
    python benchmarks/gpu_check.py --make-data gpu_data --data-root ../shared/data
    # on the GPU machine (the `device` tool, carrying gpu_data/):
    python benchmarks/gpu_check.py --data gpu_data --out $OUT/gpu_check
    # anywhere, in a minute: every part end to end on a tiny scale (CPU when there is no GPU)
    python benchmarks/gpu_check.py --smoke --out /tmp/gpu_smoke

(a) runs the tests marked `gpu` (tests/test_gpu.py: training in fp32 / bf16, exact resume from checkpoints mapped
onto the GPU, deterministic index writes, eval / predict on CUDA); (b) times the full training step of the paper
preset (WRN-28-2, reference batch 32 labeled + 64 unlabeled x (weak + 2 strong), synthetic CIFAR-shaped data on
the device) in fp32 / bf16, eager / compiled, channels_last, and the USB-style step (one joint forward, one strong
view: dytrim's step as USB runs it); (c) trains `paper-cifar10lt-g100-dytrim` on the real split for
--train-seconds and reports steps/s and the bACC curve (test subset). Timings synchronise the device.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# (name, preset, overrides): the paper step in each setting, and USB's step shape
TIMING_ROWS: list[tuple[str, str, tuple[str, ...]]] = [
    ("paper step, fp32 eager", "paper-cifar10lt-fixmatch", ("train.precision=fp32",)),
    ("paper step, bf16 eager", "paper-cifar10lt-fixmatch", ("train.precision=bf16",)),
    ("paper step, bf16 channels_last", "paper-cifar10lt-fixmatch",
     ("train.precision=bf16", "model.channels_last=true")),
    ("paper step, bf16 channels_last compiled", "paper-cifar10lt-fixmatch",
     ("train.precision=bf16", "model.channels_last=true", "train.compile=on")),
    ("paper step, fp32 compiled", "paper-cifar10lt-fixmatch", ("train.precision=fp32", "train.compile=on")),
    ("USB-style step (joint forward, 1 strong view), fp32 eager", "usb-cifar10lt-fixmatch",
     ("train.batch_size=32", "train.precision=fp32")),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> dict[str, Any]:
    from dytrim.engine.accel import cpu_facts

    info: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                            "torch": torch.__version__, "python": platform.python_version(), **cpu_facts()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info |= {"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                 "capability": f"{p.major}.{p.minor}", "bf16": torch.cuda.is_bf16_supported(),
                 "cuda": torch.version.cuda}
    return info


def run_tests(smoke: bool, timeout: int) -> dict[str, Any]:
    """(a) The gpu-marked tests, in a subprocess; their closing line and exit code."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", str(ROOT / "tests")]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        tail, code = (res.stdout + res.stderr).strip().splitlines()[-12:], res.returncode
    except subprocess.TimeoutExpired:
        tail, code = [f"timed out after {timeout} s"], -1
    secs = round(time.perf_counter() - t0, 1)
    return {"command": " ".join(cmd[2:]), "exit_code": code, "tail": tail, "seconds": secs,
            "ok": code in (0, 5) if smoke else code == 0}


def time_row(name: str, preset: str, overrides: tuple[str, ...], root: Path, device: torch.device,
             steps: int, repeats: int, warmup: int, smoke: bool) -> dict[str, Any]:
    """(b) Median seconds per full training step (sampling, augmentation, forward, backward, optimiser, EMA)."""
    from speed import time_steps

    from dytrim.config import load_config
    from dytrim.factory import build_trainer

    extra = ["model.name=cnn_small", "train.threads=1"] if smoke else []
    cfg = load_config(preset, [f"data.root={root}", f"train.device={device}", "train.progress=false",
                               "train.deterministic=false", *overrides, *extra])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, Path(tmp))
        t0 = time.perf_counter()
        for _ in range(warmup):  # includes compilation where compiled
            trainer.train_step()
        _sync(device)
        warm_s = time.perf_counter() - t0
        timing = time_steps(trainer.train_step, steps, repeats, sync=lambda: _sync(device))
        fell_back = getattr(trainer.forward_fn, "fn", "n/a") is None
    s, runs = timing.s_per_step, timing.runs
    n_img = cfg.train.batch_size * (1 + cfg.train.uratio)
    return {"name": name, "preset": preset, "overrides": list(overrides) + extra, "ms_per_step": round(1000 * s, 2),
            "images_per_s": round(n_img / s, 1), "runs_ms": [round(1000 * r, 2) for r in runs],
            "warmup_s": round(warm_s, 1), "precision": trainer.precision, "compiled": trainer.compiled,
            "compile_fell_back": fell_back, "hours_for_250k": round(250_000 * s / 3600, 2)}


def train_for(seconds: float, data: Path, device: torch.device, settings: list[str], eval_every: int,
              smoke: bool) -> dict[str, Any]:
    """(c) paper-cifar10lt-g100-dytrim on the real split for `seconds`: steps/s and the bACC curve."""
    from dytrim.config import load_config
    from dytrim.factory import build_trainer

    extra = ["model.name=cnn_small", "debias.start=20", "train.threads=1"] if smoke else []
    cfg = load_config("paper-cifar10lt-g100-dytrim", [f"data.root={data}", f"train.device={device}",
                                                      "train.progress=false", *settings, *extra])
    curve = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, Path(tmp))
        t0, t_eval = time.perf_counter(), 0.0
        while time.perf_counter() - t0 - t_eval < seconds:
            trainer.train_step()
            if trainer.step % eval_every == 0:
                _sync(device)
                te = time.perf_counter()
                row = trainer.evaluate()
                t_eval += time.perf_counter() - te
                curve.append({"step": trainer.step, "bacc": round(row["bacc"], 4), "gm": round(row["gm"], 4),
                              "train_s": round(time.perf_counter() - t0 - t_eval, 1)})
        _sync(device)
        train_s = time.perf_counter() - t0 - t_eval
    return {"preset": "paper-cifar10lt-g100-dytrim", "settings": settings + extra, "steps": trainer.step,
            "train_s": round(train_s, 1), "steps_per_s": round(trainer.step / train_s, 2),
            "eval_images": int(len(trainer.data.eval_idx)), "curve": curve}


def make_data(out: Path, data_root: Path, test_per_class: int = 200) -> Path:
    """The CIFAR-10-LT (gamma 100, paper pool) split's training images in file order, which the paper split
    rebuilds identically (per class, the first N_k + M_k images), plus a class-balanced test subset."""
    from dytrim.config import load_config
    from dytrim.data.cifar import read_cifar
    from dytrim.data.sources import split_counts

    arrays = read_cifar(data_root / "cifar10.npz" if (data_root / "cifar10.npz").exists() else data_root)
    cfg = load_config("paper-cifar10lt-g100-dytrim", [f"data.root={data_root}"])
    lb, ulb = split_counts(cfg.data, 10)
    keep = np.sort(np.concatenate([np.flatnonzero(arrays.y_train == c)[: lb[c] + ulb[c]] for c in range(10)]))
    test = np.sort(np.concatenate([np.flatnonzero(arrays.y_test == c)[:test_per_class] for c in range(10)]))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "cifar10.npz"
    np.savez_compressed(path, x_train=arrays.x_train[keep], y_train=arrays.y_train[keep],
                        x_test=arrays.x_test[test], y_test=arrays.y_test[test])
    return path


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# GPU check ({m.get('gpu', 'no GPU: CPU smoke run')}, {m['date']})", "",
             f"Command: `{report['command']}`  ", f"Machine: {json.dumps(m)}", ""]
    t = report.get("tests")
    if t:
        lines += ["## (a) tests marked gpu", "", f"`{t['command']}`: exit {t['exit_code']} in {t['seconds']} s", "",
                  "```", *t["tail"], "```", ""]
    if report.get("timing"):
        lines += ["## (b) full training step (synthetic data on the device)", "",
                  "| row | ms / step | images / s | precision | compiled | 250k steps (h) | warm-up s |",
                  "|---|---|---|---|---|---|---|"]
        for r in report["timing"]:
            comp = "fell back" if r["compile_fell_back"] is True else str(r["compiled"])
            lines.append(f"| {r['name']} | {r['ms_per_step']} | {r['images_per_s']} | {r['precision']} | {comp} | "
                         f"{r['hours_for_250k']} | {r['warmup_s']} |")
        lines.append("")
    tr = report.get("train")
    if tr:
        lines += [f"## (c) {tr['preset']} for {tr['train_s']} s of training", "",
                  f"{tr['steps']} steps, {tr['steps_per_s']} steps/s; settings {tr['settings']}; bACC on "
                  f"{tr['eval_images']} test images:", "", "| step | bACC | GM | train s |", "|---|---|---|---|"]
        lines += [f"| {c['step']} | {c['bacc']} | {c['gm']} | {c['train_s']} |" for c in tr["curve"]]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--data", type=Path, help="folder with the cifar10.npz of --make-data (for part c)")
    ap.add_argument("--make-data", type=Path, metavar="DIR", help="write the split's arrays to DIR and exit")
    ap.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--smoke", action="store_true", help="tiny scale, CPU without a GPU: checks that it runs")
    ap.add_argument("--train-seconds", type=float, default=180.0)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: tests,timing,train")
    args = ap.parse_args()
    if args.make_data:
        print(make_data(args.make_data, args.data_root))
        return 0
    if not args.out:
        ap.error("--out is required")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    skip = set(filter(None, args.skip.split(",")))
    report: dict[str, Any] = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "machine": machine(device)}
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every part: a time-out still leaves what was measured
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
        (args.out / "gpu_check.md").write_text(render(report))

    if "tests" not in skip:
        report["tests"] = run_tests(args.smoke, timeout=120 if args.smoke else 240)
        save()
    if "timing" not in skip:
        steps, repeats, warmup = (2, 2, 1) if args.smoke else (20, 3, 5)
        report["timing"] = []
        with tempfile.TemporaryDirectory() as tmp:
            sys.path.insert(0, str(HERE))
            from speed import write_synthetic

            write_synthetic(Path(tmp), seed=0)
            for name, preset, overrides in TIMING_ROWS:
                if args.smoke and "compile" in " ".join(overrides):
                    continue  # compiling costs minutes on a CPU; the GPU run times it
                report["timing"].append(time_row(name, preset, overrides, Path(tmp), device, steps, repeats, warmup,
                                                 args.smoke))
                save()
    if "train" not in skip:
        if args.data is None and not args.smoke:
            ap.error("--data is required for part c (see --make-data), or --skip train")
        data = args.data or args.data_root
        settings = ["train.precision=auto", "model.channels_last=true", "data.eval_subset=1000"]
        report["train"] = train_for(10.0 if args.smoke else args.train_seconds, data, device, settings,
                                    eval_every=2 if args.smoke else 500, smoke=args.smoke)
        save()
    save()
    print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
