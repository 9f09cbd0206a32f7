"""The CUDA path's correctness fixes, tested on the CPU, and the speed options: deterministic writes through a
repeating index, RNG states restored from any device, a device-type change refused in one line, the foreach
EMA equal to the per-tensor one bit for bit, bf16 autocast (exact resume in bf16), torch.compile's fallback."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from torch import nn

from dytrim.cli import main
from dytrim.config import ConfigError, load_config
from dytrim.engine import accel
from dytrim.engine.checkpoint import checkpoint_paths
from dytrim.engine.ema import EMATeacher
from dytrim.engine.indexing import put_last
from dytrim.engine.rng import capture, restore
from dytrim.engine.runlog import read_rows
from dytrim.models import create_model

# these tiny runs use DyTrim's reference labeled rule (prune.min_keep=0) on a split with 1-image classes, so its
# start-up warning is expected (test_pruning.py checks the warning itself with pytest.warns)
pytestmark = [pytest.mark.filterwarnings("ignore:the labeled pruning rule:UserWarning")]

TINY = ["--preset", "mnist-lt-fixmatch", "--set", "debias.methods=cdmad,dytrim", "--set", "debias.start=2",
        "--set", "train.eval_every=3", "--set", "train.progress=false", "--set", "train.threads=1",
        "--set", "train.device=cpu"]


@pytest.mark.parametrize("seed", range(5))
def test_put_last_keeps_the_last_write_of_a_repeated_index(seed) -> None:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 7, (40,), generator=g)
    src = torch.randn(40, generator=g)
    dst = torch.zeros(7)
    put_last(dst, idx, src)
    ref = torch.zeros(7)
    for i, v in zip(idx.tolist(), src.tolist(), strict=True):  # sequential: the last write wins
        ref[i] = v
    assert torch.equal(dst, ref)


def test_rng_states_restore_exactly_and_a_device_change_is_refused() -> None:
    gen = torch.Generator().manual_seed(3)
    state = capture(gen)
    a = (torch.rand(3, generator=gen), torch.rand(2), __import__("numpy").random.rand(2).tolist(),
         __import__("random").random())
    other = torch.Generator().manual_seed(99)
    restore(state, other)
    b = (torch.rand(3, generator=other), torch.rand(2), __import__("numpy").random.rand(2).tolist(),
         __import__("random").random())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2:] == b[2:]
    with pytest.raises(ConfigError, match="written on cuda and this run is on cpu.*train.device=cuda"):
        restore(state | {"aug_device": "cuda"}, other)


@pytest.mark.slow
def test_resume_on_another_device_type_is_one_line(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", *TINY, "--set", "train.steps=3", "--out", str(run)]) == 0
    path = checkpoint_paths(run)[0]
    state = torch.load(path, weights_only=True)
    state["rng"]["aug_device"] = "cuda"  # as if written on a GPU
    torch.save(state, path)
    assert main(["train", "--resume", str(run), "--set", "train.steps=6"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.device: the checkpoint was written on cuda" in err


def _ema_reference(ema: nn.Module, student: nn.Module, decay: float, buffers: str, wd: float) -> None:
    """The per-tensor EMA loop the foreach version replaced."""
    params = {n for n, _ in student.named_parameters()}
    with torch.no_grad():
        src = student.state_dict()
        for name, t in ema.state_dict().items():
            if not t.is_floating_point() or (buffers == "copy" and name not in params):
                t.copy_(src[name])
            else:
                t.mul_(decay).add_(src[name], alpha=1.0 - decay)
        if wd > 0:
            for t in src.values():
                if t.is_floating_point():
                    t.mul_(1.0 - wd)


@pytest.mark.parametrize("buffers, wd", [("ema", 0.0), ("copy", 0.0), ("ema", 0.02)])
def test_foreach_ema_equals_the_per_tensor_loop_bitwise(buffers, wd) -> None:
    torch.manual_seed(0)
    student = create_model("cnn_small", 10, in_channels=1)
    twin = copy.deepcopy(student)
    teacher = EMATeacher(student, 0.99, buffers)
    ref_ema = copy.deepcopy(teacher.model)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1)
    for _ in range(3):
        x = torch.randn(8, 1, 28, 28)
        for m, o in ((student, opt), (twin, opt_twin)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
        teacher.update(student, wd)
        _ema_reference(ref_ema, twin, 0.99, buffers, wd)
    for (n, a), b in zip(teacher.model.state_dict().items(), ref_ema.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    for a, b in zip(student.state_dict().values(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_precision_auto_follows_the_hardware() -> None:
    cpu = torch.device("cpu")
    assert accel.resolve_precision("auto", cpu) == ("bf16" if accel.cpu_has_bf16() else "fp32")
    assert accel.resolve_precision("bf16", cpu) == "bf16" and accel.resolve_precision("fp32", cpu) == "fp32"
    cuda = torch.device("cuda")
    assert not accel.resolve_compile("auto", 800, cuda, "bf16") and accel.resolve_compile("auto", 15000, cuda, "fp32")
    assert accel.resolve_compile("auto", 15000, cpu, "bf16")
    assert not accel.resolve_compile("auto", 15000, cpu, "fp32")  # fp32 on the CPU: compiling did not pay
    assert accel.resolve_compile("on", 1, cpu, "fp32") and not accel.resolve_compile("off", 10**6, cuda, "bf16")


def test_cpu_bf16_detection_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setenv("DYTRIM_CPU_BF16", "1")
    assert accel.cpu_has_bf16() and accel.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setenv("DYTRIM_CPU_BF16", "0")
    assert not accel.cpu_has_bf16() and accel.resolve_precision("auto", cpu) == "fp32"


def test_defaults_are_auto() -> None:
    cfg = load_config()
    assert (cfg.train.precision, cfg.train.compile) == ("auto", "auto")
    with pytest.raises(ConfigError, match="train.precision"):
        load_config("mnist-lt-fixmatch", ["train.precision=fp16"])


def _metrics(run) -> list[dict]:
    volatile = ("wall_s", "images_per_s")
    return [{k: v for k, v in r.items() if k not in volatile} for r in read_rows(run / "metrics.jsonl")]


@pytest.mark.slow
def test_bf16_trains_records_and_resumes_bitwise(tmp_path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    bf16 = [*TINY, "--set", "train.precision=bf16"]
    assert main(["train", *bf16, "--set", "train.steps=6", "--out", str(straight)]) == 0
    assert main(["train", *bf16, "--set", "train.steps=3", "--out", str(split)]) == 0
    assert main(["train", "--resume", str(split), "--set", "train.steps=6"]) == 0
    assert _metrics(split) == _metrics(straight)
    meta = json.loads((straight / "run.json").read_text())
    assert meta["precision"] == "bf16" and meta["cpu"] and isinstance(meta["cpu_flags"], list)
    fp32 = tmp_path / "fp32"
    assert main(["train", *TINY, "--set", "train.steps=6", "--out", str(fp32)]) == 0
    assert _metrics(fp32)[-1]["loss"] != _metrics(straight)[-1]["loss"]  # bf16 really ran


@pytest.mark.slow
def test_compile_failure_falls_back_to_eager_with_one_warning(tmp_path, monkeypatch) -> None:
    def broken(*a, **k):
        def fn(x):
            raise RuntimeError("no C++ compiler here\nsecond line")
        return fn

    monkeypatch.setattr(accel.torch, "compile", broken)
    eager, fell_back = tmp_path / "eager", tmp_path / "fallback"
    assert main(["train", *TINY, "--set", "train.steps=3", "--out", str(eager)]) == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", *TINY, "--set", "train.steps=3", "--set", "train.compile=on", "--out",
                     str(fell_back)]) == 0
    msgs = [str(w.message) for w in caught if "train.compile" in str(w.message)]
    assert len(msgs) == 1 and "no C++ compiler here" in msgs[0] and "eager" in msgs[0]
    assert _metrics(fell_back) == _metrics(eager)
    assert json.loads((fell_back / "run.json").read_text())["compiled"] is True


@pytest.mark.slow
def test_two_process_ddp_in_bf16_keeps_ranks_in_sync(tmp_path) -> None:
    """DDP (gloo, CPU) with bf16 autocast: every rank holds the same weights and state at every evaluation."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29541", "-m", "dytrim", "train", *TINY, "--set", "train.precision=bf16",
                          "--set", "train.steps=6", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [3, 6] and all(r["ranks_in_sync"] for r in rows)
    assert json.loads((out / "run.json").read_text())["precision"] == "bf16"
