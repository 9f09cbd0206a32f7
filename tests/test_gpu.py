"""The CUDA path, where a GPU exists (skipped elsewhere; `python benchmarks/gpu_check.py` runs these on the GPU
machine): training in fp32 and bf16, exact resume from a checkpoint mapped onto the GPU, the deterministic
index writes against the CPU's, evaluation and prediction on the GPU."""

from __future__ import annotations

import json

import pytest
import torch

from dytrim.cli import main
from dytrim.engine.indexing import put_last
from dytrim.engine.runlog import read_rows

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]

TINY = ["--preset", "mnist-lt-fixmatch", "--set", "debias.methods=cdmad,dytrim", "--set", "debias.start=2",
        "--set", "train.eval_every=3", "--set", "train.progress=false", "--set", "train.device=cuda"]


def _metrics(run) -> list[dict]:
    volatile = ("wall_s", "images_per_s")
    return [{k: v for k, v in r.items() if k not in volatile} for r in read_rows(run / "metrics.jsonl")]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_resume_is_bitwise_identical(tmp_path, precision) -> None:
    """Checkpoints are loaded onto the GPU (RNG states included) and the resumed run equals a straight one."""
    args = [*TINY, "--set", f"train.precision={precision}"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *args, "--set", "train.steps=9", "--out", str(straight)]) == 0
    assert main(["train", *args, "--set", "train.steps=3", "--out", str(split)]) == 0
    assert main(["train", "--resume", str(split), "--set", "train.steps=9"]) == 0
    assert _metrics(split) == _metrics(straight)
    meta = json.loads((straight / "run.json").read_text())
    assert meta["device"].startswith("cuda") and meta["precision"] == precision


def test_put_last_on_cuda_equals_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 50, (4000,), generator=g)
    src = torch.randn(4000, generator=g)
    cpu, gpu = torch.zeros(50), torch.zeros(50, device="cuda")
    put_last(cpu, idx, src)
    put_last(gpu, idx.cuda(), src.cuda())
    assert torch.equal(cpu, gpu.cpu())


@pytest.mark.slow
def test_eval_and_predict_on_cuda(tmp_path, capsys) -> None:
    from PIL import Image

    run = tmp_path / "run"
    assert main(["train", *TINY, "--set", "train.steps=3", "--out", str(run)]) == 0
    assert main(["eval", str(run), "--device", "cuda", "--out", str(tmp_path / "ev")]) == 0
    img = tmp_path / "a.png"
    Image.new("L", (28, 28), 128).save(img)
    assert main(["predict", str(run), str(img), "--device", "cuda", "--out", str(tmp_path / "p.csv"),
                 "--no-progress"]) == 0
    assert (tmp_path / "p.csv").read_text().count("\n") == 2
