"""Issue 26's frictions, held: the end-of-run table ends with the full-test headline (raw and debiased), numbers are
rounded once and print the same everywhere, durations by one rule, JSON with real characters and named fields,
figures with whole class names and a y label on every panel, `--version`, `presets --keys` headings, warnings that
say what the command in hand accepts."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from dytrim.cli import main
from dytrim.config.keys import _field_comments
from dytrim.engine.runlog import curves_figure, format_summary, summarize
from dytrim.jsonfmt import compact_json
from dytrim.pruning.plots import pruning_figure
from dytrim.units import DECIMALS, duration, percent, round_half_up, rounded

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "train.steps=4", "--set", "train.eval_every=2", "--set", "train.progress=false",
        "--set", "train.threads=1", "--set", "model.name=cnn_small"]
CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
JIT_DEPRECATED = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is (deprecated|not supported)")


def _floats(obj: Any) -> list[float]:
    if isinstance(obj, float):
        return [obj]
    if isinstance(obj, dict):
        return [f for v in obj.values() for f in _floats(v)]
    if isinstance(obj, list):
        return [f for v in obj for f in _floats(v)]
    return []


def _decimals(value: float) -> int:
    return max(0, -Decimal(repr(value)).as_tuple().exponent)


# ---------------------------------------------------------------------------------------------- tiny real runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """A CDMAD + DyTrim run evaluated on a 200-image test subset (so it ends with a full-test evaluation) and a
    plain FixMatch run on the whole test set, with what each printed at the end."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("frictions")
    out: dict[str, tuple[Path, str]] = {}
    for name, extra in (("debias", ["--preset", "mnist-lt-dytrim", "--set", "debias.start=0",
                                    "--set", "data.eval_subset=200"]),
                        ("plain", ["--preset", "mnist-lt-fixmatch"])):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["train", *extra, *TINY, "--out", str(root / name)]) == 0
        out[name] = (root / name, buf.getvalue())
    return out


@pytest.mark.slow
def test_end_of_run_table_ends_with_full_test_raw_and_debiased(runs) -> None:
    run, printed = runs["debias"]
    summary = json.loads((run / "summary.json").read_text())
    full = summary["full_test"]
    assert full["eval_n"] == 1500 and summary["eval_n"] == 200
    lines = printed.splitlines()
    assert lines[0].startswith("EMA model, test subset of 200 images (%)")  # not 'test set': it is the subset
    head = next(i for i, line in enumerate(lines) if line.startswith("final EMA model, full test set of 1500 images"))
    assert lines[head].split()[-2:] == ["raw", "debiased"]
    for offset, key, label in ((2, "bacc", "bACC"), (3, "gm", "GM")):
        assert lines[head + offset].split() == [label, percent(full[key]), percent(full[f"{key}_debiased"])]
    assert re.fullmatch(r"4 steps in \d+(\.\d)? s; everything is in .+", lines[-1])


@pytest.mark.slow
def test_end_of_run_table_of_a_plain_run_has_raw_only(runs) -> None:
    run, printed = runs["plain"]
    summary = json.loads((run / "summary.json").read_text())
    assert "full_test" not in summary  # the evaluations were on the whole test set already
    lines = printed.splitlines()
    assert lines[0].startswith("EMA model, test set of 1500 images (%)")
    head = next(i for i, line in enumerate(lines) if line.startswith("final EMA model, full test set of 1500 images"))
    assert lines[head].split()[-1] == "raw" and "debiased" not in printed
    assert lines[head + 2].split() == ["bACC", percent(summary["bacc"]["last"])]
    assert lines[head + 3].split() == ["GM", percent(summary["gm"]["last"])]


@pytest.mark.slow
def test_summary_json_floats_are_rounded_and_printed_from_the_stored_value(runs) -> None:
    run, printed = runs["debias"]
    summary = json.loads((run / "summary.json").read_text())
    floats = _floats(summary)
    assert floats and max(map(_decimals, floats)) <= DECIMALS
    row = next(line for line in printed.splitlines() if line.startswith("bACC, debiased"))
    s = summary["bacc_debiased"]
    assert row.split()[-3:] == [percent(s["last"]), percent(s["best"]), percent(s["mean_last20"])]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary["bacc"]["last"] == last["bacc"]  # the row is rounded where it is made: the same value


@pytest.mark.slow
def test_dynamics_prior_names_its_steps(runs, tmp_path, capsys) -> None:
    run, _ = runs["debias"]
    assert main(["dynamics", "prior", "--run", str(run), "--out", str(tmp_path / "prior.png")]) == 0
    text = capsys.readouterr().out
    (entry,) = json.loads(text[: text.rindex("}") + 1]).values()
    assert "steps" not in entry and (entry["first_step"], entry["last_step"]) == (2, 4)


@pytest.mark.slow
@JIT_DEPRECATED
def test_torchscript_export_says_it_is_deprecated_and_what_to_prefer(runs, tmp_path, capsys) -> None:
    run, _ = runs["plain"]
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.torchscript.pt")]) == 0
    err = capsys.readouterr().err
    assert "deprecated" in err and "--format state_dict" in err and "--format onnx" in err
    assert main(["export", str(run), "--format", "state_dict", "--out", str(tmp_path / "m.pt")]) == 0
    assert "deprecated" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- rounding, units
def test_one_rounding_rule_half_up_from_the_stored_value() -> None:
    assert round_half_up(0.26850000000000007) == 0.2685
    assert round_half_up(0.2285, 3) == 0.229  # the double 0.2285 is a little below it: half up from its repr
    assert percent(0.2285) == "22.9" and percent(0.22849999) == "22.8" and percent(None) == "—"
    assert rounded({"a": [0.1 + 0.2], "n": 3, "s": "x"}) == {"a": [0.3], "n": 3, "s": "x"}


def test_end_of_run_table_and_report_print_one_mean_the_same() -> None:
    """The mean of 0.2284 and 0.2286 is 0.22849999999999998 in floats: 22.8 by f-string, 22.9 by the rule. The
    run's table and the report both print 22.9 (the stored 0.2285)."""
    from dytrim.report.runs import RunRecord
    from dytrim.report.table import comparison_table, mean_last

    rows = [{"step": 10 * (i + 1), "acc": v, "bacc": v, "gm": v, "eval_n": 100} for i, v in enumerate([0.2284,
                                                                                                         0.2286])]
    summary = summarize(rows, 75.1, 20)
    assert summary["bacc"]["mean_last20"] == 0.2285
    row = next(line for line in format_summary(summary, "r").splitlines() if line.startswith("bACC "))
    assert row.split()[-1] == "22.9"
    record = RunRecord(Path("r"), "r", {}, rows, summary, {}, ["a", "b"], [2, 1])
    assert mean_last(record, "bacc") == 0.2285
    assert comparison_table([record]).rows[0][2 + 4] == "22.9 (of 2)"  # last-20 bACC, a mean of 2 evaluations


def test_durations_by_one_rule_and_one_unit_per_report_column() -> None:
    from dytrim.report.runs import RunRecord
    from dytrim.report.table import comparison_table

    assert [duration(s) for s in (4.24, 75.1, 155, 9999)] == ["4.2 s", "75 s", "2.6 min", "2.8 h"]
    assert duration(75.1, "min") == "1.3 min" and duration(None) == "—"
    rows = [{"step": 10, "bacc": 0.5, "gm": 0.5}]
    records = [RunRecord(Path(n), n, {}, rows, {"wall_s": w}, {}, ["a"], [1]) for n, w in (("a", 75.1), ("b", 155))]
    table = comparison_table(records)
    wall = table.header.index("wall time")
    assert [r[wall] for r in table.rows] == ["1.3 min", "2.6 min"]  # not '75.1 s' beside '2.6 min'
    assert "10 steps in 77 s;" in format_summary(summarize(rows, 77.0, 10), "x")  # the run: the rule's own unit


# ---------------------------------------------------------------------------------------------- JSON, CLI
def test_json_for_people_prints_real_characters(tmp_path, capsys) -> None:
    from dytrim.dynamics.commands import _finish

    assert compact_json({"units": "Δlog π per unit η", "gamma": "γ"}) == '{"units": "Δlog π per unit η", "gamma": "γ"}'
    assert compact_json({"γ": {"a": "π"}}) == '{\n "γ": {"a": "π"}\n}'
    _finish(tmp_path / "f.png", {"units": "Δlog π", "k": [1, 2]})
    out = capsys.readouterr().out
    assert "Δlog π" in out and "\\u0394" not in out
    assert "Δlog π" in (tmp_path / "f.png.json").read_text(encoding="utf-8")


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)
    assert capsys.readouterr().out.strip() == f"dytrim {version}"


def test_presets_keys_section_comment_is_a_heading_not_a_continuation(capsys) -> None:
    from dataclasses import dataclass

    @dataclass
    class Demo:
        a: int = 0  # first key
        #   its continuation
        b: int = 1  # second key
        # a heading of the keys below
        c: int = 2  # third key

        d: str = ""  # no heading here

    comments, headings = _field_comments(Demo)
    assert comments == {"a": "first key its continuation", "b": "second key", "c": "third key", "d": "no heading here"}
    assert headings == {"c": "a heading of the keys below"}
    assert main(["presets", "--keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    i = lines.index(next(line for line in lines if line.startswith("data.eval_subset ")))
    assert lines[i + 1].strip() == "images of the test set used at intermediate evaluations (0 = all)"
    assert lines[i + 2].startswith("# data: data.name=folder only (")
    assert lines[i + 3].startswith("data.labeled_dir ")


def test_dynamics_unified_advice_names_what_it_accepts(capsys) -> None:
    from dytrim.dynamics.unified import for_this_command

    msg = ("the labeled pruning rule (prune.min_keep=0, prune.rounding=floor) deletes every labeled image of 2 "
           "class(es) (...). Set prune.min_keep=1 to keep at least one labeled image per class.")
    said = for_this_command(msg)
    assert said.startswith("the labeled pruning rule") and "`dytrim dynamics unified --min-keep 1`" in said
    assert "Set prune.min_keep=1" not in said
    assert for_this_command("something else") == "something else"
    with pytest.raises(SystemExit):
        main(["dynamics", "unified", "--help"])
    assert "--min-keep" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- figures
def _curves_rows(n: int = 3) -> list[dict[str, Any]]:
    return [{"step": 100 * (i + 1), "bacc": 0.3, "gm": 0.2, "bacc_debiased": 0.35, "gm_debiased": 0.25,
             "eval_n": 2000, "per_class_recall": [0.5] * 10} for i in range(n)]


def test_curves_png_has_whole_class_names_and_says_test_subset() -> None:
    import matplotlib.pyplot as plt

    fig = curves_figure(_curves_rows(), "run", CIFAR, [500, 300, 200, 100, 60, 40, 20, 10, 8, 5], subset=True)
    try:
        ax, bx = fig.axes
        assert ax.get_ylabel() == "% (EMA model, test subset of 2000 images)"
        ticks = [t.get_text() for t in bx.get_xticklabels()]
        assert ticks[:2] == ["airplane (500)", "automobile (300)"]  # never 'airpla', 'automo'
        assert [re.sub(r" \(\d+\)$", "", t) for t in ticks] == CIFAR
        assert all(a.get_ylabel() for a in fig.axes)
    finally:
        plt.close(fig)
    fig = curves_figure(_curves_rows(), "run", CIFAR, [1] * 10)
    try:
        assert fig.axes[0].get_ylabel() == "% (EMA model, test set)"
    finally:
        plt.close(fig)


def _pruning_rows() -> list[dict[str, Any]]:
    return [{"step": 100 * (i + 1), "pruning": {"kept_lb_per_class": [50 - i, 30, 20, 10, 6, 4, 2, 1, 1, 1],
                                                "r_c": [0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.04, 0.03, 0.02, 0.01],
                                                "kept_ulb": 900, "ulb_total": 1000, "rescaled_frac": 0.2}}
            for i in range(3)]


def test_every_pruning_panel_has_a_y_label_and_whole_class_names() -> None:
    import matplotlib.pyplot as plt

    fig = pruning_figure(_pruning_rows(), CIFAR, [50, 30, 20, 10, 6, 4, 2, 1, 1, 1])
    try:
        assert len(fig.axes) == 3 and all(a.get_ylabel() for a in fig.axes), [a.get_ylabel() for a in fig.axes]
        legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert legend[:2] == ["airplane (50)", "automobile (30)"]
    finally:
        plt.close(fig)


def test_report_figures_have_y_labels_and_whole_class_names(monkeypatch, tmp_path) -> None:
    from dytrim.report import plots
    from dytrim.report.runs import RunRecord

    figures: list[Any] = []

    def keep(fig: Any, path: Path) -> Path:
        figures.append(fig)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    rows = [r | p for r, p in zip(_curves_rows(), _pruning_rows(), strict=True)]
    counts = [50, 30, 20, 10, 6, 4, 2, 1, 1, 1]
    record = RunRecord(tmp_path, "run", {}, rows, {}, {}, CIFAR, counts)
    plots.plot_curves([record], tmp_path / "c.png")
    plots.plot_recall([record], tmp_path / "r.png")
    plots.plot_pruning(record, tmp_path / "p.png")
    import matplotlib.pyplot as plt

    try:
        curves, recall, pruning = figures
        assert all(a.get_ylabel() for a in curves.axes)
        assert "test subset" in curves.axes[0].get_ylabel()
        assert [re.sub(r"( \(|\n)\d+\)?$", "", t.get_text()) for t in recall.axes[0].get_xticklabels()] == CIFAR
        assert all(a.get_ylabel() for a in pruning.axes), [a.get_ylabel() for a in pruning.axes]
        legend = [t.get_text() for t in pruning.axes[0].get_legend().get_texts()]
        assert legend[1] == "automobile (30)"
    finally:
        for f in figures:
            plt.close(f)
