"""Schedule points as steps or fractions of train.steps (config/schedule.py): the resolution rule, its checks, the
warning for a component that never switches on, evaluation spacing of short runs, the shipped presets' steps
(unchanged by writing them as fractions), resumed runs, and the last-n mean's count wherever it is shown."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

import dytrim.debias  # noqa: F401  (registers the components' sections: prune, cdmad, ...)
from dytrim.cli import main
from dytrim.config import dump_yaml, key_help, list_presets, load_config
from dytrim.config.schedule import MIN_EVALS, step_of, to_step
from dytrim.debias.cdmad import CDMAD
from dytrim.debias.dytrim import DyTrim
from dytrim.engine.runlog import format_summary, summarize
from dytrim.factory import _never_on
from dytrim.report.plots import _debias_start
from dytrim.report.runs import RunRecord
from dytrim.report.table import comparison_table
from dytrim.resume import check_checkpoint_config, resume_config

#: The resolved schedule of every shipped preset at its own train.steps on main before schedule points could be
#: fractions (commit 90c4209), generated there by loading each preset: debias.start and optim.warmup_steps as the
#: integers they were, prune.anneal as the first step with step >= anneal * train.steps (the old float test),
#: train.eval_every as the preset set it.
MAIN_SCHEDULES = json.loads((Path(__file__).parent / "data" / "preset_schedules_main.json").read_text())
SCHEDULE_KEYS = ("debias.start", "optim.warmup_steps", "prune.anneal")


def _quiet_config(preset: str, *overrides: str):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(preset, list(overrides))
    return cfg, [str(w.message) for w in caught]


# ---------------------------------------------------------------- the rule
def test_a_fraction_resolves_to_the_first_step_after_it_exactly() -> None:
    assert to_step(0.2, 15_000) == 3000  # binary 0.2 * 15000 = 3000.0000000000005: the decimal as written counts
    assert to_step(0.202, 250_000) == 50_500
    assert to_step(0.2, 300) == 60
    assert to_step(0.875, 300) == 263  # ceil(262.5): the first step with step >= 0.875 * 300
    assert to_step(0.0, 300) == 0 and to_step(1.0, 300) == 300


def test_an_integer_stays_an_absolute_step() -> None:
    cfg, _ = _quiet_config("cpu-cifar10lt-dytrim", "train.steps=300", "debias.start=3000")
    assert cfg.debias.start == 3000 and isinstance(cfg.debias.start, int)
    assert step_of(cfg, "debias.start") == 3000
    assert to_step(1, 300) == 1 and to_step(1.0, 300) == 300  # 1 is step 1; 1.0 is all of the run


def test_fraction_from_the_command_line_and_its_help() -> None:
    cfg, _ = _quiet_config("cpu-cifar10lt-dytrim", "train.steps=300", "debias.start=0.25", "optim.warmup_steps=0.1")
    assert step_of(cfg, "debias.start") == 75 and step_of(cfg, "optim.warmup_steps") == 30
    helps = {h["key"]: h for h in key_help()}
    for key in ("debias.start", "optim.warmup_steps"):
        assert helps[key]["type"] == "int | float" and "fraction of train.steps" in helps[key]["meaning"], helps[key]
    assert "train.steps // 5" in helps["train.eval_every"]["meaning"]


@pytest.mark.parametrize("override, needle", [
    ("debias.start=-1", ">= 0"),
    ("debias.start=-0.1", "[0, 1]"),
    ("debias.start=1.5", "[0, 1]"),
    ("debias.start=3000.0", "write the integer 3000"),
    ("optim.warmup_steps=-3", ">= 0"),
    ("optim.warmup_steps=2.5", "[0, 1]"),
    ("prune.anneal=1.2", "[0, 1]"),
    ("darp.warm=1.5", "[0, 1]"),
    ("daso.warm=-2", ">= 0"),
    ("debias.start=soon", "expects float"),
])
def test_impossible_schedule_values_stop_with_one_line_naming_the_key(tmp_path, capsys, override, needle) -> None:
    out = tmp_path / "run"
    assert main(["train", "--preset", "mnist-lt-dytrim", "--set", "train.progress=false", "--set", override,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("dytrim: error: ")]
    key = override.split("=")[0]
    assert len(lines) == 1 and key in lines[0] and needle in lines[0], err
    assert not out.exists()


# ---------------------------------------------------------------- never switches on
def test_a_start_after_the_last_step_warns_once_per_component() -> None:
    cfg, _ = _quiet_config("cpu-cifar10lt-dytrim", "train.steps=300", "debias.start=3000")
    lines = _never_on(cfg, [CDMAD, DyTrim])
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    cdmad, dytrim = lines
    assert cdmad.startswith("cdmad: ") and "step 3000" in cdmad and "train.steps=300" in cdmad
    assert "set debias.start" in cdmad and "fraction" in cdmad
    assert dytrim.startswith("dytrim: ") and "prune.anneal" in dytrim and "step 263" in dytrim


def test_dytrim_warns_when_annealing_comes_before_its_start() -> None:
    cfg, _ = _quiet_config("cpu-cifar10lt-dytrim", "train.steps=300", "debias.start=0.9")  # step 270 >= 263
    lines = _never_on(cfg, [CDMAD, DyTrim])
    assert len(lines) == 1 and lines[0].startswith("dytrim: ") and "step 270" in lines[0], lines


def test_a_warm_up_longer_than_the_run_warns() -> None:
    cfg, _ = _quiet_config("mnist-lt-fixmatch", "train.steps=50", "optim.warmup_steps=80")
    (line,) = _never_on(cfg, [])
    assert "optim.warmup_steps" in line and "step 80" in line and "train.steps=50" in line


@pytest.mark.parametrize("preset", sorted(list_presets()))
def test_no_preset_warns_at_its_own_length_nor_shortened(preset) -> None:
    for overrides in ([], ["train.steps=300"]):
        cfg, _ = _quiet_config(preset, *overrides)
        assert _never_on(cfg, [CDMAD, DyTrim]) == [], (preset, overrides)


@pytest.mark.slow
def test_the_warning_is_given_at_start_up(tmp_path) -> None:
    """End to end: `dytrim train` warns (the CLI prints each warning as one `dytrim: warning:` line) before the
    first step (2 steps of MNIST-LT)."""
    with pytest.warns(UserWarning) as caught:
        assert main(["train", "--preset", "mnist-lt-dytrim", "--set", "train.steps=2", "--set", "debias.start=5",
                     "--set", "train.progress=false", "--set", "train.threads=1", "--out", str(tmp_path / "r")]) == 0
    lines = [str(w.message) for w in caught]
    assert any(m.startswith("cdmad: ") for m in lines) and any(m.startswith("dytrim: ") for m in lines), lines


# ---------------------------------------------------------------- evaluation spacing
def test_a_short_run_evaluates_at_least_five_times() -> None:
    cfg, notes = _quiet_config("cpu-cifar10lt-dytrim", "train.steps=300")
    assert cfg.train.eval_every == 60 and len(notes) == 1
    assert "train.eval_every=500" in notes[0] and "60" in notes[0] and "\n" not in notes[0]
    cfg, _ = _quiet_config("mnist-lt-fixmatch", "train.steps=3")
    assert cfg.train.eval_every == 1


def test_the_users_eval_every_is_kept(tmp_path) -> None:
    cfg, notes = _quiet_config("cpu-cifar10lt-dytrim", "train.steps=300", "train.eval_every=500")
    assert cfg.train.eval_every == 500 and notes == []
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("train:\n  eval_every: 400\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = load_config("cpu-cifar10lt-dytrim", ["train.steps=300"], yaml_file)
    assert cfg.train.eval_every == 400


def test_presets_keep_their_spacing_and_many_evaluations() -> None:
    for name in list_presets():
        cfg, notes = _quiet_config(name)
        assert notes == [] and cfg.train.steps // cfg.train.eval_every >= MIN_EVALS, name


# ---------------------------------------------------------------- presets: the same steps as before
def test_every_preset_resolves_to_the_steps_it_had_on_main() -> None:
    # every preset of the table still exists; presets added after it (the part-1 baselines) had no earlier steps
    assert set(MAIN_SCHEDULES) <= set(list_presets()), "a preset of the table is gone"
    for name, old in MAIN_SCHEDULES.items():
        cfg, _ = _quiet_config(name)
        now = {"train.steps": cfg.train.steps, "train.eval_every": cfg.train.eval_every}
        now |= {key: step_of(cfg, key) for key in SCHEDULE_KEYS}
        assert now == old, name


@pytest.mark.slow
def test_a_fraction_trains_exactly_as_the_step_it_resolves_to(tmp_path) -> None:
    """debias.start=0.25 of 40 steps and debias.start=10: the same metrics, bit for bit (CDMAD + DyTrim on MNIST-LT,
    annealing at 0.5 = step 20 so pruning, its pi(I)-guided rule and annealing all happen)."""
    common = ["train", "--preset", "mnist-lt-dytrim", "--set", "train.steps=40", "--set", "train.eval_every=10",
              "--set", "prune.anneal=0.5", "--set", "train.progress=false", "--set", "train.threads=1"]
    for start in ("0.25", "10"):
        assert main([*common, "--set", f"debias.start={start}", "--out", str(tmp_path / start)]) == 0
    volatile = {"wall_s", "images_per_s", "train_s"}

    def rows(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in volatile} for line in lines]

    a, b = rows(tmp_path / "0.25"), rows(tmp_path / "10")
    assert len(a) == 4 and a == b
    assert a[0]["pruning"]["r_c"] != a[-2]["pruning"]["r_c"]  # the pi(I)-guided rule did run


def test_debiasing_presets_are_written_as_fractions() -> None:
    for name in list_presets():
        cfg, _ = _quiet_config(name)
        if {"cdmad", "dytrim"} & set(cfg.debias.methods):
            assert isinstance(cfg.debias.start, float), name


# ---------------------------------------------------------------- resume, plots
def test_a_resumed_run_keeps_the_steps_its_fractions_had(tmp_path) -> None:
    cfg, _ = _quiet_config("cpu-cifar10lt-dytrim", "train.steps=300", "train.eval_every=60")
    (tmp_path / "config.yaml").write_text(dump_yaml(cfg))
    longer, note = resume_config(tmp_path, ["train.steps=600"])
    assert longer.debias.start == 60 and isinstance(longer.debias.start, int)  # CDMAD on since step 60 stays on
    assert note is not None and "debias.start=0.2 stays at step 60" in note
    assert to_step(longer.prune.anneal, longer.train.steps) == 525  # annealing follows the new length
    check_checkpoint_config(longer, cfg.to_dict(), "ckpt_300.pt")  # the checkpoint's 0.2 of 300 is step 60
    same, note = resume_config(tmp_path, ["train.eval_every=30"])
    assert same.debias.start == 0.2 and note is None


def test_plots_read_the_resolved_start() -> None:
    record = SimpleNamespace(config={"debias": {"methods": ["cdmad"], "start": 0.2}, "train": {"steps": 300}})
    assert _debias_start(record) == 60
    record.config["debias"]["start"] = 3000
    assert _debias_start(record) == 3000


# ---------------------------------------------------------------- last-n: its count where it is shown
def _rows(n: int, bacc: float) -> list[dict]:
    return [{"step": 10 * (i + 1), "acc": bacc, "bacc": bacc, "gm": bacc} for i in range(n)]


def test_the_end_of_run_table_names_how_many_evaluations_it_averages() -> None:
    for n, label in ((1, "mean of last 1 eval"), (3, "mean of last 3 evals"), (25, "mean of last 20 evals")):
        summary = summarize(_rows(n, 0.5), 1.0, 10 * n)
        assert summary["bacc"]["n_last"] == min(n, 20) and summary["evaluations"] == n
        assert label in format_summary(summary, "/tmp/x").splitlines()[0]


def test_the_report_marks_means_of_fewer_evaluations_and_bolds_none_of_them() -> None:
    def record(name: str, n: int, bacc: float) -> RunRecord:
        return RunRecord(Path(name), name, {}, _rows(n, bacc), {}, {}, ["a", "b"], [2, 1])

    table = comparison_table([record("short", 1, 0.9), record("long", 3, 0.5)])
    col = table.header.index("last-20 bACC")
    assert table.rows[0][col] == "90.0 (of 1)" and table.rows[1][col] == "50.0 (of 3)"
    assert not {(i, col) for i in range(2)} & table.bold  # a mean of 1 is not "better" than a mean of 3
    assert (0, table.header.index("final bACC")) in table.bold
    full = comparison_table([record("a", 25, 0.9), record("b", 30, 0.5)])
    assert full.rows[0][col] == "90.0" and (0, col) in full.bold
