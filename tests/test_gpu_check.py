"""benchmarks/gpu_check.py: the arrays it carries to the GPU machine rebuild the real CIFAR-10-LT split exactly,
and its smoke run completes every part (on the CPU without a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_carried_arrays_rebuild_the_real_split(shared_data, tmp_path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import make_data

    from dytrim.config import load_config
    from dytrim.data.sources import load_data

    path = make_data(tmp_path, shared_data, test_per_class=20)
    assert path.stat().st_size < 48 * 2**20  # travels within the device tool's 64 MiB
    small = load_data(load_config("paper-cifar10lt-g100-dytrim", [f"data.root={tmp_path}"]).data, 0)
    full = load_data(load_config("paper-cifar10lt-g100-dytrim", [f"data.root={shared_data}"]).data, 0)
    assert small.split.lb_counts == full.split.lb_counts and small.split.ulb_counts == full.split.ulb_counts
    for a, b in ((small.lb_idx, full.lb_idx), (small.ulb_idx, full.ulb_idx)):
        assert torch.equal(small.x_train[a], full.x_train[b]) and torch.equal(small.y_train[a], full.y_train[b])
    assert len(small.y_test) == 200


@pytest.mark.slow
def test_smoke_run_completes(tmp_path) -> None:
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--skip", "tests",
                          "--train-seconds", "2", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert len(report["timing"]) >= 4 and all(r["ms_per_step"] > 0 for r in report["timing"])
    assert report["train"]["steps"] >= 2 and report["train"]["curve"]
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check")
