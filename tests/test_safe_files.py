"""Files are data, never code: a file whose pickle carries a payload never runs it, whichever command reads
it (train --resume, eval, predict, export, the dynamics commands, model.pretrained, exports, image caches);
checkpoints load with weights_only=True and carry a format version."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dytrim.cli import main
from dytrim.engine.checkpoint import FORMAT_VERSION, CheckpointError, checkpoint_paths, load_latest, save_checkpoint

# torch 2.x deprecates torch.jit (TorchScript); the tests that export or load TorchScript on purpose expect it
JIT_DEPRECATED = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is (deprecated|not supported)")

TINY = ["--preset", "mnist-lt-fixmatch", "--set", "debias.methods=cdmad", "--set", "train.steps=4",
        "--set", "train.eval_every=2", "--set", "train.progress=false", "--set", "train.threads=1"]


class Payload:
    """Unpickling this creates the folder `marker`: proof that the file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("safe") / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    return run


def _copy(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


def _hostile_checkpoint(run: Path, marker: Path, plain_pickle: bool = False) -> Path:
    """A checkpoint named as the newest one whose pickle runs `os.mkdir(marker)` when unpickled unsafely."""
    path = run / "ckpt_00000999.pt"
    if plain_pickle:
        path.write_bytes(pickle.dumps({"step": 999, "x": Payload(marker)}))
    else:
        torch.save({"format_version": FORMAT_VERSION, "step": 999, "x": Payload(marker)}, path)
    return path


COMMANDS = {
    "train --resume": lambda run, tmp: ["train", "--resume", str(run), "--set", "train.steps=6"],
    "eval": lambda run, tmp: ["eval", str(run), "--out", str(tmp / "ev")],
    "predict": lambda run, tmp: ["predict", str(run), str(tmp / "img.png"), "--out", str(tmp / "p.csv"),
                                 "--no-progress"],
    "export": lambda run, tmp: ["export", str(run), "--format", "state_dict", "--out", str(tmp / "m.pt")],
    # a run logged before the probe existed: `dynamics prior` then probes every checkpoint
    "dynamics prior": lambda run, tmp: ["dynamics", "prior", "--run", str(_strip_probe(run)), "--out",
                                        str(tmp / "prior.png")],
}


def _strip_probe(run: Path) -> Path:
    import json

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    drop = ("prior_baseline", "prior_baseline_trainmode")
    (run / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k not in drop}) + "\n"
                                               for r in rows))
    return run


def _png(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(path)


@pytest.mark.slow
@pytest.mark.parametrize("plain", [False, True], ids=["torch-zip", "plain-pickle"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_payload_checkpoint_never_runs(trained, tmp_path, capsys, command, plain) -> None:
    """The hostile newest checkpoint is refused (its payload does not run) and the previous good one is used."""
    run = _copy(trained, tmp_path / "run")
    marker = tmp_path / "PWNED"
    _hostile_checkpoint(run, marker, plain_pickle=plain)
    _png(tmp_path / "img.png")
    with pytest.warns(UserWarning, match=r"ckpt_00000999\.pt is refused") as caught:
        code = main(COMMANDS[command](run, tmp_path))
    err = capsys.readouterr().err
    assert not marker.exists(), f"{command} ran the payload"
    assert code == 0, err
    if not plain:
        assert any("posix.mkdir" in str(w.message) for w in caught)  # names what it refused


@pytest.mark.slow
@pytest.mark.filterwarnings(r"ignore:checkpoint ckpt_00000999\.pt is refused:UserWarning")  # the crafted payload
@pytest.mark.parametrize("command", ["train --resume", "eval", "predict", "export"])
def test_only_a_payload_checkpoint_is_an_error_not_a_fresh_start(trained, tmp_path, capsys, command) -> None:
    run = _copy(trained, tmp_path / "run")
    for p in checkpoint_paths(run):
        p.unlink()
    marker = tmp_path / "PWNED"
    _hostile_checkpoint(run, marker)
    _png(tmp_path / "img.png")
    before = (run / "metrics.jsonl").read_bytes()
    assert main(COMMANDS[command](run, tmp_path)) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert "no usable checkpoint" in err and "Traceback" not in err
    assert (run / "metrics.jsonl").read_bytes() == before  # a resume did not start over


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:the labeled pruning rule:UserWarning")  # DyTrim's reference rule, on purpose
def test_checkpoints_load_weights_only_with_every_state(tmp_path) -> None:
    """A run with the most state (FlexMatch, DyTrim's scores and samplers, resample's generator) writes
    checkpoints that torch.load(weights_only=True) reads, stamped with the format version."""
    for methods, ssl in (("cdmad,dytrim", "flexmatch"), ("resample", "freematch")):
        out = tmp_path / methods.replace(",", "-")
        assert main(["train", *TINY, "--set", f"debias.methods={methods}", "--set", f"ssl.name={ssl}",
                     "--out", str(out)]) == 0
        state = torch.load(checkpoint_paths(out)[0], weights_only=True)
        assert state["format_version"] == FORMAT_VERSION and state["step"] == 4


def test_other_format_version_is_refused_naming_both(tmp_path) -> None:
    save_checkpoint(tmp_path, 5, {"step": 5}, keep=2)
    state = torch.load(tmp_path / "ckpt_00000005.pt", weights_only=True)
    torch.save(state | {"format_version": 1}, tmp_path / "ckpt_00000005.pt")
    with pytest.raises(CheckpointError, match=f"format version 1; this dytrim reads format {FORMAT_VERSION}"):
        load_latest(tmp_path)


@pytest.mark.slow
def test_pretrained_weights_with_payload_are_refused(trained, tmp_path, capsys) -> None:
    marker, weights = tmp_path / "PWNED", tmp_path / "w.pt"
    torch.save({"conv.weight": torch.zeros(1), "evil": Payload(marker)}, weights)
    code = main(["train", *TINY, "--set", f"model.pretrained={weights}", "--out", str(tmp_path / "r")])
    assert code == 2 and not marker.exists()
    assert "model.pretrained" in capsys.readouterr().err


@pytest.mark.slow
@JIT_DEPRECATED
def test_exports_load_as_data(trained, tmp_path) -> None:
    from dytrim.config import ConfigError
    from dytrim.export import load_exported

    marker, path = tmp_path / "PWNED", tmp_path / "m.pt"
    torch.save({"format": "dytrim-export/1", "meta": Payload(marker), "state_dict": {}}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_exported(path)
    assert not marker.exists()
    ts = tmp_path / "m.torchscript.pt"
    assert main(["export", str(trained), "--format", "torchscript", "--out", str(ts)]) == 0
    with pytest.raises(ConfigError, match="TorchScript, which is code"):
        load_exported(ts)


def test_image_cache_with_payload_is_rebuilt_not_run(tmp_path) -> None:
    from PIL import Image

    from dytrim.data.cache import decode_images

    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(files[-1])
    cache = tmp_path / "cache"
    first = decode_images(files, (8, 8), 3, cache)
    (cached,) = list(cache.glob("images-*.npz"))
    marker = tmp_path / "PWNED"
    evil = np.empty(1, dtype=object)
    evil[0] = Payload(marker)
    with open(cached, "wb") as f:
        np.savez(f, x=evil, ok=evil)
    again = decode_images(files, (8, 8), 3, cache)
    assert not marker.exists()
    assert np.array_equal(again.x, first.x)
