"""Through the CLI on real data: smoke runs, output contract, strict errors, exact resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dytrim.cli import main

ROW_KEYS = {"step", "acc", "bacc", "gm", "per_class_recall", "lr", "wall_s", "images_per_s"}


def _rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_mnist_default_smoke(tmp_path) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--preset", "mnist-lt-fixmatch", "--set", "train.steps=30", "--set", "train.eval_every=10",
               "--set", "train.progress=false", "--out", str(out)])
    assert rc == 0
    rows = _rows(out)
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert ROW_KEYS <= set(rows[-1])
    assert len(rows[-1]["per_class_recall"]) == 10
    summary = json.loads((out / "summary.json").read_text())
    for key in ("acc", "bacc", "gm"):
        assert set(summary[key]) >= {"last", "best", "mean_last20"}
        assert summary[key]["last"] == rows[-1][key]
        assert summary[key]["best"] == max(r[key] for r in rows)
    assert summary["steps"] == 30 and summary["wall_s"] > 0
    assert (out / "config.yaml").exists() and (out / "curves.png").exists() and (out / "run.json").exists()
    assert list(out.glob("ckpt_*.pt"))


@pytest.mark.slow
def test_cifar10lt_cpu_preset_smoke_real_data(tmp_path, shared_data) -> None:
    """30 steps of the CPU preset on the real CIFAR-10-LT split, through the console script."""
    out = tmp_path / "c10"
    cmd = [sys.executable, "-m", "dytrim", "train", "--preset", "cpu-cifar10lt-fixmatch",
           "--set", f"data.root={shared_data}", "--set", "train.steps=30", "--set", "train.eval_every=15",
           "--set", "data.eval_subset=1000", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = _rows(out)
    assert [r["step"] for r in rows] == [15, 30] and ROW_KEYS <= set(rows[-1])
    assert rows[-1]["eval_n"] == 1000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["full_test"]["eval_n"] == 10000  # the final full-test evaluation


@pytest.mark.slow
def test_data_info_reports_paper_split(shared_data, capsys) -> None:
    rc = main(["data", "info", "--preset", "paper-cifar10lt-fixmatch", "--set", f"data.root={shared_data}"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["labeled"] == [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    assert info["total"] == {"labeled": 3720, "unlabeled": 11163, "test": 10000}
    assert info["unlabeled"] == [4500, 2697, 1617, 969, 580, 348, 208, 124, 75, 45]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--set", "train.stpes=3"], "did you mean 'train.steps'"),
        (["--set", "data.imb_ratio_l=0.5"], "data.imb_ratio_l"),
        (["--set", "data.n1=99999"], "data.n1"),
        (["--set", "data.root=/nonexistent/place"], "data.root"),
    ],
)
def test_bad_input_stops_before_training(tmp_path, capsys, args, expected) -> None:
    out = tmp_path / "bad"
    rc = main(["train", "--preset", "mnist-lt-fixmatch", *args, "--out", str(out)])
    assert rc == 2
    assert expected.lower() in capsys.readouterr().err.lower()
    assert not (out / "metrics.jsonl").exists()


@pytest.mark.slow
def test_refuses_to_overwrite_a_run(tmp_path, capsys) -> None:
    out = tmp_path / "r"
    base = ["train", "--preset", "mnist-lt-fixmatch", "--set", "train.steps=2", "--set", "train.eval_every=2",
            "--set", "train.progress=false", "--out", str(out)]
    assert main(base) == 0
    assert main(base) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(tmp_path) -> None:
    """Stop after 20 steps, resume to 30: the metrics equal those of a straight 30-step run, bit for bit."""
    common = ["--preset", "mnist-lt-fixmatch", "--set", "train.eval_every=10", "--set", "train.progress=false",
              "--set", "optim.schedule=constant"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *common, "--set", "train.steps=30", "--out", str(straight)]) == 0
    assert main(["train", *common, "--set", "train.steps=20", "--out", str(split)]) == 0
    assert main(["train", "--resume", str(split), "--set", "train.steps=30"]) == 0
    volatile = {"wall_s", "images_per_s"}
    a = [{k: v for k, v in r.items() if k not in volatile} for r in _rows(straight)]
    b = [{k: v for k, v in r.items() if k not in volatile} for r in _rows(split)]
    assert a == b
