"""metrics.jsonl: appends are fsynced and a failed one names the file (exit 4); a resume puts the rows back in line
with its checkpoint (a torn or lost tail is restored or re-evaluated, training stays bit-identical); a damaged
middle line is one line naming its number (exit 2) for every reader; a live run's unfinished line is not read."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from dytrim.cli import main
from dytrim.data.errors import DataError
from dytrim.engine import runlog
from dytrim.fileio import WriteFailure

TINY = ["--preset", "mnist-lt-fixmatch", "--set", "train.steps=8", "--set", "train.eval_every=2",
        "--set", "train.progress=false", "--set", "train.threads=1"]
VOLATILE = {"wall_s", "images_per_s"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("metrics") / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    return run


def _copy(trained: Path, tmp_path: Path, name: str = "run") -> Path:
    return Path(shutil.copytree(trained, tmp_path / name))


def _lines(run: Path) -> list[str]:
    return (run / "metrics.jsonl").read_text().splitlines(keepends=True)


def _stable(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in runlog.read_rows(run / "metrics.jsonl")]


def _tree_hash(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.iterdir()) if p.is_file()}


# ------------------------------------------------------------------ the reader and the append
def test_torn_middle_line_is_a_data_error_naming_its_line(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl' line 2 is not JSON .*fix or delete that line"):
        runlog.read_rows(path)


def test_a_line_that_is_not_a_row_is_named_too(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n\n[1, 2]\n{"step": 4}\n')
    with pytest.raises(DataError, match=r"line 3 is not a metrics row"):
        runlog.read_rows(path)


def test_an_unterminated_last_line_is_not_read_yet(tmp_path) -> None:
    """A live run's row counts once its newline is written: a reader never sees half an append."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}')
    assert runlog.read_rows(path) == [{"step": 1}]
    path.write_text('{"step": 1}\n{"step": 2, "acc": 0.')
    assert runlog.read_rows(path) == [{"step": 1}]


def test_a_fifo_named_metrics_jsonl_is_refused_not_waited_on(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    os.mkfifo(path)
    with pytest.raises(DataError, match=r"metrics.jsonl' is not a regular file"):
        runlog.read_rows(path)


def test_append_is_fsynced(tmp_path, monkeypatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    runlog.append_row(tmp_path / "metrics.jsonl", {"step": 1})
    assert synced, "the row was not fsynced"


def test_failed_append_names_the_file_and_leaves_the_rows(tmp_path, monkeypatch) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n')

    def fail(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(WriteFailure, match=r"metrics.jsonl': Input/output error"):
        runlog.append_row(path, {"step": 2})
    assert path.read_text() == '{"step": 1}\n'


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_append_on_a_full_disk_names_the_path() -> None:
    with pytest.raises(WriteFailure, match=r"cannot write '/dev/full': No space left on device"):
        runlog.append_row(Path("/dev/full"), {"step": 1})


def test_failed_append_in_training_is_exit_4_naming_metrics_jsonl(tmp_path, monkeypatch, capsys) -> None:
    real_open = Path.open

    def full_disk(self: Path, mode: str = "r", *args, **kwargs):
        if self.name == "metrics.jsonl" and "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full_disk)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--set", "train.steps=2", "--out", str(run)]) == 4
    err = capsys.readouterr().err
    assert f"cannot write '{run / 'metrics.jsonl'}': No space left on device" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------------ resume
def test_resume_redoes_a_torn_last_row(trained, tmp_path) -> None:
    run = _copy(trained, tmp_path)
    lines = _lines(run)
    (run / "metrics.jsonl").write_text("".join(lines[:-1]) + lines[-1][:40])  # killed while appending step 8
    assert main(["train", "--resume", str(run)]) == 0
    assert _lines(run) == _lines(trained)  # the very row, from the checkpoint of its step


def test_resume_restores_a_lost_last_row(trained, tmp_path) -> None:
    run = _copy(trained, tmp_path)
    (run / "metrics.jsonl").write_text("".join(_lines(run)[:-1]))
    assert main(["train", "--resume", str(run)]) == 0
    assert _lines(run) == _lines(trained)


def test_resume_drops_rows_after_its_checkpoint_and_redoes_them(trained, tmp_path) -> None:
    run = _copy(trained, tmp_path)
    (run / "ckpt_00000008.pt").unlink()  # a crash after the step-8 row, before its checkpoint
    assert main(["train", "--resume", str(run)]) == 0
    assert [r["step"] for r in runlog.read_rows(run / "metrics.jsonl")] == [2, 4, 6, 8]
    assert _stable(run) == _stable(trained)


def test_an_older_checkpoint_without_its_row_is_reevaluated_and_training_stays_identical(trained, tmp_path) -> None:
    """A checkpoint written before checkpoints carried their evaluation's row: the lost row is evaluated again
    from the restored EMA model, which draws no random number and changes no training state."""
    intact, legacy = _copy(trained, tmp_path, "intact"), _copy(trained, tmp_path, "legacy")
    ckpt = legacy / "ckpt_00000008.pt"
    state = torch.load(ckpt, weights_only=True)
    state.pop("eval_row", None)
    torch.save(state, ckpt)
    (legacy / "metrics.jsonl").write_text("".join(_lines(legacy)[:-1]))
    for run in (intact, legacy):
        assert main(["train", "--resume", str(run), "--set", "train.steps=12"]) == 0
    redone, original = runlog.read_rows(legacy / "metrics.jsonl")[3], runlog.read_rows(trained / "metrics.jsonl")[3]
    assert redone["step"] == 8 and redone["reevaluated_on_resume"] is True
    evaluation = ("acc", "bacc", "gm", "per_class_recall", "prior_baseline", "prior_baseline_trainmode", "eval_n")
    assert {k: redone[k] for k in evaluation} == {k: original[k] for k in evaluation}
    assert _stable(legacy)[4:] == _stable(intact)[4:]  # steps 10 and 12: bit-identical training after it


def test_resume_with_a_torn_middle_line_is_one_line_and_touches_nothing(trained, tmp_path, capsys) -> None:
    run = _copy(trained, tmp_path)
    lines = _lines(run)
    lines[1] = lines[1][:30] + "\n"
    (run / "metrics.jsonl").write_text("".join(lines))
    before = _tree_hash(run)
    assert main(["train", "--resume", str(run), "--set", "train.steps=10"]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl' line 2 is not JSON" in err and "fix or delete that line" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert _tree_hash(run) == before


# ------------------------------------------------------------------ readers of a run directory
def test_report_with_a_torn_middle_line_is_exit_2_naming_it(trained, tmp_path, capsys) -> None:
    run = _copy(trained, tmp_path)
    lines = _lines(run)
    lines[2] = "\x00" * 20 + "\n"  # e.g. what a power loss leaves
    (run / "metrics.jsonl").write_text("".join(lines))
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl' line 3 is not JSON" in err and err.count("\n") == 1, err


def test_report_of_a_live_run_reads_up_to_its_last_complete_line(trained, tmp_path) -> None:
    from dytrim.report.runs import read_run

    run = _copy(trained, tmp_path)
    (run / "summary.json").unlink()
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 10, "acc": 0.5, "bacc"')  # an append in progress
    record = read_run(run)
    assert [r["step"] for r in record.rows] == [2, 4, 6, 8]


def test_report_does_not_mix_a_summary_with_rows_it_does_not_describe(trained, tmp_path) -> None:
    """A finished run resumed with more steps and still training: its summary.json is the old end's."""
    from dytrim.report.runs import read_run

    run = _copy(trained, tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    summary["full_test"] = {"bacc": 0.99, "eval_n": 1}
    (run / "summary.json").write_text(json.dumps(summary))
    runlog.append_row(run / "metrics.jsonl", runlog.read_rows(run / "metrics.jsonl")[-1] | {"step": 10})
    record = read_run(run)
    assert record.summary == {} and record.final()[0]["step"] == 10
    assert any("summary.json does not match metrics.jsonl" in n for n in record.notes), record.notes


def test_prior_curve_reads_a_run_with_a_torn_last_line(trained, tmp_path) -> None:
    from dytrim.dynamics.baseline_checks import read_prior_curve

    run = _copy(trained, tmp_path)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 10, "prior_base')
    curve = read_prior_curve(run)
    assert curve.steps == [2, 4, 6, 8] and curve.source == "metrics.jsonl"
