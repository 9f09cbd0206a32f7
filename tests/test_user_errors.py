"""One line, never a traceback, for anything a user did (exit 2) or the machine did (exit 4: disk full,
permission denied), with the last good checkpoint kept and no temp file left; `--debug` shows the traceback.
Plus provenance: run.json records the sha256 of every data file, and a split that leaves a class without
labeled images is refused."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest

from dytrim.cli import main
from dytrim.config import ConfigError
from dytrim.engine import checkpoint as ckpt_mod
from dytrim.engine.checkpoint import checkpoint_paths

TINY = ["--preset", "mnist-lt-fixmatch", "--set", "train.steps=6", "--set", "train.eval_every=2",
        "--set", "train.progress=false", "--set", "train.threads=1"]


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


CONFIG_FILES = {
    "missing": (None, "no such file"),
    "folder": ("<dir>", "is a folder"),
    "syntax": ("train:\n  steps: [1, 2\n  eval_every: 3\n", "at line 3, column 13"),
    "list": ("- train.steps=3\n", "must hold a mapping"),
    "python tag": ("train: !!python/object/apply:os.system ['touch PWNED']\n", "Python tags are refused"),
    "not utf-8": (b"\xff\xfe\x00bad", "cannot read"),
}


@pytest.mark.parametrize("kind", list(CONFIG_FILES))
def test_bad_config_file_is_one_line_exit_2(tmp_path, capsys, monkeypatch, kind) -> None:
    monkeypatch.chdir(tmp_path)
    content, needle = CONFIG_FILES[kind]
    path = tmp_path / "cfg.yaml"
    if content == "<dir>":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("dytrim: error: --config:") and needle in line and str(path) in line, line
    assert not out.exists() and not (tmp_path / "PWNED").exists()


def test_debug_shows_the_traceback(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        main(["--debug", "train", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "run")])


def _fail_nth_save(monkeypatch, n: int, err: int) -> None:
    """The n-th checkpoint write fails inside torch.save like a full disk (or a permission change) would."""
    calls = {"n": 0}
    real = ckpt_mod.torch.save

    def save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            f.write(b"partial")
            raise OSError(err, __import__("os").strerror(err))
        return real(obj, f, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", save)


@pytest.mark.slow
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES, errno.EROFS], ids=["ENOSPC", "EACCES", "EROFS"])
def test_write_failure_mid_run_exit_4_keeps_last_checkpoint(tmp_path, capsys, monkeypatch, err) -> None:
    out = tmp_path / "run"
    _fail_nth_save(monkeypatch, 2, err)
    assert main(["train", *TINY, "--out", str(out)]) == 4
    line = _one_line(capsys.readouterr().err)
    assert str(out / "ckpt_00000004.pt") in line and __import__("os").strerror(err) in line, line
    assert [p.name for p in checkpoint_paths(out)] == ["ckpt_00000002.pt"]  # the last good one, intact
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert main(["train", "--resume", str(out)]) == 0  # and the run continues from it


@pytest.mark.slow
def test_metrics_write_failure_names_the_file(tmp_path, capsys, monkeypatch) -> None:
    from dytrim.engine import metrics_log

    def append_row(path: Path, row: dict) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(metrics_log, "append_row", append_row)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 4
    line = _one_line(capsys.readouterr().err)
    assert "Permission denied" in line and str(out / "metrics.jsonl") in line


def test_interrupt_before_training_is_one_line_130(tmp_path, capsys, monkeypatch) -> None:
    from dytrim.engine import build

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "load_data", interrupted)
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 130
    assert "interrupted" in _one_line(capsys.readouterr().err)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("errs") / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    return run


@pytest.mark.slow
def test_predict_with_no_readable_image_fails(trained, tmp_path, capsys) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    assert main(["predict", str(trained), str(bad), "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "none of the 1 files could be read" in err and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.slow
def test_predict_unwritable_out_fails_before_any_work(trained, tmp_path, capsys, monkeypatch) -> None:
    from PIL import Image

    from dytrim import inference

    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    blocker = tmp_path / "a_file"
    blocker.write_text("")

    def no_work(*a, **k):
        raise AssertionError("predicted before checking --out")

    monkeypatch.setattr(inference, "predict_files", no_work)
    assert main(["predict", str(trained), str(img), "--out", str(blocker / "p.csv"), "--no-progress"]) == 2
    assert "--out: cannot write" in _one_line(capsys.readouterr().err)
    monkeypatch.undo()
    nested = tmp_path / "new" / "folder" / "p.csv"  # a missing folder is created
    assert main(["predict", str(trained), str(img), "--out", str(nested), "--no-progress"]) == 0
    assert nested.read_text().startswith("path,pred,prob")


# ----------------------------------------------------------------------------- provenance


@pytest.mark.slow
def test_run_json_records_the_data_files(trained) -> None:
    from dytrim.data.mnist import MNIST10K_SHA256

    files = json.loads((trained / "run.json").read_text())["data_files"]
    assert [f["sha256"] for f in files] == [MNIST10K_SHA256]
    assert files[0]["path"].endswith("mnist10k.npz") and "known hash" in files[0]["checked_against"]


@pytest.mark.slow
def test_unlisted_data_file_is_hashed_recorded_and_warned(tmp_path, capsys) -> None:
    from dytrim.data.integrity import sha256_of
    from dytrim.data.mnist import read_mnist10k

    x, y = read_mnist10k()
    copy = tmp_path / "mnist10k.npz"
    np.savez(copy, x=x, y=y)
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"without a MANIFEST\.md entry.*mnist10k\.npz"):
        assert main(["train", *TINY, "--set", f"data.root={copy}", "--out", str(out)]) == 0
    files = json.loads((out / "run.json").read_text())["data_files"]
    assert files == [{"path": str(copy), "sha256": sha256_of(copy), "checked_against": "nothing"}]


def test_listed_data_files_are_checked_against_the_manifest(shared_data) -> None:
    from dytrim.config import load_config
    from dytrim.data.sources import load_data

    cfg = load_config("cpu-cifar10lt-fixmatch", [f"data.root={shared_data}"])
    files = load_data(cfg.data, 0).files
    assert [Path(f["path"]).name for f in files] == ["cifar10.npz"]
    assert files[0]["checked_against"] == str(shared_data / "MANIFEST.md")


def test_split_without_labeled_images_for_a_class_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "--set", "data.n1=50", "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("dytrim: error: data.n1: the split gives 2 class(es) no labeled image: 8 (8), 9 (9)")
    assert "[50, 29, 17, 10, 6, 3, 2, 1, 0, 0]" in line and "data.allow_empty_classes" in line
    assert not out.exists()
    from dytrim.config import load_config
    from dytrim.data.sources import load_data

    cfg = load_config("mnist-lt-fixmatch", ["data.n1=50", "data.allow_empty_classes=true"])
    assert load_data(cfg.data, 0).split.lb_counts[-2:] == [0, 0]


@pytest.mark.slow
def test_a_closed_pipe_is_not_an_error() -> None:
    """`dytrim presets --keys | head -1`: the reader stopping early is normal use, exit 0 and nothing on stderr."""
    import subprocess
    import sys

    res = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m dytrim presets --keys | head -1"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("seed (int") and res.stderr == "", res.stderr
