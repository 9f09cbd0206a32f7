"""Checkpoints: nothing lost, nothing mixed. Rotation deletes only this run's verified checkpoints, after a newer one
reads back; temp files of killed writes are removed at start; a file is checked before it is read (a regular file,
a torch zip within the memory budget, plain data) and a refusal says what is wrong; eval, predict and export use
only a checkpoint of their run, as --resume does. Every failure is one line naming the file, exit 2."""

from __future__ import annotations

import collections
import io
import os
import pickle
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dytrim.cli import main
from dytrim.engine.checkpoint import CheckpointError, checkpoint_paths, load_latest, save_checkpoint

pytestmark = pytest.mark.slow  # trains and runs the CLI end to end

QUICK = ["--set", "train.progress=false", "--set", "train.threads=1", "--set", "train.device=cpu"]
RUN = ["--preset", "mnist-lt-fixmatch", "--set", "train.steps=20", "--set", "train.eval_every=10", *QUICK]
BUDGET = "DYTRIM_CHECKPOINT_MAX_MB"  # spelled out so that the old code can run these tests


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A FixMatch run with ckpt_00000010.pt and ckpt_00000020.pt."""
    run = tmp_path_factory.mktemp("own") / "run"
    assert main(["train", *RUN, "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> Path:
    """The newest checkpoint of another experiment: FlexMatch + CDMAD."""
    run = tmp_path_factory.mktemp("foreign") / "run"
    assert main(["train", "--preset", "mnist-lt-fixmatch", "--set", "ssl.name=flexmatch", "--set",
                 "debias.methods=cdmad", "--set", "train.steps=4", "--set", "train.eval_every=2", *QUICK,
                 "--out", str(run)]) == 0
    return checkpoint_paths(run)[0]


def _copy(run: Path, dst: Path, keep_checkpoints: bool = True) -> Path:
    shutil.copytree(run, dst)
    if not keep_checkpoints:
        for p in checkpoint_paths(dst):
            p.unlink()
    return dst


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("dytrim: error: "), err
    return lines[0]


def _png(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(path)
    return path


COMMANDS = {
    "eval": lambda run, tmp: ["eval", str(run), "--out", str(tmp / "ev")],
    "predict": lambda run, tmp: ["predict", str(run), str(_png(tmp / "img.png")), "--out", str(tmp / "p.csv"),
                                 "--no-progress"],
    "export": lambda run, tmp: ["export", str(run), "--format", "state_dict", "--out", str(tmp / "m.pt")],
    "train --resume": lambda run, tmp: ["train", "--resume", str(run), "--set", "train.steps=30"],
}


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI in a subprocess (a hang or a large allocation stays outside the test process)."""
    return subprocess.run([sys.executable, "-m", "dytrim", *args], capture_output=True, text=True, timeout=timeout,
                          env=os.environ | {"OMP_NUM_THREADS": "1"} | (env or {}))


def _torch_zip(obj_pickle: bytes, records: dict[str, int]) -> bytes:
    """A zip laid out as torch.save writes it, with `obj_pickle` as data.pkl and each record `name` holding that many
    zero bytes, stored deflated (a zip bomb: a few KB on disk per hundred MiB declared)."""
    ref = io.BytesIO()
    torch.save({"x": torch.zeros(1)}, ref)
    src = zipfile.ZipFile(io.BytesIO(ref.getvalue()))
    prefix = src.namelist()[0].split("/")[0]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name in src.namelist():
            if not name.endswith(("/data.pkl", "/data/0")):
                z.writestr(name, src.read(name))
        z.writestr(f"{prefix}/data.pkl", obj_pickle)
        for key, nbytes in records.items():
            info = zipfile.ZipInfo(f"{prefix}/data/{key}")
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w", force_zip64=True) as f:
                block = bytes(16 * 2**20)
                while nbytes:
                    f.write(block[: min(nbytes, len(block))])
                    nbytes -= min(nbytes, len(block))
    return out.getvalue()


class _Storage:
    def __init__(self, numel: int) -> None:
        self.numel = numel


class _Tensor:
    """Pickles as torch's float tensor of `numel` elements over storage record data/0."""

    def __init__(self, numel: int) -> None:
        self.storage, self.numel = _Storage(numel), numel

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, (self.numel,), (1,), False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", obj.numel) if isinstance(obj, _Storage) else None


def _checkpoint_declaring(numel: int, record_bytes: int) -> bytes:
    """A dytrim-looking checkpoint whose EMA tensor declares `numel` floats over a record of `record_bytes`."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump({"format_version": 2, "step": 99, "ema": {"w": _Tensor(numel)}})
    return _torch_zip(buf.getvalue(), {"0": record_bytes})


# ----------------------------------------------------------------------------- rotation


def test_rotation_never_deletes_files_it_did_not_write(trained, foreign, tmp_path, capsys) -> None:
    """The issue's case: a junk ckpt_00000099.pt and keep_ckpts=1 deleted every real checkpoint. Now junk and a
    checkpoint of another run stay untouched and uncounted, and the run's newest checkpoint is kept."""
    run = _copy(trained, tmp_path / "run")
    junk = run / "ckpt_00000099.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(200_000))
    other = run / "ckpt_00000005.pt"
    shutil.copyfile(foreign, other)
    before = junk.read_bytes(), other.read_bytes()
    with pytest.warns(UserWarning, match="ckpt_00000099.pt"):
        assert main(["train", "--resume", str(run), "--set", "train.steps=40", "--set", "train.keep_ckpts=1"]) == 0
    assert sorted(p.name for p in checkpoint_paths(run)) == ["ckpt_00000005.pt", "ckpt_00000040.pt",
                                                             "ckpt_00000099.pt"]
    assert (junk.read_bytes(), other.read_bytes()) == before
    capsys.readouterr()
    with pytest.warns(UserWarning, match="ckpt_00000099.pt"):
        assert main(["eval", str(run), "--out", str(tmp_path / "ev")]) == 0
    assert "ckpt_00000040.pt" in capsys.readouterr().out


def test_rotation_deletes_only_after_the_new_checkpoint_reads_back(tmp_path, monkeypatch) -> None:
    """A checkpoint written but unreadable (a writer that produced garbage) is removed and named, and the older
    checkpoint it would have replaced is kept."""
    save_checkpoint(tmp_path, 10, {"step": 10, "x": torch.ones(3)}, keep=1)
    good = (tmp_path / "ckpt_00000010.pt").read_bytes()
    monkeypatch.setattr(torch, "save", lambda obj, f: f.write(b"PK\x03\x04 cut short"))
    with pytest.raises(OSError, match=r"ckpt_00000020\.pt.*does not read back"):
        save_checkpoint(tmp_path, 20, {"step": 20, "x": torch.ones(3)}, keep=1)
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["ckpt_00000010.pt"]
    assert (tmp_path / "ckpt_00000010.pt").read_bytes() == good
    assert not list(tmp_path.glob(".*.tmp"))


def test_temp_files_of_killed_checkpoint_writes_are_removed_at_start(trained, tmp_path) -> None:
    run = _copy(trained, tmp_path / "run")
    stale = run / ".ckpt_00000030.pt.k1ll3d.tmp"  # atomic_write_bytes' temp name, left by a SIGKILL mid-write
    shutil.copyfile(checkpoint_paths(run)[0], stale)
    keep = [run / ".notes.tmp", run / "ckpt_notes.tmp"]  # not a checkpoint write's temp file: not ours to remove
    for p in keep:
        p.write_text("mine")
    assert main(["train", "--resume", str(run), "--set", "train.steps=30"]) == 0
    assert not stale.exists()
    assert all(p.read_text() == "mine" for p in keep)
    # only a holder of the run directory's lock removes them (another writer's temp file may be live)
    from dytrim.engine.checkpoint import remove_stale_temps
    from dytrim.runlock import hold

    stale.write_bytes(b"partial")
    assert remove_stale_temps(run) == [] and stale.exists()
    with hold(run, "--resume"):
        assert remove_stale_temps(run) == [stale.name]
    assert not stale.exists()


# ----------------------------------------------------------------------------- what a file may be


def test_a_zip_bomb_is_refused_from_its_zip_directory(trained, tmp_path) -> None:
    """256 MiB of zeros stored deflated (a few hundred KB on disk): refused by the sizes the zip declares, before
    torch allocates them, with the budget named."""
    run = _copy(trained, tmp_path / "run", keep_checkpoints=False)
    n = 256 * 2**20
    (run / "ckpt_00000020.pt").write_bytes(_checkpoint_declaring(n // 4, n))
    assert (run / "ckpt_00000020.pt").stat().st_size < 2**20
    res = _cli("eval", str(run), "--out", str(tmp_path / "ev"), env={BUDGET: "64"})
    assert res.returncode == 2, res.stderr
    line = _one_line(res.stderr)
    assert "ckpt_00000020.pt" in line and "256 MiB" in line and "budget of 64 MiB" in line and BUDGET in line


def test_a_tensor_size_the_pickle_declares_over_the_budget_is_refused(trained, tmp_path) -> None:
    """A pickle declaring a 4 GiB tensor over a 4-byte record is refused from the declaration (read on the meta
    device), at the default budget, before anything is allocated."""
    run = _copy(trained, tmp_path / "run", keep_checkpoints=False)
    (run / "ckpt_00000020.pt").write_bytes(_checkpoint_declaring(2**30, 4))
    res = _cli("eval", str(run), "--out", str(tmp_path / "ev"))
    assert res.returncode == 2, res.stderr
    line = _one_line(res.stderr)
    assert "4,096 MiB" in line and "budget of 2048 MiB" in line and BUDGET in line


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_only_regular_files_are_read_as_checkpoints(trained, tmp_path, kind) -> None:
    """A FIFO (which a reader would wait on for ever), a directory or a device named like the only checkpoint."""
    run = _copy(trained, tmp_path / "run", keep_checkpoints=False)
    path = run / "ckpt_00000020.pt"
    {"fifo": os.mkfifo, "directory": os.mkdir, "device": lambda p: os.symlink("/dev/zero", p)}[kind](path)
    try:
        res = _cli("eval", str(run), "--out", str(tmp_path / "ev"), timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"eval waited on a {kind} named ckpt_00000020.pt")
    assert res.returncode == 2, res.stderr
    line = _one_line(res.stderr)
    assert "ckpt_00000020.pt" in line and "not a regular file" in line


def _random(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).bytes(5000))


def _truncated(path: Path) -> None:
    save_checkpoint(path.parent, 20, {"step": 20, "x": torch.ones(100_000)}, keep=2)
    path.write_bytes(path.read_bytes()[:100_000])


def _plain_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"format_version": 2, "step": 20}))


def _other_version(path: Path) -> None:
    torch.save({"format_version": 7, "step": 20}, path)


def _code(path: Path, plain: bool = False) -> None:
    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(path.parent / "PWNED"),))

    state = {"format_version": 2, "step": 20, "x": Payload()}
    if plain:
        path.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, path)


FORMATS = {  # how the only checkpoint is made -> what the message must say, and whether it may speak of code
    "random bytes": (_random, "not a checkpoint (neither a zip archive", False),
    "truncated": (_truncated, "truncated", False),
    "plain pickle": (_plain_pickle, "a plain pickle", False),
    "plain pickle with an object": (lambda p: _code(p, plain=True), "a plain pickle (or torch's pre-1.6 format), "
                                    "not the zip archive torch.save writes, and it holds a Python object (posix.mkdir)",
                                    True),
    "other format version": (_other_version, "format version 7; this dytrim reads format 2", False),
    "non-data object": (_code, "holds a Python object (posix.mkdir)", True),
}


def test_format_messages_say_what_is_wrong(tmp_path) -> None:
    """Each kind of bad file as the only checkpoint: the message names what is wrong, and speaks of running code only
    for a file that names a Python object (random bytes were reported as "could run code")."""
    for kind, (make, says, code) in FORMATS.items():
        folder = tmp_path / kind.replace(" ", "-")
        folder.mkdir()
        make(folder / "ckpt_00000020.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the error alone says it, in one line (no warning repeats it)
            with pytest.raises(CheckpointError) as caught:
                load_latest(folder)
        message = str(caught.value)
        assert says in message, (kind, message)
        assert ("could run code" in message) == code, (kind, message)
        assert not (folder / "PWNED").exists()


# ----------------------------------------------------------------------------- a checkpoint of this run only


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_a_checkpoint_of_another_config_is_refused_naming_what_differs(trained, foreign, tmp_path, capsys,
                                                                      command) -> None:
    """The issue's case: a FlexMatch + CDMAD checkpoint copied into a FixMatch run was used silently, without its
    debiaser. Now it is refused like --resume refuses it, naming the keys."""
    run = _copy(trained, tmp_path / "run")
    shutil.copyfile(foreign, run / "ckpt_00000099.pt")
    assert main(COMMANDS[command](run, tmp_path)) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"dytrim: error: {command}: config.yaml and ckpt_00000099.pt disagree on ssl.name "
                           "(config.yaml: 'fixmatch', checkpoint: 'flexmatch'), debias.methods"), line


def _other_architecture(run: Path, same_config: bool) -> None:
    """A checkpoint holding resnet_tiny weights, with its own config (model.name differs) or with this run's."""
    from dytrim.models import create_model

    state = torch.load(checkpoint_paths(run)[0], weights_only=True)
    state["ema"] = create_model("resnet_tiny", 10, in_channels=1).state_dict()
    if not same_config:
        state["config"]["model"]["name"] = "resnet_tiny"
    torch.save(state | {"step": 99}, run / "ckpt_00000099.pt")


@pytest.mark.parametrize("same_config", [False, True], ids=["its-config", "this-runs-config"])
@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_a_checkpoint_of_another_architecture_is_one_line(trained, tmp_path, capsys, command, same_config) -> None:
    run = _copy(trained, tmp_path / "run")
    _other_architecture(run, same_config)
    assert main(COMMANDS[command](run, tmp_path)) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{command}: " in line and "ckpt_00000099.pt" in line
    if same_config:
        assert "do not fit this run's model (cnn_small" in line and "missing" in line, line
    else:
        assert "disagree on model.name (config.yaml: 'cnn_small', checkpoint: 'resnet_tiny')" in line, line


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_checkpoint_lacking_keys_is_refused_naming_them(trained, tmp_path, capsys, command) -> None:
    run = _copy(trained, tmp_path / "run")
    state = torch.load(checkpoint_paths(run)[0], weights_only=True)
    del state["ema"], state["config"]
    torch.save(state | {"step": 99}, run / "ckpt_00000099.pt")
    before = (run / "metrics.jsonl").read_bytes()
    assert main(COMMANDS[command](run, tmp_path)) == 2
    line = _one_line(capsys.readouterr().err)
    what = "--resume" if command == "train --resume" else command
    assert f"{what}: ckpt_00000099.pt lacks config, ema" in line, line
    assert (run / "metrics.jsonl").read_bytes() == before
