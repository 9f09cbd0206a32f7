"""Bounded parsing of what a user gives (issue 25, "nothing lost, nothing mixed"): every YAML read goes through
config/yamlfile.py (size, alias expansion counted before anything is built, nesting, duplicate keys and sections
named with their lines, values quoted capped), the seed is checked against numpy's range, and a batch is checked
against the memory a step needs (engine/budget.py) and against its pools, all before any run directory exists.

The alias bomb and the huge batch run the CLI in a subprocess under an address-space limit and a timeout: on code
without these bounds they would otherwise take the machine's memory."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dytrim.cli import main
from dytrim.config import ConfigError, list_presets, load_config

TINY = ["--preset", "mnist-lt-fixmatch", "--set", "train.steps=2", "--set", "train.eval_every=2",
        "--set", "train.progress=false", "--set", "train.threads=1"]
AS_LIMIT = 3 << 30  # bytes of address space a CLI subprocess may map (dytrim with torch maps ~0.6 GiB)


def _bomb(levels: int = 9, key: str = "steps") -> str:
    """`train.<key>` holding nested anchors and aliases that expand to 10**levels scalars (~520 bytes)."""
    parts = ["&a0 [" + ", ".join(["lol"] * 10) + "]"]
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return f"train:\n  {key}: [" + ", ".join(parts) + "]\n"


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def _cli(args: list[str], timeout: float = 120) -> tuple[int, str, float]:
    """`dytrim ARGS` in a subprocess with at most AS_LIMIT of address space: (exit code, stderr, seconds)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))

    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, "-m", "dytrim", *args], env=env, capture_output=True, text=True,
                           timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout} s", time.monotonic() - t0
    return p.returncode, p.stderr, time.monotonic() - t0


# ------------------------------------------------------------------------------------------- YAML reader
@pytest.mark.slow
def test_alias_bomb_in_a_valid_key_is_refused_quickly(tmp_path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())  # 520 bytes -> 10^9 values; the old reader ran for minutes into GBs
    rc, err, _ = _cli(["train", "--config", str(path), "--out", str(tmp_path / "run")])
    line = _one_line(err)
    assert rc == 2 and line.startswith(f"dytrim: error: --config: '{path}' at line 2"), line
    assert "'train.steps[3]' expands to more than 10,000 values" in line and len(line) < 400, line
    assert not (tmp_path / "run").exists()
    from dytrim.config.yamlfile import read_yaml_file
    t0, rss0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError, match="expands to more than"):
        read_yaml_file(path, "--config")
    assert time.perf_counter() - t0 < 1.0  # counted on the composed nodes, never expanded
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 50_000  # KiB


def test_alias_bomb_in_a_set_value_is_refused_with_a_short_message() -> None:
    value = _bomb(6).split("steps: ", 1)[1].strip()  # 10^6 values: the old message quoted all of them
    with pytest.raises(ConfigError) as err:
        load_config("mnist-lt-fixmatch", [f"train.steps={value}"])
    msg = str(err.value)
    assert msg.startswith("--set train.steps: cannot parse value") and "expands to more than 10,000" in msg, msg
    assert len(msg) < 400, len(msg)


def test_values_in_messages_are_capped() -> None:
    with pytest.raises(ConfigError) as err:
        load_config("mnist-lt-fixmatch", ["train.steps=" + "x" * 100_000])
    assert "expects int" in str(err.value) and len(str(err.value)) < 400, len(str(err.value))


def test_duplicate_key_is_refused_with_both_lines(tmp_path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  steps: 5\n  eval_every: 2\n  steps: 7\n")
    with pytest.raises(ConfigError) as err:
        load_config("mnist-lt-fixmatch", yaml_file=path)
    assert str(err.value) == (f"--config: '{path}' at line 4, column 3: key 'train.steps' appears twice (first at "
                              "line 2); YAML would silently keep the last one: keep one")


def test_duplicate_section_is_refused_on_the_command_line(tmp_path, capsys) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  steps: 2\nseed: 1\ntrain:\n  eval_every: 2\n")
    out = tmp_path / "run"
    assert main(["train", *TINY, "--config", str(path), "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == (f"dytrim: error: --config: '{path}' at line 4, column 1: section 'train' appears twice (first "
                    "at line 1); YAML would silently keep the last one: merge the two sections"), line
    assert not out.exists()


@pytest.mark.parametrize("text, needle", [
    ("train:\n  steps: &a [1, *a]\n", "an alias refers to the anchor it sits in"),
    ("train:\n  steps: " + "[" * 80 + "]" * 80 + "\n", "nested deeper than 64 levels"),
    ("train:\n  steps: 1\n" + "# padding\n" * 110_000, "at most 1,048,576 bytes"),
], ids=["recursive alias", "deep nesting", "over 1 MiB"])
def test_config_file_bounds(tmp_path, text, needle) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config("mnist-lt-fixmatch", yaml_file=path)


def _run_dir(tmp_path: Path) -> Path:
    """A run directory whose config.yaml repeats a key (an edited or corrupted file)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\ndata:\n  name: mnist10k\n  name: cifar10\n")
    row = {"step": 2, "acc": 0.5, "bacc": 0.5, "per_class_recall": [0.5, 0.5]}
    (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    (run / "run.json").write_text(json.dumps({"counts": {"labeled": [3, 1]}}))
    return run


def test_report_and_dynamics_read_config_yaml_bounded(tmp_path) -> None:
    from dytrim.dynamics.baseline_checks import load_run_models
    from dytrim.report.runs import class_names, read_run

    run = _run_dir(tmp_path)
    for read in (lambda: read_run(run), lambda: class_names(run, 2), lambda: load_run_models(run)):
        with pytest.raises(ConfigError, match=r"config.yaml' at line 4, column 3: key 'data.name' appears twice "
                                              r"\(first at line 3\)"):
            read()


# ------------------------------------------------------------------------------------------------ seed
@pytest.mark.parametrize("seed", [-1, 2**32, 2**64], ids=["-1", "2^32", "2^64"])
def test_seed_out_of_range_is_one_line_and_leaves_no_run_dir(tmp_path, capsys, seed) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "--set", f"seed={seed}", "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == (f"dytrim: error: seed: must be in [0, 4294967295] (0 to 2^32 - 1, the seeds numpy takes); got "
                    f"{seed}: pick a seed in that range, e.g. --set seed=1"), line
    assert not out.exists()


@pytest.mark.slow
def test_largest_seed_is_accepted() -> None:
    from dytrim.engine.build import build_parts

    cfg = load_config("mnist-lt-fixmatch", ["seed=4294967295", "train.threads=1"])
    assert build_parts(cfg, Path("unused")).cfg.seed == 2**32 - 1  # seeds numpy, torch and the samplers


# ----------------------------------------------------------------------------------------------- batch
@pytest.mark.slow
def test_huge_batch_is_refused_before_any_work(tmp_path) -> None:
    out = tmp_path / "run"  # 10^7 x 5 images: refused on any machine; the old code gathered them until killed
    rc, err, _ = _cli(["train", *TINY, "--set", "train.batch_size=10000000", "--out", str(out)])
    line = _one_line(err)
    assert rc == 2 and line.startswith("dytrim: error: train.batch_size: one training step needs about "), line
    assert "50000000 images with a graph per step" in line and "is available" in line and "fits" in line, line
    assert not out.exists()


def test_batch_larger_than_the_labeled_pool_warns(tmp_path) -> None:
    from dytrim.factory import build_trainer

    cfg = load_config("mnist-lt-fixmatch", ["train.batch_size=300", "train.threads=1"])
    with pytest.warns(UserWarning, match=r"train.batch_size=300 exceeds the labeled pool \(242 images\): every "
                                         "step repeats labeled images"):
        build_trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_every_shipped_preset_fits_24_gib() -> None:
    """Each preset's step (estimated in fp32, the strictest precision) plus its data set on the device fits 24 GiB,
    except Small-ImageNet-127 at 64 px: its training set alone is 15.7 GB on the device, so those presets need a
    larger one with or without the check."""
    from dytrim.engine.budget import GiB, step_budget
    from dytrim.models import create_model

    images = {"cifar10": (10, 60_000), "cifar100": (100, 60_000), "stl10": (10, 113_000),
              "smallimagenet127": (127, 1_331_167), "mnist10k": (10, 10_000)}  # classes, train + test images
    measured: dict[tuple[str, int, int], Any] = {}
    too_big = []
    for name in list_presets():
        cfg = load_config(name)
        classes, n_images = images[cfg.data.name]
        ch, hw = (1, 28) if cfg.data.name == "mnist10k" else (3, cfg.data.image_size)
        key = (cfg.model.name, ch, hw)
        if key not in measured:
            measured[key] = create_model(cfg.model.name, classes, in_channels=ch)
        model = measured[key]
        budget = step_budget(cfg, model, (ch, hw, hw), cfg.ssl.name != "supervised")
        if budget.need(cfg.train.batch_size) + n_images * ch * hw * hw > 24 * GiB:
            too_big.append(name)
    assert sorted(too_big) == ["paper-smallimagenet127-64-fixmatch", "usb-smallimagenet127-64-fixmatch"], too_big
    fixmatch = load_config("paper-cifar10lt-fixmatch", ["train.batch_size=64", "train.uratio=7", "ssl.n_strong=1"])
    budget = step_budget(fixmatch, measured[("wrn_28_2", 3, 32)], (3, 32, 32), True)
    assert budget.need(64) < 4 * GiB  # the FixMatch paper's WRN-28-2, batch 64, mu 7: comfortably
