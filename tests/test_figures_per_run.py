"""Figures and reports are right for any data source: a run on image folders and a CIFAR-10-LT run together.
The report's data column takes γ from each run's own split, and the prior figure takes class names and γ per run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dytrim.cli import main

pytestmark = pytest.mark.slow  # trains or runs the CLI end to end (see pyproject.toml)

STEPS = ["--set", "train.steps=4", "--set", "train.eval_every=2", "--set", "train.progress=false",
         "--set", "train.threads=1", "--set", "model.name=cnn_small"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, shared_data) -> tuple[Path, Path]:
    from test_folder import write_tree

    root = tmp_path_factory.mktemp("fig")
    tree = write_tree(root / "images")
    folder = root / "folder-run"
    assert main(["train", "--preset", "mnist-lt-fixmatch", "--set", "data.name=folder",
                 "--set", f"data.labeled_dir={tree / 'labeled'}", "--set", f"data.unlabeled_dir={tree / 'unlabeled'}",
                 "--set", f"data.test_dir={tree / 'test'}", "--set", "data.channels=3",
                 "--set", f"data.cache_dir={root / 'cache'}", "--set", "aug.flip=true", "--set", "train.batch_size=4",
                 *STEPS, "--out", str(folder)]) == 0
    cifar = root / "cifar-run"
    assert main(["train", "--preset", "cpu-cifar10lt-fixmatch", "--set", f"data.root={shared_data}",
                 "--set", "data.eval_subset=200", *STEPS, "--out", str(cifar)]) == 0
    return folder, cifar


def test_report_gamma_comes_from_each_runs_split(two_runs, tmp_path) -> None:
    folder, cifar = two_runs
    out = tmp_path / "report"
    assert main(["report", str(folder), str(cifar), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    counts = json.loads((folder / "run.json").read_text())["counts"]["labeled"]
    assert sorted(counts) == [4, 8, 16]
    assert "folder (γ_l=4, γ_u=unknown)" in text  # not the config's unused 100
    assert "cifar10 (γ_l=100, γ_u=100)" in text


def test_prior_figure_has_each_runs_classes_and_gamma(two_runs, tmp_path) -> None:
    folder, cifar = two_runs
    fig = tmp_path / "prior.png"
    assert main(["dynamics", "prior", "--run", str(folder), "--run", str(cifar), "--out", str(fig)]) == 0
    summary = json.loads(fig.with_name("prior.png.json").read_text())
    by_classes = {len(v["classes"]): v for v in summary.values()}
    assert set(by_classes[3]["classes"]) == {"zebra", "ant", "moth"} and by_classes[3]["labeled_gamma"] == 4
    assert by_classes[10]["classes"][0] == "airplane" and by_classes[10]["labeled_gamma"] == 100
    assert fig.stat().st_size > 10_000
