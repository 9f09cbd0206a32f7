"""USB (Microsoft's semilearn 0.3.2) FixMatch training-step throughput on synthetic CIFAR-shaped data.

Runs inside USB's own virtual environment, never in the project's; benchmarks/speed.py calls it as a
subprocess so the two libraries are timed side by side in one invocation:

    /work/usb-venv/bin/python benchmarks/usb_step.py --threads 2 --warmup 3 --steps 5 --repeats 5 --json

USB's own code builds everything: `get_cifar` (its split, its weak/strong torchvision + RandAugment(3, 5)
transforms, `BasicDataset`), `get_data_loader`, the WRN-28-2 of `semilearn.nets`, SGD + cosine schedule
and the hooks. A timed step is exactly the body of `AlgorithmBase.train`: draw the next labeled and
unlabeled batches from USB's loaders (PIL augmentation), `before_train_step` hooks, `train_step`
(one concatenated forward, losses), `after_train_step` hooks (backward, SGD step, scheduler, EMA update).

What is adapted to run here on a CPU, and why none of it changes the measured step (reported in the JSON):
- torchvision: the index's wheels are CUDA builds whose `_C` extension needs libtorch_cuda.so, absent from
  the CPU torch, so its custom ops (nms, roi_align, ...) are undefined and `torchvision/_meta_registrations.py`
  fails at import on `register_fake("torchvision::nms")`. We declare the schemas of `torchvision::nms` and
  `torchvision::qnms` (no kernels) so the import completes. FixMatch never calls detection ops; the
  transforms it uses are pure Python on PIL images.
- aim, wandb (experiment trackers, used only with use_aim / use_wandb) and torchaudio (audio data sets;
  no release for this torch exists on the index) are imported at package import and never used by a CIFAR
  FixMatch step: they are replaced by modules that raise on any attribute access, so a use would fail loudly.
- `process_batch` moves tensors with `.cuda()`; on a CPU the same selection of arguments is kept on the CPU.
- `TimerHook` records CUDA events (its only job: logging prefetch/run times) and is not registered.
- The data set: `torchvision.datasets.CIFAR10` (which USB's `get_cifar` would download) is replaced by the
  synthetic arrays; split and transforms are USB's.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import inspect
import json
import statistics
import sys
import tempfile
import time
import types
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

_KEEP: list[Any] = []  # keeps the torch.library fragment alive (its schemas vanish with it)


def synthetic_cifar(seed: int = 0, per_class: int = 5000, test_per_class: int = 100) -> dict[str, np.ndarray]:
    """Uniform-noise uint8 images [N, 32, 32, 3] with 10 balanced classes, in CIFAR-10 file layout."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (10 * per_class, 32, 32, 3), dtype=np.uint8),
        "y_train": np.repeat(np.arange(10, dtype=np.int64), per_class),
        "x_test": rng.integers(0, 256, (10 * test_per_class, 32, 32, 3), dtype=np.uint8),
        "y_test": np.repeat(np.arange(10, dtype=np.int64), test_per_class),
    }


def _raising_module(name: str) -> types.ModuleType:
    """A stand-in module for an unused import: any attribute use raises, so a real use cannot go unnoticed."""
    mod = types.ModuleType(name)

    def _getattr(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise RuntimeError(f"benchmark stub: '{name}.{attr}' was used, so the USB timing would be invalid")

    mod.__getattr__ = _getattr  # type: ignore[method-assign]
    return mod


def install_shims() -> list[str]:
    """Make `import semilearn` work beside the CPU torch; returns what was done, with the original errors."""
    notes: list[str] = []
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("torchvision is not installed in this environment (semilearn imports it)")
    libs = sorted(Path(next(iter(spec.submodule_search_locations))).glob("_C*.so"))
    try:
        for lib in libs:
            torch.ops.load_library(str(lib))
        ext_ok = bool(libs)
    except OSError as exc:
        ext_ok = False
        try:  # torch's message is generic; the dynamic loader names the missing library
            ctypes.CDLL(str(lib))
            why = str(exc)
        except OSError as dl_exc:
            why = str(dl_exc)
        notes.append(f"torchvision {_version('torchvision')} extension {lib.name} does not load: {why}")
    if not ext_ok:
        frag = torch.library.Library("torchvision", "FRAGMENT")
        frag.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        frag.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _KEEP.append(frag)
        notes.append("declared schemas torchvision::nms, torchvision::qnms (no kernels; detection ops, unused)")
    import transformers  # noqa: F401  (imported before any stub, so its availability probes see the truth)

    for name in ("aim", "wandb", "torchaudio"):
        if importlib.util.find_spec(name) is None:
            sys.modules[name] = _raising_module(name)
            notes.append(f"'{name}' not installed: raising stand-in module (imported by semilearn, unused here)")
    return notes


def build_fixmatch(data: dict[str, np.ndarray], args: argparse.Namespace, save_dir: str) -> Any:
    """USB's FixMatch with WRN-28-2 on the synthetic arrays, built by USB's own config, data and model code."""
    import torchvision
    from semilearn import get_config, get_net_builder
    from semilearn.algorithms.fixmatch import FixMatch

    class SyntheticCIFAR10:
        """Stands in for torchvision.datasets.CIFAR10 (which USB's get_cifar would download)."""

        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            key = "train" if train else "test"
            self.data, self.targets = data[f"x_{key}"], data[f"y_{key}"].tolist()

    torchvision.datasets.CIFAR10 = SyntheticCIFAR10  # type: ignore[misc,assignment]

    class CPUFixMatch(FixMatch):
        """USB's FixMatch; only the CUDA-only pieces are changed (see the module docstring)."""

        def set_hooks(self) -> None:
            super().set_hooks()
            self._hooks = [h for h in self._hooks if h.name != "TimerHook"]
            self.hooks_dict = OrderedDict((h.name, h) for h in self._hooks)

        def process_batch(self, input_args: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
            """USB's argument selection for train_step, without the `.cuda()` move."""
            names = list(input_args) if input_args is not None else list(inspect.signature(self.train_step).parameters)
            return {k: v for k, v in kwargs.items() if k in names and v is not None}

    iters = 1 << 20  # USB's CIFAR configs: 1,048,576 iterations in 1,024 epochs
    cfg = get_config({
        "algorithm": "fixmatch", "net": "wrn_28_2", "use_pretrain": False, "dataset": "cifar10",
        "num_classes": 10, "data_dir": save_dir, "save_dir": save_dir, "save_name": "usb_step",
        "num_labels": args.n1, "ulb_num_labels": args.m1, "lb_imb_ratio": args.gamma, "ulb_imb_ratio": args.gamma,
        "include_lb_to_ulb": True, "batch_size": args.batch_size, "uratio": args.uratio, "eval_batch_size": 256,
        "num_workers": args.workers, "epoch": 1024, "num_train_iter": iters, "num_eval_iter": iters + 1,
        "num_log_iter": iters + 1, "num_warmup_iter": 0, "optim": "SGD", "lr": 0.03, "momentum": 0.9,
        "weight_decay": 5e-4, "ema_m": 0.999, "ulb_loss_ratio": 1.0, "hard_label": True, "T": 0.5,
        "p_cutoff": 0.95, "use_cat": True, "amp": False, "clip_grad": 0, "img_size": 32, "crop_ratio": 0.875,
        "seed": args.seed, "gpu": None, "distributed": False, "world_size": 1, "rank": 0,
    })
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    return CPUFixMatch(args=cfg, net_builder=get_net_builder("wrn_28_2", False), tb_log=None, logger=None)


class USBStep:
    """One USB training step, the body of AlgorithmBase.train: next batches from USB's loaders (augmentation),
    before_train_step hooks, train_step, after_train_step hooks (backward, SGD, scheduler, EMA)."""

    def __init__(self, alg: Any) -> None:
        self.alg = alg
        self.it_lb: Iterator[dict[str, Any]] = iter(alg.loader_dict["train_lb"])
        self.it_ulb: Iterator[dict[str, Any]] = iter(alg.loader_dict["train_ulb"])
        self.data_s: list[float] = []  # seconds spent drawing each step's batches (USB's data pipeline)

    def __call__(self) -> None:
        alg = self.alg
        t0 = time.perf_counter()
        data_lb, data_ulb = next(self.it_lb), next(self.it_ulb)
        self.data_s.append(time.perf_counter() - t0)
        alg.call_hook("before_train_step")
        alg.out_dict, alg.log_dict = alg.train_step(**alg.process_batch(**data_lb, **data_ulb))
        alg.call_hook("after_train_step")
        alg.it += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first one counts FLOPs)")
    ap.add_argument("--steps", type=int, default=5, help="steps per timed run")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    ap.add_argument("--batch-size", type=int, default=32, help="labeled batch")
    ap.add_argument("--uratio", type=int, default=2, help="unlabeled batch = uratio x labeled batch")
    ap.add_argument("--workers", type=int, default=0,
                    help="DataLoader workers (USB's configs: 1, and 2 for the unlabeled loader); 0 = augmentation "
                    "in the timed process, as the dytrim step does it")
    ap.add_argument("--n1", type=int, default=1500)
    ap.add_argument("--m1", type=int, default=3000)
    ap.add_argument("--gamma", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default="", help=".npz with x_train/y_train/x_test/y_test (else generated here)")
    ap.add_argument("--json", action="store_true", help="print one JSON line at the end (for speed.py)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_import = time.perf_counter()
    notes = install_shims()
    import semilearn  # noqa: F401

    import_s = time.perf_counter() - t_import
    if args.data:
        with np.load(args.data) as z:
            data = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    else:
        data = synthetic_cifar(args.seed)
    from torch.utils.flop_counter import FlopCounterMode

    with tempfile.TemporaryDirectory() as tmp:
        alg = build_fixmatch(data, args, tmp)
        alg.model.train()
        alg.call_hook("before_run")
        alg.epoch = 0  # as AlgorithmBase.train sets it before the epoch hooks
        alg.call_hook("before_train_epoch")
        step = USBStep(alg)
        with FlopCounterMode(display=False) as counter:  # first warm-up step: FLOPs of the step, as in speed.py
            step()
        counts = counter.get_flop_counts().get("Global", {})
        flops = int(counter.get_total_flops())
        for _ in range(max(0, args.warmup - 1)):
            step()
        runs, data_runs = [], []
        for _ in range(args.repeats):
            n0 = len(step.data_s)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            runs.append((time.perf_counter() - t0) / args.steps)
            data_runs.append(sum(step.data_s[n0:]) / args.steps)
        lb_n, ulb_n = len(alg.dataset_dict["train_lb"]), len(alg.dataset_dict["train_ulb"])
        loss = float(alg.out_dict["loss"].detach())
    med = statistics.median(runs)
    images = args.batch_size * (1 + args.uratio)
    out = {
        "library": "semilearn", "semilearn": _version("semilearn"), "torch": torch.__version__,
        "torchvision": _version("torchvision"), "threads": torch.get_num_threads(), "workers": args.workers,
        "batch": f"{args.batch_size} lb + {args.batch_size * args.uratio} ulb x (1 weak + 1 strong), one "
        "concatenated forward",
        "model_params": sum(p.numel() for p in alg.model.parameters()), "lb_pool": lb_n, "ulb_pool": ulb_n,
        "flops_per_step": flops, "flop_ops": {str(k): int(v) for k, v in counts.items()},
        "s_per_step": med, "images_per_s": images / med, "runs": runs,
        "data_s_per_step": statistics.median(data_runs), "final_loss": loss, "import_s": import_s,
        "shims": notes, "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(json.dumps(out, indent=2))
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    raise SystemExit(main())
