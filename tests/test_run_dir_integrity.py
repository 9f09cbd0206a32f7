"""A run directory has one writer (an OS lock, taken over from a killed holder), every write failure is exit 4 naming
the path, a start that fails part-way leaves a directory that resumes or is reused, a deleted config.yaml or run.json
neither strands the run nor switches off its data check, and `--out` inside the data is refused."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dytrim.cli import main
from dytrim.engine.checkpoint import checkpoint_paths
from dytrim.engine.runlog import read_rows

LOCK = ".dytrim.lock"  # the lock file's name (dytrim.runlock.LOCK_NAME), spelled out so the old code can run this
TINY = ["--preset", "mnist-lt-fixmatch", "--set", "train.steps=6", "--set", "train.eval_every=2",
        "--set", "train.progress=false", "--set", "train.threads=1"]
LONG = ["--preset", "mnist-lt-fixmatch", "--set", "train.eval_every=4", "--set", "train.progress=false",
        "--set", "train.threads=1", "--set", "train.device=cpu"]


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _start(*args: str) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "dytrim", "train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _steps(run: Path) -> list[int]:
    return [r["step"] for r in read_rows(run / "metrics.jsonl")]


# ----------------------------------------------------------------------------- one writer per run directory


def test_lock_refuses_a_second_holder_names_it_and_is_gone_after(tmp_path, monkeypatch) -> None:
    from dytrim.runlock import RunLocked, hold

    with hold(tmp_path, "--out"):
        assert f"pid {os.getpid()}" in (tmp_path / LOCK).read_text()
        with pytest.raises(RunLocked, match=rf"--out: '{tmp_path}' is in use .*pid {os.getpid()}"), \
                hold(tmp_path, "--out"):
            pass
        monkeypatch.setenv("RANK", "1")  # torchrun: rank 0 holds the lock for the job, the others do not wait
        with hold(tmp_path, "--out"):
            pass
        monkeypatch.delenv("RANK")
    assert not (tmp_path / LOCK).exists()
    (tmp_path / LOCK).write_text("pid 1 on elsewhere: a killed run\n")  # left by SIGKILL: never blocks
    with hold(tmp_path, "--out"):
        assert f"pid {os.getpid()}" in (tmp_path / LOCK).read_text()


@pytest.mark.slow
def test_two_trainings_into_one_out_one_is_refused_naming_the_other(tmp_path) -> None:
    out = tmp_path / "run"
    procs = [_start(*LONG, "--set", "train.steps=60", "--set", f"seed={seed}", "--out", str(out)) for seed in (0, 1)]
    results = [(p.pid, p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for _, rc, _ in results)
    assert codes == [0, 2], results
    (winner, _, _), = [r for r in results if r[1] == 0]
    (_, _, err), = [r for r in results if r[1] == 2]
    line = _one_line(err)
    assert "is in use by another dytrim process" in line and f"pid {winner}" in line, line
    assert _steps(out) == list(range(4, 61, 4))  # one run's rows, not two interleaved


@pytest.mark.slow
def test_two_resumes_at_once_one_is_refused_and_no_row_is_written_twice(tmp_path) -> None:
    out = tmp_path / "run"
    assert main(["train", *LONG, "--set", "train.steps=20", "--out", str(out)]) == 0
    procs = [_start("--resume", str(out), "--set", "train.steps=60") for _ in range(2)]
    results = [(p.pid, p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(rc for _, rc, _ in results) == [0, 2], results
    (winner, _, _), = [r for r in results if r[1] == 0]
    (_, _, err), = [r for r in results if r[1] == 2]
    assert f"pid {winner}" in _one_line(err)
    assert _steps(out) == list(range(4, 61, 4))


@pytest.mark.slow
def test_a_killed_holder_leaves_a_lock_file_that_the_next_run_takes_over(tmp_path) -> None:
    out = tmp_path / "run"
    proc = _start(*LONG, "--set", "train.steps=2000", "--out", str(out))
    deadline = time.time() + 300
    while not checkpoint_paths(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()
    assert f"pid {proc.pid}" in (out / LOCK).read_text()  # the holder is named while it runs
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert (out / LOCK).exists()  # stale: the kernel released the flock, the file stays
    last = int(checkpoint_paths(out)[0].stem.split("_")[1])
    assert main(["train", "--resume", str(out), "--set", f"train.steps={last + 4}"]) == 0
    assert not (out / LOCK).exists() and _steps(out) == list(range(4, last + 5, 4))


# ----------------------------------------------------------------------------- write failures: exit 4 with the path


class _FailingFile:
    """A file whose writes fail with `err` once `limit` bytes went through (a disk filling up)."""

    def __init__(self, f, err: int, limit: int) -> None:
        self._f, self._err, self._left = f, err, limit

    def write(self, data) -> int:
        self._left -= len(data)
        if self._left < 0:
            raise OSError(self._err, os.strerror(self._err))
        return self._f.write(data)

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self) -> _FailingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def _disk_fills_after(monkeypatch, err: int, limit: int) -> None:
    real = os.fdopen

    def fdopen(fd, mode="r", *a, **k):
        f = real(fd, mode, *a, **k)
        return _FailingFile(f, err, limit) if "w" in mode else f

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO, errno.EACCES, errno.EROFS],
                         ids=["ENOSPC", "EIO", "EACCES", "EROFS"])
def test_torch_save_hiding_the_os_error_is_a_write_failure_naming_the_path(tmp_path, monkeypatch, err) -> None:
    """torch.save catches the OSError of its stream and raises "unexpected pos ..." (a RuntimeError) instead."""
    from dytrim.fileio import WriteFailure, atomic_write_bytes

    path = tmp_path / "ckpt_00000002.pt"
    _disk_fills_after(monkeypatch, err, 1000)
    with pytest.raises(WriteFailure) as info:
        atomic_write_bytes(path, lambda f: torch.save({"w": torch.zeros(100_000)}, f))
    assert str(path) in str(info.value) and os.strerror(err) in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no temp file, nothing half written


def test_a_writer_bug_is_not_taken_for_a_disk_failure(tmp_path) -> None:
    from dytrim.fileio import atomic_write_bytes

    def buggy(f) -> None:
        f.write(b"x")
        raise RuntimeError("failed to write: a bug in the writer, not the disk")

    with pytest.raises(RuntimeError, match="a bug in the writer"):
        atomic_write_bytes(tmp_path / "a.bin", buggy)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_is_exit_4_naming_it_then_resumes(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    _disk_fills_after(monkeypatch, errno.ENOSPC, 1_000_000)  # a checkpoint is ~1.6 MB, the other files are small
    assert main(["train", *TINY, "--out", str(out)]) == 4
    line = _one_line(capsys.readouterr().err)
    assert f"cannot write '{out / 'ckpt_00000002.pt'}': No space left on device" in line, line
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert main(["train", "--resume", str(out)]) == 0 and _steps(out) == [2, 4, 6]


@pytest.mark.slow
def test_full_disk_writing_the_curves_names_the_file(tmp_path, capsys, monkeypatch) -> None:
    from matplotlib.figure import Figure

    def savefig(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a write error carries no file name

    monkeypatch.setattr(Figure, "savefig", savefig)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 4
    line = _one_line(capsys.readouterr().err)
    assert str(out / "curves.png") in line and "No space left on device" in line, line


@pytest.mark.slow
def test_a_real_full_tmpfs_is_exit_4_naming_the_checkpoint(tmp_path, capsys) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a 4 MiB tmpfs")
    try:
        assert main(["train", *TINY, "--out", str(disk / "run")]) == 4
        line = _one_line(capsys.readouterr().err)
        assert "No space left on device" in line and f"'{disk / 'run'}/ckpt_" in line, line
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# ----------------------------------------------------------------------------- a start that fails part-way


@pytest.mark.slow
@pytest.mark.parametrize("target", ["config.yaml", "run.json", "data.json", "metrics.jsonl"])
def test_failed_start_leaves_a_directory_that_resumes_or_is_reused(tmp_path, capsys, monkeypatch, target) -> None:
    from dytrim import fileio

    real = fileio.atomic_write_bytes

    def failing(path, writer):
        if Path(path).name == target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, writer)

    monkeypatch.setattr(fileio, "atomic_write_bytes", failing)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 4
    assert str(out / target) in _one_line(capsys.readouterr().err)
    monkeypatch.undo()
    if main(["train", "--resume", str(out)]) != 0:  # resumable from step 0, or else cleanly reusable
        assert main(["train", *TINY, "--out", str(out)]) == 0, capsys.readouterr().err
    assert _steps(out) == [2, 4, 6] and (out / "summary.json").is_file()


@pytest.mark.slow
def test_missing_config_yaml_is_rebuilt_from_the_newest_checkpoint(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "--set", "train.steps=4", "--out", str(out)]) == 0
    (out / "config.yaml").unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--set", "train.steps=6"]) == 0
    err = capsys.readouterr().err
    assert "config.yaml is missing; rebuilt it from ckpt_00000004.pt" in err, err
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["steps"] == 6
    assert _steps(out) == [2, 4, 6]


# ----------------------------------------------------------------------------- run integrity


@pytest.fixture
def own_data_run(tmp_path) -> tuple[Path, Path]:
    """A finished 4-step run trained on a copy of the MNIST file, and that copy."""
    from dytrim.data.mnist import read_mnist10k

    x, y = read_mnist10k()
    (tmp_path / "data").mkdir()
    copy = tmp_path / "data" / "mnist10k.npz"
    np.savez(copy, x=x, y=y)
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="MANIFEST"):
        assert main(["train", *TINY, "--set", "train.steps=4", "--set", f"data.root={copy}", "--out", str(out)]) == 0
    return out, copy


@pytest.mark.slow
def test_deleted_run_json_keeps_the_data_check(own_data_run, tmp_path, capsys) -> None:
    from dytrim.data.mnist import read_mnist10k

    out, _ = own_data_run
    x, y = read_mnist10k()
    (tmp_path / "other").mkdir()
    np.savez(tmp_path / "other" / "mnist10k.npz", x=255 - x, y=y)
    (out / "run.json").unlink()
    capsys.readouterr()
    with pytest.warns(UserWarning, match="MANIFEST"):
        rc = main(["train", "--resume", str(out), "--set", f"data.root={tmp_path / 'other'}",
                   "--set", "train.steps=6"])
    assert rc == 2
    line = _one_line(capsys.readouterr().err)
    assert "the data differs" in line and "ckpt_00000004.pt" in line, line
    assert not (out / "run.json").exists() and _steps(out) == [2, 4]  # refused before anything was written


@pytest.mark.slow
def test_deleted_run_json_is_rebuilt_and_old_checkpoints_still_resume(own_data_run, recwarn) -> None:
    out, copy = own_data_run
    (out / "run.json").unlink()
    assert main(["train", "--resume", str(out), "--set", "train.steps=6"]) == 0
    meta = __import__("json").loads((out / "run.json").read_text())
    assert meta["rebuilt_at_step"] == 4 and meta["data_files"][0]["path"] == str(copy)
    newest = checkpoint_paths(out)[0]  # a checkpoint of an older dytrim: no data record in it
    state = torch.load(newest, weights_only=True)
    state.pop("data_files")
    torch.save(state, newest)
    (out / "run.json").unlink()
    with pytest.warns(UserWarning, match="the data cannot be checked"):
        assert main(["train", "--resume", str(out), "--set", "train.steps=8"]) == 0
    assert _steps(out) == [2, 4, 6, 8]


@pytest.mark.parametrize("key", ["data.root", "data.labeled_dir"])
def test_out_inside_a_data_root_is_refused_before_any_work(tmp_path, capsys, key) -> None:
    from dytrim.data.mnist import read_mnist10k

    data = tmp_path / "data"
    data.mkdir()
    x, y = read_mnist10k()
    np.savez(data / "mnist10k.npz", x=x, y=y)
    sets = [f"data.root={data}"] if key == "data.root" else ["data.name=folder", f"data.labeled_dir={data}"]
    out = data / "runs" / "a"
    rc = main(["train", *TINY, *[a for s in sets for a in ("--set", s)], "--out", str(out)])
    assert rc == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"dytrim: error: --out: '{out}' is inside {key}"), line
    assert not (data / "runs").exists()


def test_lock_file_is_not_a_trace_of_a_run(tmp_path) -> None:
    from dytrim.resume import run_traces

    (tmp_path / LOCK).write_text("pid 1 on elsewhere\n")
    assert run_traces(tmp_path) == []
