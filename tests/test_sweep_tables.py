"""`dytrim sweep` without training: table files expand into cells whose directories are fixed by their spec;
unknown presets / keys are refused with the file's line; cell directories are classified from disk alone; the
collected table equals one computed by hand; every shipped table expands."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dytrim import cli, runlock
from dytrim.config import load_config
from dytrim.sweep import state
from dytrim.sweep.collect import aggregate, collect, markdown
from dytrim.sweep.table import TableError, load_table, shipped_tables

TABLE = """\
name: t
title: a test table
metric: {key: bacc, stat: last, scale: 100, digits: 2}
seeds: [0, 1, 2]
source: "made up"
rows:
  - name: A
    preset: mnist-lt-fixmatch
    published: {c1: 50.0}
  - name: B
    preset: mnist-lt-dytrim
    set: {train.steps: 10}
columns:
  - {name: c1, set: {optim.lr: 0.002, train.eval_every: 5}}
  - {name: c2, set: {optim.lr: 0.001}}
"""


def _write(tmp_path: Path, text: str, name: str = "t.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_expansion_and_cell_identity(tmp_path) -> None:
    t = load_table(_write(tmp_path, TABLE))
    assert (t.rows, t.columns, t.seeds) == (["A", "B"], ["c1", "c2"], [0, 1, 2])
    assert len(t.cells) == 2 * 2 * 3 and len({c.name for c in t.cells}) == 12
    a = next(c for c in t.cells if (c.row, c.column, c.seed) == ("A", "c1", 1))
    assert a.preset == "mnist-lt-fixmatch" and dict(a.overrides) == {"optim.lr": "0.002", "train.eval_every": "5"}
    assert a.name.startswith("mnist-lt-fixmatch-s1-") and a.set_args()[-2:] == ["--set", "seed=1"]
    b = next(c for c in t.cells if (c.row, c.column, c.seed) == ("B", "c2", 0))
    assert dict(b.overrides) == {"optim.lr": "0.001", "train.steps": "10"}  # row and column overrides merge
    # same spec -> same directory: key order in the file does not matter, nor do keys --resume may change
    # (train.eval_every, data.root); a key that changes the experiment does
    same = load_table(_write(tmp_path, TABLE.replace("{optim.lr: 0.002, train.eval_every: 5}",
                                                     "{train.eval_every: 7, optim.lr: 0.002}"), "u.yaml"),
                      ["data.root=/elsewhere"])
    assert [c.name for c in same.cells] == [c.name for c in t.cells]
    other = load_table(_write(tmp_path, TABLE.replace("optim.lr: 0.002", "optim.lr: 0.003"), "v.yaml"))
    assert {c.name for c in other.cells} & {c.name for c in t.cells} == {c.name for c in t.cells
                                                                          if c.column == "c2"}
    assert load_table(_write(tmp_path, TABLE), seeds=[7]).seeds == [7]
    # train.steps may change on resume, but a table asking another length asks another experiment: a new cell
    longer = load_table(_write(tmp_path, TABLE.replace("train.steps: 10", "train.steps: 20"), "w.yaml"))
    assert {c.name for c in longer.cells} & {c.name for c in t.cells} == {c.name for c in t.cells if c.row == "A"}
    assert t.published == {("A", "c1"): 50.0}


@pytest.mark.parametrize(("old", "new", "line", "needle"), [
    ("preset: mnist-lt-dytrim", "preset: mnist-lt-dytrin", 11, "unknown preset 'mnist-lt-dytrin'"),
    ("set: {train.steps: 10}", "set: {train.stepz: 10}", 12, "unknown config key 'train.stepz'"),
    ("{optim.lr: 0.001}", "{optim.learning_rate: 0.001}", 15, "unknown config key 'optim.learning_rate'"),
    ("source:", "sauce:", 5, "unknown key 'sauce'"),
    ("published: {c1: 50.0}", "published: {c3: 50.0}", 9, "unknown column 'c3'"),
    ("stat: last", "stat: final", 3, "unknown metric stat 'final'"),
    ("set: {train.steps: 10}", "set: {train.steps: ten}", 12, "'train.steps' expects int"),
])
def test_unknown_preset_or_key_is_refused_with_its_line(tmp_path, capsys, old, new, line, needle) -> None:
    path = _write(tmp_path, TABLE.replace(old, new))
    with pytest.raises(TableError) as err:
        load_table(path)
    assert str(err.value).startswith(f"{path}:{line}: ") and needle in str(err.value)
    # the command: one line, exit 2, nothing made
    rc = cli.main(["sweep", str(path), "--out", str(tmp_path / "sweep")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and f"{path}:{line}:" in lines[0]
    assert not (tmp_path / "sweep").exists()


def test_metric_is_never_implied(tmp_path) -> None:
    with pytest.raises(TableError, match="names no metric"):
        load_table(_write(tmp_path, TABLE.replace("metric: {key: bacc, stat: last, scale: 100, digits: 2}\n", "")))


def test_every_shipped_table_expands() -> None:
    tables = shipped_tables()
    assert {"paper-cifar10lt-main", "paper-cifar10lt-gamma-u", "paper-cifar10lt-ablation", "cpu-cifar10lt",
            "cpu-cifar10lt-flexmatch-freematch", "mnist-lt"} <= set(tables)
    main = load_table(tables["paper-cifar10lt-main"])
    assert len(main.cells) == 12 * 3 * 3 and main.published[("FixMatch + DyTrim", "γ=100")] == 84.8
    assert main.published[("FixMatch + CoSSL", "γ=150")] == 80.3
    assert main.published[("FixMatch + Adsh", "γ=150")] == 71.5  # paper Table 1, as printed
    g50 = next(c for c in main.cells if c.row == "FixMatch + CDMAD" and c.column == "γ=50")
    assert dict(g50.overrides)["data.imb_ratio_l"] == "50"
    remix = load_table(tables["paper-cifar10lt-remixmatch"])
    assert remix.published[("ReMixMatch + CDMAD", "γ=100")] == 85.5
    for cell in [*main.cells, *remix.cells]:  # a γ column of a g100 row is the experiment of that γ's own preset
        gamma = cell.column.removeprefix("γ=")
        if cell.seed != 0 or "-g100-" not in cell.preset or gamma == "100":
            continue
        mine = load_config(cell.preset, [f"{k}={v}" for k, v in dict(cell.overrides).items()]).to_dict()
        theirs = load_config(cell.preset.replace("-g100-", f"-g{gamma}-")).to_dict()
        for key in ("preset", "description"):
            mine.pop(key, None), theirs.pop(key, None)
        assert mine == theirs, cell.name
    for path in tables.values():
        assert load_table(path).metric.stat  # named in every file


def _run_dir(d: Path, bacc: list[float], steps: int = 4) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "bacc": v}) + "\n" for i, v in enumerate(bacc)))
    (d / "summary.json").write_text(json.dumps({"steps": steps, "bacc": {"last": bacc[-1]}}))


def test_state_classification_from_disk_alone(tmp_path) -> None:
    d = tmp_path / "cell"
    d.mkdir()
    assert state.classify(d).state == "to do"
    (d / "ckpt_00000002.pt").write_bytes(b"x")
    assert (state.classify(d).state, state.classify(d).step) == ("resumable", 2)
    (d / ".dytrim.lock").write_text("pid 1 on elsewhere")  # a lock file left by a killed run: free, not running
    assert state.classify(d).state == "resumable"
    with runlock.hold(d, "--out"):  # a live holder
        st = state.classify(d)
        assert st.state == "running" and st.detail.startswith("pid ")
    state.end_attempt(d, "local", 1, 0.0, 0)  # exit 1: failed, with the log's last line
    (d / "train.log").write_text("starting\ndytrim: error: boom\n")
    state.end_attempt(d, "local", 2, 0.0, 0)
    assert state.classify(d).state == "failed" and "exit 2: dytrim: error: boom" in state.classify(d).detail
    state.start_attempt(d, "local")  # a new attempt clears the failure
    state.end_attempt(d, "local", 143, 0.0, 0)  # stopped by a signal after a checkpoint: resumable, not failed
    assert state.classify(d).state == "resumable" and len(state.attempts(d)) == 3
    (d / "CANCELLED").write_text("")
    assert state.classify(d).state == "cancelled"
    _run_dir(d, [0.5])
    assert state.classify(d).state == "done"


def test_collect_against_a_table_computed_by_hand(tmp_path) -> None:
    t = load_table(_write(tmp_path, TABLE))
    out = tmp_path / "sweep"
    values = {("A", "c1"): {0: [0.1, 0.50], 1: [0.2, 0.54], 2: [0.3, 0.58]},  # last: 50, 54, 58
              ("A", "c2"): {0: [0.40], 1: [0.44]},  # seed 2 missing
              ("B", "c1"): {1: [0.9, 0.7]}}  # one seed only; B/c2 nothing
    for cell in t.cells:
        if (v := values.get((cell.row, cell.column), {}).get(cell.seed)) is not None:
            _run_dir(state.cell_dir(out, cell), v)
    groups, records = aggregate(out, t)
    # by hand: A/c1 mean (50+54+58)/3 = 54, sample std sqrt(((-4)^2 + 0 + 4^2) / 2) = 4; published 50 -> +4
    a1 = groups[("A", "c1")]
    assert a1.n == 3 and a1.mean == pytest.approx(54.0) and a1.std == pytest.approx(4.0) and a1.missing == []
    assert a1.diff == pytest.approx(4.0)
    # A/c2: (40 + 44) / 2 = 42, std sqrt((4 + 4) / 1) = 2.828...; seed 2 named as missing
    a2 = groups[("A", "c2")]
    assert (a2.n, a2.missing) == (2, [2]) and a2.mean == pytest.approx(42.0) and a2.std == pytest.approx(8 ** 0.5)
    assert groups[("B", "c1")].std is None and groups[("B", "c2")].mean is None
    md = markdown(t, groups)
    assert "| A | 54.00 ± 4.00 (n=3) / 50.00, +4.00 | 42.00 ± 2.83 (n=2; seed 2 missing) |" in md
    assert "| B | 70.00 (n=1; seeds 0,2 missing) | – (n=0; seeds 0,1,2 missing) |" in md
    assert "Metric: bacc (%), last evaluation, EMA model" in md
    paths = collect(out, t, figure=False)
    rows = list(csv.DictReader(line for line in paths["csv"].read_text().splitlines() if not line.startswith("#")))
    assert len(rows) == 12
    assert sorted(float(r["value"]) for r in rows if r["row"] == "A" and r["column"] == "c1") == \
        pytest.approx([50.0, 54.0, 58.0])
    assert [r["value"] for r in rows if r["row"] == "B" and r["column"] == "c2"] == ["", "", ""]
    assert r"54.00 $\pm$ 4.00" in paths["tex"].read_text() and "<table>" in paths["html"].read_text()
    assert len(records) == 12


def test_metric_stats(tmp_path) -> None:
    from dytrim.sweep.collect import run_value
    from dytrim.sweep.table import Metric

    d = tmp_path / "r"
    _run_dir(d, [0.2, 0.8, 0.4, 0.6])
    assert run_value(d, Metric("bacc", "last"))[0] == 0.6
    assert run_value(d, Metric("bacc", "best"))[0] == 0.8
    assert run_value(d, Metric("bacc", "mean_last", n=2))[0] == pytest.approx(0.5)
    assert run_value(d, Metric("bacc_debiased", "last", fallback="bacc")) == (0.6, "bacc")
    assert run_value(d, Metric("gm", "last"))[0] is None


@pytest.mark.parametrize("name", ["SIGUSR1", "SIGUSR2"])
def test_scheduler_warning_signals_stop_like_sigterm(name) -> None:
    import os
    import signal

    from dytrim.engine.stop import Stopped, StopRequest

    with StopRequest(announce=False) as stop:
        os.kill(os.getpid(), getattr(signal, name))  # Slurm's --signal / submitit's USR2 reach the trainer
        assert stop.requested and stop.signum == signal.SIGTERM
    assert Stopped(5, stop.signum).exit_code == 143  # checkpoint, then exit 143: resumable, as after SIGTERM


def test_local_slots_split_threads_and_pin_gpus() -> None:
    from dytrim.sweep.local import make_slots

    gpu = make_slots(1, ["0", "3"], 2, 4)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in gpu] == ["0", "0", "3", "3"]
    assert {s.env["OMP_NUM_THREADS"] for s in gpu} == {"4"}
    cpu = make_slots(2, None, 1, None)
    assert len(cpu) == 2 and all(s.env["CUDA_VISIBLE_DEVICES"] == "" and s.threads >= 1 for s in cpu)


def test_print_launcher_and_status_need_nothing_run(tmp_path, capsys) -> None:
    path = _write(tmp_path, TABLE)
    out = tmp_path / "sweep"
    assert cli.main(["sweep", str(path), "--out", str(out), "--status"]) == 2  # no sweep there yet
    capsys.readouterr()
    t = load_table(path)
    first = state.cell_dir(out, t.cells[0])
    first.mkdir(parents=True)
    (first / "config.yaml").write_text("seed: 0\n")  # a started run: continued with --resume
    _run_dir(state.cell_dir(out, t.cells[1]), [0.5])  # a finished one: not printed
    assert cli.main(["sweep", str(path), "--out", str(out), "--launcher", "print"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("dytrim train")]
    assert len(lines) == 11 and lines[0] == f"dytrim train --resume {first}"
    assert all("--out" in x and "--set seed=" in x for x in lines[1:])
    assert cli.main(["sweep", str(path), "--out", str(out), "--status"]) == 0
    status = capsys.readouterr().out
    assert status.strip().endswith("12 cells: 1 done, 11 to do")
    assert status.splitlines()[1].split()[:5] == ["A", "c1", "0", "to", "do"]
